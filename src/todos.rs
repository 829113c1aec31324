//! What each TodoService RPC does, over storage and independent of gRPC: the use cases.
//! Every use case acts for one caller and sees only that caller's todos: another caller's todo
//! is NOT_FOUND (never PERMISSION_DENIED, which would reveal that it exists).
//!
//! Reads are plain async functions. Writes all have one shape: a function that returns a
//! [`Write`] (a new row, or a type whose [`Work::run`] does the work in a transaction), which
//! the handler runs through `Idempotency::execute`, with or without a key. A new write RPC
//! copies [`update`]: a struct holding the parsed request and the caller, `impl Work` for it,
//! and a function returning `Write::Transaction(...)`.

use sea_orm::DatabaseTransaction;

use crate::domain::{
    Caller, ListQuery, NewTodo, PageToken, PageTokenKey, Timestamp, Todo, TodoId, TodoPatch,
};
use crate::error::ServiceError;
use crate::idempotency::{InsertOnly, Work, Write};
use crate::storage::{self, Storage};

/// UpdateTodo, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateTodo {
    pub id: TodoId,
    /// Empty: unconditional. Otherwise it must equal the todo's current etag.
    pub etag: String,
    pub patch: TodoPatch,
}

/// DeleteTodo, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteTodo {
    pub id: TodoId,
    /// Empty: unconditional. Otherwise it must equal the etag of the todo, if it exists.
    pub etag: String,
}

/// One ListTodos page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TodoPage {
    pub todos: Vec<Todo>,
    pub next_page_token: Option<String>,
}

/// CreateTodo: one new row, the todo as created.
pub fn create(caller: &Caller, new: NewTodo) -> Write<InsertOnly<Todo>> {
    let todo = Todo::create(new, Timestamp::now());
    Write::insert(storage::todo_row(caller, &todo), todo)
}

/// UpdateTodo: applies the update; one that changes nothing returns the todo as it is,
/// unwritten.
pub fn update(caller: Caller, update: UpdateTodo) -> Write<Update> {
    Write::Transaction(Update { caller, update })
}

/// The work of [`update`].
pub struct Update {
    caller: Caller,
    update: UpdateTodo,
}

impl Work for Update {
    type Output = Todo;

    async fn run(&self, txn: &DatabaseTransaction) -> Result<Todo, ServiceError> {
        let Self { caller, update } = self;
        let current = storage::find_todo_for_update(txn, caller, update.id)
            .await?
            .ok_or(ServiceError::NotFound(update.id))?;
        if !current.etag_matches(&update.etag) {
            return Err(ServiceError::EtagMismatch(update.id));
        }
        match current.apply(update.patch.clone(), Timestamp::now()) {
            None => Ok(current),
            Some(next) => {
                storage::update_todo(txn, caller, &next).await?;
                Ok(next)
            }
        }
    }
}

/// DeleteTodo: deletes the todo if it exists. A missing todo is success (its etag is then
/// ignored); an existing one with another etag is ABORTED.
pub fn delete(caller: Caller, delete: DeleteTodo) -> Write<Delete> {
    Write::Transaction(Delete { caller, delete })
}

/// The work of [`delete`].
pub struct Delete {
    caller: Caller,
    delete: DeleteTodo,
}

impl Work for Delete {
    type Output = ();

    async fn run(&self, txn: &DatabaseTransaction) -> Result<(), ServiceError> {
        let Self { caller, delete } = self;
        if !delete.etag.is_empty() {
            match storage::find_todo_for_update(txn, caller, delete.id).await? {
                None => return Ok(()),
                Some(current) if !current.etag_matches(&delete.etag) => {
                    return Err(ServiceError::EtagMismatch(delete.id));
                }
                Some(_) => {}
            }
        }
        storage::delete_todo(txn, caller, delete.id).await?;
        Ok(())
    }
}

pub async fn get(storage: &Storage, caller: &Caller, id: TodoId) -> Result<Todo, ServiceError> {
    storage
        .retry_transient(|| storage::find_todo(storage.reader(), caller, id))
        .await?
        .ok_or(ServiceError::NotFound(id))
}

pub async fn list(
    storage: &Storage,
    caller: &Caller,
    key: &PageTokenKey,
    query: ListQuery,
) -> Result<TodoPage, ServiceError> {
    let mut todos = storage
        .retry_transient(|| storage::list_todos(storage.reader(), caller, query))
        .await?;
    let page_size = usize::try_from(query.page_size.get()).unwrap_or(usize::MAX);
    let next_page_token = if todos.len() > page_size {
        todos.truncate(page_size);
        todos.last().map(|last| {
            key.encode(
                &PageToken {
                    filter: query.filter,
                    after: last.id,
                },
                caller,
            )
        })
    } else {
        None
    };
    Ok(TodoPage {
        todos,
        next_page_token,
    })
}
