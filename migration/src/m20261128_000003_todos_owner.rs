//! Todos belong to a caller: an `owner` column (existing rows belong to "anonymous"), and
//! indexes that lead with it, for the per-caller reads and lists.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Todos {
    Table,
    Id,
    Owner,
    Completed,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Todos::Table)
                    .add_column(
                        ColumnDef::new(Todos::Owner)
                            .text()
                            .not_null()
                            .default("anonymous"),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("todos_completed_id")
                    .table(Todos::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("todos_owner_id")
                    .table(Todos::Table)
                    .col(Todos::Owner)
                    .col(Todos::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("todos_owner_completed_id")
                    .table(Todos::Table)
                    .col(Todos::Owner)
                    .col(Todos::Completed)
                    .col(Todos::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for index in ["todos_owner_completed_id", "todos_owner_id"] {
            manager
                .drop_index(
                    Index::drop()
                        .name(index)
                        .table(Todos::Table)
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("todos_completed_id")
                    .table(Todos::Table)
                    .col(Todos::Completed)
                    .col(Todos::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Todos::Table)
                    .drop_column(Todos::Owner)
                    .to_owned(),
            )
            .await
    }
}
