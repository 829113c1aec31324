//! The `idempotency_keys` table: one row per (caller, method, key), whose primary key is the
//! unique constraint that lets exactly one call claim a key. All writes here run inside the
//! transaction of the work the key guards.

use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{DatabaseTransaction, DbBackend, QuerySelect, SqlErr, TryInsertResult};

use super::statements::{KeyedChange, KeyedInsert};
use super::{IdempotentRequest, RequestFingerprint};
use crate::domain::Timestamp;
use crate::storage::{Applied, Change, StorageError, deadline, statement};

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
) -> Result<Option<StoredKey>, StorageError> {
    let row = Entity::find_by_id((
        request.caller.as_str().to_owned(),
        request.method.to_owned(),
        request.key.as_str().to_owned(),
    ))
    .select_only()
    .columns([Column::Fingerprint, Column::Response])
    .filter(Column::CreatedAtUs.gte(cutoff.unix_micros()))
    .into_tuple()
    .one(db);
    let row: Option<(Vec<u8>, Option<Vec<u8>>)> =
        statement(db, "find idempotency key", row).await?;
    Ok(row.map(|(fingerprint, response)| StoredKey {
        fingerprint: RequestFingerprint::from_slice(&fingerprint),
        response,
    }))
}

/// Tries to make this call the owner of the key: inserts its row, with the call's response,
/// or takes over a row that has expired. Returns false when a live row exists. On
/// PostgreSQL, if another transaction holds an uncommitted claim on the same key, this waits
/// for it to commit or roll back.
pub async fn claim(
    txn: &DatabaseTransaction,
    request: &IdempotentRequest,
    response: Vec<u8>,
    now: Timestamp,
    cutoff: Timestamp,
) -> Result<bool, StorageError> {
    let row = ActiveModel {
        caller: Set(request.caller.as_str().to_owned()),
        method: Set(request.method.to_owned()),
        key: Set(request.key.as_str().to_owned()),
        fingerprint: Set(request.fingerprint.as_bytes().to_vec()),
        response: Set(Some(response)),
        created_at_us: Set(now.unix_micros()),
    };
    let on_conflict = OnConflict::columns([Column::Caller, Column::Method, Column::Key])
        .update_columns([Column::Fingerprint, Column::Response, Column::CreatedAtUs])
        .action_and_where(Expr::col((Entity, Column::CreatedAtUs)).lt(cutoff.unix_micros()))
        .to_owned();
    let insert = Entity::insert(row)
        .on_conflict(on_conflict)
        .try_insert()
        .exec_without_returning(txn);
    let result = statement(txn, "claim idempotency key", insert).await?;
    Ok(matches!(result, TryInsertResult::Inserted(n) if n > 0))
}

/// What [`claim_with_insert`] found.
pub enum ClaimWithInsert {
    /// The key is this call's and the row is inserted; both commit together.
    Claimed,
    /// A live key was already committed when the statement started: nothing was written.
    Stored(StoredKey),
    /// A concurrent call with the same key committed it while this statement waited for its
    /// claim: nothing was written; the next statement sees the key.
    Lost,
}

/// PostgreSQL only: the lookup, the claim (with the response) and the work's one row insert
/// in ONE statement, so one round trip and one implicit transaction for a fresh call and for
/// a replay alike. The row is inserted only if the claim succeeded; a live row committed
/// before the statement began is returned instead; one committed by a concurrent call while
/// the claim waited for it is neither (see [`ClaimWithInsert::Lost`]).
pub async fn claim_with_insert<C: ConnectionTrait>(
    db: &C,
    insert: KeyedInsert<'_>,
) -> Result<ClaimWithInsert, StorageError> {
    let claim = insert.statement(DbBackend::Postgres);
    let read = async {
        let result = db
            .query_one_raw(claim)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("the claim statement returned no row".into()))?;
        let claimed: bool = result.try_get("", "claimed")?;
        let fingerprint: Option<Vec<u8>> = result.try_get("", "fingerprint")?;
        let response: Option<Vec<u8>> = result.try_get("", "response")?;
        Ok((claimed, fingerprint, response))
    };
    let (claimed, fingerprint, response) =
        statement(db, "claim idempotency key and insert", read).await?;
    if claimed {
        return Ok(ClaimWithInsert::Claimed);
    }
    Ok(match fingerprint {
        Some(fingerprint) => ClaimWithInsert::Stored(StoredKey {
            fingerprint: RequestFingerprint::from_slice(&fingerprint),
            response,
        }),
        None => ClaimWithInsert::Lost,
    })
}

/// What a SQLite [`KeyedInsert`] returned: `None` if the key now holds `response` (this call
/// claimed it and inserted the row: the rule of `statements.rs`), else the live key another
/// call stored.
pub fn claimed_or_stored(
    returned: &[QueryResult],
    response: &[u8],
) -> Result<Option<StoredKey>, DbErr> {
    let row = returned
        .first()
        .ok_or_else(|| DbErr::RecordNotFound("the claim statement returned no row".into()))?;
    let fingerprint: Option<Vec<u8>> = row.try_get("", "fingerprint")?;
    let stored: Option<Vec<u8>> = row.try_get("", "response")?;
    if stored.as_deref() == Some(response) {
        return Ok(None);
    }
    Ok(Some(StoredKey {
        fingerprint: fingerprint
            .as_deref()
            .and_then(RequestFingerprint::from_slice),
        response: stored,
    }))
}

/// What [`claim_with_change`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimWithChange {
    /// The key is this call's and the change is made; both committed together.
    Claimed,
    /// The change's rows had changed since they were read: nothing was written.
    Stale,
    /// A concurrent call committed the key first: nothing was written; a lookup now finds it.
    Lost,
}

/// PostgreSQL only, for a key with no row at all: the change and the claim of the key (with
/// the call's response) in ONE statement, one implicit transaction. The claim is inserted only
/// if the change applied; the change is kept only if the claim is (a key committed
/// concurrently makes the INSERT fail on the primary key, which rolls the whole statement
/// back). A key whose expired row is still there is claimed in a transaction instead. During
/// a call, the statement's lock waits end at the call's deadline (`storage::deadline`).
pub async fn claim_with_change<C: ConnectionTrait>(
    db: &C,
    request: &IdempotentRequest,
    response: Vec<u8>,
    change: &Change,
    now: Timestamp,
) -> Result<ClaimWithChange, StorageError> {
    const OPERATION: &str = "claim idempotency key and change";
    let claim = KeyedChange {
        request,
        response,
        change,
        now,
        lock_timeout: deadline::lock_timeout(),
    }
    .statement();
    let run = async {
        let row = db
            .query_one_raw(claim)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("the claim statement returned no row".into()))?;
        row.try_get::<i64>("", "changed")
    };
    match deadline::shielded(statement(db, OPERATION, run)).await {
        Ok(changed) => Ok(
            match u64::try_from(changed).map(|rows| change.outcome(rows)) {
                Ok(Applied::Yes) => ClaimWithChange::Claimed,
                _ => ClaimWithChange::Stale,
            },
        ),
        Err(err)
            if matches!(
                err.source.sql_err(),
                Some(SqlErr::UniqueConstraintViolation(_))
            ) =>
        {
            Ok(ClaimWithChange::Lost)
        }
        Err(err) => Err(err),
    }
}
