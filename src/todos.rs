//! What each TodoService RPC does, over storage and independent of gRPC: the use cases.
//! Every use case acts for one caller and sees only that caller's todos: another caller's todo
//! is NOT_FOUND (never PERMISSION_DENIED, which would reveal that it exists).
//!
//! Reads are plain async functions. Writes all have one shape: a function that returns a
//! [`Write`] (a new row, or a type whose [`Plan::plan`] reads and decides the change and the
//! answer), which the handler runs through `Idempotency::execute`, with or without a key. A
//! new write RPC copies [`update`]: a struct holding the parsed request and the caller,
//! `impl Plan` for it (read through `storage`, return a `storage::Change` guarded by the
//! revision it read, and the output), and a function returning `Write::Planned(...)`.

use sea_orm::ConnectionTrait;

use crate::domain::{
    Caller, ListQuery, NewTodo, PageToken, PageTokenKey, Timestamp, Todo, TodoId, TodoIds,
    TodoPatch,
};
use crate::error::ServiceError;
use crate::idempotency::{InsertOnly, Plan, Planned, Write};
use crate::storage::{self, Change, RowLock, Storage};

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

/// CompleteTodos, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompleteTodos {
    /// The todos to mark completed, in the order the response lists them.
    pub ids: TodoIds,
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
    Write::Planned(Update { caller, update })
}

/// The plan of [`update`].
pub struct Update {
    caller: Caller,
    update: UpdateTodo,
}

impl Plan for Update {
    type Output = Todo;

    async fn plan<C: ConnectionTrait + Sync>(
        &self,
        db: &C,
        lock: RowLock,
    ) -> Result<Planned<Todo>, ServiceError> {
        let Self { caller, update } = self;
        let current = storage::find_todo_to_write(db, caller, update.id, lock)
            .await?
            .ok_or(ServiceError::NotFound(update.id))?;
        if !current.etag_matches(&update.etag) {
            return Err(ServiceError::EtagMismatch(update.id));
        }
        Ok(
            match current.apply(update.patch.clone(), Timestamp::now()) {
                None => Planned {
                    change: Change::nothing(),
                    output: current,
                },
                Some(next) => Planned {
                    change: storage::update_todo(caller, &next, current.revision),
                    output: next,
                },
            },
        )
    }
}

/// DeleteTodo: deletes the todo if it exists. A missing todo is success (its etag is then
/// ignored); an existing one with another etag is ABORTED.
pub fn delete(caller: Caller, delete: DeleteTodo) -> Write<Delete> {
    Write::Planned(Delete { caller, delete })
}

/// The plan of [`delete`].
pub struct Delete {
    caller: Caller,
    delete: DeleteTodo,
}

impl Plan for Delete {
    type Output = ();

    async fn plan<C: ConnectionTrait + Sync>(
        &self,
        db: &C,
        lock: RowLock,
    ) -> Result<Planned<()>, ServiceError> {
        let Self { caller, delete } = self;
        let change = if delete.etag.is_empty() {
            storage::delete_todo(caller, delete.id, None)
        } else {
            match storage::find_todo_to_write(db, caller, delete.id, lock).await? {
                None => Change::nothing(),
                Some(current) if !current.etag_matches(&delete.etag) => {
                    return Err(ServiceError::EtagMismatch(delete.id));
                }
                Some(current) => storage::delete_todo(caller, delete.id, Some(current.revision)),
            }
        };
        Ok(Planned { change, output: () })
    }
}

/// CompleteTodos: marks the caller's todos with these ids completed, all of them or (an id
/// that is not the caller's todo: NOT_FOUND naming it) none; one already completed stays as it
/// is. Answers the todos after the change, in request order.
pub fn complete(caller: Caller, complete: CompleteTodos) -> Write<Complete> {
    Write::Planned(Complete { caller, complete })
}

/// The plan of [`complete`].
pub struct Complete {
    caller: Caller,
    complete: CompleteTodos,
}

impl Plan for Complete {
    type Output = Vec<Todo>;

    async fn plan<C: ConnectionTrait + Sync>(
        &self,
        db: &C,
        lock: RowLock,
    ) -> Result<Planned<Vec<Todo>>, ServiceError> {
        let Self { caller, complete } = self;
        let ids = complete.ids.as_slice();
        let found = storage::find_todos_to_write(db, caller, ids, lock).await?;
        let now = Timestamp::now();
        let completion = TodoPatch {
            completed: Some(true),
            ..TodoPatch::default()
        };
        let mut output = Vec::with_capacity(ids.len());
        let mut changed = Vec::new();
        for id in ids {
            let current = found
                .iter()
                .find(|todo| todo.id == *id)
                .ok_or(ServiceError::NotFound(*id))?;
            match current.apply(completion.clone(), now) {
                None => output.push(current.clone()),
                Some(next) => {
                    output.push(next.clone());
                    changed.push((next, current.revision));
                }
            }
        }
        Ok(Planned {
            change: storage::complete_todos(caller, &changed),
            output,
        })
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
