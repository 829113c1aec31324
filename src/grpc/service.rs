//! The TodoService handlers: metadata and proto in, domain calls, proto and status out.
//! Nothing here touches SQL.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{Instrument, field};

use super::{convert, guard, metadata};
use crate::domain::PageTokenKey;
use crate::error::ServiceError;
use crate::idempotency::{Executed, Idempotency, IdempotencyKey, IdempotentRequest, Outcome};
use crate::metrics::{IdempotentOutcome, Metrics, code_name};
use crate::proto::{self, todo_service_server::TodoService};
use crate::storage::Storage;
use crate::todos;

/// One RPC: its short name (for logs and metrics) and its full path (the idempotency scope).
#[derive(Debug, Clone, Copy)]
struct Rpc {
    name: &'static str,
    path: &'static str,
}

/// An [`Rpc`] of TodoService by its method name; the path is derived from it.
macro_rules! rpc {
    ($name:literal) => {
        Rpc {
            name: $name,
            path: concat!("/todo.v1.TodoService/", $name),
        }
    };
}

const CREATE_TODO: Rpc = rpc!("CreateTodo");
const GET_TODO: Rpc = rpc!("GetTodo");
const LIST_TODOS: Rpc = rpc!("ListTodos");
const UPDATE_TODO: Rpc = rpc!("UpdateTodo");
const DELETE_TODO: Rpc = rpc!("DeleteTodo");

/// The gRPC face of the service.
#[derive(Debug, Clone)]
pub struct TodoApi {
    storage: Storage,
    idempotency: Idempotency,
    page_token_key: PageTokenKey,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
}

impl TodoApi {
    pub fn new(
        storage: Storage,
        idempotency: Idempotency,
        page_token_key: PageTokenKey,
        metrics: Arc<Metrics>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            storage,
            idempotency,
            page_token_key,
            metrics,
            request_timeout,
        }
    }

    /// Runs one RPC, for at most `--request-timeout` (then DEADLINE_EXCEEDED; dropping the
    /// call rolls its transaction back), inside a span that records method, request id,
    /// outcome (fresh / replayed / mismatch / error), status code and latency; counts it in the
    /// metrics; and turns its result into a gRPC response.
    async fn observe<R>(
        &self,
        rpc: Rpc,
        request_id: String,
        call: impl Future<Output = Result<Executed<R>, ServiceError>>,
    ) -> Result<Response<R>, Status> {
        let span = tracing::info_span!(
            "rpc",
            method = rpc.name,
            request_id = %request_id,
            key_hash = field::Empty,
            outcome = field::Empty,
            code = field::Empty,
            latency_ms = field::Empty,
        );
        async move {
            let started = Instant::now();
            let result = tokio::time::timeout(self.request_timeout, call)
                .await
                .unwrap_or(Err(ServiceError::DeadlineExceeded));
            let latency = started.elapsed();
            let (outcome, code) = match &result {
                Ok(executed) if executed.outcome == Outcome::Replayed => {
                    ("replayed", tonic::Code::Ok)
                }
                Ok(_) => ("fresh", tonic::Code::Ok),
                Err(err @ ServiceError::IdempotencyKeyReused) => ("mismatch", err.code()),
                Err(err) => ("error", err.code()),
            };
            let span = tracing::Span::current();
            span.record("outcome", outcome);
            span.record("code", code_name(code));
            span.record("latency_ms", latency.as_secs_f64() * 1000.0);
            tracing::info!("rpc finished");
            self.metrics.record_rpc(rpc.name, code, latency);
            if let Some(outcome) = idempotent_outcome(&result) {
                self.metrics.record_idempotent(rpc.name, outcome);
            }

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
}

/// How a call counts in `todo_idempotent_requests_total`, if it does.
fn idempotent_outcome<R>(result: &Result<Executed<R>, ServiceError>) -> Option<IdempotentOutcome> {
    match result {
        Ok(executed) if executed.keyed => Some(match executed.outcome {
            Outcome::Fresh => IdempotentOutcome::Fresh,
            Outcome::Replayed => IdempotentOutcome::Replayed,
        }),
        Ok(_) => None,
        Err(ServiceError::IdempotencyKeyReused) => Some(IdempotentOutcome::Mismatch),
        Err(ServiceError::InvalidArgument(violations))
            if violations
                .iter()
                .any(|v| v.field == metadata::IDEMPOTENCY_KEY) =>
        {
            Some(IdempotentOutcome::InvalidKey)
        }
        Err(_) => None,
    }
}

/// The request's idempotency key, recorded in the span as a short hash.
fn idempotency_key(metadata: &MetadataMap) -> Result<Option<IdempotencyKey>, ServiceError> {
    let key = metadata::idempotency_key(metadata)?;
    if let Some(key) = &key {
        tracing::Span::current().record("key_hash", key.log_hash());
    }
    Ok(key)
}

#[tonic::async_trait]
impl TodoService for TodoApi {
    async fn create_todo(
        &self,
        request: Request<proto::CreateTodoRequest>,
    ) -> Result<Response<proto::Todo>, Status> {
        let request_id = metadata::request_id(request.metadata());
        self.observe(CREATE_TODO, request_id, async {
            let key = idempotency_key(request.metadata())?;
            let caller = guard::caller(&request)?;
            let message = request.into_inner();
            let new_todo = convert::new_todo(&message)?;
            let keyed = key
                .map(|key| IdempotentRequest::new(caller.clone(), CREATE_TODO.path, key, &message));
            todos::create(
                &self.idempotency,
                keyed.as_ref(),
                &caller,
                new_todo,
                convert::todo,
            )
            .await
        })
        .await
    }

    async fn get_todo(
        &self,
        request: Request<proto::GetTodoRequest>,
    ) -> Result<Response<proto::Todo>, Status> {
        self.observe(GET_TODO, metadata::request_id(request.metadata()), async {
            let caller = guard::caller(&request)?;
            let id = convert::todo_id("id", &request.get_ref().id)?;
            let todo = todos::get(&self.storage, &caller, id).await?;
            Ok(Executed::fresh(convert::todo(&todo), false))
        })
        .await
    }

    async fn list_todos(
        &self,
        request: Request<proto::ListTodosRequest>,
    ) -> Result<Response<proto::ListTodosResponse>, Status> {
        self.observe(
            LIST_TODOS,
            metadata::request_id(request.metadata()),
            async {
                let caller = guard::caller(&request)?;
                let query = convert::list_query(request.get_ref(), &self.page_token_key, &caller)?;
                let page = todos::list(&self.storage, &caller, &self.page_token_key, query).await?;
                Ok(Executed::fresh(
                    proto::ListTodosResponse {
                        todos: page.todos.iter().map(convert::todo).collect(),
                        next_page_token: page.next_page_token.unwrap_or_default(),
                    },
                    false,
                ))
            },
        )
        .await
    }

    async fn update_todo(
        &self,
        request: Request<proto::UpdateTodoRequest>,
    ) -> Result<Response<proto::Todo>, Status> {
        let request_id = metadata::request_id(request.metadata());
        self.observe(UPDATE_TODO, request_id, async {
            let key = idempotency_key(request.metadata())?;
            let caller = guard::caller(&request)?;
            let message = request.into_inner();
            let update = convert::update_todo(&message)?;
            let keyed = key
                .map(|key| IdempotentRequest::new(caller.clone(), UPDATE_TODO.path, key, &message));
            self.idempotency
                .execute(keyed.as_ref(), |txn| {
                    Box::pin(async move {
                        let todo = todos::update(txn, &caller, update).await?;
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
        self.observe(
            DELETE_TODO,
            metadata::request_id(request.metadata()),
            async {
                // DeleteTodo is idempotent by nature; a key is checked for form but not stored.
                idempotency_key(request.metadata())?;
                let caller = guard::caller(&request)?;
                let delete = convert::delete_todo(request.get_ref())?;
                todos::delete(&self.storage, &caller, delete).await?;
                Ok(Executed::fresh((), false))
            },
        )
        .await
    }
}
