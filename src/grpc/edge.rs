//! The edge of TodoService: a layer around every call, so that calls which end before their
//! handler runs also end with a deliberate status and are logged and counted like any other.
//!
//! tonic answers some requests itself, before the handler: a message that does not decode
//! (invalid UTF-8, wrong wire type, truncated, nested too deep) is INTERNAL with prost's text,
//! and a unary call without a request message is INTERNAL "Missing request message.". Both
//! are the caller's fault: this layer answers them INVALID_ARGUMENT (with a
//! `google.rpc.BadRequest` naming the field when the decoder knows it), never decoder text.
//! Calls the guard refuses (UNAUTHENTICATED, RESOURCE_EXHAUSTED) end here too. Each such call
//! gets the `rpc finished` log line and a `todo_grpc_requests_total` count; calls that reach
//! their handler are logged and counted there (`TodoApi::observe`), never twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderMap;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::grpc::metadata::{REQUEST_ID, request_id_from_headers};
use crate::metrics::{Metrics, code_name};

/// The path prefix of TodoService's methods.
const SERVICE_PREFIX: &str = "/todo.v1.TodoService/";
/// The methods of TodoService, as they are named in logs and metrics.
const METHODS: [&str; 5] = [
    "CreateTodo",
    "GetTodo",
    "ListTodos",
    "UpdateTodo",
    "DeleteTodo",
];
/// What prost's decode errors start with (tonic-prost passes the text on as INTERNAL).
const DECODE_ERROR_PREFIX: &str = "failed to decode Protobuf message: ";
/// tonic's INTERNAL message for a unary request without a message.
const MISSING_MESSAGE: &str = "Missing request message.";

/// What the edge tells the handler of a call (request extension): when the call arrived, and
/// a flag the handler (`TodoApi::observe`) sets when it runs: the call is logged and counted
/// there.
#[derive(Debug, Clone)]
pub struct HandlerRan {
    /// Whether the handler ran.
    ran: Arc<AtomicBool>,
    /// When the call arrived: the moment tonic's own `grpc-timeout` timer starts too.
    pub arrived: Instant,
}

impl HandlerRan {
    fn new() -> Self {
        Self {
            ran: Arc::new(AtomicBool::new(false)),
            arrived: Instant::now(),
        }
    }

    pub fn mark(&self) {
        self.ran.store(true, Ordering::Relaxed);
    }

    fn ran(&self) -> bool {
        self.ran.load(Ordering::Relaxed)
    }
}

/// The layer (see the module docs).
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    /// Where calls that never reached a handler are counted.
    metrics: Arc<Metrics>,
}

impl EdgeLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service of [`EdgeLayer`].
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    /// Where calls that never reached a handler are counted.
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Edge<S>
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
        let Some(rest) = request.uri().path().strip_prefix(SERVICE_PREFIX) else {
            return Box::pin(self.inner.call(request));
        };
        let method = METHODS
            .into_iter()
            .find(|name| *name == rest)
            .unwrap_or("unknown");
        let handler_ran = HandlerRan::new();
        request.extensions_mut().insert(handler_ran.clone());
        // Only a call that never reaches its handler is logged here: keep the caller's
        // `x-request-id` (a reference-counted clone) and make the id only then.
        let caller_request_id = request.headers().get(REQUEST_ID).cloned();
        let metrics = Arc::clone(&self.metrics);
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            if handler_ran.ran() {
                return Ok(response);
            }
            let response = answer_before_handler(response);
            let code = grpc_code(response.headers()).unwrap_or(Code::Ok);
            let latency = started.elapsed();
            let mut headers = HeaderMap::new();
            if let Some(value) = caller_request_id {
                headers.insert(REQUEST_ID, value);
            }
            let request_id = request_id_from_headers(&headers);
            tracing::info_span!(
                "rpc",
                method,
                request_id = %request_id,
                outcome = "error",
                code = code_name(code),
                latency_ms = latency.as_secs_f64() * 1000.0,
            )
            .in_scope(|| tracing::info!("rpc finished"));
            metrics.record_rpc(method, code, latency);
            Ok(response)
        })
    }
}

/// The `grpc-status` of a trailers-only response (one that ended before any message).
fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(value))
}

/// A response tonic made before the handler ran, with the decoding failures re-answered as
/// INVALID_ARGUMENT.
fn answer_before_handler(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    if grpc_code(response.headers()) != Some(Code::Internal) {
        return response;
    }
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return response;
    };
    match invalid_request(status.message()) {
        Some(status) => status.into_http(),
        None => response,
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
    use prost::Message;

    use super::*;
    use crate::proto;

    fn decode_error(bytes: &[u8]) -> String {
        proto::CreateTodoRequest::decode(bytes)
            .expect_err("does not decode")
            .to_string()
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
}
