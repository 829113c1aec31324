//! The first schema: todos, idempotency keys, and service settings.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Todos {
    Table,
    Id,
    Title,
    Description,
    Completed,
    CreateTimeUs,
    UpdateTimeUs,
    Revision,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Caller,
    Method,
    Key,
    Fingerprint,
    Response,
    CreatedAtUs,
}

#[derive(DeriveIden)]
enum ServiceSettings {
    Table,
    Name,
    Value,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Todos::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Todos::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Todos::Title).text().not_null())
                    .col(ColumnDef::new(Todos::Description).text().not_null())
                    .col(ColumnDef::new(Todos::Completed).boolean().not_null())
                    .col(ColumnDef::new(Todos::CreateTimeUs).big_integer().not_null())
                    .col(ColumnDef::new(Todos::UpdateTimeUs).big_integer().not_null())
                    .col(ColumnDef::new(Todos::Revision).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        // ListTodos with a `completed` filter walks this index in id order.
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
        // The primary key (caller, method, key) is the unique constraint that lets exactly
        // one call claim a key.
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(IdempotencyKeys::Caller).text().not_null())
                    .col(ColumnDef::new(IdempotencyKeys::Method).text().not_null())
                    .col(ColumnDef::new(IdempotencyKeys::Key).text().not_null())
                    .col(
                        ColumnDef::new(IdempotencyKeys::Fingerprint)
                            .blob()
                            .not_null(),
                    )
                    .col(ColumnDef::new(IdempotencyKeys::Response).blob().null())
                    .col(
                        ColumnDef::new(IdempotencyKeys::CreatedAtUs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::Caller)
                            .col(IdempotencyKeys::Method)
                            .col(IdempotencyKeys::Key),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ServiceSettings::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ServiceSettings::Name)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ServiceSettings::Value).blob().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ServiceSettings::Table.into_iden(),
            IdempotencyKeys::Table.into_iden(),
            Todos::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
