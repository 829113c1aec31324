//! The per-call layer: one tower layer around every TodoService call owns all the work a call
//! costs besides its handler, shaped like tower-http's `TraceLayer` (make the span, run the
//! call, read the response):
//!
//! - when it arrived (time limits run from there, as tonic's own `grpc-timeout` timer does);
//! - its request id (the caller's `x-request-id`, else a new UUIDv7) and its `rpc` span, which
//!   every log line of the call carries (and, when traces are exported, the OpenTelemetry server
//!   span continuing the caller's W3C `traceparent`);
//! - its time limit: `--request-timeout` or the client's `grpc-timeout` less [`DEADLINE_MARGIN`],
//!   whichever is shorter, enforced with `storage::deadline::run_within` (then
//!   DEADLINE_EXCEEDED; dropping the call rolls its transaction back), which answers before
//!   the client's deadline even while it waits for a write statement in flight;
//! - the answer to a request that never reached its handler because it does not decode: tonic
//!   answers those INTERNAL with prost's text; they are the caller's fault, so INVALID_ARGUMENT
//!   (with a `google.rpc.BadRequest` naming the field when the decoder knows it);
//! - the final `rpc finished` log line and the metrics (`todo_grpc_requests_total` and latency,
//!   `todo_idempotent_requests_total`), the status read from the response, whether the handler
//!   answered it or anything before it (the guard, the decoder, the deadline).
//!
//! Handlers only parse, run the use case and respond; a write says how it was answered
//! ([`Answered`]) in the response extensions. The methods are read from the service's own
//! descriptor, so a new RPC is named in logs and metrics without a list kept in step.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderMap;
use prost::Message;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};
use tracing::{Instrument, field};

use super::keys::REQUEST_ID_FIELD;
use super::metadata::{self, IDEMPOTENCY_KEY};
use crate::error::ServiceError;
use crate::idempotency::Answered;
use crate::metrics::{IdempotentOutcome, Metrics, code_name};
use crate::proto;
use crate::storage::deadline;
use crate::telemetry;

/// How much earlier than the client's deadline a call is ended: tonic's own timer for
/// `grpc-timeout` (started as the call arrived, like this one) would answer CANCELLED, so the
/// call ends first, by a margin above the timer's resolution.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// How much earlier than the client's deadline a call is answered at the latest, while it
/// waits for a write statement in flight (`storage::deadline`): tonic's timer polls the call
/// before its own sleep, so the call's answer comes first when both are due.
const ANSWER_MARGIN: Duration = Duration::from_millis(1);

/// What prost's decode errors start with (tonic-prost passes the text on as INTERNAL).
const DECODE_ERROR_PREFIX: &str = "failed to decode Protobuf message: ";
/// tonic's INTERNAL message for a unary request without a message.
const MISSING_MESSAGE: &str = "Missing request message.";

/// One TodoService method, as the service's descriptor names it.
#[derive(Debug, PartialEq, Eq)]
pub struct Method {
    /// The method's name (`CreateTodo`): its label in logs and metrics.
    pub name: String,
    /// Its full path (`/todo.v1.TodoService/CreateTodo`): the scope of its idempotency keys.
    pub path: String,
}

/// The methods of TodoService, read once from the compiled-in descriptor set.
pub fn todo_methods() -> &'static [Method] {
    static METHODS: OnceLock<Vec<Method>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let service = proto::todo_service_server::SERVICE_NAME;
        service_methods(proto::FILE_DESCRIPTOR_SET, service).unwrap_or_else(|err| {
            // The descriptor is this binary's own, checked by a unit test: a build defect.
            tracing::error!(error = %err, "cannot read the methods of {service}");
            Vec::new()
        })
    })
}

/// The methods of `service` (full name) in an encoded `FileDescriptorSet`.
fn service_methods(descriptor_set: &[u8], service: &str) -> Result<Vec<Method>, String> {
    let set = prost_types::FileDescriptorSet::decode(descriptor_set).map_err(|e| e.to_string())?;
    let (package, name) = service.rsplit_once('.').unwrap_or(("", service));
    set.file
        .iter()
        .filter(|file| file.package() == package)
        .flat_map(|file| &file.service)
        .find(|candidate| candidate.name() == name)
        .map(|found| {
            found
                .method
                .iter()
                .map(|method| Method {
                    name: method.name().to_owned(),
                    path: format!("/{service}/{}", method.name()),
                })
                .collect()
        })
        .ok_or_else(|| format!("{service} is not in the descriptor set"))
}

/// The method of the call a handler is running (the layer puts it in the request extensions).
pub fn method_of(extensions: &tonic::Extensions) -> Result<&'static Method, ServiceError> {
    extensions
        .get::<&'static Method>()
        .copied()
        .ok_or_else(|| ServiceError::internal("the call did not pass the per-call layer"))
}

/// The layer (see the module docs).
#[derive(Debug, Clone)]
pub struct CallLayer {
    /// Where every call is counted.
    metrics: Arc<Metrics>,
    /// Longest a call may run (`--request-timeout`).
    request_timeout: Duration,
}

impl CallLayer {
    pub fn new(metrics: Arc<Metrics>, request_timeout: Duration) -> Self {
        Self {
            metrics,
            request_timeout,
        }
    }
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = PerCall<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PerCall {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`CallLayer`].
#[derive(Debug, Clone)]
pub struct PerCall<S> {
    /// The routes (TodoService behind its guard, health, reflection).
    inner: S,
    /// The layer's settings.
    layer: CallLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for PerCall<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let Some(method) = todo_methods().iter().find(|method| method.path == path) else {
            // Health, reflection, and paths no service has (tonic answers UNIMPLEMENTED).
            return Box::pin(self.inner.call(request));
        };
        let arrived = Instant::now();
        let client_deadline = metadata::client_deadline(request.headers());
        let time_limit = match client_deadline {
            Some(deadline) => self
                .layer
                .request_timeout
                .min(deadline.saturating_sub(DEADLINE_MARGIN)),
            None => self.layer.request_timeout,
        };
        let span = rpc_span(method, request.headers());
        request.extensions_mut().insert(method);
        // The guard (an interceptor) runs here, inside the span: its refusals carry `reason`.
        let call = span.in_scope(|| self.inner.call(request));
        let metrics = Arc::clone(&self.layer.metrics);
        let started = tokio::time::Instant::from_std(arrived);
        let deadline = started + time_limit;
        // Never past the client's deadline: tonic's timer would answer CANCELLED there.
        let answer_by =
            client_deadline.map(|client| started + client.saturating_sub(ANSWER_MARGIN));
        Box::pin(
            async move {
                let response = match deadline::run_within(deadline, answer_by, call).await {
                    Ok(response) => response?,
                    Err(deadline::Elapsed) => {
                        tonic::Status::from(ServiceError::DeadlineExceeded).into_http()
                    }
                };
                let (response, decoded) = answer_undecodable(response);
                let latency = arrived.elapsed();
                let code = grpc_code(response.headers()).unwrap_or(Code::Ok);
                let answered = response.extensions().get::<Answered>().copied();
                let idempotent = match decoded {
                    Decoded::Yes => idempotent_outcome(code, answered, &response),
                    Decoded::No => None,
                };
                finish(&tracing::Span::current(), code, answered, latency);
                metrics.record_rpc(&method.name, code, latency);
                if let Some(outcome) = idempotent {
                    metrics.record_idempotent(&method.name, outcome);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The `rpc` span of a call to `method`: every log line of the call carries its fields.
fn rpc_span(method: &'static Method, headers: &HeaderMap) -> tracing::Span {
    let request_id = metadata::request_id(headers);
    let span = tracing::info_span!(
        "rpc",
        method = method.name.as_str(),
        request_id = %request_id,
        key_hash = field::Empty,
        reason = field::Empty,
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
    if telemetry::exporting_traces() {
        trace_rpc(&span, method, headers);
    }
    span
}

/// Records how the call ended in `span` and writes the call's `rpc finished` line.
fn finish(span: &tracing::Span, code: Code, answered: Option<Answered>, latency: Duration) {
    let outcome = match (code, answered) {
        (Code::Ok, Some(Answered::Replayed)) => "replayed",
        (Code::Ok, _) => "fresh",
        // Only a key reused with another request is FAILED_PRECONDITION (`error.rs`).
        (Code::FailedPrecondition, _) => "mismatch",
        _ => "error",
    };
    span.record("outcome", outcome);
    span.record("code", code_name(code));
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    if telemetry::exporting_traces() {
        span.record("rpc.grpc.status_code", code as i64);
        if is_server_error(code) {
            span.record("otel.status_code", "ERROR");
        }
    }
    tracing::info!("rpc finished");
}

/// Makes `span` the OpenTelemetry server span of the call (semantic conventions for RPC),
/// continuing the caller's trace (W3C `traceparent`), and records its trace id, which ties the
/// call's log lines (`request_id`, `trace_id`) to the trace.
fn trace_rpc(span: &tracing::Span, method: &Method, headers: &HeaderMap) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    span.record("otel.name", method.path.trim_start_matches('/'));
    span.record("otel.kind", "server");
    span.record("rpc.system", "grpc");
    span.record("rpc.service", proto::todo_service_server::SERVICE_NAME);
    span.record("rpc.method", method.name.as_str());
    let parent = telemetry::remote_context(headers);
    if parent.span().span_context().is_valid() {
        // Only fails without the OpenTelemetry layer, which `exporting_traces` rules out.
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", trace_id.to_string());
}

/// Whether a status means the server failed (an ERROR span), per the RPC semantic conventions
/// for servers: the client's mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) are not.
fn is_server_error(code: Code) -> bool {
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

/// How a call counts in `todo_idempotent_requests_total`, if it does: a keyed write answered
/// fresh or replayed (as its handler said), a key reused with another request, or a key (in
/// metadata or `request_id`) refused for its form.
fn idempotent_outcome(
    code: Code,
    answered: Option<Answered>,
    response: &http::Response<tonic::body::Body>,
) -> Option<IdempotentOutcome> {
    match (code, answered) {
        (Code::Ok, Some(Answered::Claimed)) => Some(IdempotentOutcome::Fresh),
        (Code::Ok, Some(Answered::Replayed)) => Some(IdempotentOutcome::Replayed),
        (Code::FailedPrecondition, _) => Some(IdempotentOutcome::Mismatch),
        (Code::InvalidArgument, _) => {
            let status = response.extensions().get::<tonic::Status>()?;
            let bad_request = status.get_details_bad_request()?;
            bad_request
                .field_violations
                .iter()
                .any(|v| v.field == IDEMPOTENCY_KEY || v.field == REQUEST_ID_FIELD)
                .then_some(IdempotentOutcome::InvalidKey)
        }
        _ => None,
    }
}

/// Whether the request message decoded (so that a handler saw it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoded {
    Yes,
    No,
}

/// The `grpc-status` of a trailers-only response (one that ended before any message).
fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(value))
}

/// The response, with tonic's answers to a request that does not decode re-answered as
/// INVALID_ARGUMENT.
fn answer_undecodable(
    response: http::Response<tonic::body::Body>,
) -> (http::Response<tonic::body::Body>, Decoded) {
    if grpc_code(response.headers()) != Some(Code::Internal) {
        return (response, Decoded::Yes);
    }
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return (response, Decoded::Yes);
    };
    match invalid_request(status.message()) {
        Some(status) => (status.into_http(), Decoded::No),
        None => (response, Decoded::Yes),
    }
}

/// INVALID_ARGUMENT for tonic's INTERNAL `message` when it is about the request not decoding
/// (public for the fuzz targets, which check that every decode error is recognised).
pub fn invalid_request(message: &str) -> Option<tonic::Status> {
    if message == MISSING_MESSAGE {
        return Some(tonic::Status::invalid_argument(
            "the request has no message: a unary call sends exactly one",
        ));
    }
    let detail = message.strip_prefix(DECODE_ERROR_PREFIX)?;
    let description = "is not a valid protobuf encoding of its type";
    Some(match field_path(detail) {
        Some(field) => tonic::Status::with_error_details(
            Code::InvalidArgument,
            format!("the request does not decode: {field} {description}"),
            ErrorDetails::with_bad_request_violation(field, description),
        ),
        None => tonic::Status::invalid_argument(
            "the request does not decode: it is not a valid protobuf encoding of its type",
        ),
    })
}

/// The request path of the field a decode error names: prost writes its stack innermost
/// first, one `Message.field: ` per level (`Todo.title: CreateTodoRequest.todo: invalid
/// string ...`), so `todo.title`.
fn field_path(detail: &str) -> Option<String> {
    let mut fields: Vec<&str> = Vec::new();
    for segment in detail.split(": ") {
        let Some((message, field)) = segment.split_once('.') else {
            break;
        };
        let is_name = |name: &str| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !is_name(message) || !is_name(field) {
            break;
        }
        fields.push(field);
    }
    if fields.is_empty() {
        return None;
    }
    fields.reverse();
    Some(fields.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_error(bytes: &[u8]) -> String {
        proto::CreateTodoRequest::decode(bytes)
            .expect_err("does not decode")
            .to_string()
    }

    #[test]
    fn the_methods_come_from_the_services_descriptor() {
        let names: Vec<&str> = todo_methods().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "CreateTodo",
                "GetTodo",
                "ListTodos",
                "UpdateTodo",
                "DeleteTodo",
                "CompleteTodos"
            ]
        );
        assert_eq!(todo_methods()[0].path, "/todo.v1.TodoService/CreateTodo");
        assert!(service_methods(proto::FILE_DESCRIPTOR_SET, "todo.v1.Nope").is_err());
    }

    #[test]
    fn invalid_utf8_in_a_nested_string_names_the_field() {
        // CreateTodoRequest { todo (1): Todo { title (2): 0xFF } }
        let message = decode_error(&[0x0a, 0x03, 0x12, 0x01, 0xff]);
        let status = invalid_request(&message).expect("a decode error");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(!status.message().contains("UTF-8"), "{status:?}");
        let bad_request = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad_request.field_violations[0].field, "todo.title");
    }

    #[test]
    fn a_truncated_message_is_invalid_without_a_field_if_none_is_known() {
        let message = decode_error(&[0x0a, 0x05]);
        let status = invalid_request(&message).expect("a decode error");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(!status.message().contains("buffer"), "{status:?}");
    }

    #[test]
    fn a_missing_message_is_invalid_and_other_internal_errors_stay() {
        let status = invalid_request(MISSING_MESSAGE).expect("missing message");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(invalid_request("internal error").is_none());
    }

    #[test]
    fn field_paths_are_read_innermost_first() {
        assert_eq!(
            field_path("Todo.title: CreateTodoRequest.todo: invalid string value").as_deref(),
            Some("todo.title")
        );
        assert_eq!(field_path("buffer underflow"), None);
        assert_eq!(field_path("a.b c: x"), None);
    }

    #[test]
    fn a_key_refused_for_its_form_counts_as_an_invalid_key_and_other_fields_do_not() {
        let response = |field: &str| {
            tonic::Status::from(ServiceError::invalid(field, "bad"))
                .into_http::<tonic::body::Body>()
        };
        for field in [IDEMPOTENCY_KEY, REQUEST_ID_FIELD] {
            assert_eq!(
                idempotent_outcome(Code::InvalidArgument, None, &response(field)),
                Some(IdempotentOutcome::InvalidKey)
            );
        }
        assert_eq!(
            idempotent_outcome(Code::InvalidArgument, None, &response("todo.title")),
            None
        );
        assert_eq!(
            idempotent_outcome(Code::Ok, Some(Answered::WithoutKey), &response("x")),
            None
        );
    }
}
