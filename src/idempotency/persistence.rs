//! The `idempotency_keys` table: one row per (caller, method, key), whose primary key is the
//! unique constraint that lets exactly one call claim a key. All writes here run inside the
//! transaction of the work the key guards.

use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{DatabaseTransaction, QuerySelect, TryInsertResult};

use super::{IdempotentRequest, RequestFingerprint};
use crate::domain::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub caller: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub method: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    pub fingerprint: Vec<u8>,
    /// The encoded response of the call that claimed the key; written before that call's
    /// transaction commits, so a committed row always has it.
    pub response: Option<Vec<u8>>,
    pub created_at_us: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// A committed key that has not expired.
pub struct StoredKey {
    pub fingerprint: Option<RequestFingerprint>,
    pub response: Option<Vec<u8>>,
}

/// The key's row if it was created at or after `cutoff` (older rows count as absent, even
/// before the sweeper deletes them).
pub async fn find_live<C: ConnectionTrait>(
    db: &C,
    request: &IdempotentRequest,
    cutoff: Timestamp,
) -> Result<Option<StoredKey>, DbErr> {
    let row: Option<(Vec<u8>, Option<Vec<u8>>)> = Entity::find_by_id((
        request.caller.as_str().to_owned(),
        request.method.to_owned(),
        request.key.as_str().to_owned(),
    ))
    .select_only()
    .columns([Column::Fingerprint, Column::Response])
    .filter(Column::CreatedAtUs.gte(cutoff.unix_micros()))
    .into_tuple()
    .one(db)
    .await?;
    Ok(row.map(|(fingerprint, response)| StoredKey {
        fingerprint: RequestFingerprint::from_slice(&fingerprint),
        response,
    }))
}

/// Tries to make this call the owner of the key: inserts its row, or takes over a row that
/// has expired. `response` is stored with it when the caller already has it (else it is
/// written later by [`save_response`], in the same transaction). Returns false when a live row
/// exists. On PostgreSQL, if another transaction holds an uncommitted claim on the same key,
/// this waits for it to commit or roll back.
pub async fn claim(
    txn: &DatabaseTransaction,
    request: &IdempotentRequest,
    response: Option<Vec<u8>>,
    now: Timestamp,
    cutoff: Timestamp,
) -> Result<bool, DbErr> {
    let row = ActiveModel {
        caller: Set(request.caller.as_str().to_owned()),
        method: Set(request.method.to_owned()),
        key: Set(request.key.as_str().to_owned()),
        fingerprint: Set(request.fingerprint.as_bytes().to_vec()),
        response: Set(response),
        created_at_us: Set(now.unix_micros()),
    };
    let on_conflict = OnConflict::columns([Column::Caller, Column::Method, Column::Key])
        .update_columns([Column::Fingerprint, Column::Response, Column::CreatedAtUs])
        .action_and_where(Expr::col((Entity, Column::CreatedAtUs)).lt(cutoff.unix_micros()))
        .to_owned();
    let result = Entity::insert(row)
        .on_conflict(on_conflict)
        .try_insert()
        .exec_without_returning(txn)
        .await?;
    Ok(matches!(result, TryInsertResult::Inserted(n) if n > 0))
}

/// Stores the response of the call that claimed the key, in that call's transaction.
pub async fn save_response(
    txn: &DatabaseTransaction,
    request: &IdempotentRequest,
    response: Vec<u8>,
) -> Result<(), DbErr> {
    let result = Entity::update_many()
        .col_expr(Column::Response, Expr::value(response))
        .filter(Column::Caller.eq(request.caller.as_str()))
        .filter(Column::Method.eq(request.method))
        .filter(Column::Key.eq(request.key.as_str()))
        .exec(txn)
        .await?;
    if result.rows_affected == 1 {
        Ok(())
    } else {
        Err(DbErr::RecordNotUpdated)
    }
}
