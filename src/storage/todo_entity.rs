//! The `todos` table. Times are microseconds since the Unix epoch (exact on both databases);
//! `revision` counts writes and is what the etag is made of; `owner` is the caller it belongs
//! to.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "todos")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub title: String,
    pub description: String,
    pub completed: bool,
    pub create_time_us: i64,
    pub update_time_us: i64,
    pub revision: i64,
    /// The caller the todo belongs to; every query filters on it.
    pub owner: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
