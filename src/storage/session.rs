//! PostgreSQL: the checks at start-up that the database sessions are what the server asked for.
//!
//! - The session settings sent as start-up options (`statement_timeout`,
//!   `default_transaction_isolation`) are read back: a connection pooler between the server
//!   and PostgreSQL (PgBouncer) drops start-up options silently, and without them a statement
//!   is unbounded and SERIALIZABLE is not in force. Set them for the role or the database then.
//! - Whether each client connection keeps one server session (direct, or a pooler in session
//!   mode) or is pooled per transaction (PgBouncer `pool_mode = transaction`): two connections
//!   are made; the first sets a session variable and prepares a statement, the second holds
//!   a transaction open (so that a transaction pooler must give the first another server
//!   session), and the first looks for its variable and runs its statement again. Pooled per
//!   transaction, a prepared statement is found only where the pooler supports them
//!   (PgBouncer 1.21+ with `max_prepared_statements`); without that support the server refuses
//!   to start, rather than fail its calls with "prepared statement does not exist".

use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement};

use super::errors::{During, StorageError};
use super::{DatabaseSettings, Isolation};

/// The database sessions are not what the server needs.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "the database session has {name} = {got:?}, not the {wanted:?} the server asked for at \
         connect: something between the server and PostgreSQL drops start-up options (PgBouncer \
         does); set it for the role or the database instead, e.g. ALTER ROLE <user> SET {name} \
         = '{wanted}' (or ALTER DATABASE <db> SET ...)"
    )]
    SettingNotApplied {
        /// The setting.
        name: &'static str,
        /// The value asked for.
        wanted: String,
        /// The value in force.
        got: String,
    },
    #[error(
        "the database connection is pooled per transaction (PgBouncer pool_mode = transaction) \
         without support for prepared statements (PgBouncer before 1.21, or \
         max_prepared_statements = 0): use pool_mode = session, or PgBouncer 1.21 or later with \
         max_prepared_statements > 0"
    )]
    TransactionPoolingWithoutPreparedStatements,
    #[error("cannot check the database session")]
    Probe(#[from] StorageError),
}

/// How a client connection maps onto PostgreSQL sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// One server session per client connection (direct, or a pooler in session mode).
    Session,
    /// A server session per transaction, with prepared statements carried across.
    TransactionWithPreparedStatements,
}

/// The probe's session variable (a custom setting, visible only to its own session).
const PROBE: &str = "todo_service.session_probe";

/// Checks that the database sessions keep their settings and statements (see the module docs):
/// `pool` is the server's pool, `probe` makes one more connection with the same options.
pub async fn verify(
    settings: &DatabaseSettings,
    pool: &DatabaseConnection,
    probe: impl Fn() -> sea_orm::ConnectOptions,
) -> Result<Pooling, SessionError> {
    let pooling = pooling(probe).await?;
    read_back(settings, pool).await?;
    Ok(pooling)
}

async fn pooling(probe: impl Fn() -> sea_orm::ConnectOptions) -> Result<Pooling, SessionError> {
    let first = Database::connect(probe())
        .await
        .during("connect (session probe)")?;
    let second = Database::connect(probe())
        .await
        .during("connect (session probe)")?;
    let prepared = Statement::from_string(DbBackend::Postgres, "SELECT 1 AS one");
    first
        .execute_unprepared(&format!("SELECT set_config('{PROBE}', 'on', false)"))
        .await
        .during("set the session probe")?;
    first
        .query_one_raw(prepared.clone())
        .await
        .during("prepare the session probe")?;
    second
        .execute_unprepared("BEGIN; SELECT 1")
        .await
        .during("hold a transaction (session probe)")?;
    let same_session = first
        .execute_unprepared(&format!(
            "DO $$ BEGIN IF current_setting('{PROBE}', true) IS DISTINCT FROM 'on' THEN \
             RAISE EXCEPTION 'another session' USING ERRCODE = 'P0001'; END IF; END $$"
        ))
        .await;
    let result = match same_session {
        Ok(_) => Ok(Pooling::Session),
        Err(err) if raised_by_probe(&err) => match first.query_one_raw(prepared).await {
            Ok(_) => Ok(Pooling::TransactionWithPreparedStatements),
            Err(err) => {
                tracing::debug!(error = %err, "a prepared statement was lost between sessions");
                Err(SessionError::TransactionPoolingWithoutPreparedStatements)
            }
        },
        Err(err) => Err(StorageError {
            operation: "read the session probe",
            source: err,
        }
        .into()),
    };
    let _ = second.execute_unprepared("ROLLBACK").await;
    let _ = first.close().await;
    let _ = second.close().await;
    result
}

fn raised_by_probe(err: &DbErr) -> bool {
    err.to_string().contains("another session")
}

/// Reads back the settings sent as start-up options.
async fn read_back(
    settings: &DatabaseSettings,
    pool: &DatabaseConnection,
) -> Result<(), SessionError> {
    let row = pool
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (SELECT setting FROM pg_settings WHERE name = 'statement_timeout') \
             AS statement_timeout, current_setting('default_transaction_isolation') AS isolation",
        ))
        .await
        .during("read the session settings")?
        .ok_or_else(|| StorageError {
            operation: "read the session settings",
            source: DbErr::RecordNotFound("session settings".to_owned()),
        })?;
    let statement_timeout: String = row
        .try_get("", "statement_timeout")
        .during("read the session settings")?;
    let isolation: String = row
        .try_get("", "isolation")
        .during("read the session settings")?;
    let wanted_timeout = settings.timeout.as_millis().to_string();
    if statement_timeout != wanted_timeout {
        return Err(SessionError::SettingNotApplied {
            name: "statement_timeout",
            wanted: format!("{wanted_timeout}ms"),
            got: format!("{statement_timeout}ms"),
        });
    }
    let wanted_isolation = isolation_name(settings.isolation);
    if isolation != wanted_isolation {
        return Err(SessionError::SettingNotApplied {
            name: "default_transaction_isolation",
            wanted: wanted_isolation.to_owned(),
            got: isolation,
        });
    }
    Ok(())
}

/// PostgreSQL's name of an isolation level.
pub fn isolation_name(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::ReadCommitted => "read committed",
        Isolation::Serializable => "serializable",
    }
}

/// The statement timeout as PostgreSQL's start-up option wants it.
pub fn statement_timeout(timeout: Duration) -> String {
    format!("{}ms", timeout.as_millis())
}
