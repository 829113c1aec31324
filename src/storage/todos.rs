//! Queries on the `todos` table, in domain types. Every query is scoped to one owner: a
//! caller never reads, changes or deletes another caller's todo.

use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr,
    EntityName, EntityTrait, IdenStatic, Iterable, QueryFilter, QueryOrder, QueryResult,
    QuerySelect, QueryTrait, Statement,
};

use super::NewRow;
use super::change::{Change, ChangeStatement};
use super::errors::StorageError;
use super::statement::statement;
use super::todo_entity::{ActiveModel, Column, Entity, Model};
use crate::domain::{Caller, ListQuery, Timestamp, Todo, TodoDescription, TodoId, TodoTitle};

/// The todo of a stored row (its `owner` is not read).
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

/// The hot read (GetTodo, and the read before every update), hand-written and bound directly
/// through SeaORM's connection: building it with sea-query and reading its row by column name
/// cost about a fifth of a GetTodo's own CPU (BENCHMARKS.md, issue 21). The columns are those
/// [`todo_at`] reads, in its order; SQLite binds `$N` by number too. One text for both
/// [`FIND_TODO`] and [`FIND_TODO_FOR_UPDATE`].
macro_rules! find_todo_sql {
    () => {
        "SELECT id, title, description, completed, create_time_us, update_time_us, revision \
         FROM todos WHERE id = $1 AND owner = $2"
    };
}
const FIND_TODO: &str = find_todo_sql!();
/// [`FIND_TODO`] locking the row (PostgreSQL; SQLite's write transaction excludes other
/// writers already, and it has no `FOR UPDATE`).
const FIND_TODO_FOR_UPDATE: &str = concat!(find_todo_sql!(), " FOR UPDATE");

/// The todo of a row of [`FIND_TODO`], read by position (`owner` is not selected).
fn todo_at(row: &QueryResult) -> Result<Todo, DbErr> {
    to_domain(Model {
        id: row.try_get_by_index(0)?,
        title: row.try_get_by_index(1)?,
        description: row.try_get_by_index(2)?,
        completed: row.try_get_by_index(3)?,
        create_time_us: row.try_get_by_index(4)?,
        update_time_us: row.try_get_by_index(5)?,
        revision: row.try_get_by_index(6)?,
        owner: String::new(),
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
    let backend = db.get_database_backend();
    let sql = match (backend, lock) {
        (DbBackend::Postgres, RowLock::ForUpdate) => FIND_TODO_FOR_UPDATE,
        _ => FIND_TODO,
    };
    let find =
        Statement::from_sql_and_values(backend, sql, [id.as_uuid().into(), owner.as_str().into()]);
    statement(db, "find todo", async {
        db.query_one_raw(find)
            .await?
            .map(|row| todo_at(&row))
            .transpose()
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
    Change::guarded(ChangeStatement::Update(update), 1, "update todo")
}

/// The change that marks todos completed: each of `completed` (the todo after the change, and
/// the revision it was computed from) only if its stored revision is still the one read; all
/// of them, or none (ONE statement).
pub fn complete_todos(owner: &Caller, completed: &[(Todo, i64)]) -> Change {
    if completed.is_empty() {
        return Change::nothing();
    }
    let mut at_read_revisions = Condition::any();
    let mut update_time = CaseStatement::new();
    for (next, read_revision) in completed {
        let this_row = Column::Id.eq(next.id.as_uuid());
        at_read_revisions = at_read_revisions.add(
            Condition::all()
                .add(this_row.clone())
                .add(Column::Revision.eq(*read_revision)),
        );
        update_time = update_time.case(this_row, Expr::value(next.update_time.unix_micros()));
    }
    let update = Entity::update_many()
        .col_expr(Column::Completed, Expr::value(true))
        .col_expr(Column::UpdateTimeUs, update_time.into())
        .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
        .filter(Column::Owner.eq(owner.as_str()))
        .filter(at_read_revisions)
        .into_query();
    let rows = u64::try_from(completed.len()).unwrap_or(u64::MAX);
    Change::guarded(ChangeStatement::Update(update), rows, "complete todos")
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
            Change::guarded(
                ChangeStatement::Delete(delete.into_query()),
                1,
                "delete todo",
            )
        }
        None => Change::unguarded(ChangeStatement::Delete(delete.into_query()), "delete todo"),
    }
}

/// The caller's todos among `ids`, read for a write with `lock` (those that do not exist, or
/// are another caller's, are not among them), in id order: writers that lock overlapping sets
/// take the row locks in one order, so they queue instead of deadlocking.
pub async fn find_todos_to_write<C: ConnectionTrait>(
    db: &C,
    owner: &Caller,
    ids: &[TodoId],
    lock: RowLock,
) -> Result<Vec<Todo>, StorageError> {
    let mut find = Entity::find()
        .filter(Column::Owner.eq(owner.as_str()))
        .filter(Column::Id.is_in(ids.iter().map(TodoId::as_uuid)))
        .order_by_asc(Column::Id);
    if lock == RowLock::ForUpdate {
        find = find.lock_exclusive();
    }
    let find = find.all(db);
    statement(db, "find todos", async {
        find.await
            .and_then(|models| models.into_iter().map(to_domain).collect())
    })
    .await
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sea_orm::{DbBackend, Statement};

    use super::*;
    use crate::storage::{DatabaseSettings, Isolation, Storage};

    async fn texts(db: &impl ConnectionTrait, sql: &str, column: &str) -> Vec<String> {
        let rows = db
            .query_all_raw(Statement::from_string(DbBackend::Sqlite, sql))
            .await
            .expect("query");
        rows.iter()
            .map(|row| row.try_get::<String>("", column).expect("text"))
            .collect()
    }

    /// The SQLite keyed insert (migration m20261129_000004) lists the todo columns by hand; the
    /// entity is where they are defined: a column added to one must be added to the other.
    #[tokio::test]
    async fn the_sqlite_keyed_insert_trigger_lists_every_todo_column() {
        let storage = Storage::connect(&DatabaseSettings {
            url: "sqlite::memory:".to_owned(),
            pool_size: 1,
            timeout: Duration::from_secs(5),
            isolation: Isolation::default(),
        })
        .await
        .expect("an in-memory database");
        storage.migrate().await.expect("migrations");
        let db = storage.writer();
        let columns = texts(
            db,
            "SELECT name FROM pragma_table_info('keyed_todos_inserts') ORDER BY cid",
            "name",
        )
        .await;
        let key_columns = [
            "caller",
            "method",
            "key",
            "fingerprint",
            "response",
            "created_at_us",
            "cutoff_us",
        ];
        assert_eq!(columns[..key_columns.len()], key_columns);
        let mut staged: Vec<&str> = columns[key_columns.len()..]
            .iter()
            .map(String::as_str)
            .collect();
        let mut entity: Vec<&str> = Column::iter().map(|column| column.as_str()).collect();
        staged.sort_unstable();
        entity.sort_unstable();
        assert_eq!(staged, entity, "the staging table has the todo columns");
        let trigger = texts(
            db,
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'keyed_todos_claim'",
            "sql",
        )
        .await
        .concat();
        for column in entity {
            assert!(
                trigger.contains(&format!("NEW.{column}")),
                "the claim trigger inserts {column}"
            );
        }
    }
}
