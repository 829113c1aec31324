//! Queries on the `todos` table, in domain types. Every query is scoped to one owner: a
//! caller never reads, changes or deletes another caller's todo.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityName,
    EntityTrait, IdenStatic, Iterable, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};

use super::NewRow;
use super::change::{Change, ChangeStatement};
use super::errors::StorageError;
use super::statement::statement;
use super::todo_entity::{ActiveModel, Column, Entity, Model};
use crate::domain::{Caller, ListQuery, Timestamp, Todo, TodoDescription, TodoId, TodoTitle};

fn to_domain(model: Model) -> Result<Todo, DbErr> {
    let corrupt = |field: &str, why: String| {
        DbErr::Type(format!("todo {} has an invalid {field}: {why}", model.id))
    };
    Ok(Todo {
        id: TodoId::from_uuid(model.id),
        title: TodoTitle::parse(&model.title).map_err(|why| corrupt("title", why))?,
        description: TodoDescription::parse(&model.description)
            .map_err(|why| corrupt("description", why))?,
        completed: model.completed,
        create_time: Timestamp::from_unix_micros(model.create_time_us),
        update_time: Timestamp::from_unix_micros(model.update_time_us),
        revision: model.revision,
    })
}

fn to_active_model(owner: &Caller, todo: &Todo) -> ActiveModel {
    ActiveModel {
        owner: Set(owner.as_str().to_owned()),
        id: Set(todo.id.as_uuid()),
        title: Set(todo.title.as_str().to_owned()),
        description: Set(todo.description.as_str().to_owned()),
        completed: Set(todo.completed),
        create_time_us: Set(todo.create_time.unix_micros()),
        update_time_us: Set(todo.update_time.unix_micros()),
        revision: Set(todo.revision),
    }
}

/// The todo as a new row of `todos` (inserted by the idempotency layer, alone or with the
/// key's claim).
pub fn todo_row(owner: &Caller, todo: &Todo) -> NewRow {
    let model = to_active_model(owner, todo);
    let (columns, values) = Column::iter()
        .filter_map(|column| {
            model
                .get(column)
                .into_value()
                .map(|value| (column.as_str(), value))
        })
        .unzip();
    NewRow::new(Entity.table_name(), columns, values)
}

pub async fn find_todo<C: ConnectionTrait>(
    db: &C,
    owner: &Caller,
    id: TodoId,
) -> Result<Option<Todo>, StorageError> {
    find_todo_to_write(db, owner, id, RowLock::None).await
}

/// Whether a read locks the rows it reads until its transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLock {
    /// A plain read (optimistic: the change that follows is guarded by what was read).
    None,
    /// `SELECT ... FOR UPDATE` on PostgreSQL, inside a write transaction (on SQLite the write
    /// transaction already excludes other writers): no concurrent write can make the change
    /// that follows stale.
    ForUpdate,
}

/// Reads a todo a write is about to change, with `lock`.
pub async fn find_todo_to_write<C: ConnectionTrait>(
    db: &C,
    owner: &Caller,
    id: TodoId,
    lock: RowLock,
) -> Result<Option<Todo>, StorageError> {
    let mut find = Entity::find_by_id(id.as_uuid()).filter(Column::Owner.eq(owner.as_str()));
    if lock == RowLock::ForUpdate {
        find = find.lock_exclusive();
    }
    let find = find.one(db);
    statement(db, "find todo", async {
        find.await
            .and_then(|model| model.map(to_domain).transpose())
    })
    .await
}

/// The change that writes every mutable field of `next` over the stored todo, if the stored
/// revision is still `read_revision` (the one `next` was computed from).
pub fn update_todo(owner: &Caller, next: &Todo, read_revision: i64) -> Change {
    let update = Entity::update_many()
        .col_expr(Column::Title, Expr::value(next.title.as_str()))
        .col_expr(Column::Description, Expr::value(next.description.as_str()))
        .col_expr(Column::Completed, Expr::value(next.completed))
        .col_expr(
            Column::UpdateTimeUs,
            Expr::value(next.update_time.unix_micros()),
        )
        .col_expr(Column::Revision, Expr::value(next.revision))
        .filter(Column::Id.eq(next.id.as_uuid()))
        .filter(Column::Owner.eq(owner.as_str()))
        .filter(Column::Revision.eq(read_revision))
        .into_query();
    Change::guarded(ChangeStatement::Update(update), "update todo")
}

/// The change that deletes the todo: only at `read_revision` when one is given (the delete
/// was decided on that revision), else whether or not it exists.
pub fn delete_todo(owner: &Caller, id: TodoId, read_revision: Option<i64>) -> Change {
    let mut delete = Entity::delete_many()
        .filter(Column::Id.eq(id.as_uuid()))
        .filter(Column::Owner.eq(owner.as_str()));
    match read_revision {
        Some(revision) => {
            delete = delete.filter(Column::Revision.eq(revision));
            Change::guarded(ChangeStatement::Delete(delete.into_query()), "delete todo")
        }
        None => Change::unguarded(ChangeStatement::Delete(delete.into_query()), "delete todo"),
    }
}

/// One page in id order, plus one row more if there is one (so the caller knows whether to
/// issue a next page token).
pub async fn list_todos<C: ConnectionTrait>(
    db: &C,
    owner: &Caller,
    query: ListQuery,
) -> Result<Vec<Todo>, StorageError> {
    let mut select = Entity::find().filter(Column::Owner.eq(owner.as_str()));
    if let Some(completed) = query.filter.completed {
        select = select.filter(Column::Completed.eq(completed));
    }
    if let Some(after) = query.after {
        select = select.filter(Column::Id.gt(after.as_uuid()));
    }
    let page = select
        .order_by_asc(Column::Id)
        .limit(query.page_size.get() + 1)
        .all(db);
    statement(db, "list todos", async {
        page.await
            .and_then(|models| models.into_iter().map(to_domain).collect())
    })
    .await
}
