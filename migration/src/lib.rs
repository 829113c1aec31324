//! Schema migrations of todo-service. The server applies them at start-up (unless told not
//! to); the `migration` binary (feature `cli`) runs them by hand. A migration that has landed
//! is never edited: changes come as new migrations.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_tables;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261128_000001_create_tables::Migration)]
    }
}
