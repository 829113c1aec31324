//! Database errors at the storage boundary: each one names the operation that failed and keeps
//! the database's error as its source, and is classified once (unavailable or not).

use sea_orm::{DbErr, RuntimeErr, sqlx};

/// A database operation that failed: which one, and why (the driver's error, kept as source).
#[derive(Debug, Clone, thiserror::Error)]
#[error("database operation `{operation}` failed")]
pub struct StorageError {
    /// What the service asked of the database, e.g. `find todo`.
    pub operation: &'static str,
    /// The driver's error.
    #[source]
    pub source: DbErr,
}

impl StorageError {
    /// Whether the database was unreachable, overloaded or timed out (safe to retry).
    pub fn is_unavailable(&self) -> bool {
        is_unavailable(&self.source)
    }

    /// Whether a lock wait outlasted the call's deadline (SQLSTATE 55P03, from the
    /// `lock_timeout` a statement sets to the time its call has left: `deadline.rs`); the
    /// statement rolled back.
    pub fn is_past_deadline(&self) -> bool {
        self.sqlstate().is_some_and(|code| code == "55P03")
    }
}

/// Failures after which running the same work again is safe, because the database committed
/// none of it, and may well succeed.
pub trait Transient {
    /// The database had ended the session of the pooled connection before this statement ran
    /// (PostgreSQL restarted, failed over, or an operator ran `pg_terminate_backend`).
    fn session_ended(&self) -> bool;

    /// The database rolled the transaction back to keep transactions serializable (SQLSTATE
    /// 40001, what SERIALIZABLE isolation and distributed SQL engines answer to conflicting
    /// transactions) or to break a deadlock (40P01). The client is expected to run it again.
    fn serialization_conflict(&self) -> bool;

    /// The connection reaches a server that is read only (SQLSTATE 25006): a standby, or a
    /// primary demoted by a failover. Nothing was written; another connection may reach the
    /// new primary.
    fn read_only_server(&self) -> bool;
}

impl StorageError {
    fn sqlstate(&self) -> Option<std::borrow::Cow<'_, str>> {
        sqlx_error(&self.source).and_then(|err| match err {
            sqlx::Error::Database(db) => db.code(),
            _ => None,
        })
    }
}

impl Transient for StorageError {
    fn session_ended(&self) -> bool {
        // admin_shutdown, crash_shutdown: the server sends them as it ends the session,
        // before it reads another statement.
        self.sqlstate()
            .is_some_and(|code| code == "57P01" || code == "57P02")
    }

    fn serialization_conflict(&self) -> bool {
        self.sqlstate()
            .is_some_and(|code| is_serialization_conflict(&code))
    }

    fn read_only_server(&self) -> bool {
        self.sqlstate()
            .is_some_and(|code| code == READ_ONLY_TRANSACTION)
    }
}

/// SQLSTATE read_only_sql_transaction: what a standby (or a demoted primary) answers a write.
const READ_ONLY_TRANSACTION: &str = "25006";

fn is_serialization_conflict(code: &str) -> bool {
    code == "40001" || code == "40P01"
}

fn sqlx_error(err: &DbErr) -> Option<&sqlx::Error> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e))
        | DbErr::Conn(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// Names the operation of a database result: `query.await.during("find todo")?`.
pub trait During<T> {
    fn during(self, operation: &'static str) -> Result<T, StorageError>;
}

impl<T> During<T> for Result<T, DbErr> {
    fn during(self, operation: &'static str) -> Result<T, StorageError> {
        self.map_err(|source| StorageError { operation, source })
    }
}

/// Whether a database error means "the database is unreachable, overloaded or timed out"
/// (UNAVAILABLE, safe to retry) rather than a bug (INTERNAL).
pub fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            sqlx_is_unavailable(e)
        }
        _ => false,
    }
}

fn sqlx_is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code_is_unavailable(&code)),
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs and SQLite result codes that mean "try again later".
fn code_is_unavailable(code: &str) -> bool {
    // PostgreSQL: connection exceptions (class 08), admin/crash shutdown and "cannot connect
    // now" (57P01..57P03), statement timeout (57014), too many connections (53300),
    // out of memory/disk (53xxx), a read-only server (25006: the connection reaches a standby
    // or a primary a failover demoted; the new primary is elsewhere).
    // A serialization failure or deadlock (40001, 40P01) that is still there after the
    // retries (`Storage::retry_transient`): nothing was written; the client may retry.
    if code.starts_with("08")
        || code.starts_with("57P")
        || code.starts_with("53")
        || code == "57014"
        || code == READ_ONLY_TRANSACTION
        || is_serialization_conflict(code)
    {
        return true;
    }
    // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), with any extended code.
    code.parse::<i32>()
        .is_ok_and(|code| matches!(code & 0xff, 5 | 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_error_names_its_operation_and_keeps_its_source() {
        let err: Result<(), _> = Err(DbErr::RecordNotUpdated);
        let err = err.during("update todo").unwrap_err();
        assert_eq!(err.to_string(), "database operation `update todo` failed");
        let source = std::error::Error::source(&err).expect("the driver's error");
        assert_eq!(source.to_string(), DbErr::RecordNotUpdated.to_string());
    }

    #[test]
    fn connection_trouble_is_unavailable() {
        assert!(is_unavailable(&DbErr::ConnectionAcquire(
            sea_orm::error::ConnAcquireErr::Timeout
        )));
        assert!(is_unavailable(&DbErr::Exec(RuntimeErr::SqlxError(
            sqlx::Error::PoolTimedOut.into()
        ))));
        assert!(is_unavailable(&DbErr::Query(RuntimeErr::SqlxError(
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)).into()
        ))));
    }

    #[test]
    fn other_errors_are_not() {
        assert!(!is_unavailable(&DbErr::RecordNotUpdated));
        assert!(!is_unavailable(&DbErr::Query(RuntimeErr::SqlxError(
            sqlx::Error::RowNotFound.into()
        ))));
    }

    #[test]
    fn codes() {
        for code in [
            "08006", "57P01", "57P03", "57014", "53300", "25006", "5", "517", "6", "262",
        ] {
            assert!(code_is_unavailable(code), "{code}");
        }
        for code in ["23505", "42P01", "19", "2067", "1"] {
            assert!(!code_is_unavailable(code), "{code}");
        }
    }
}
