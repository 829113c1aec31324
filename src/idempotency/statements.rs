//! The hand-written SQL of the idempotency layer: each statement whole, in one place, with its
//! parameters beside it. One struct per statement holds what it binds and turns it into values
//! in one function, so the SQL and the values cannot drift apart. (The lookups and the claim
//! inside a transaction are built by SeaORM from the entity, in `persistence.rs`.)
//!
//! A keyed insert binds ONE parameter order on both databases:
//! `$1` caller, `$2` method, `$3` key, `$4` cutoff, `$5` fingerprint, `$6` response, `$7` time,
//! `$8...` the new row's values in its column order. (SQLite binds `$N` by number too.)
//!
//! The rule the SQLite keyed insert relies on: a claimed key holds this call's exact response
//! bytes, and no other call's response is ever equal to them (a create's response holds the
//! new row's freshly generated id), so "the key holds my bytes" means "I claimed it".

use sea_orm::{DbBackend, Statement, Value};

use super::IdempotentRequest;
use crate::domain::Timestamp;
use crate::storage::{Change, NewRow, deadline};

/// A keyed insert of one row: lookup, claim (with the response) and the row's insert in ONE
/// statement, answering whether this call claimed the key and, if not, what the key holds.
pub struct KeyedInsert<'a> {
    /// The key's scope and the request's fingerprint.
    pub request: &'a IdempotentRequest,
    /// The encoded response stored with the claim.
    pub response: Vec<u8>,
    /// The row to insert if the claim is this call's.
    pub row: NewRow,
    /// The claim's time.
    pub now: Timestamp,
    /// Keys created before this count as absent (and are taken over).
    pub cutoff: Timestamp,
}

impl KeyedInsert<'_> {
    /// The first parameter of the row's values.
    const FIRST_ROW_PARAMETER: usize = 8;

    /// The statement for `backend`.
    pub fn statement(self, backend: DbBackend) -> Statement {
        let sql = match backend {
            DbBackend::Postgres => keyed_insert_postgres(&self.row),
            _ => keyed_insert_sqlite(&self.row),
        };
        Statement::from_sql_and_values(backend, sql, self.values())
    }

    /// The values, in the order of the module docs.
    fn values(self) -> Vec<Value> {
        let mut values: Vec<Value> = vec![
            self.request.caller.as_str().into(),
            self.request.method.into(),
            self.request.key.as_str().into(),
            self.cutoff.unix_micros().into(),
            self.request.fingerprint.as_bytes().to_vec().into(),
            self.response.into(),
            self.now.unix_micros().into(),
        ];
        values.extend(self.row.into_values());
        values
    }
}

/// PostgreSQL: data-modifying CTEs. Answers `claimed`, and the live key's `fingerprint` and
/// `response` when one was already committed when the statement began (neither when a
/// concurrent call committed it while the claim waited). `bench/keyed-create.sql` runs this
/// statement in pgbench, and `../shared/perf`'s floor server runs it too.
pub fn keyed_insert_postgres(row: &NewRow) -> String {
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
        params = row.numbered_placeholders(KeyedInsert::FIRST_ROW_PARAMETER),
    )
}

/// SQLite (no data-modifying CTEs): an insert into the always empty table
/// `keyed_<table>_inserts`, whose BEFORE trigger claims the key and inserts the row only if the
/// key then holds this call's response (migration `m20261129_000004`). `RETURNING` reads the
/// key's stored fingerprint and response afterwards.
fn keyed_insert_sqlite(row: &NewRow) -> String {
    let stored = |column: &str| {
        format!(
            "(SELECT {column} FROM idempotency_keys \
             WHERE caller = $1 AND method = $2 AND key = $3) AS {column}"
        )
    };
    format!(
        "INSERT INTO \"keyed_{table}_inserts\" \
         (caller, method, key, cutoff_us, fingerprint, response, created_at_us, {columns}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, {params}) RETURNING {fingerprint}, {response}",
        table = row.table(),
        columns = row.column_list(),
        params = row.numbered_placeholders(KeyedInsert::FIRST_ROW_PARAMETER),
        fingerprint = stored("fingerprint"),
        response = stored("response"),
    )
}

/// PostgreSQL, a key with no row at all: a planned write's change and the claim of the key (with
/// the response) in ONE statement. The claim is inserted only if the change applied (changed
/// exactly its rows, when guarded); the change is kept only if the claim is (a key committed
/// concurrently fails the INSERT on the primary key, rolling the whole statement back). During
/// a call, a `deadline` CTE first sets the statement's `lock_timeout` to the time the call has
/// left (`storage::deadline`). Answers `changed`, the rows the change changed.
pub struct KeyedChange<'a> {
    /// The key's scope and the request's fingerprint.
    pub request: &'a IdempotentRequest,
    /// The encoded response stored with the claim.
    pub response: Vec<u8>,
    /// What the write changes.
    pub change: &'a Change,
    /// The claim's time.
    pub now: Timestamp,
    /// The call's `lock_timeout` (`deadline::lock_timeout`), when it runs for a call.
    pub lock_timeout: Option<String>,
}

impl KeyedChange<'_> {
    /// The statement. Parameters: the change's own (from `$1`), then the key row's six
    /// (caller, method, key, fingerprint, response, time), then the lock timeout.
    pub fn statement(self) -> Statement {
        let first_wait = self
            .lock_timeout
            .as_ref()
            .map(|_| deadline::EVALUATED_FIRST);
        let (work, mut values) = match self.change.statement_where(DbBackend::Postgres, first_wait)
        {
            Some(work) => (
                Some(work.sql),
                work.values.map(|values| values.0).unwrap_or_default(),
            ),
            None => (None, Vec::new()),
        };
        let key_row = values.len() + 1;
        let sql = keyed_change_sql(KeyedChangeShape {
            work: work.as_deref(),
            expected_rows: self.change.expected_rows(),
            key_row,
            deadline: self.lock_timeout.is_some().then_some(key_row + 6),
        });
        values.extend([
            Value::from(self.request.caller.as_str()),
            self.request.method.into(),
            self.request.key.as_str().into(),
            self.request.fingerprint.as_bytes().to_vec().into(),
            self.response.into(),
            self.now.unix_micros().into(),
        ]);
        values.extend(self.lock_timeout.map(Value::from));
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    }
}

/// What the SQL of a [`KeyedChange`] depends on.
struct KeyedChangeShape<'a> {
    /// The change's UPDATE or DELETE (parameters from $1), if the write changes anything.
    work: Option<&'a str>,
    /// How many rows the change must change, if it is guarded; else the key is not claimed.
    expected_rows: Option<u64>,
    /// The first of the key row's six parameters.
    key_row: usize,
    /// The parameter with the call's `lock_timeout`, if the statement runs for a call (then
    /// `work` already waits for the `deadline` CTE).
    deadline: Option<usize>,
}

fn keyed_change_sql(shape: KeyedChangeShape<'_>) -> String {
    let key_row = (shape.key_row..shape.key_row + 6)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut conditions = Vec::new();
    let mut ctes = Vec::new();
    if let Some(param) = shape.deadline {
        ctes.push(deadline::cte(param));
        conditions.push(deadline::EVALUATED_FIRST.to_owned());
    }
    if let Some(work) = shape.work {
        ctes.push(format!("work AS ({work} RETURNING 1)"));
        if let Some(rows) = shape.expected_rows {
            conditions.push(format!("(SELECT count(*) FROM work) = {rows}"));
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
    let changed = if shape.work.is_some() {
        "SELECT count(*) AS changed FROM work"
    } else {
        "SELECT 0::int8 AS changed"
    };
    format!("WITH {} {changed}", ctes.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Caller, NewTodo, Todo, TodoDescription, TodoTitle};
    use crate::idempotency::IdempotencyKey;

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

    fn todo_row() -> NewRow {
        let todo = Todo::create(
            NewTodo {
                title: TodoTitle::parse("bench").expect("title"),
                description: TodoDescription::parse("").expect("description"),
                completed: false,
            },
            Timestamp::now(),
        );
        crate::storage::todo_row(&Caller::anonymous(), &todo)
    }

    #[test]
    fn the_pgbench_floor_runs_the_services_statement() {
        let script = include_str!("../../bench/keyed-create.sql");
        let statement: String = script
            .lines()
            .filter(|line| !line.starts_with("--") && !line.starts_with('\\'))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            as_service_sql(&statement),
            keyed_insert_postgres(&todo_row())
        );
    }

    #[test]
    fn parameters_are_unmarked_with_nested_parentheses() {
        assert_eq!(
            as_service_sql("SELECT /*$1*/(f(a, (b))) + /*$2*/('x');"),
            "SELECT $1 + $2"
        );
    }

    #[test]
    fn both_keyed_inserts_bind_one_parameter_order() {
        let request = IdempotentRequest::new(
            Caller::anonymous(),
            "/todo.v1.TodoService/CreateTodo",
            IdempotencyKey::parse("k").expect("key"),
            &crate::proto::CreateTodoRequest::default(),
        );
        let row = todo_row();
        let insert = |backend| {
            KeyedInsert {
                request: &request,
                response: vec![1, 2],
                row: row.clone(),
                now: Timestamp::from_unix_micros(7),
                cutoff: Timestamp::from_unix_micros(4),
            }
            .statement(backend)
        };
        let postgres = insert(DbBackend::Postgres);
        let sqlite = insert(DbBackend::Sqlite);
        assert_eq!(
            postgres.values, sqlite.values,
            "the same values, in one order"
        );
        let values = postgres.values.expect("values").0;
        assert_eq!(values[3], Value::from(4_i64), "$4 is the cutoff");
        assert_eq!(values[6], Value::from(7_i64), "$7 is the time");
        // Each statement uses $4 as the cutoff and $7 as the claim's time.
        assert!(postgres.sql.contains("created_at_us >= $4"));
        assert!(
            sqlite
                .sql
                .contains("(caller, method, key, cutoff_us, fingerprint, response, created_at_us,")
        );
    }

    #[test]
    fn a_guarded_change_claims_the_key_only_if_it_changed_its_rows() {
        let sql = keyed_change_sql(KeyedChangeShape {
            work: Some("UPDATE t SET a = $1 WHERE id = $2 AND (x)"),
            expected_rows: Some(1),
            key_row: 3,
            deadline: Some(9),
        });
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
        let sql = keyed_change_sql(KeyedChangeShape {
            work: None,
            expected_rows: None,
            key_row: 1,
            deadline: None,
        });
        assert_eq!(
            sql,
            "WITH claim AS (INSERT INTO idempotency_keys \
             (caller, method, key, fingerprint, response, created_at_us) \
             SELECT $1, $2, $3, $4, $5, $6) SELECT 0::int8 AS changed"
        );
    }
}
