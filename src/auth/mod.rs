//! Who is calling. A call names its caller by one of three credentials:
//!
//! - a static bearer token listed (as its SHA-256) in the tokens file ([`tokens`]);
//! - a JWT bearer token signed by an issuer's key, checked against the issuer's JWKS ([`jwt`],
//!   the key set fetched and refreshed by [`jwks`]);
//! - the single URI SAN (SPIFFE ID) of its mTLS client certificate ([`certificate`]).
//!
//! The guard (`grpc/guard.rs`) picks the credential: a bearer token is judged by its shape (a
//! JWT when JWTs are configured, else the tokens file); without one, the client certificate when
//! `--client-cert-identity` is on. Every failure is an [`AuthError`]: UNAUTHENTICATED for the
//! client, a `reason` label for `todo_auth_failures_total`.

pub mod certificate;
pub mod jwks;
pub mod jwt;
pub mod tokens;

use std::sync::Arc;

pub use certificate::{ClientCertIdentity, caller_from_certificate};
pub use tokens::{CallerTokens, CurrentTokens, TokensFileError, hash_token};

use crate::domain::Caller;

/// JWT bearer tokens: what they must say, and the issuer's keys in force.
#[derive(Debug, Clone)]
pub struct JwtIssuer {
    /// Issuer, audience and caller claim.
    pub rules: Arc<jwt::JwtRules>,
    /// The issuer's JWKS, kept current.
    pub keys: jwks::CurrentKeys,
}

impl JwtIssuer {
    /// The caller a JWT names (the token is visible ASCII: [`bearer_token`] made sure).
    pub fn verify(&self, token: &[u8]) -> Result<Caller, AuthError> {
        let token = std::str::from_utf8(token).map_err(|_| AuthError::JwtMalformed)?;
        self.rules.verify(token, &self.keys.get())
    }

    /// If `authorization` carries a JWT whose key the set lacks: the `kid` to fetch the JWKS
    /// for (`None` inside: the token names no kid and the set is empty).
    pub fn key_to_fetch(&self, authorization: &[u8]) -> Option<Option<String>> {
        let token = bearer_token(authorization)?;
        if !jwt::looks_like_jwt(token) {
            return None;
        }
        let header = jwt::header_of(std::str::from_utf8(token).ok()?).ok()?;
        self.keys.lacks(header.kid.as_deref()).then_some(header.kid)
    }
}

/// Why a request was not authenticated. The client sees UNAUTHENTICATED either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization` metadata while tokens are configured (and no certificate identity).
    Missing,
    /// Not `Bearer <visible ASCII token>`.
    Malformed,
    /// A token no caller has.
    Unknown,
    /// Several `authorization` entries: which one counts would be a guess.
    Several,
    /// No client certificate, while callers are named by theirs.
    NoCertificate,
    /// A client certificate without a URI SAN (SPIFFE ID).
    NoUriSan,
    /// A client certificate with several URI SANs: an X509-SVID has exactly one.
    SeveralUriSans,
    /// A client certificate whose URI SAN is no caller id, or that does not parse.
    BadCertificate,
    /// A JWT that does not decode (header, claims, base64url, JSON).
    JwtMalformed,
    /// A JWT whose `alg` is refused: `none`, an HMAC algorithm (a public key must never serve as
    /// an HMAC secret), one this server does not verify, or not the algorithm of its key.
    JwtAlgorithm,
    /// A JWT signed by a key the issuer's JWKS does not have (after a refresh).
    JwtUnknownKey,
    /// A JWT whose signature does not verify.
    JwtBadSignature,
    /// A JWT past its `exp` (beyond the leeway).
    JwtExpired,
    /// A JWT before its `nbf` (beyond the leeway).
    JwtNotYetValid,
    /// A JWT from another issuer (`iss`).
    JwtWrongIssuer,
    /// A JWT meant for another audience (`aud`).
    JwtWrongAudience,
    /// A JWT without `exp`, `iss`, `aud` or the caller claim.
    JwtMissingClaim,
    /// A JWT whose caller claim is not a string that is a usable caller id.
    JwtBadCaller,
    /// A JWT or certificate naming a caller that another source names too (a tokens-file
    /// caller, or a URI that certificates name): callers of different sources never share data.
    CallerOfAnotherSource,
}

impl AuthError {
    /// What the client is told (and the `reason` of the call's log line).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Missing => "missing `authorization: Bearer <token>` metadata",
            Self::Malformed => "`authorization` metadata must be `Bearer <token>`",
            Self::Unknown => "unknown token",
            Self::Several => "`authorization` must be sent once; the request has several",
            Self::NoCertificate => "no client certificate",
            Self::NoUriSan => "the client certificate has no URI SAN (SPIFFE ID)",
            Self::SeveralUriSans => "the client certificate has several URI SANs; an SVID has one",
            Self::BadCertificate => "the client certificate's URI SAN is not a usable caller id",
            Self::JwtMalformed => "the bearer token is not a well-formed JWT",
            Self::JwtAlgorithm => {
                "the JWT's algorithm is refused (none and HMAC never; RS, PS, ES and EdDSA matching its key)"
            }
            Self::JwtUnknownKey => "the JWT is signed by a key the issuer does not publish",
            Self::JwtBadSignature => "the JWT's signature does not verify",
            Self::JwtExpired => "the JWT has expired",
            Self::JwtNotYetValid => "the JWT is not valid yet (nbf)",
            Self::JwtWrongIssuer => "the JWT is from another issuer",
            Self::JwtWrongAudience => "the JWT is meant for another audience",
            Self::JwtMissingClaim => {
                "the JWT lacks a required claim (exp, iss, aud or the caller claim)"
            }
            Self::JwtBadCaller => "the JWT's caller claim is not a usable caller id",
            Self::CallerOfAnotherSource => {
                "the credential names a caller that another credential source names"
            }
        }
    }

    /// The `reason` label of `todo_auth_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown_token",
            Self::Several => "several",
            Self::NoCertificate => "no_certificate",
            Self::NoUriSan => "no_uri_san",
            Self::SeveralUriSans => "several_uri_sans",
            Self::BadCertificate => "bad_certificate",
            Self::JwtMalformed => "jwt_malformed",
            Self::JwtAlgorithm => "jwt_algorithm",
            Self::JwtUnknownKey => "jwt_unknown_key",
            Self::JwtBadSignature => "jwt_bad_signature",
            Self::JwtExpired => "jwt_expired",
            Self::JwtNotYetValid => "jwt_not_yet_valid",
            Self::JwtWrongIssuer => "jwt_wrong_issuer",
            Self::JwtWrongAudience => "jwt_wrong_audience",
            Self::JwtMissingClaim => "jwt_missing_claim",
            Self::JwtBadCaller => "jwt_bad_caller",
            Self::CallerOfAnotherSource => "caller_of_another_source",
        }
    }
}

/// The token of `Bearer <token>` (scheme in any case); the token must be visible ASCII.
pub fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty() && token.iter().all(u8::is_ascii_graphic)).then_some(token)
}
