//! What every TodoService call passes before anything else runs: a bound on the metadata size,
//! then authentication. It runs on the request headers, before the body (and any trailers) is
//! read; what it found travels to the handler as [`Admitted`] in the request extensions, so that
//! `authorization` and `idempotency-key` are only ever taken from headers. tonic merges request
//! trailers into the metadata the handler sees, so the handler checks the size limit again, on
//! headers and trailers together ([`admitted`]).

use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Extensions, Request, Status};

use crate::auth::jwt::looks_like_jwt;
use crate::auth::{
    AuthError, CallerTokens, ClientCertIdentity, CurrentTokens, JwtIssuer, bearer_token,
    caller_from_certificate,
};
use crate::domain::Caller;
use crate::error::ServiceError;
use crate::grpc::metadata::IDEMPOTENCY_KEY;
use crate::metrics::{Metrics, Rejection};

/// The TodoService interceptor.
#[derive(Debug, Clone)]
pub struct RequestGuard {
    /// The callers and their token hashes in force.
    tokens: CurrentTokens,
    /// Whether a call without a bearer token is named by its client certificate.
    client_certs: ClientCertIdentity,
    /// JWT bearer tokens, if `--jwt-issuer` is set.
    jwt: Option<JwtIssuer>,
    /// Largest request metadata accepted, as HTTP/2 counts it.
    max_metadata_bytes: usize,
    /// Where refused calls are counted.
    metrics: Arc<Metrics>,
}

impl RequestGuard {
    pub fn new(
        tokens: CurrentTokens,
        client_certs: ClientCertIdentity,
        jwt: Option<JwtIssuer>,
        max_metadata_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            tokens,
            client_certs,
            jwt,
            max_metadata_bytes,
            metrics,
        }
    }
}

/// What the guard found in a request's headers, for its handler.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// Who is calling.
    pub caller: Caller,
    /// The `idempotency-key` entries of the headers (a key in trailers is ignored).
    pub idempotency_keys: Vec<AsciiMetadataValue>,
    /// The metadata limit, for the second check on headers and trailers together.
    max_metadata_bytes: usize,
}

/// The size of request metadata as HTTP/2 counts it (name + value + 32 per entry).
fn metadata_bytes(metadata: &MetadataMap) -> usize {
    let headers: &http::HeaderMap = metadata.as_ref();
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// RESOURCE_EXHAUSTED if the request's metadata is over `limit` bytes.
fn check_metadata_size(metadata: &MetadataMap, limit: usize) -> Result<(), ServiceError> {
    let size = metadata_bytes(metadata);
    if size > limit {
        return Err(ServiceError::ResourceExhausted(format!(
            "request metadata (headers and trailers) is {size} bytes; the limit is {limit}"
        )));
    }
    Ok(())
}

impl RequestGuard {
    /// Who is calling. A call that presents a bearer token is judged by it: by the issuer's keys
    /// if it has a JWT's shape and JWTs are configured, else by the tokens file. Without one, by
    /// its client certificate when `--client-cert-identity` is on. A server configured with
    /// none of the three serves everyone as anonymous.
    fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        request: &Request<()>,
    ) -> Result<Caller, AuthError> {
        let tokens = self.tokens.get();
        let certificates_name_callers = self.client_certs == ClientCertIdentity::UriSan;
        if tokens.is_empty() && self.jwt.is_none() && !certificates_name_callers {
            return Ok(Caller::anonymous());
        }
        let Some(header) = authorization else {
            if !certificates_name_callers {
                return Err(AuthError::Missing);
            }
            let certificates = request.peer_certs().ok_or(AuthError::NoCertificate)?;
            let leaf = certificates.first().ok_or(AuthError::NoCertificate)?;
            let caller = caller_from_certificate(leaf.as_ref())?;
            return apart_from_tokens(&tokens, caller);
        };
        let token = bearer_token(header).ok_or(AuthError::Malformed)?;
        if let Some(jwt) = &self.jwt
            && looks_like_jwt(token)
        {
            let caller = jwt.verify(token)?;
            // A URI is what certificates name (SPIFFE IDs); a JWT may not name one of those.
            if certificates_name_callers && caller.as_str().contains("://") {
                return Err(AuthError::CallerOfAnotherSource);
            }
            return apart_from_tokens(&tokens, caller);
        }
        if tokens.is_empty() {
            return Err(AuthError::Unknown);
        }
        tokens.caller_of_token(token)
    }
}

/// `caller`, named by a JWT or a certificate, unless the tokens file names a caller so too:
/// callers of different sources never share todos, keys or page tokens.
fn apart_from_tokens(tokens: &CallerTokens, caller: Caller) -> Result<Caller, AuthError> {
    if tokens.names(&caller) {
        Err(AuthError::CallerOfAnotherSource)
    } else {
        Ok(caller)
    }
}

impl Interceptor for RequestGuard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Err(err) = check_metadata_size(request.metadata(), self.max_metadata_bytes) {
            self.metrics.record_rejected(Rejection::MetadataTooLarge);
            return Err(err.into());
        }
        let mut authorizations = request.metadata().get_all("authorization").iter();
        let authorization = authorizations.next().map(|value| value.as_bytes());
        let several = authorizations.next().is_some();
        let authenticated = if several {
            Err(AuthError::Several)
        } else {
            self.authenticate(authorization, &request)
        };
        let caller = authenticated.map_err(|err| {
            // The call's `rpc finished` line (`grpc/call.rs`) carries the reason.
            tracing::Span::current().record("reason", err.describe());
            self.metrics.record_rejected(Rejection::Unauthenticated);
            self.metrics.record_auth_failure(err);
            Status::from(ServiceError::Unauthenticated(err.describe()))
        })?;
        let idempotency_keys = request
            .metadata()
            .get_all(IDEMPOTENCY_KEY)
            .iter()
            .cloned()
            .collect();
        request.extensions_mut().insert(Admitted {
            caller,
            idempotency_keys,
            max_metadata_bytes: self.max_metadata_bytes,
        });
        Ok(request)
    }
}

/// What the guard admitted for this request, once its metadata (headers and trailers, as the
/// handler sees them) is within the limit too.
pub fn admitted(metadata: &MetadataMap, extensions: &Extensions) -> Result<Admitted, ServiceError> {
    let admitted = extensions
        .get::<Admitted>()
        .cloned()
        .ok_or_else(|| ServiceError::internal("request did not pass the RequestGuard"))?;
    check_metadata_size(metadata, admitted.max_metadata_bytes)?;
    Ok(admitted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_token;

    fn guard(tokens: &str) -> RequestGuard {
        RequestGuard::new(
            CurrentTokens::new(CallerTokens::parse(tokens).unwrap()),
            ClientCertIdentity::Off,
            None,
            1024,
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn anonymous_without_tokens() {
        let request = guard("").call(Request::new(())).unwrap();
        assert_eq!(
            admitted(request.metadata(), request.extensions())
                .unwrap()
                .caller,
            Caller::anonymous()
        );
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
        assert_eq!(
            admitted(request.metadata(), request.extensions())
                .unwrap()
                .caller
                .as_str(),
            "svc"
        );
    }

    #[test]
    fn missing_token_is_unauthenticated() {
        let status = guard(&format!("svc {}", hash_token("t")))
            .call(Request::new(()))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn two_authorization_entries_are_unauthenticated_even_if_one_is_valid() {
        for tokens in [format!("svc {}", hash_token("t0k3n")), String::new()] {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .append("authorization", "Bearer t0k3n".parse().unwrap());
            request
                .metadata_mut()
                .append("authorization", "Bearer t0k3n".parse().unwrap());
            let status = guard(&tokens).call(request).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{tokens:?}");
            assert!(status.message().contains("once"), "{status:?}");
        }
    }

    #[test]
    fn the_handler_sees_only_the_keys_of_the_headers_and_checks_the_size_again() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(IDEMPOTENCY_KEY, "from-headers".parse().unwrap());
        let mut request = guard("").call(request).unwrap();
        // What tonic does with request trailers: merges them into the metadata.
        request
            .metadata_mut()
            .append(IDEMPOTENCY_KEY, "from-trailers".parse().unwrap());
        let admitted = super::admitted(request.metadata(), request.extensions()).unwrap();
        assert_eq!(admitted.idempotency_keys, vec!["from-headers"]);

        request
            .metadata_mut()
            .insert("x-big-trailer", "x".repeat(2000).parse().unwrap());
        let err = super::admitted(request.metadata(), request.extensions()).unwrap_err();
        assert!(matches!(err, ServiceError::ResourceExhausted(_)), "{err}");
    }

    #[test]
    fn with_certificate_identity_a_call_without_a_certificate_or_with_an_unjudgeable_token_is_refused()
     {
        let guard = RequestGuard::new(
            CurrentTokens::default(),
            ClientCertIdentity::UriSan,
            None,
            1024,
            Arc::new(Metrics::new()),
        );
        for authorization in [None, Some("Bearer some-token")] {
            let mut request = Request::new(());
            if let Some(value) = authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().unwrap());
            }
            let status = guard.clone().call(request).unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{authorization:?}"
            );
        }
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
