//! Schema migrations, one migrating process at a time per database: `todo-server migrate`
//! (a job or an init container before a rollout) and every replica's start-up migration may run
//! at once. On PostgreSQL a session-level advisory lock, keyed by the schema, is held on a
//! connection of its own while migrations run on the pool; on SQLite an exclusive lock on a
//! file beside the database. The lock is released when migrating ends, or when the process
//! dies (the session or the file descriptor goes with it).

use std::fs::File;
use std::sync::Arc;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::{self, Connection as _, PgConnection};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr};

use super::errors::{During, StorageError};

/// The lock taken around migrations (see the module docs).
pub(super) enum MigrationLock {
    /// A pooled PostgreSQL connection taken out of the pool, holding the advisory lock.
    Postgres(PgConnection),
    /// The locked file beside the SQLite database.
    Sqlite(File),
    /// An in-memory SQLite database: no other process can see it.
    None,
}

/// One migration and whether it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// The migration's name (`m20261128_000001_create_tables`).
    pub name: String,
    /// Whether it has been applied to this database.
    pub applied: bool,
}

impl MigrationLock {
    /// Waits for the lock of the database behind `db` (whose URL is `url`).
    pub(super) async fn acquire(db: &DatabaseConnection, url: &str) -> Result<Self, StorageError> {
        match db.get_database_backend() {
            DbBackend::Postgres => {
                let pooled = db
                    .get_postgres_connection_pool()
                    .acquire()
                    .await
                    .map_err(|err| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err))))
                    .during("get a connection for the migration lock")?;
                let mut connection = pooled.detach();
                // Waiting for another process's migrations is the point: no statement timeout.
                sqlx::query("SET statement_timeout = 0")
                    .execute(&mut connection)
                    .await
                    .map_err(statement_error)
                    .during("take the migration lock")?;
                sqlx::query(
                    "SELECT pg_advisory_lock(hashtext('todo-service migrations:' || current_schema()))",
                )
                .execute(&mut connection)
                .await
                .map_err(statement_error)
                .during("take the migration lock")?;
                Ok(Self::Postgres(connection))
            }
            _ => match sqlite_path(url) {
                None => Ok(Self::None),
                Some(path) => {
                    let lock_path = format!("{path}.migrate-lock");
                    let locked = tokio::task::spawn_blocking(move || {
                        let file = File::options()
                            .create(true)
                            .truncate(false)
                            .write(true)
                            .open(&lock_path)?;
                        file.lock()?;
                        Ok::<_, std::io::Error>(file)
                    })
                    .await
                    .map_err(|err| DbErr::Custom(format!("the lock task failed: {err}")))
                    .during("take the migration lock")?;
                    let file = locked
                        .map_err(|err| DbErr::Custom(format!("cannot lock {path}: {err}")))
                        .during("take the migration lock")?;
                    Ok(Self::Sqlite(file))
                }
            },
        }
    }

    /// Releases the lock (dropping it does too, when the connection or file closes).
    pub(super) async fn release(self) {
        match self {
            Self::Postgres(connection) => {
                // Closing the session releases its advisory locks.
                let _ = connection.close().await;
            }
            Self::Sqlite(file) => drop(file),
            Self::None => {}
        }
    }
}

/// A failed statement of the lock, keeping the driver's error (storage classifies it: a broken
/// connection is UNAVAILABLE).
fn statement_error(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
}

/// The file of a `sqlite:` URL, unless the database lives in memory.
fn sqlite_path(url: &str) -> Option<String> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty()).then(|| path.to_owned())
}

/// Applies every pending migration.
pub(super) async fn up(db: &DatabaseConnection) -> Result<(), StorageError> {
    Migrator::up(db, None).await.during("apply migrations")
}

/// Reverts the last `steps` applied migrations.
pub(super) async fn down(db: &DatabaseConnection, steps: u32) -> Result<(), StorageError> {
    Migrator::down(db, Some(steps))
        .await
        .during("revert migrations")
}

/// Every migration this build knows, in order, and whether it is applied.
pub(super) async fn status(db: &DatabaseConnection) -> Result<Vec<MigrationState>, StorageError> {
    let migrations = Migrator::get_migration_with_status(db)
        .await
        .during("read the applied migrations")?;
    Ok(migrations
        .iter()
        .map(|migration| MigrationState {
            name: migration.name().to_owned(),
            applied: matches!(migration.status(), migration::MigrationStatus::Applied),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_sits_beside_the_database_file() {
        assert_eq!(sqlite_path("sqlite:todo.db").as_deref(), Some("todo.db"));
        assert_eq!(
            sqlite_path("sqlite:///tmp/x/todo.db?mode=rwc").as_deref(),
            Some("/tmp/x/todo.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("sqlite:file:x?mode=memory"), None);
    }
}
