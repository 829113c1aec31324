//! The one error type of the service. Each variant documents the gRPC status it becomes;
//! `From<ServiceError> for tonic::Status` is the only place that mapping happens, and the only
//! place internal errors are logged before they are replaced by an opaque message.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{FieldViolation, TodoId};
use crate::storage::{StorageError, Transient};

/// Any error, as the cause of an internal one.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `google.rpc.ErrorInfo.domain` for the errors this service defines.
pub const ERROR_DOMAIN: &str = crate::proto::todo_service_server::SERVICE_NAME;
/// `google.rpc.ErrorInfo.reason` when an idempotency key comes back with a different request.
pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// INVALID_ARGUMENT, with a `google.rpc.BadRequest` detail naming each bad field.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),

    /// NOT_FOUND: no todo with this id.
    #[error("todo {0} not found")]
    NotFound(TodoId),

    /// ABORTED (AIP-154): the etag sent does not match the todo's current etag; read it again.
    #[error("etag does not match the current etag of todo {0}")]
    EtagMismatch(TodoId),

    /// FAILED_PRECONDITION, with a `google.rpc.ErrorInfo` whose reason is
    /// `IDEMPOTENCY_KEY_REUSED`: the key was first used with a different request.
    #[error("idempotency key already used with a different request")]
    IdempotencyKeyReused,

    /// UNAUTHENTICATED: no valid `authorization: Bearer <token>` while tokens are configured.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),

    /// RESOURCE_EXHAUSTED: the request exceeds a size limit (message, metadata).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),

    /// DEADLINE_EXCEEDED: the call took longer than `--request-timeout`; nothing it started
    /// was committed unless its commit had already been sent (retry with the same key).
    #[error("request timed out")]
    DeadlineExceeded,

    /// UNAVAILABLE: the database is unreachable, overloaded or timed out. Safe to retry with
    /// the same idempotency key. Logged (warning) with the operation and its cause.
    #[error("database unavailable")]
    Unavailable(#[source] StorageError),

    /// INTERNAL: a database error that is not about availability (a bug, or stored data that
    /// breaks an invariant). Logged with the operation and its cause; the client sees an opaque
    /// message.
    #[error("database error")]
    Database(#[source] StorageError),

    /// INTERNAL: the service broke one of its own invariants. Logged with its context and
    /// cause; the client sees an opaque message.
    #[error("{context}")]
    Internal {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// INTERNAL: a broken invariant, described by `context`.
    pub fn internal(context: impl Into<String>) -> Self {
        Self::Internal {
            context: context.into(),
            source: None,
        }
    }

    /// INTERNAL: a broken invariant, described by `context`, caused by `source`.
    pub fn internal_caused_by(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::EtagMismatch(_) => Code::Aborted,
            Self::IdempotencyKeyReused => Code::FailedPrecondition,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Database(_) | Self::Internal { .. } => Code::Internal,
        }
    }
}

impl From<StorageError> for ServiceError {
    /// Database errors are classified once, as they leave storage: a lock wait that outlasted
    /// the call is DEADLINE_EXCEEDED, connection trouble and timeouts are UNAVAILABLE,
    /// everything else is INTERNAL.
    fn from(err: StorageError) -> Self {
        if err.is_past_deadline() {
            Self::DeadlineExceeded
        } else if err.is_unavailable() {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

impl Transient for ServiceError {
    fn session_ended(&self) -> bool {
        match self {
            Self::Unavailable(err) | Self::Database(err) => err.session_ended(),
            _ => false,
        }
    }

    fn serialization_conflict(&self) -> bool {
        match self {
            Self::Unavailable(err) | Self::Database(err) => err.serialization_conflict(),
            _ => false,
        }
    }

    fn read_only_server(&self) -> bool {
        match self {
            Self::Unavailable(err) | Self::Database(err) => err.read_only_server(),
            _ => false,
        }
    }
}

/// Displays an error and every cause below it: `outer: cause: root cause`.
pub struct Chain<'e>(pub &'e (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            // Some errors (sea-orm's) repeat their source in their own message.
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            source = cause.source();
        }
        Ok(())
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        let code = err.code();
        match err {
            ServiceError::InvalidArgument(violations) => {
                let message = describe(&violations);
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(code, message, details)
            }
            ServiceError::IdempotencyKeyReused => Status::with_error_details(
                code,
                "the idempotency-key was already used with a different request; \
                 use a new key for a new request",
                ErrorDetails::with_error_info(
                    IDEMPOTENCY_KEY_REUSED,
                    ERROR_DOMAIN,
                    HashMap::<String, String>::new(),
                ),
            ),
            ServiceError::NotFound(_)
            | ServiceError::EtagMismatch(_)
            | ServiceError::Unauthenticated(_)
            | ServiceError::ResourceExhausted(_)
            | ServiceError::DeadlineExceeded => Status::new(code, err.to_string()),
            ServiceError::Unavailable(ref source) => {
                tracing::warn!(
                    operation = source.operation,
                    error = %Chain(&err),
                    "database unavailable"
                );
                Status::new(
                    code,
                    "the database is unavailable; retry with the same idempotency-key",
                )
            }
            ServiceError::Database(ref source) => {
                tracing::error!(
                    operation = source.operation,
                    error = %Chain(&err),
                    "internal error"
                );
                Status::new(code, "internal error")
            }
            ServiceError::Internal { .. } => {
                tracing::error!(error = %Chain(&err), "internal error");
                Status::new(code, "internal error")
            }
        }
    }
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_bad_request_with_the_field() {
        let status = Status::from(ServiceError::invalid("todo.title", "is required"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("todo.title"));
        let bad_request = status.get_details_bad_request().unwrap();
        assert_eq!(bad_request.field_violations[0].field, "todo.title");
    }

    #[test]
    fn key_reuse_carries_error_info_reason() {
        let status = Status::from(ServiceError::IdempotencyKeyReused);
        assert_eq!(status.code(), Code::FailedPrecondition);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, IDEMPOTENCY_KEY_REUSED);
        assert_eq!(info.domain, ERROR_DOMAIN);
    }

    use sea_orm::DbErr;

    fn storage_error(operation: &'static str, source: DbErr) -> StorageError {
        StorageError { operation, source }
    }

    #[test]
    fn internal_errors_are_opaque() {
        let status = Status::from(ServiceError::internal("SELECT * FROM todos failed"));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"));
        let status = Status::from(ServiceError::from(storage_error(
            "find todo",
            DbErr::Custom("SELECT * FROM todos: syntax error".to_owned()),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"));
        assert!(!status.message().contains("find todo"));
    }

    #[test]
    fn pool_timeout_is_unavailable_without_sql() {
        let err = ServiceError::from(storage_error(
            "find todo",
            DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout),
        ));
        assert!(matches!(err, ServiceError::Unavailable(_)));
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[test]
    fn the_log_chain_names_the_operation_and_the_cause() {
        let err = ServiceError::from(storage_error(
            "insert todo",
            DbErr::Custom("CHECK constraint failed: title".to_owned()),
        ));
        let logged = Chain(&err).to_string();
        assert!(logged.starts_with("database error: "), "{logged}");
        assert!(logged.contains("`insert todo`"), "{logged}");
        assert!(
            logged.contains("CHECK constraint failed: title"),
            "{logged}"
        );

        // A length-delimited field 1 that claims 5 bytes and has none.
        let decode = <crate::proto::Todo as prost::Message>::decode([0x0a, 0x05].as_slice())
            .expect_err("a truncated message");
        let err = ServiceError::internal_caused_by("stored response does not decode", decode);
        let logged = Chain(&err).to_string();
        assert!(
            logged.starts_with("stored response does not decode: failed to decode Protobuf"),
            "{logged}"
        );
    }
}
