//! SQLite only: a keyed CreateTodo in ONE statement, as PostgreSQL does with a data-modifying
//! CTE (which SQLite lacks). `INSERT INTO keyed_todos_inserts (...) RETURNING ...` goes through
//! two triggers of that (always empty) table: BEFORE the row is inserted, one claims the key
//! (a new row, or taking over a row created before `cutoff_us`) and inserts the todo only if
//! the key's row now holds this call's response (which contains the new todo's id, so no other
//! call's); AFTER, the other deletes the row again. The statement's RETURNING clause reads the
//! key's stored fingerprint and response: this call's if it claimed the key, else the ones to
//! replay. A statement is atomic, so a todo that fails to insert takes the claim back with it.
//!
//! On PostgreSQL this migration does nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const CREATE_TABLE: &str = "CREATE TABLE keyed_todos_inserts (\
    caller TEXT NOT NULL, method TEXT NOT NULL, key TEXT NOT NULL, fingerprint BLOB NOT NULL, \
    response BLOB NOT NULL, created_at_us INTEGER NOT NULL, cutoff_us INTEGER NOT NULL, \
    id BLOB NOT NULL, title TEXT NOT NULL, description TEXT NOT NULL, \
    completed BOOLEAN NOT NULL, create_time_us INTEGER NOT NULL, \
    update_time_us INTEGER NOT NULL, revision INTEGER NOT NULL, owner TEXT NOT NULL)";

const CREATE_CLAIM_TRIGGER: &str = "CREATE TRIGGER keyed_todos_claim \
    BEFORE INSERT ON keyed_todos_inserts BEGIN \
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

const CREATE_CLEAR_TRIGGER: &str = "CREATE TRIGGER keyed_todos_clear \
    AFTER INSERT ON keyed_todos_inserts BEGIN \
      DELETE FROM keyed_todos_inserts WHERE rowid = NEW.rowid; \
    END";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(CREATE_TABLE).await?;
        db.execute_unprepared(CREATE_CLAIM_TRIGGER).await?;
        db.execute_unprepared(CREATE_CLEAR_TRIGGER).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE IF EXISTS keyed_todos_inserts")
            .await?;
        Ok(())
    }
}
