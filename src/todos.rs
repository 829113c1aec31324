//! What each TodoService RPC does, over storage and independent of gRPC: the use cases.
//! Writes that honour idempotency keys take the open transaction the key is claimed in. Every
//! use case acts for one caller and sees only that caller's todos: another caller's todo is
//! NOT_FOUND (never PERMISSION_DENIED, which would reveal that it exists).

use prost::Message;
use sea_orm::DatabaseTransaction;

use crate::domain::{
    Caller, ListQuery, NewTodo, PageToken, PageTokenKey, Timestamp, Todo, TodoId, TodoPatch,
};
use crate::error::ServiceError;
use crate::idempotency::{Executed, Idempotency, IdempotentRequest};
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

/// Creates the todo and answers with `respond(&todo)`; with a key, at most once (a replay
/// answers with the response stored by the call that created it).
pub async fn create<R: Message + Default + 'static>(
    idempotency: &Idempotency,
    request: Option<&IdempotentRequest>,
    caller: &Caller,
    new: NewTodo,
    respond: impl FnOnce(&Todo) -> R,
) -> Result<Executed<R>, ServiceError> {
    let todo = Todo::create(new, Timestamp::now());
    idempotency
        .execute_insert(request, storage::todo_row(caller, &todo), respond(&todo))
        .await
}

pub async fn get(storage: &Storage, caller: &Caller, id: TodoId) -> Result<Todo, ServiceError> {
    storage::find_todo(storage.reader(), caller, id)
        .await?
        .ok_or(ServiceError::NotFound(id))
}

pub async fn list(
    storage: &Storage,
    caller: &Caller,
    key: &PageTokenKey,
    query: ListQuery,
) -> Result<TodoPage, ServiceError> {
    let mut todos = storage::list_todos(storage.reader(), caller, query).await?;
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

/// Applies the update; an update that changes nothing returns the todo as it is, unwritten.
pub async fn update(
    txn: &DatabaseTransaction,
    caller: &Caller,
    update: UpdateTodo,
) -> Result<Todo, ServiceError> {
    let current = storage::find_todo_for_update(txn, caller, update.id)
        .await?
        .ok_or(ServiceError::NotFound(update.id))?;
    if !current.etag_matches(&update.etag) {
        return Err(ServiceError::EtagMismatch(update.id));
    }
    match current.apply(update.patch, Timestamp::now()) {
        None => Ok(current),
        Some(next) => {
            storage::update_todo(txn, caller, &next).await?;
            Ok(next)
        }
    }
}

/// Deletes the todo if it exists. A missing todo is success (its etag is then ignored); an
/// existing one with another etag is ABORTED.
pub async fn delete(
    storage: &Storage,
    caller: &Caller,
    delete: DeleteTodo,
) -> Result<(), ServiceError> {
    let txn = storage.begin_write().await?;
    if !delete.etag.is_empty() {
        match storage::find_todo_for_update(&txn, caller, delete.id).await? {
            None => return Ok(()),
            Some(current) if !current.etag_matches(&delete.etag) => {
                return Err(ServiceError::EtagMismatch(delete.id));
            }
            Some(_) => {}
        }
    }
    storage::delete_todo(&txn, caller, delete.id).await?;
    txn.commit().await?;
    Ok(())
}
