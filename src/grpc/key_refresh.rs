//! The one step of authentication that waits: a call whose JWT names a key the issuer's set
//! lacks (the issuer rotated its keys) has the JWKS fetched again first (rate-limited, shared
//! by concurrent calls: `auth/jwks.rs`), so that the guard, which runs synchronously on the
//! headers, finds the new key. Every other call goes straight through, without allocating.

use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use tonic::server::NamedService;

use crate::auth::JwtIssuer;

/// Wraps the guarded TodoService.
#[derive(Debug, Clone)]
pub struct FetchUnknownKeys<S> {
    /// The guarded service.
    inner: S,
    /// JWT bearer tokens, if configured (without, this layer does nothing).
    jwt: Option<JwtIssuer>,
}

impl<S> FetchUnknownKeys<S> {
    pub fn new(inner: S, jwt: Option<JwtIssuer>) -> Self {
        Self { inner, jwt }
    }
}

impl<S: NamedService> NamedService for FetchUnknownKeys<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for FetchUnknownKeys<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let wanted = self.jwt.as_ref().and_then(|jwt| {
            let mut authorizations = request
                .headers()
                .get_all(http::header::AUTHORIZATION)
                .iter();
            let first = authorizations.next()?;
            // Several: the guard refuses the call anyway.
            if authorizations.next().is_some() {
                return None;
            }
            Some((jwt.clone(), jwt.key_to_fetch(first.as_bytes())?))
        });
        let Some((jwt, kid)) = wanted else {
            return Either::Left(self.inner.call(request));
        };
        // The service that was made ready serves this call; its clone serves the next.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            jwt.keys.refresh_for_unknown_key(kid.as_deref()).await;
            ready.call(request).await
        }))
    }
}
