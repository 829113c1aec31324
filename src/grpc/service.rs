//! The TodoService handlers: metadata and proto in, domain calls, proto and status out.
//! Nothing here touches SQL.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Response, Status};
use tracing::{Instrument, field};

use super::edge::HandlerRan;
use super::guard::{self, Admitted};
use super::keys::{self, RequestIdField};
use super::{convert, metadata};
use crate::domain::{Caller, PageTokenKey};
use crate::error::ServiceError;
use crate::idempotency::{
    Executed, Idempotency, IdempotencyKey, IdempotentRequest, Outcome, Plan, Write,
};
use crate::metrics::{IdempotentOutcome, Metrics, code_name};
use crate::proto::{self, todo_service_server::TodoService};
use crate::storage::{self, Storage};
use crate::telemetry;
use crate::todos;

/// One RPC: its short name (for logs and metrics), its full path (the idempotency scope), and
/// whether it stores idempotency keys.
#[derive(Debug, Clone, Copy)]
struct Rpc {
    name: &'static str,
    path: &'static str,
    /// Whether a call's `idempotency-key` is stored and its response replayed. A write that is
    /// idempotent by nature (DeleteTodo) checks the key's form but stores nothing.
    stores_keys: bool,
}

/// The full name of the service, as in its RPC paths.
const SERVICE_NAME: &str = "todo.v1.TodoService";

/// An [`Rpc`] of TodoService by its method name; the path is derived from it.
macro_rules! rpc {
    ($name:literal, stores_keys: $stores_keys:literal) => {
        Rpc {
            name: $name,
            path: concat!("/todo.v1.TodoService/", $name),
            stores_keys: $stores_keys,
        }
    };
}

const CREATE_TODO: Rpc = rpc!("CreateTodo", stores_keys: true);
const GET_TODO: Rpc = rpc!("GetTodo", stores_keys: false);
const LIST_TODOS: Rpc = rpc!("ListTodos", stores_keys: false);
const UPDATE_TODO: Rpc = rpc!("UpdateTodo", stores_keys: true);
const DELETE_TODO: Rpc = rpc!("DeleteTodo", stores_keys: false);

/// How much earlier than the client's deadline a call is ended (see [`TodoApi::observe`]).
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// The gRPC face of the service.
#[derive(Debug, Clone)]
pub struct TodoApi {
    /// The database, for reads.
    storage: Storage,
    /// Runs every write, with or without an idempotency key.
    idempotency: Idempotency,
    /// Signs and checks ListTodos page tokens (shared by every replica).
    page_token_key: PageTokenKey,
    /// Where calls are counted.
    metrics: Arc<Metrics>,
    /// Longest a call may run (`--request-timeout`).
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

    /// Runs one RPC, for at most `--request-timeout` or the client's deadline (`grpc-timeout`),
    /// whichever is shorter (then DEADLINE_EXCEEDED; dropping the call rolls its transaction
    /// back; a statement that commits on its own ends its lock waits at the deadline, and the
    /// call is answered once it has: `storage::deadline`), inside a span that records method,
    /// request id, outcome (fresh / replayed / mismatch / error), status code and latency;
    /// counts it in the metrics; and turns its result into a gRPC response.
    async fn observe<R>(
        &self,
        rpc: Rpc,
        metadata: &MetadataMap,
        extensions: &Extensions,
        call: impl Future<Output = Result<Executed<R>, ServiceError>>,
    ) -> Result<Response<R>, Status> {
        // Logged and counted here, not again by the edge layer.
        let handler_ran = extensions.get::<HandlerRan>();
        if let Some(handler_ran) = handler_ran {
            handler_ran.mark();
        }
        // Time limits run from the call's arrival, as tonic's own `grpc-timeout` timer does.
        let arrived = handler_ran.map_or_else(Instant::now, |ran| ran.arrived);
        let request_id = metadata::request_id(metadata);
        let time_limit = match metadata::client_deadline(metadata) {
            // tonic's own timer for `grpc-timeout` (started as the call arrived, like this one)
            // would answer CANCELLED: end the call first, by a margin above the timer's
            // resolution.
            Some(deadline) => self
                .request_timeout
                .min(deadline.saturating_sub(DEADLINE_MARGIN)),
            None => self.request_timeout,
        };
        let span = tracing::info_span!(
            "rpc",
            method = rpc.name,
            request_id = %request_id,
            key_hash = field::Empty,
            outcome = field::Empty,
            code = field::Empty,
            latency_ms = field::Empty,
            trace_id = field::Empty,
            otel.name = field::Empty,
            otel.kind = field::Empty,
            otel.status_code = field::Empty,
            rpc.system = field::Empty,
            rpc.service = field::Empty,
            rpc.method = field::Empty,
            rpc.grpc.status_code = field::Empty,
        );
        let exporting = telemetry::exporting_traces();
        if exporting {
            trace_rpc(&span, rpc, metadata);
        }
        async move {
            let started = Instant::now();
            let deadline = tokio::time::Instant::from_std(arrived) + time_limit;
            let result = storage::deadline::run_within(deadline, call)
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
            if exporting {
                span.record("rpc.grpc.status_code", code as i64);
                if is_server_error(code) {
                    span.record("otel.status_code", "ERROR");
                }
            }
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

impl TodoApi {
    /// Every write RPC, the one way: reads the idempotency key (recorded in the span as a
    /// hash) and the caller, parses the message with `parse` (all validation happens here, so
    /// an invalid request consumes no key), turns it into a [`Write`] with `plan`, and runs it
    /// through [`Idempotency::execute`], answering `respond(&output)` or the stored response.
    async fn write<M, P, W, R>(
        &self,
        rpc: Rpc,
        request: Request<M>,
        parse: impl FnOnce(&M) -> Result<P, ServiceError> + Send,
        plan: impl FnOnce(Caller, P) -> Write<W> + Send,
        respond: impl Fn(&W::Output) -> R + Send + Sync,
    ) -> Result<Response<R>, Status>
    where
        M: RequestIdField + Send + Sync,
        P: Send,
        W: Plan,
        R: prost::Message + Default,
    {
        let (metadata, extensions, message) = request.into_parts();
        self.observe(rpc, &metadata, &extensions, async {
            let admitted = guard::admitted(&metadata, &extensions)?;
            let key = idempotency_key(&admitted, &message)?;
            let caller = admitted.caller;
            let parsed = parse(&message)?;
            let keyed = key.filter(|_| rpc.stores_keys).map(|key| {
                let fingerprinted = message.without_request_id();
                IdempotentRequest::new(caller.clone(), rpc.path, key, fingerprinted.as_ref())
            });
            let write = plan(caller, parsed);
            self.idempotency
                .execute(keyed.as_ref(), write, respond)
                .await
        })
        .await
    }
}

/// Makes `span` the OpenTelemetry server span of the call (semantic conventions for RPC),
/// continuing the caller's trace (W3C `traceparent`), and records its trace id, which ties the
/// call's log lines (`request_id`, `trace_id`) to the trace.
fn trace_rpc(span: &tracing::Span, rpc: Rpc, metadata: &MetadataMap) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    span.record("otel.name", rpc.path.trim_start_matches('/'));
    span.record("otel.kind", "server");
    span.record("rpc.system", "grpc");
    span.record("rpc.service", SERVICE_NAME);
    span.record("rpc.method", rpc.name);
    let parent = telemetry::remote_context(metadata.as_ref());
    if parent.span().span_context().is_valid() {
        // Only fails without the OpenTelemetry layer, which `exporting` rules out.
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", trace_id.to_string());
}

/// Whether a status means the server failed (an ERROR span), per the RPC semantic conventions
/// for servers: the client's mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) are not.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
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
            if violations.iter().any(|v| {
                v.field == metadata::IDEMPOTENCY_KEY || v.field == keys::REQUEST_ID_FIELD
            }) =>
        {
            Some(IdempotentOutcome::InvalidKey)
        }
        Err(_) => None,
    }
}

/// The request's idempotency key (from its headers or its `request_id`), recorded in the span
/// as a short hash.
fn idempotency_key(
    admitted: &Admitted,
    message: &impl RequestIdField,
) -> Result<Option<IdempotencyKey>, ServiceError> {
    let key = keys::idempotency_key(&admitted.idempotency_keys, message)?;
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
        self.write(
            CREATE_TODO,
            request,
            convert::new_todo,
            |caller, new| todos::create(&caller, new),
            convert::todo,
        )
        .await
    }

    async fn get_todo(
        &self,
        request: Request<proto::GetTodoRequest>,
    ) -> Result<Response<proto::Todo>, Status> {
        self.observe(GET_TODO, request.metadata(), request.extensions(), async {
            let caller = guard::admitted(request.metadata(), request.extensions())?.caller;
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
            request.metadata(),
            request.extensions(),
            async {
                let caller = guard::admitted(request.metadata(), request.extensions())?.caller;
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
        self.write(
            UPDATE_TODO,
            request,
            convert::update_todo,
            todos::update,
            convert::todo,
        )
        .await
    }

    async fn delete_todo(
        &self,
        request: Request<proto::DeleteTodoRequest>,
    ) -> Result<Response<()>, Status> {
        self.write(
            DELETE_TODO,
            request,
            convert::delete_todo,
            todos::delete,
            |_: &()| (),
        )
        .await
    }
}
