use sea_orm::{DbErr, RuntimeErr, sqlx};

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
    // out of memory/disk (53xxx).
    if code.starts_with("08")
        || code.starts_with("57P")
        || code.starts_with("53")
        || code == "57014"
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
            "08006", "57P01", "57P03", "57014", "53300", "5", "517", "6", "262",
        ] {
            assert!(code_is_unavailable(code), "{code}");
        }
        for code in ["23505", "42P01", "19", "2067", "1"] {
            assert!(!code_is_unavailable(code), "{code}");
        }
    }
}
