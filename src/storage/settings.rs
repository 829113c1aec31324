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

/// Reads the page token key, storing a new random one first if there is none. Replicas that
/// start together race harmlessly: the first insert wins and all read the same key.
pub async fn page_token_key<C: ConnectionTrait>(db: &C) -> Result<PageTokenKey, DbErr> {
    let candidate = ActiveModel {
        name: Set(PAGE_TOKEN_KEY.to_owned()),
        value: Set(PageTokenKey::generate().as_bytes().to_vec()),
    };
    Entity::insert(candidate)
        .on_conflict(OnConflict::column(Column::Name).do_nothing().to_owned())
        .try_insert()
        .exec_without_returning(db)
        .await?;
    let stored = Entity::find_by_id(PAGE_TOKEN_KEY.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(PAGE_TOKEN_KEY.to_owned()))?;
    let bytes: [u8; 32] = stored
        .value
        .as_slice()
        .try_into()
        .map_err(|_| DbErr::Custom(format!("{PAGE_TOKEN_KEY} is not 32 bytes")))?;
    Ok(PageTokenKey::from_bytes(bytes))
}
