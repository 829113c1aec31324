//! SQLite only: a keyed CreateTodo in ONE statement, as PostgreSQL does with a data-modifying
//! CTE (which SQLite lacks). `INSERT INTO keyed_todos_inserts (...)` inserts nothing into the
//! view itself: its INSTEAD OF trigger claims the key (a new row, or taking over a row created
//! before `cutoff_us`) and inserts the todo only if the key's row now holds this call's
//! response (which contains the new todo's id, so no other call's). A statement is atomic, so
//! a todo that fails to insert takes the claim back with it; on the single writer connection
//! the statement is one autocommit write instead of BEGIN, INSERT, claim, COMMIT.
//!
//! On PostgreSQL this migration does nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const CREATE_VIEW: &str = "CREATE VIEW keyed_todos_inserts AS \
    SELECT k.caller, k.method, k.key, k.fingerprint, k.response, k.created_at_us, \
           0 AS cutoff_us, \
           t.id, t.title, t.description, t.completed, t.create_time_us, t.update_time_us, \
           t.revision, t.owner \
    FROM idempotency_keys AS k, todos AS t WHERE 0";

const CREATE_TRIGGER: &str = "CREATE TRIGGER keyed_todos_insert \
    INSTEAD OF INSERT ON keyed_todos_inserts BEGIN \
      INSERT INTO idempotency_keys (caller, method, key, fingerprint, response, created_at_us) \
        VALUES (NEW.caller, NEW.method, NEW.key, NEW.fingerprint, NEW.response, NEW.created_at_us) \
        ON CONFLICT (caller, method, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
          response = excluded.response, created_at_us = excluded.created_at_us \
        WHERE idempotency_keys.created_at_us < NEW.cutoff_us; \
      INSERT INTO todos (id, title, description, completed, create_time_us, update_time_us, \
          revision, owner) \
        SELECT NEW.id, NEW.title, NEW.description, NEW.completed, NEW.create_time_us, \
          NEW.update_time_us, NEW.revision, NEW.owner \
        WHERE EXISTS (SELECT 1 FROM idempotency_keys WHERE caller = NEW.caller \
          AND method = NEW.method AND key = NEW.key AND response = NEW.response); \
    END";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(CREATE_VIEW).await?;
        db.execute_unprepared(CREATE_TRIGGER).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared("DROP TRIGGER IF EXISTS keyed_todos_insert")
            .await?;
        db.execute_unprepared("DROP VIEW IF EXISTS keyed_todos_inserts")
            .await?;
        Ok(())
    }
}
