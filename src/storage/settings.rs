//! The `service_settings` table: values every replica must share, such as the page token key.

use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;

use crate::domain::PageTokenKey;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "service_settings")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub value: Vec<u8>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

const PAGE_TOKEN_KEY: &str = "page_token_key";

/// The value of setting `name`, if it is stored.
pub async fn read<C: ConnectionTrait>(db: &C, name: &str) -> Result<Option<Vec<u8>>, DbErr> {
    Ok(Entity::find_by_id(name.to_owned())
        .one(db)
        .await?
        .map(|model| model.value))
}

/// Stores `value` as setting `name` unless it is stored already (the first writer wins;
/// replicas that start together race harmlessly).
pub async fn insert_if_absent<C: ConnectionTrait>(
    db: &C,
    name: &str,
    value: Vec<u8>,
) -> Result<(), DbErr> {
    let candidate = ActiveModel {
        name: Set(name.to_owned()),
        value: Set(value),
    };
    Entity::insert(candidate)
        .on_conflict(OnConflict::column(Column::Name).do_nothing().to_owned())
        .try_insert()
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Stores `value` as setting `name`, replacing what was there.
pub async fn write<C: ConnectionTrait>(db: &C, name: &str, value: Vec<u8>) -> Result<(), DbErr> {
    let row = ActiveModel {
        name: Set(name.to_owned()),
        value: Set(value),
    };
    Entity::insert(row)
        .on_conflict(
            OnConflict::column(Column::Name)
                .update_column(Column::Value)
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Reads the page token key, storing a new random one first if there is none.
pub async fn page_token_key<C: ConnectionTrait>(db: &C) -> Result<PageTokenKey, DbErr> {
    let candidate = PageTokenKey::generate().as_bytes().to_vec();
    insert_if_absent(db, PAGE_TOKEN_KEY, candidate).await?;
    let stored = read(db, PAGE_TOKEN_KEY)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(PAGE_TOKEN_KEY.to_owned()))?;
    let bytes: [u8; 32] = stored
        .as_slice()
        .try_into()
        .map_err(|_| DbErr::Custom(format!("{PAGE_TOKEN_KEY} is not 32 bytes")))?;
    Ok(PageTokenKey::from_bytes(bytes))
}
