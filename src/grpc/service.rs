//! The TodoService handlers: metadata and proto in, domain calls, proto and status out.
//! Nothing here touches SQL.

use std::future::Future;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::{Instrument, field};

use super::{convert, metadata};
use crate::domain::{Caller, PageTokenKey};
use crate::error::ServiceError;
use crate::idempotency::{Executed, Idempotency, IdempotentRequest, Outcome};
use crate::proto::{self, todo_service_server::TodoService};
use crate::storage::Storage;
use crate::todos;

pub const CREATE_TODO: &str = "/todo.v1.TodoService/CreateTodo";
pub const GET_TODO: &str = "/todo.v1.TodoService/GetTodo";
pub const LIST_TODOS: &str = "/todo.v1.TodoService/ListTodos";
pub const UPDATE_TODO: &str = "/todo.v1.TodoService/UpdateTodo";
pub const DELETE_TODO: &str = "/todo.v1.TodoService/DeleteTodo";

/// The gRPC face of the service.
#[derive(Debug, Clone)]
pub struct TodoApi {
    storage: Storage,
    idempotency: Idempotency,
    page_token_key: PageTokenKey,
}

impl TodoApi {
    pub fn new(storage: Storage, idempotency: Idempotency, page_token_key: PageTokenKey) -> Self {
        Self {
            storage,
            idempotency,
            page_token_key,
        }
    }

    /// The caller a request comes from. Callers do not authenticate yet, so all are one.
    fn caller<T>(_request: &Request<T>) -> Caller {
        Caller::anonymous()
    }
}

fn fresh<R>(response: R) -> Executed<R> {
    Executed {
        response,
        outcome: Outcome::Fresh,
    }
}

/// Runs one RPC inside a span that records method, outcome (fresh / replayed / mismatch /
/// error), status code and latency, and turns its result into a gRPC response.
async fn observe<R>(
    method: &'static str,
    call: impl Future<Output = Result<Executed<R>, ServiceError>>,
) -> Result<Response<R>, Status> {
    let span = tracing::info_span!(
        "rpc",
        method,
        outcome = field::Empty,
        code = field::Empty,
        latency_ms = field::Empty
    );
    async move {
        let started = Instant::now();
        let result = call.await;
        let (outcome, code) = match &result {
            Ok(Executed {
                outcome: Outcome::Fresh,
                ..
            }) => ("fresh", tonic::Code::Ok),
            Ok(Executed {
                outcome: Outcome::Replayed,
                ..
            }) => ("replayed", tonic::Code::Ok),
            Err(err @ ServiceError::IdempotencyKeyReused) => ("mismatch", err.code()),
            Err(err) => ("error", err.code()),
        };
        let span = tracing::Span::current();
        span.record("outcome", outcome);
        span.record("code", field::debug(code));
        span.record("latency_ms", started.elapsed().as_secs_f64() * 1000.0);
        tracing::info!("rpc finished");
        let executed = result?;
        let mut response = Response::new(executed.response);
        if executed.outcome == Outcome::Replayed {
            metadata::mark_replayed(response.metadata_mut());
        }
        Ok(response)
    }
    .instrument(span)
    .await
}

#[tonic::async_trait]
impl TodoService for TodoApi {
    async fn create_todo(
        &self,
        request: Request<proto::CreateTodoRequest>,
    ) -> Result<Response<proto::Todo>, Status> {
        observe(CREATE_TODO, async {
            let key = metadata::idempotency_key(request.metadata())?;
            let caller = Self::caller(&request);
            let message = request.into_inner();
            let new_todo = convert::new_todo(&message)?;
            let keyed = key.map(|key| IdempotentRequest::new(caller, CREATE_TODO, key, &message));
            self.idempotency
                .execute(keyed.as_ref(), |txn| {
                    Box::pin(async move {
                        let todo = todos::create(txn, new_todo).await?;
                        Ok(convert::todo(&todo))
                    })
                })
                .await
        })
        .await
    }

    async fn get_todo(
        &self,
        request: Request<proto::GetTodoRequest>,
    ) -> Result<Response<proto::Todo>, Status> {
        observe(GET_TODO, async {
            let id = convert::todo_id("id", &request.get_ref().id)?;
            let todo = todos::get(&self.storage, id).await?;
            Ok(fresh(convert::todo(&todo)))
        })
        .await
    }

    async fn list_todos(
        &self,
        request: Request<proto::ListTodosRequest>,
    ) -> Result<Response<proto::ListTodosResponse>, Status> {
        observe(LIST_TODOS, async {
            let query = convert::list_query(request.get_ref(), &self.page_token_key)?;
            let page = todos::list(&self.storage, &self.page_token_key, query).await?;
            Ok(fresh(proto::ListTodosResponse {
                todos: page.todos.iter().map(convert::todo).collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            }))
        })
        .await
    }

    async fn update_todo(
        &self,
        request: Request<proto::UpdateTodoRequest>,
    ) -> Result<Response<proto::Todo>, Status> {
        observe(UPDATE_TODO, async {
            let key = metadata::idempotency_key(request.metadata())?;
            let caller = Self::caller(&request);
            let message = request.into_inner();
            let update = convert::update_todo(&message)?;
            let keyed = key.map(|key| IdempotentRequest::new(caller, UPDATE_TODO, key, &message));
            self.idempotency
                .execute(keyed.as_ref(), |txn| {
                    Box::pin(async move {
                        let todo = todos::update(txn, update).await?;
                        Ok(convert::todo(&todo))
                    })
                })
                .await
        })
        .await
    }

    async fn delete_todo(
        &self,
        request: Request<proto::DeleteTodoRequest>,
    ) -> Result<Response<()>, Status> {
        observe(DELETE_TODO, async {
            // DeleteTodo is idempotent by nature; a key is checked for form but not stored.
            metadata::idempotency_key(request.metadata())?;
            let delete = convert::delete_todo(request.get_ref())?;
            todos::delete(&self.storage, delete).await?;
            Ok(fresh(()))
        })
        .await
    }
}
