//! What every TodoService call passes before anything else runs: a bound on the metadata size,
//! then authentication. The caller it finds travels to the handler in the request extensions.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::auth::{AuthError, CallerTokens};
use crate::domain::Caller;
use crate::error::ServiceError;
use crate::metrics::Metrics;

/// The TodoService interceptor.
#[derive(Debug, Clone)]
pub struct RequestGuard {
    /// The callers and their token hashes (empty: every caller is anonymous).
    tokens: Arc<CallerTokens>,
    /// Largest request metadata accepted, as HTTP/2 counts it.
    max_metadata_bytes: usize,
    /// Where refused calls are counted.
    metrics: Arc<Metrics>,
}

impl RequestGuard {
    pub fn new(
        tokens: Arc<CallerTokens>,
        max_metadata_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            tokens,
            max_metadata_bytes,
            metrics,
        }
    }
}

/// The size of a request's metadata as HTTP/2 counts it (name + value + 32 per entry).
fn metadata_bytes<T>(request: &Request<T>) -> usize {
    let headers: &http::HeaderMap = request.metadata().as_ref();
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

impl Interceptor for RequestGuard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let size = metadata_bytes(&request);
        if size > self.max_metadata_bytes {
            self.metrics.record_rejected("metadata_too_large");
            return Err(ServiceError::ResourceExhausted(format!(
                "request metadata is {size} bytes; the limit is {}",
                self.max_metadata_bytes
            ))
            .into());
        }
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        let caller = self.tokens.authenticate(authorization).map_err(|err| {
            let why = match err {
                AuthError::Missing => "missing `authorization: Bearer <token>` metadata",
                AuthError::Malformed => "`authorization` metadata must be `Bearer <token>`",
                AuthError::Unknown => "unknown token",
            };
            tracing::info!(reason = why, "unauthenticated call refused");
            self.metrics.record_rejected("unauthenticated");
            Status::from(ServiceError::Unauthenticated(why))
        })?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the guard found for this request.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, ServiceError> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ServiceError::internal("request did not pass the RequestGuard"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_token;

    fn guard(tokens: &str) -> RequestGuard {
        RequestGuard::new(
            Arc::new(CallerTokens::parse(tokens).unwrap()),
            1024,
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn anonymous_without_tokens() {
        let request = guard("").call(Request::new(())).unwrap();
        assert_eq!(caller(&request).unwrap(), Caller::anonymous());
    }

    #[test]
    fn authenticated_caller_is_attached() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("authorization", "Bearer t0k3n".parse().unwrap());
        let request = guard(&format!("svc {}", hash_token("t0k3n")))
            .call(request)
            .unwrap();
        assert_eq!(caller(&request).unwrap().as_str(), "svc");
    }

    #[test]
    fn missing_token_is_unauthenticated() {
        let status = guard(&format!("svc {}", hash_token("t")))
            .call(Request::new(()))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn oversized_metadata_is_resource_exhausted() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("x-big", "x".repeat(2000).parse().unwrap());
        let status = guard("").call(request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }
}
