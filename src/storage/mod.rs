//! Storage: database connections, the todo table, and service settings. SeaORM over sqlx, on
//! SQLite (embedded default) or PostgreSQL (production, shared by replicas).

mod change;
pub mod deadline;
mod errors;
mod failover;
mod group_commit;
mod migrations;
mod new_row;
mod session;
mod settings;
mod statement;
mod todo_entity;
mod todos;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, QueryResult, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use tracing::Instrument;

pub use change::{Applied, Change};
pub use errors::{During, StorageError, Transient};
use failover::StaleConnections;
use group_commit::GroupCommit;
pub use group_commit::GroupCommitCounts;
use migrations::MigrationLock;
pub use migrations::MigrationState;
pub use new_row::NewRow;
pub use session::{Pooling, SessionError};
pub use statement::{statement, statement_span};
pub use todos::{
    RowLock, complete_todos, delete_todo, find_todo, find_todo_to_write, find_todos_to_write,
    list_todos, todo_row, update_todo,
};

use crate::domain::PageTokenKey;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `sqlite:<path>` or `postgres://...`.
    pub url: String,
    /// Most connections the pool opens (for SQLite: the readers; there is one writer).
    pub pool_size: u32,
    /// Longest wait to connect, to get a pooled connection, and (PostgreSQL) for a statement;
    /// past it the call fails with UNAVAILABLE.
    pub timeout: Duration,
    /// The isolation level of every PostgreSQL transaction (SQLite is always serializable).
    pub isolation: Isolation,
}

/// Transaction isolation on PostgreSQL (`--db-isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// PostgreSQL's default. Concurrent writers of one row or key wait for each other.
    #[default]
    ReadCommitted,
    /// Every transaction SERIALIZABLE, as distributed SQL engines (CockroachDB, YugabyteDB)
    /// run: conflicts end in SQLSTATE 40001, and the server runs the transaction again.
    Serializable,
}

/// Most times one transaction is run again after a serialization conflict or a deadlock.
const CONFLICT_RETRIES: u32 = 12;

/// Transactions run again, by reason, since start (for metrics).
#[derive(Debug, Default)]
pub struct RetryCounts {
    /// After a serialization conflict or deadlock (40001, 40P01).
    pub serialization_conflicts: AtomicU64,
    /// After the database had ended the pooled connection's session (57P01, 57P02).
    pub sessions_ended: AtomicU64,
    /// After the pooled connection turned out to reach a read-only server (25006: a standby,
    /// or a primary demoted by a failover).
    pub read_only_servers: AtomicU64,
}

/// The database connections. On PostgreSQL readers and writers share one pool. On SQLite all
/// writes go through a pool of ONE connection and start with `BEGIN IMMEDIATE`, so writers
/// queue in the pool instead of racing for SQLite's lock (no SQLITE_BUSY reaches a client),
/// while reads use their own pool and never wait for writers (WAL); single-statement writes
/// share transactions (group commit).
#[derive(Debug, Clone)]
pub struct Storage {
    /// Reads outside transactions (on SQLite its own pool; on PostgreSQL the shared one).
    reader: DatabaseConnection,
    /// Writes (on SQLite one connection; on PostgreSQL the shared pool).
    writer: DatabaseConnection,
    /// Which database this is.
    backend: DbBackend,
    /// Most connections a pool holds: how many dead ones a call can meet in a row.
    pool_size: u32,
    /// Transactions run again so far (shared by clones).
    retries: Arc<RetryCounts>,
    /// When pooled connections were last found to reach a read-only server (PostgreSQL).
    stale: Arc<StaleConnections>,
    /// SQLite: the task that runs single-statement writes in shared transactions.
    group_commit: Option<GroupCommit>,
    /// The URL connected to (where the migration lock lives).
    url: String,
}

impl Storage {
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StorageError> {
        if settings.url.starts_with("sqlite:") {
            Self::connect_sqlite(settings).await.during("connect")
        } else {
            let stale = Arc::new(StaleConnections::default());
            let db = Database::connect(postgres_options(settings, Arc::clone(&stale)))
                .await
                .during("connect")?;
            Ok(Self {
                reader: db.clone(),
                writer: db,
                backend: DbBackend::Postgres,
                pool_size: settings.pool_size.max(1),
                retries: Arc::default(),
                stale,
                group_commit: None,
                url: settings.url.clone(),
            })
        }
    }

    async fn connect_sqlite(settings: &DatabaseSettings) -> Result<Self, DbErr> {
        let in_memory = settings.url.contains(":memory:") || settings.url.contains("mode=memory");
        // The writer connects first: it switches the file to WAL.
        let writer = Database::connect(sqlite_options(settings, 1)).await?;
        let reader = if in_memory {
            // Another pool would open another, empty, in-memory database.
            writer.clone()
        } else {
            Database::connect(sqlite_options(settings, settings.pool_size)).await?
        };
        Ok(Self {
            reader,
            group_commit: Some(GroupCommit::start(writer.clone())),
            writer,
            backend: DbBackend::Sqlite,
            pool_size: settings.pool_size.max(1),
            retries: Arc::default(),
            stale: Arc::default(),
            url: settings.url.clone(),
        })
    }

    pub fn backend(&self) -> DbBackend {
        self.backend
    }

    /// PostgreSQL: checks that sessions keep the settings and prepared statements the server
    /// relies on (a pooler in between may not), before anything else runs on them; see
    /// `session.rs`. SQLite: nothing to check.
    pub async fn verify_sessions(
        &self,
        settings: &DatabaseSettings,
    ) -> Result<Option<Pooling>, SessionError> {
        if self.backend != DbBackend::Postgres {
            return Ok(None);
        }
        let probe = || {
            let mut options = postgres_options(settings, Arc::clone(&self.stale));
            options.max_connections(1);
            options
        };
        session::verify(settings, &self.writer, probe)
            .await
            .map(Some)
    }

    /// Runs `operation` (a whole transaction, or one statement), and again while it fails in
    /// a way that committed nothing (see [`Transient`]):
    /// - the database had ended the session of the pooled connection it got: each failure
    ///   discards one dead connection, so this happens at most pool size times in a row; a
    ///   call never fails merely because its connection died while idle;
    /// - the connection reached a read-only server (25006, after a failover): every connection
    ///   opened so far is marked stale (discarded as it is next taken from the pool) and the
    ///   work runs on another one, at most pool size times in a row; past that UNAVAILABLE
    ///   (the new primary is not reachable yet);
    /// - a serialization conflict or deadlock (40001, 40P01): run again after a pause of 2 ms
    ///   doubling to 128 ms (with jitter), at most [`CONFLICT_RETRIES`] times; past that the
    ///   error is UNAVAILABLE (never INTERNAL).
    pub async fn retry_transient<T, E, Fut>(
        &self,
        mut operation: impl FnMut() -> Fut,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: Transient,
    {
        let mut sessions_left = self.pool_size + 1;
        let mut conflicts = 0;
        loop {
            match operation().await {
                Err(err) if err.session_ended() && sessions_left > 1 => {
                    sessions_left -= 1;
                    self.retries.sessions_ended.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("pooled connection's session had ended; trying another");
                }
                Err(err) if err.read_only_server() => {
                    self.stale.mark_all();
                    self.retries
                        .read_only_servers
                        .fetch_add(1, Ordering::Relaxed);
                    if sessions_left <= 1 {
                        return Err(err);
                    }
                    sessions_left -= 1;
                    tracing::warn!(
                        "the database connection reaches a read-only server (a failover?); \
                         its connections are replaced and the work runs again"
                    );
                }
                Err(err) if err.serialization_conflict() && conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    self.retries
                        .serialization_conflicts
                        .fetch_add(1, Ordering::Relaxed);
                    let ceiling = Duration::from_millis(2u64 << conflicts.min(6));
                    tracing::debug!(conflicts, "serialization conflict; running it again");
                    tokio::time::sleep(ceiling.mul_f64(rand::random_range(0.5..=1.0))).await;
                }
                result => return result,
            }
        }
    }

    /// Transactions run again so far, by reason (shared: the counts keep moving).
    pub fn retry_counts(&self) -> Arc<RetryCounts> {
        Arc::clone(&self.retries)
    }

    /// SQLite: what group commit has committed so far (`None` on PostgreSQL).
    pub fn group_commit_counts(&self) -> Option<Arc<GroupCommitCounts>> {
        self.group_commit.as_ref().map(GroupCommit::counts)
    }

    /// For reads outside a transaction.
    pub fn reader(&self) -> &DatabaseConnection {
        &self.reader
    }

    /// For single writes outside a transaction (on SQLite: the one writer connection).
    pub fn writer(&self) -> &DatabaseConnection {
        &self.writer
    }

    /// Runs one write statement outside any transaction and returns the rows it changed: on
    /// PostgreSQL an autocommit statement (`deadline.rs` bounds its lock waits), on SQLite in
    /// the next group commit (`group_commit.rs`), answered once committed.
    pub async fn write_statement(
        &self,
        operation: &'static str,
        sql: Statement,
    ) -> Result<u64, StorageError> {
        match &self.group_commit {
            Some(group) => {
                let span = statement_span(self.backend, operation);
                group.execute(operation, sql).instrument(span).await
            }
            None => {
                let run = self.writer.execute_raw(sql);
                Ok(statement(&self.writer, operation, run)
                    .await?
                    .rows_affected())
            }
        }
    }

    /// Runs one write statement that returns rows (`RETURNING`) outside any transaction: on
    /// PostgreSQL an autocommit statement, on SQLite in the next group commit, answered once
    /// committed.
    pub async fn write_query(
        &self,
        operation: &'static str,
        sql: Statement,
    ) -> Result<Vec<QueryResult>, StorageError> {
        match &self.group_commit {
            Some(group) => {
                let span = statement_span(self.backend, operation);
                group.query(operation, sql).instrument(span).await
            }
            None => {
                let run = self.writer.query_all_raw(sql);
                statement(&self.writer, operation, run).await
            }
        }
    }

    /// Makes `change` on its own: on PostgreSQL one autocommit statement whose lock waits end
    /// at the call's deadline, on SQLite in the next group commit.
    pub async fn apply(&self, change: &Change) -> Result<Applied, StorageError> {
        match self.backend {
            DbBackend::Sqlite => match change.statement(DbBackend::Sqlite) {
                None => Ok(Applied::Yes),
                Some(sql) => {
                    let rows = self.write_statement(change.operation(), sql).await?;
                    Ok(change.outcome(rows))
                }
            },
            _ => change.apply_alone(&self.writer).await,
        }
    }

    /// Connection pool sizes, for metrics: (pool name, open connections, idle connections).
    pub fn pool_stats(&self) -> Vec<(&'static str, u32, usize)> {
        let stats = |db: &DatabaseConnection| match self.backend {
            DbBackend::Sqlite => {
                let pool = db.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
            _ => {
                let pool = db.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
        };
        if self.backend == DbBackend::Sqlite {
            let (reader_size, reader_idle) = stats(&self.reader);
            let (writer_size, writer_idle) = stats(&self.writer);
            vec![
                ("reader", reader_size, reader_idle),
                ("writer", writer_size, writer_idle),
            ]
        } else {
            let (size, idle) = stats(&self.reader);
            vec![("shared", size, idle)]
        }
    }

    /// Starts a write transaction (on SQLite, `BEGIN IMMEDIATE` on the single writer).
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, StorageError> {
        let begin = self
            .writer
            .begin_with_options(write_transaction(self.backend));
        begin
            .instrument(statement_span(self.backend, "begin"))
            .await
            .during("begin write transaction")
    }

    /// Applies every pending migration, holding the database's migration lock (`migrations.rs`:
    /// concurrent migrations of one database run one after the other).
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let lock = MigrationLock::acquire(&self.writer, &self.url).await?;
        let result = migrations::up(&self.writer).await;
        lock.release().await;
        result
    }

    /// Reverts the last `steps` applied migrations, holding the migration lock.
    pub async fn revert_migrations(&self, steps: u32) -> Result<(), StorageError> {
        let lock = MigrationLock::acquire(&self.writer, &self.url).await?;
        let result = migrations::down(&self.writer, steps).await;
        lock.release().await;
        result
    }

    /// Every migration of this build, in order, and whether it is applied.
    pub async fn migration_status(&self) -> Result<Vec<MigrationState>, StorageError> {
        migrations::status(&self.writer).await
    }

    /// Whether the database answers (on a live connection: dead pooled ones are skipped).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.retry_transient(|| async {
            self.reader
                .execute_unprepared("SELECT 1")
                .await
                .map(|_| ())
                .during("ping")
        })
        .await
    }

    /// The value of service setting `name` (shared by every replica), if stored.
    pub async fn read_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        settings::read(&self.writer, name)
            .await
            .during("read service setting")
    }

    /// Stores service setting `name` unless some replica stored it first.
    pub async fn insert_setting_if_absent(
        &self,
        name: &str,
        value: Vec<u8>,
    ) -> Result<(), StorageError> {
        settings::insert_if_absent(&self.writer, name, value)
            .await
            .during("store service setting")
    }

    /// Replaces service setting `name`.
    pub async fn write_setting(&self, name: &str, value: Vec<u8>) -> Result<(), StorageError> {
        settings::write(&self.writer, name, value)
            .await
            .during("replace service setting")
    }

    /// The key that signs page tokens, created on first use and shared through the database.
    pub async fn page_token_key(&self) -> Result<PageTokenKey, StorageError> {
        settings::page_token_key(&self.writer)
            .await
            .during("read or create the page token key")
    }

    pub async fn close(self) {
        let _ = self.reader.close().await;
        let _ = self.writer.close().await;
    }
}

/// How a write transaction starts: on SQLite `BEGIN IMMEDIATE`, taking the write lock at once
/// (a deferred transaction that later wants it could fail with SQLITE_BUSY).
fn write_transaction(backend: DbBackend) -> TransactionOptions {
    TransactionOptions {
        sqlite_transaction_mode: (backend == DbBackend::Sqlite)
            .then_some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    }
}

fn common_options(settings: &DatabaseSettings, pool_size: u32) -> ConnectOptions {
    let mut options = ConnectOptions::new(settings.url.clone());
    options
        .max_connections(pool_size.max(1))
        .min_connections(0)
        .connect_timeout(settings.timeout)
        .acquire_timeout(settings.timeout)
        // Ping only connections that sat idle (a ping per call would be one more round trip
        // per RPC); a connection broken since fails its next statement with UNAVAILABLE and is
        // replaced.
        .test_before_acquire_if_idle_for(Duration::from_secs(10))
        .sqlx_logging(false);
    options
}

fn sqlite_options(settings: &DatabaseSettings, pool_size: u32) -> ConnectOptions {
    let timeout = settings.timeout;
    let mut options = common_options(settings, pool_size);
    options.map_sqlx_sqlite_opts(move |sqlite| {
        sqlite
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(timeout)
            .foreign_keys(true)
    });
    options
}

fn postgres_options(settings: &DatabaseSettings, stale: Arc<StaleConnections>) -> ConnectOptions {
    let statement_timeout = session::statement_timeout(settings.timeout);
    let isolation = session::isolation_name(settings.isolation);
    let mut options = common_options(settings, settings.pool_size);
    options.map_sqlx_postgres_opts(move |pg| {
        pg.options([
            ("statement_timeout", statement_timeout.as_str()),
            ("default_transaction_isolation", isolation),
        ])
    });
    // A connection opened before a failover was noticed is not handed out again.
    options.map_sqlx_postgres_before_acquire(move |_connection, metadata| {
        let fresh = !stale.is_stale(metadata.age);
        Box::pin(async move { Ok(fresh) })
    });
    options
}
