//! Schema migrations of todo-service. The server applies them at start-up (unless told not
//! to); the `migration` binary (feature `cli`) runs them by hand. A migration that has landed
//! is never edited: changes come as new migrations.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_tables;
mod m20261128_000002_idempotency_keys_created_at_index;
mod m20261128_000003_todos_owner;
mod m20261129_000004_sqlite_keyed_todos_inserts;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_tables::Migration),
            Box::new(m20261128_000002_idempotency_keys_created_at_index::Migration),
            Box::new(m20261128_000003_todos_owner::Migration),
            Box::new(m20261129_000004_sqlite_keyed_todos_inserts::Migration),
        ]
    }
}
pub use sea_orm_migration::MigrationStatus;
