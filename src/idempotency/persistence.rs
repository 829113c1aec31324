//! The `idempotency_keys` table: one row per (caller, method, key), whose primary key is the
//! unique constraint that lets exactly one call claim a key. All writes here run inside the
//! transaction of the work the key guards.

use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{DatabaseTransaction, DbBackend, QuerySelect, SqlErr, Statement, TryInsertResult};

use super::{IdempotentRequest, RequestFingerprint};
use crate::domain::Timestamp;
use crate::storage::{Applied, Change, NewRow, StorageError, deadline, statement};

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
    request: &IdempotentRequest,
    response: Vec<u8>,
    row: NewRow,
    now: Timestamp,
    cutoff: Timestamp,
) -> Result<ClaimWithInsert, StorageError> {
    let sql = claim_with_insert_sql(&row);
    let mut values: Vec<Value> = vec![
        request.caller.as_str().into(),
        request.method.into(),
        request.key.as_str().into(),
        cutoff.unix_micros().into(),
        request.fingerprint.as_bytes().to_vec().into(),
        response.into(),
        now.unix_micros().into(),
    ];
    values.extend(row.into_values());
    let claim = Statement::from_sql_and_values(DbBackend::Postgres, sql, values);
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

/// The statement of [`claim_with_insert`]: $1-$3 the key's scope, $4 the cutoff, $5-$7 the
/// new key row's fingerprint, response and time, $8... the work's row. (`bench/keyed-create.sql`
/// runs this statement in pgbench.)
fn claim_with_insert_sql(row: &NewRow) -> String {
    format!(
        "WITH existing AS (\
            SELECT fingerprint, response FROM idempotency_keys \
            WHERE caller = $1 AND method = $2 AND key = $3 AND created_at_us >= $4\
        ), claim AS (\
            INSERT INTO idempotency_keys (caller, method, key, fingerprint, response, created_at_us) \
            SELECT $1, $2, $3, $5, $6, $7 WHERE NOT EXISTS (SELECT 1 FROM existing) \
            ON CONFLICT (caller, method, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
            response = excluded.response, created_at_us = excluded.created_at_us \
            WHERE idempotency_keys.created_at_us < $4 \
            RETURNING 1\
        ), work AS (\
            INSERT INTO \"{table}\" ({columns}) SELECT {params} WHERE EXISTS (SELECT 1 FROM claim)\
        ) \
        SELECT EXISTS (SELECT 1 FROM claim) AS claimed, existing.fingerprint, existing.response \
        FROM (SELECT 1) AS one LEFT JOIN existing ON true",
        table = row.table(),
        columns = row.column_list(),
        params = row.numbered_placeholders(8),
    )
}

/// SQLite only: the claim (with the response) and the work's one row insert as ONE statement,
/// an insert into the always empty table `keyed_<table>_inserts`, whose triggers claim the key
/// and insert the row only if the claim is this call's (migration `m20261129_000004`). Its
/// `RETURNING` clause reads the key's stored fingerprint and response afterwards: see
/// [`claimed_or_stored`].
pub fn claim_with_insert_sqlite(
    request: &IdempotentRequest,
    response: Vec<u8>,
    row: NewRow,
    now: Timestamp,
    cutoff: Timestamp,
) -> Statement {
    let stored = |column: &str| {
        format!(
            "(SELECT {column} FROM idempotency_keys \
             WHERE caller = $1 AND method = $2 AND key = $3) AS {column}"
        )
    };
    let sql = format!(
        "INSERT INTO \"keyed_{table}_inserts\" \
         (caller, method, key, fingerprint, response, created_at_us, cutoff_us, {columns}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, {params}) RETURNING {fingerprint}, {response}",
        table = row.table(),
        columns = row.column_list(),
        params = row.numbered_placeholders(8),
        fingerprint = stored("fingerprint"),
        response = stored("response"),
    );
    let mut values: Vec<Value> = vec![
        request.caller.as_str().into(),
        request.method.into(),
        request.key.as_str().into(),
        request.fingerprint.as_bytes().to_vec().into(),
        response.into(),
        now.unix_micros().into(),
        cutoff.unix_micros().into(),
    ];
    values.extend(row.into_values());
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

/// What [`claim_with_insert_sqlite`] returned: `None` if the key now holds `response` (this
/// call claimed it and inserted the row), else the live key another call stored.
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
    let lock_timeout = deadline::lock_timeout();
    let first_wait = lock_timeout.as_ref().map(|_| deadline::EVALUATED_FIRST);
    let (work, mut values) = match change.statement_where(DbBackend::Postgres, first_wait) {
        Some(work) => (
            Some(work.sql),
            work.values.map(|values| values.0).unwrap_or_default(),
        ),
        None => (None, Vec::new()),
    };
    let sql = ClaimWithChangeSql {
        work: work.as_deref(),
        guarded: change.is_guarded(),
        key_row: values.len() + 1,
        deadline: lock_timeout.is_some().then_some(values.len() + 7),
    }
    .to_string();
    values.extend([
        Value::from(request.caller.as_str()),
        request.method.into(),
        request.key.as_str().into(),
        request.fingerprint.as_bytes().to_vec().into(),
        response.into(),
        now.unix_micros().into(),
    ]);
    values.extend(lock_timeout.map(Value::from));
    let run = async {
        let row = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
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

/// The statement of [`claim_with_change`]. Answers `changed`, the rows the change changed.
struct ClaimWithChangeSql<'a> {
    /// The change's UPDATE or DELETE (parameters from $1), if the write changes anything.
    work: Option<&'a str>,
    /// Whether the change must change exactly one row, else the key is not claimed.
    guarded: bool,
    /// The first of the key row's six parameters: caller, method, key, fingerprint,
    /// response, time.
    key_row: usize,
    /// The parameter with the call's `lock_timeout`, if the statement runs for a call (then
    /// `work` already waits for the `deadline` CTE).
    deadline: Option<usize>,
}

impl std::fmt::Display for ClaimWithChangeSql<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = |n: usize| format!("${}", self.key_row + n);
        let key_row = format!("{}, {}, {}, {}, {}, {}", p(0), p(1), p(2), p(3), p(4), p(5));
        let mut conditions = Vec::new();
        let mut ctes = Vec::new();
        if let Some(param) = self.deadline {
            ctes.push(deadline::cte(param));
            conditions.push(deadline::EVALUATED_FIRST.to_owned());
        }
        if let Some(work) = self.work {
            ctes.push(format!("work AS ({work} RETURNING 1)"));
            if self.guarded {
                conditions.push("(SELECT count(*) FROM work) = 1".to_owned());
            }
        }
        let condition = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        ctes.push(format!(
            "claim AS (INSERT INTO idempotency_keys \
             (caller, method, key, fingerprint, response, created_at_us) \
             SELECT {key_row}{condition})"
        ));
        let changed = if self.work.is_some() {
            "SELECT count(*) AS changed FROM work"
        } else {
            "SELECT 0::int8 AS changed"
        };
        write!(f, "WITH {} {changed}", ctes.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Caller, NewTodo, Todo, TodoDescription, TodoTitle};

    /// `bench/keyed-create.sql` writes each parameter as `/*$n*/(expression)`; replacing those
    /// with `$n` must give back the service's statement, so pgbench's floor runs the same SQL.
    fn as_service_sql(script_statement: &str) -> String {
        let mut out = String::new();
        let mut rest = script_statement;
        while let Some(start) = rest.find("/*$") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(close) = after.find("*/") else { break };
            out.push_str(&after[..close]);
            let expression = &after[close + 2..];
            assert!(
                expression.starts_with('('),
                "a parameter's expression is parenthesized"
            );
            let mut depth = 0;
            let end = expression
                .char_indices()
                .find_map(|(i, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    (depth == 0).then_some(i)
                })
                .expect("balanced parentheses");
            rest = &expression[end + 1..];
        }
        out.push_str(rest);
        out.trim_end().trim_end_matches(';').to_owned()
    }

    #[test]
    fn the_pgbench_floor_runs_the_services_statement() {
        let todo = Todo::create(
            NewTodo {
                title: TodoTitle::parse("bench").expect("title"),
                description: TodoDescription::parse("").expect("description"),
                completed: false,
            },
            Timestamp::now(),
        );
        let row = crate::storage::todo_row(&Caller::anonymous(), &todo);
        let script = include_str!("../../bench/keyed-create.sql");
        let statement: String = script
            .lines()
            .filter(|line| !line.starts_with("--") && !line.starts_with('\\'))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(as_service_sql(&statement), claim_with_insert_sql(&row));
    }

    #[test]
    fn parameters_are_unmarked_with_nested_parentheses() {
        assert_eq!(
            as_service_sql("SELECT /*$1*/(f(a, (b))) + /*$2*/('x');"),
            "SELECT $1 + $2"
        );
    }

    #[test]
    fn a_guarded_change_claims_the_key_only_if_it_changed_one_row() {
        let sql = ClaimWithChangeSql {
            work: Some("UPDATE t SET a = $1 WHERE id = $2 AND (x)"),
            guarded: true,
            key_row: 3,
            deadline: Some(9),
        }
        .to_string();
        assert_eq!(
            sql,
            "WITH deadline AS (SELECT set_config('lock_timeout', $9, true) AS lock_timeout), \
             work AS (UPDATE t SET a = $1 WHERE id = $2 AND (x) RETURNING 1), \
             claim AS (INSERT INTO idempotency_keys \
             (caller, method, key, fingerprint, response, created_at_us) \
             SELECT $3, $4, $5, $6, $7, $8 WHERE (SELECT lock_timeout FROM deadline) IS NOT NULL \
             AND (SELECT count(*) FROM work) = 1) \
             SELECT count(*) AS changed FROM work"
        );
    }

    #[test]
    fn no_change_is_a_claim_alone() {
        let sql = ClaimWithChangeSql {
            work: None,
            guarded: false,
            key_row: 1,
            deadline: None,
        }
        .to_string();
        assert_eq!(
            sql,
            "WITH claim AS (INSERT INTO idempotency_keys \
             (caller, method, key, fingerprint, response, created_at_us) \
             SELECT $1, $2, $3, $4, $5, $6) SELECT 0::int8 AS changed"
        );
    }
}
