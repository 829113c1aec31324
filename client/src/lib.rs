//! A client for TodoService whose calls are safe to retry, for Rust services: only what a
//! caller needs (tonic's generated client, prost messages, this retrying wrapper), none of the
//! server. [`TodoClient`] works over any transport tonic's generated client accepts: a
//! [`Channel`], or a channel wrapped in the caller's own tower layers (auth, tracing, load
//! balancing).
//!
//! - Each logical CreateTodo / UpdateTodo gets a fresh UUIDv7 `idempotency-key` that every
//!   attempt of it carries, so the service performs it once and replays the stored answer to
//!   the other attempts ([`Written::replayed`] says which one you got).
//! - A failure whose outcome is unknown is retried with exponential backoff and jitter, inside
//!   the call's budget ([`RetryPolicy::budget`]) and the caller's deadline
//!   ([`CallOptions::deadline`]): UNAVAILABLE, DEADLINE_EXCEEDED of one attempt
//!   ([`RetryPolicy::attempt_timeout`]), CANCELLED (the caller cancels by dropping the future,
//!   so a CANCELLED seen here came from the connection), and any failure of the connection
//!   itself (tonic keeps the transport error as the status's source: a reset, a GOAWAY that
//!   refused the stream, which tonic reports as INTERNAL "h2 protocol error").
//! - An answer a retry cannot change is returned at once, typed: [`CallError::KeyReused`]
//!   (FAILED_PRECONDITION, `IDEMPOTENCY_KEY_REUSED`), [`CallError::InvalidArgument`] with the
//!   fields named, and [`CallError::Rejected`] for the rest (NOT_FOUND, ABORTED,
//!   UNAUTHENTICATED, ...).
//! - Reads and DeleteTodo (idempotent by nature) are retried the same way.
//! - A bearer token is fixed ([`TodoClient::with_token`]) or read before every attempt from a
//!   provider ([`TodoClient::with_token_provider`]), so a rotating credential (a projected
//!   service-account token re-read from disk) works without rebuilding the client.
//!
//! ```no_run
//! use todo_client::{CallOptions, TodoClient, proto};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051")
//!     .connect()
//!     .await?;
//! let client = TodoClient::new(channel).with_token_provider(|| {
//!     std::fs::read_to_string("/var/run/secrets/tokens/todo").unwrap_or_default()
//! });
//! let todo = proto::Todo { title: "write the report".into(), ..Default::default() };
//! let created = client.create_todo(todo).await?;
//! println!("{} (replayed: {})", created.value.id, created.replayed);
//! let again = client.get_todo(&created.value.id, CallOptions::default()).await?;
//! assert_eq!(again, created.value);
//! # Ok(())
//! # }
//! ```

/// The generated `todo.v1` messages and client.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("todo.v1");
}

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

pub use proto::todo_service_client::TodoServiceClient;
pub use tonic::transport::Channel;

/// The response header that marks a replayed answer.
const REPLAYED_HEADER: &str = "idempotent-replayed";
/// `google.rpc.ErrorInfo.reason` when an idempotency key comes back with a different request.
pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

/// Any error, as tonic's transports report them.
type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How long and how often one logical call is tried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The time one logical call may take, every attempt and pause included (unless the
    /// caller's own deadline comes first).
    pub budget: Duration,
    /// The deadline of one attempt, sent to the server as `grpc-timeout`. An attempt that
    /// runs out of it is retried (with the same key) while the budget lasts.
    pub attempt_timeout: Duration,
    /// The pause before the first retry; each later pause is `backoff_multiplier` times the
    /// one before, up to `max_backoff`. Each pause is drawn uniformly from [half, all] of
    /// that value (jitter), so clients that failed together do not retry together.
    pub initial_backoff: Duration,
    /// The longest pause between two attempts.
    pub max_backoff: Duration,
    /// The growth of the pause from one retry to the next.
    pub backoff_multiplier: u32,
    /// At most this many attempts per logical call (1: no retries at all).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 30 s per logical call, 10 s per attempt, pauses from 50 ms doubling to 2 s.
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            backoff_multiplier: 2,
            max_attempts: u32::MAX,
        }
    }
}

impl RetryPolicy {
    /// One attempt per call: what a client without retries sees (for comparisons).
    pub fn no_retries() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The pause before retry number `retry` (1-based), with jitter.
    fn backoff(&self, retry: u32) -> Duration {
        let growth = self
            .backoff_multiplier
            .max(1)
            .saturating_pow(retry.saturating_sub(1));
        let ceiling = self
            .initial_backoff
            .saturating_mul(growth)
            .min(self.max_backoff);
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// Per-call choices.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// The key of the logical write. Leave it `None` for a new logical write (a fresh UUIDv7
    /// is made); pass an earlier key back to retry a write whose outcome was unknown
    /// ([`CallError::OutcomeUnknown::idempotency_key`]). Ignored by reads and DeleteTodo.
    pub idempotency_key: Option<String>,
    /// The caller's deadline for the whole logical call; the earlier of it and the policy's
    /// budget wins.
    pub deadline: Option<Instant>,
}

/// The answer to a write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written<T> {
    /// The todo the service stored (or had stored for this key).
    pub value: T,
    /// Whether this is the stored answer of an earlier attempt (the write happened once, on
    /// that attempt).
    pub replayed: bool,
    /// The key the write was sent with.
    pub idempotency_key: String,
    /// How the call went.
    pub attempts: Attempts,
}

/// The attempts of one logical call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attempts {
    /// Attempts made, the successful one included.
    pub count: u32,
    /// The code of each failed attempt, in order (as [`code_of`] reports it).
    pub failures: Vec<Code>,
}

/// Why a logical call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// FAILED_PRECONDITION: the key was first used with a different request. A bug in the
    /// caller (one key for two logical writes); not retried.
    #[error("idempotency key {idempotency_key} was first used with a different request")]
    KeyReused {
        /// The key that was reused.
        idempotency_key: String,
        /// The server's answer.
        #[source]
        status: Status,
    },
    /// INVALID_ARGUMENT: the request is wrong; `violations` names each bad field. Not retried.
    #[error("invalid argument: {}", describe(.violations))]
    InvalidArgument {
        /// The fields the server refused (`google.rpc.BadRequest`).
        violations: Vec<tonic_types::FieldViolation>,
        /// The server's answer.
        #[source]
        status: Status,
    },
    /// Any other answer that a retry would not change: NOT_FOUND, ABORTED (etag mismatch),
    /// UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, INTERNAL from the server, ...
    #[error("rejected: {status}")]
    Rejected {
        /// The server's answer.
        #[source]
        status: Status,
    },
    /// Every attempt ended without an answer (or with UNAVAILABLE / DEADLINE_EXCEEDED) and the
    /// budget, the caller's deadline or the attempt limit ran out. A write may or may not have
    /// happened: retry it later with `idempotency_key` and the same request.
    #[error("outcome unknown after {} attempts: {last}", .attempts.count)]
    OutcomeUnknown {
        /// The key the write was sent with (`None` for reads and DeleteTodo).
        idempotency_key: Option<String>,
        /// The attempts made.
        attempts: Attempts,
        /// The last attempt's failure.
        #[source]
        last: Status,
    },
}

impl CallError {
    /// The gRPC code behind the error (a broken connection is UNAVAILABLE, see [`code_of`]).
    pub fn code(&self) -> Code {
        match self {
            Self::KeyReused { status, .. }
            | Self::InvalidArgument { status, .. }
            | Self::Rejected { status } => status.code(),
            Self::OutcomeUnknown { last, .. } => code_of(last),
        }
    }

    fn from_final(status: Status, idempotency_key: Option<&str>) -> Self {
        match status.code() {
            Code::FailedPrecondition
                if status
                    .get_details_error_info()
                    .is_some_and(|info| info.reason == IDEMPOTENCY_KEY_REUSED) =>
            {
                Self::KeyReused {
                    idempotency_key: idempotency_key.unwrap_or_default().to_owned(),
                    status,
                }
            }
            Code::InvalidArgument => Self::InvalidArgument {
                violations: status
                    .get_details_bad_request()
                    .map(|bad| bad.field_violations)
                    .unwrap_or_default(),
                status,
            },
            _ => Self::Rejected { status },
        }
    }
}

fn describe(violations: &[tonic_types::FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a failed attempt may succeed if sent again: the service or the connection failed,
/// not the request. For a write this also means the outcome is unknown.
pub fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        _ => is_connection_failure(status),
    }
}

/// Whether the call failed in the connection rather than in the server: a status tonic made
/// from a local transport error keeps that error as its source (statuses the server sent have
/// none): a reset or refused stream, a GOAWAY, a connection that broke.
fn is_connection_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// The code gRPC's other clients report for this failure: tonic reports some failures of the
/// connection as INTERNAL or UNKNOWN ("h2 protocol error", "transport error"), which mean
/// UNAVAILABLE; every other status keeps its code.
pub fn code_of(status: &Status) -> Code {
    match status.code() {
        Code::Internal | Code::Unknown if is_connection_failure(status) => Code::Unavailable,
        code => code,
    }
}

/// Where the bearer token of each attempt comes from.
#[derive(Clone)]
enum Credentials {
    /// No `authorization` metadata.
    None,
    /// `Bearer <token>`, fixed when the client was built.
    Fixed(AsciiMetadataValue),
    /// Called before every attempt for the current token.
    Provider(Arc<dyn Fn() -> String + Send + Sync>),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Fixed(_) => "Fixed(..)",
            Self::Provider(_) => "Provider(..)",
        })
    }
}

impl Credentials {
    /// The `authorization` value of the next attempt, if any.
    fn authorization(&self) -> Result<Option<AsciiMetadataValue>, InvalidToken> {
        match self {
            Self::None => Ok(None),
            Self::Fixed(value) => Ok(Some(value.clone())),
            Self::Provider(provider) => bearer(provider().trim()).map(Some),
        }
    }
}

/// `Bearer <token>`; the token must be visible ASCII (`http` would take other bytes too).
fn bearer(token: &str) -> Result<AsciiMetadataValue, InvalidToken> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidToken);
    }
    format!("Bearer {token}").parse().map_err(|_| InvalidToken)
}

/// TodoService with safe retries, over the transport `T` (a [`Channel`] by default, or any
/// tower service tonic's generated client accepts). Cheap to clone (the transport is shared).
#[derive(Debug, Clone)]
pub struct TodoClient<T = Channel> {
    /// The generated client over the shared transport.
    inner: TodoServiceClient<T>,
    /// How calls are retried.
    policy: RetryPolicy,
    /// The bearer token each attempt sends as `authorization`.
    credentials: Credentials,
}

/// A bearer token that cannot be sent as metadata (not visible ASCII).
#[derive(Debug, thiserror::Error)]
#[error("the token is empty or not visible ASCII")]
pub struct InvalidToken;

impl<T> TodoClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    /// A client over `transport` with the default [`RetryPolicy`].
    pub fn new(transport: T) -> Self {
        Self {
            inner: TodoServiceClient::new(transport),
            policy: RetryPolicy::default(),
            credentials: Credentials::None,
        }
    }

    /// The same client with another retry policy.
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same client, sending `authorization: Bearer <token>`.
    pub fn with_token(mut self, token: &str) -> Result<Self, InvalidToken> {
        self.credentials = Credentials::Fixed(bearer(token)?);
        Ok(self)
    }

    /// The same client, sending `authorization: Bearer <token>` with the token `provider`
    /// returns, asked again before every attempt (surrounding whitespace is trimmed). A token
    /// that is empty or not visible ASCII fails the call as UNAUTHENTICATED, unsent.
    pub fn with_token_provider(
        mut self,
        provider: impl Fn() -> String + Send + Sync + 'static,
    ) -> Self {
        self.credentials = Credentials::Provider(Arc::new(provider));
        self
    }

    /// Creates a todo (one logical write, with a fresh key).
    pub async fn create_todo(&self, todo: proto::Todo) -> Result<Written<proto::Todo>, CallError> {
        self.create_todo_with(todo, CallOptions::default()).await
    }

    /// Creates a todo with per-call options (an earlier key to retry, a deadline).
    pub async fn create_todo_with(
        &self,
        todo: proto::Todo,
        options: CallOptions,
    ) -> Result<Written<proto::Todo>, CallError> {
        let request = proto::CreateTodoRequest {
            todo: Some(todo),
            ..proto::CreateTodoRequest::default()
        };
        self.write(request, options, |mut client, request| async move {
            client.create_todo(request).await
        })
        .await
    }

    /// Updates a todo: every field, or those in `update_mask`; `todo.etag`, if set, must match.
    pub async fn update_todo(
        &self,
        todo: proto::Todo,
        update_mask: Option<prost_types::FieldMask>,
        options: CallOptions,
    ) -> Result<Written<proto::Todo>, CallError> {
        let request = proto::UpdateTodoRequest {
            todo: Some(todo),
            update_mask,
            ..proto::UpdateTodoRequest::default()
        };
        self.write(request, options, |mut client, request| async move {
            client.update_todo(request).await
        })
        .await
    }

    /// Deletes a todo (succeeds whether or not it existed; `etag`, if not empty, must match).
    pub async fn delete_todo(
        &self,
        id: &str,
        etag: &str,
        options: CallOptions,
    ) -> Result<(), CallError> {
        let request = proto::DeleteTodoRequest {
            id: id.to_owned(),
            etag: etag.to_owned(),
        };
        let deadline = self.deadline(&options);
        self.call(request, None, deadline, |mut client, request| async move {
            client.delete_todo(request).await
        })
        .await
        .map(drop)
    }

    /// Marks the caller's todos with `ids` completed, all of them or none (one logical write,
    /// with the key of `options` or a fresh one); answers them in the order of `ids`.
    pub async fn complete_todos(
        &self,
        ids: Vec<String>,
        options: CallOptions,
    ) -> Result<Written<Vec<proto::Todo>>, CallError> {
        let request = proto::CompleteTodosRequest {
            ids,
            ..proto::CompleteTodosRequest::default()
        };
        let written = self
            .write(request, options, |mut client, request| async move {
                client.complete_todos(request).await
            })
            .await?;
        Ok(Written {
            value: written.value.todos,
            replayed: written.replayed,
            idempotency_key: written.idempotency_key,
            attempts: written.attempts,
        })
    }

    /// Reads one todo.
    pub async fn get_todo(&self, id: &str, options: CallOptions) -> Result<proto::Todo, CallError> {
        let request = proto::GetTodoRequest { id: id.to_owned() };
        let deadline = self.deadline(&options);
        self.call(request, None, deadline, |mut client, request| async move {
            client.get_todo(request).await
        })
        .await
        .map(|(response, _)| response.into_inner())
    }

    /// Reads one page of todos.
    pub async fn list_todos(
        &self,
        request: proto::ListTodosRequest,
        options: CallOptions,
    ) -> Result<proto::ListTodosResponse, CallError> {
        let deadline = self.deadline(&options);
        self.call(request, None, deadline, |mut client, request| async move {
            client.list_todos(request).await
        })
        .await
        .map(|(response, _)| response.into_inner())
    }

    fn deadline(&self, options: &CallOptions) -> Instant {
        let budget = Instant::now() + self.policy.budget;
        options
            .deadline
            .map_or(budget, |deadline| deadline.min(budget))
    }

    async fn write<Req, Resp, F, Fut>(
        &self,
        request: Req,
        options: CallOptions,
        send: F,
    ) -> Result<Written<Resp>, CallError>
    where
        Req: Clone,
        F: FnMut(TodoServiceClient<T>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let deadline = self.deadline(&options);
        let key = options
            .idempotency_key
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let (response, attempts) = self.call(request, Some(&key), deadline, send).await?;
        let replayed = response
            .metadata()
            .get(REPLAYED_HEADER)
            .is_some_and(|value| value == "true");
        Ok(Written {
            value: response.into_inner(),
            replayed,
            idempotency_key: key,
            attempts,
        })
    }

    /// Sends `request` until it is answered, the answer is final, or time or attempts run out.
    async fn call<Req, Resp, F, Fut>(
        &self,
        request: Req,
        idempotency_key: Option<&str>,
        deadline: Instant,
        mut send: F,
    ) -> Result<(Response<Resp>, Attempts), CallError>
    where
        Req: Clone,
        F: FnMut(TodoServiceClient<T>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let key_value = match idempotency_key.map(str::parse::<AsciiMetadataValue>) {
            Some(Ok(value)) => Some(value),
            Some(Err(_)) => {
                return Err(CallError::from_final(
                    Status::invalid_argument("the idempotency key is not a valid metadata value"),
                    idempotency_key,
                ));
            }
            None => None,
        };
        let mut attempts = Attempts::default();
        loop {
            let now = Instant::now();
            let attempt_timeout = self
                .policy
                .attempt_timeout
                .min(deadline.saturating_duration_since(now));
            let mut attempt = Request::new(request.clone());
            attempt.set_timeout(attempt_timeout);
            if let Some(value) = &key_value {
                attempt
                    .metadata_mut()
                    .insert("idempotency-key", value.clone());
            }
            match self.credentials.authorization() {
                Ok(Some(value)) => {
                    attempt.metadata_mut().insert("authorization", value);
                }
                Ok(None) => {}
                Err(InvalidToken) => {
                    return Err(CallError::from_final(
                        Status::unauthenticated(
                            "the token provider returned a token that is empty or not visible ASCII",
                        ),
                        idempotency_key,
                    ));
                }
            }
            attempts.count += 1;
            let attempt_deadline = now + attempt_timeout;
            let outcome =
                match tokio::time::timeout_at(attempt_deadline, send(self.inner.clone(), attempt))
                    .await
                {
                    Ok(Ok(response)) => Ok(response),
                    // tonic enforces `grpc-timeout` as well, and reports it as CANCELLED.
                    Ok(Err(_)) | Err(_) if Instant::now() >= attempt_deadline => {
                        Err(Status::deadline_exceeded("the attempt's deadline passed"))
                    }
                    Ok(Err(status)) => Err(status),
                    Err(_) => Err(Status::deadline_exceeded("the attempt's deadline passed")),
                };
            let status = match outcome {
                Ok(response) => return Ok((response, attempts)),
                Err(status) if is_retryable(&status) => status,
                Err(status) => return Err(CallError::from_final(status, idempotency_key)),
            };
            attempts.failures.push(code_of(&status));
            let pause = self.policy.backoff(attempts.count);
            if attempts.count >= self.policy.max_attempts || Instant::now() + pause >= deadline {
                return Err(CallError::OutcomeUnknown {
                    idempotency_key: idempotency_key.map(str::to_owned),
                    attempts,
                    last: status,
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
            backoff_multiplier: 2,
            ..RetryPolicy::default()
        };
        for (retry, ceiling) in [(1, 100), (2, 200), (3, 400), (4, 700), (40, 700)] {
            let pause = policy.backoff(retry);
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                pause <= ceiling && pause >= ceiling / 2,
                "{retry}: {pause:?}"
            );
        }
    }

    #[test]
    fn only_failures_of_the_service_or_the_connection_are_retried() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Cancelled] {
            assert!(is_retryable(&Status::new(code, "")), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::NotFound,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unknown,
        ] {
            assert!(!is_retryable(&Status::new(code, "")), "{code:?}");
        }
        // INTERNAL made by tonic from a broken connection keeps the transport error.
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )));
        assert!(is_retryable(&broken), "{broken:?}");
        assert_eq!(code_of(&broken), Code::Unavailable);
        assert_eq!(
            code_of(&Status::internal("from the server")),
            Code::Internal
        );
    }

    #[test]
    fn a_token_provider_is_asked_before_every_attempt() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let credentials = Credentials::Provider(Arc::new(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            format!("token-{n}\n")
        }));
        for n in 0..2 {
            let value = credentials
                .authorization()
                .expect("valid")
                .expect("a value");
            assert_eq!(value, format!("Bearer token-{n}").as_str());
        }
        for bad in ["caf\u{e9}", "", "two words"] {
            let provider = Credentials::Provider(Arc::new(move || bad.to_owned()));
            assert!(provider.authorization().is_err(), "{bad:?}");
            assert!(bearer(bad).is_err(), "{bad:?}");
        }
        assert!(Credentials::None.authorization().expect("none").is_none());
    }

    #[test]
    fn key_reuse_and_bad_fields_are_typed() {
        let reused = Status::with_error_details(
            Code::FailedPrecondition,
            "reused",
            tonic_types::ErrorDetails::with_error_info(
                IDEMPOTENCY_KEY_REUSED,
                "todo.v1.TodoService",
                std::collections::HashMap::new(),
            ),
        );
        assert!(matches!(
            CallError::from_final(reused, Some("k")),
            CallError::KeyReused { idempotency_key, .. } if idempotency_key == "k"
        ));
        let invalid = Status::with_error_details(
            Code::InvalidArgument,
            "invalid",
            tonic_types::ErrorDetails::with_bad_request_violation(
                "todo.title",
                "must not be empty",
            ),
        );
        match CallError::from_final(invalid, None) {
            CallError::InvalidArgument { violations, .. } => {
                assert_eq!(violations[0].field, "todo.title");
            }
            other => panic!("{other:?}"),
        }
    }
}
