#[cfg(feature = "cli")]
pub use crate::cli;

pub use crate::{
    IntoSchemaManagerConnection, MigrationName, MigrationTrait, MigratorTrait, SchemaManager,
    SchemaManagerConnection,
};
pub use async_trait;
pub use sea_orm::{
    self, ConnectionTrait, DbErr, DeriveIden, DeriveMigrationName,
    sea_query::{self, *},
};
