//! JWT bearer tokens (`--jwt-issuer`, `--jwt-audience`, `--jwt-jwks`): a Kubernetes projected
//! service-account token, an OIDC ID token, a SPIRE JWT-SVID. The caller is the `sub` claim (or
//! `--jwt-caller-claim`). A token is accepted only when all of these hold:
//!
//! - its `alg` is an asymmetric one (RS256/384/512, PS256/384/512, ES256/384, EdDSA). `none`
//!   and the HMAC algorithms are refused before any key is looked at, and HMAC (`oct`) keys are
//!   never loaded from a JWKS, so a public key can never be used as an HMAC secret;
//! - its signature verifies with the JWKS key its `kid` names (without a `kid`: one of the keys
//!   of its algorithm), and that key is of the token's algorithm;
//! - `iss` equals the issuer, `aud` is or contains the audience, `exp` is present and not past,
//!   `nbf` (if present) is not ahead, both with [`LEEWAY_SECONDS`] of leeway for clock skew.
//!
//! Verification is `jsonwebtoken`'s (RustCrypto); this file only decides what to ask of it.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::auth::AuthError;
use crate::domain::Caller;

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 60;

/// The algorithms a token may be signed with.
pub const ACCEPTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What a token must say to be accepted, and which claim names its caller.
#[derive(Debug, Clone)]
pub struct JwtRules {
    /// `--jwt-issuer`: the `iss` every token must carry.
    pub issuer: String,
    /// `--jwt-audience`: a value `aud` must be or contain.
    pub audience: String,
    /// `--jwt-caller-claim`: the claim whose string value is the caller id (`sub`).
    pub caller_claim: String,
}

/// One verification key of a JWKS.
#[derive(Clone)]
pub struct PublicKey {
    /// The key's `kid`, if it has one.
    pub kid: Option<String>,
    /// The algorithm the JWK names (`alg`), if it names one: a token must then use exactly it.
    pub algorithm: Option<Algorithm>,
    /// The key itself (RSA, EC or OKP; never HMAC).
    pub key: DecodingKey,
}

/// The verification keys of an issuer, as its JWKS last published them.
#[derive(Clone, Default)]
pub struct KeySet {
    /// The keys that have a `kid`, by it.
    by_kid: HashMap<String, PublicKey>,
    /// Every key, for a token without a `kid`.
    all: Vec<PublicKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("KeySet")
            .field("kids", &kids)
            .field("keys", &self.all.len())
            .finish()
    }
}

impl KeySet {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        let by_kid = keys
            .iter()
            .filter_map(|key| Some((key.kid.clone()?, key.clone())))
            .collect();
        Self { by_kid, all: keys }
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Whether the set has the key `kid`.
    pub fn has(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// The keys `kid` may name: that one key, or without a `kid` every key.
    fn candidates(&self, kid: Option<&str>) -> Vec<&PublicKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid).into_iter().collect(),
            None => self.all.iter().collect(),
        }
    }
}

/// The part of a JWT's header the server reads before verifying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtHeader {
    /// `alg`, as written.
    pub alg: String,
    /// `kid`, if present.
    pub kid: Option<String>,
}

/// Whether a bearer token has a JWT's shape: three base64url parts, the first a JSON object
/// (base64url of `{"` is `eyJ`). A static token from the tokens file does not look like this.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header), Some(claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let base64url = |part: &[u8]| {
        part.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    };
    header.starts_with(b"eyJ") && !claims.is_empty() && base64url(header) && base64url(claims)
}

/// The `alg` and `kid` of a JWT-shaped token.
pub fn header_of(token: &str) -> Result<JwtHeader, AuthError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        alg: String,
        kid: Option<String>,
    }
    let encoded = token.split('.').next().ok_or(AuthError::JwtMalformed)?;
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| AuthError::JwtMalformed)?;
    let raw: Raw = serde_json::from_slice(&json).map_err(|_| AuthError::JwtMalformed)?;
    Ok(JwtHeader {
        alg: raw.alg,
        kid: raw.kid,
    })
}

/// The accepted algorithm named `alg`; `none`, HMAC and anything else are refused.
fn accepted_algorithm(alg: &str) -> Result<Algorithm, AuthError> {
    let algorithm: Algorithm = alg.parse().map_err(|_| AuthError::JwtAlgorithm)?;
    if ACCEPTED_ALGORITHMS.contains(&algorithm) {
        Ok(algorithm)
    } else {
        Err(AuthError::JwtAlgorithm)
    }
}

impl JwtRules {
    /// The caller a JWT names, if `keys` verify it and its claims are what [`JwtRules`] asks.
    pub fn verify(&self, token: &str, keys: &KeySet) -> Result<Caller, AuthError> {
        let header = header_of(token)?;
        let algorithm = accepted_algorithm(&header.alg)?;
        let candidates = keys.candidates(header.kid.as_deref());
        if candidates.is_empty() {
            return Err(AuthError::JwtUnknownKey);
        }
        let usable: Vec<&PublicKey> = candidates
            .into_iter()
            .filter(|key| {
                key.key.family() == algorithm.family()
                    && key.algorithm.is_none_or(|named| named == algorithm)
            })
            .collect();
        if usable.is_empty() {
            return Err(AuthError::JwtAlgorithm);
        }
        let validation = self.validation(algorithm);
        let mut failure = AuthError::JwtBadSignature;
        for key in usable {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &key.key,
                &validation,
            ) {
                Ok(data) => return self.caller_of(&data.claims),
                Err(err) => {
                    failure = classify(err.kind());
                    if failure != AuthError::JwtBadSignature {
                        // The signature held: the claims are what is wrong, whatever other key.
                        return Err(failure);
                    }
                }
            }
        }
        Err(failure)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation
    }

    fn caller_of(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Caller, AuthError> {
        let value = claims
            .get(&self.caller_claim)
            .ok_or(AuthError::JwtMissingClaim)?;
        let id = value.as_str().ok_or(AuthError::JwtBadCaller)?;
        let caller = Caller::parse(id).map_err(|_| AuthError::JwtBadCaller)?;
        if caller == Caller::anonymous() {
            return Err(AuthError::JwtBadCaller);
        }
        Ok(caller)
    }
}

/// What a `jsonwebtoken` failure means for the caller.
fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::JwtBadSignature,
        ErrorKind::ExpiredSignature => AuthError::JwtExpired,
        ErrorKind::ImmatureSignature => AuthError::JwtNotYetValid,
        ErrorKind::InvalidIssuer => AuthError::JwtWrongIssuer,
        ErrorKind::InvalidAudience => AuthError::JwtWrongAudience,
        ErrorKind::MissingRequiredClaim(_) => AuthError::JwtMissingClaim,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => AuthError::JwtAlgorithm,
        // Keys that do not parse as their type cannot verify anything.
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) => {
            AuthError::JwtBadSignature
        }
        _ => AuthError::JwtMalformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    struct Issuer {
        encoding: EncodingKey,
        decoding: DecodingKey,
    }

    fn es256() -> Issuer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Issuer {
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            decoding: DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes()).unwrap(),
        }
    }

    fn rules() -> JwtRules {
        JwtRules {
            issuer: "https://issuer.test".to_owned(),
            audience: "todo-service".to_owned(),
            caller_claim: "sub".to_owned(),
        }
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn good_claims() -> serde_json::Value {
        json!({"iss": "https://issuer.test", "aud": ["other", "todo-service"], "sub": "system:serviceaccount:billing:api", "exp": now() + 600, "nbf": now() - 10})
    }

    fn sign(issuer: &Issuer, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &issuer.encoding).unwrap()
    }

    fn keys(issuer: &Issuer, kid: &str) -> KeySet {
        KeySet::new(vec![PublicKey {
            kid: Some(kid.to_owned()),
            algorithm: None,
            key: issuer.decoding.clone(),
        }])
    }

    #[test]
    fn a_good_token_names_its_subject() {
        let issuer = es256();
        let token = sign(&issuer, Some("k1"), &good_claims());
        assert!(looks_like_jwt(token.as_bytes()));
        assert_eq!(
            rules()
                .verify(&token, &keys(&issuer, "k1"))
                .unwrap()
                .as_str(),
            "system:serviceaccount:billing:api"
        );
        // Without a kid, any key of the algorithm may verify it.
        let token = sign(&issuer, None, &good_claims());
        assert!(rules().verify(&token, &keys(&issuer, "k1")).is_ok());
        // Another claim may name the caller.
        let mut claims = good_claims();
        claims["email"] = json!("svc@example.test");
        let token = sign(&issuer, Some("k1"), &claims);
        let rules = JwtRules {
            caller_claim: "email".to_owned(),
            ..rules()
        };
        assert_eq!(
            rules.verify(&token, &keys(&issuer, "k1")).unwrap().as_str(),
            "svc@example.test"
        );
    }

    #[test]
    fn every_wrong_claim_has_its_reason() {
        let issuer = es256();
        let keys = keys(&issuer, "k1");
        let with = |field: &str, value: serde_json::Value| {
            let mut claims = good_claims();
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(field);
            } else {
                claims[field] = value;
            }
            sign(&issuer, Some("k1"), &claims)
        };
        for (token, expected) in [
            (with("exp", json!(now() - 120)), AuthError::JwtExpired),
            (with("nbf", json!(now() + 120)), AuthError::JwtNotYetValid),
            (
                with("iss", json!("https://elsewhere.test")),
                AuthError::JwtWrongIssuer,
            ),
            (
                with("aud", json!("someone-else")),
                AuthError::JwtWrongAudience,
            ),
            (with("exp", json!(null)), AuthError::JwtMissingClaim),
            (with("aud", json!(null)), AuthError::JwtMissingClaim),
            (with("iss", json!(null)), AuthError::JwtMissingClaim),
            (with("sub", json!(null)), AuthError::JwtMissingClaim),
            (with("sub", json!(42)), AuthError::JwtBadCaller),
            (with("sub", json!("has space")), AuthError::JwtBadCaller),
            (with("sub", json!("anonymous")), AuthError::JwtBadCaller),
        ] {
            assert_eq!(rules().verify(&token, &keys), Err(expected), "{expected:?}");
        }
        // Within the leeway, exp and nbf still pass.
        let token = with("exp", json!(now() - 30));
        assert!(rules().verify(&token, &keys).is_ok());
    }

    #[test]
    fn keys_signatures_and_algorithms_are_checked() {
        let issuer = es256();
        let other = es256();
        let keys = keys(&issuer, "k1");
        assert_eq!(
            rules().verify(&sign(&issuer, Some("k2"), &good_claims()), &keys),
            Err(AuthError::JwtUnknownKey)
        );
        assert_eq!(
            rules().verify(&sign(&other, Some("k1"), &good_claims()), &keys),
            Err(AuthError::JwtBadSignature)
        );
        let payload = URL_SAFE_NO_PAD.encode(good_claims().to_string());
        for header in [
            json!({"alg": "none", "kid": "k1"}),
            json!({"alg": "HS256", "kid": "k1"}),
            json!({"alg": "RS256", "kid": "k1"}),
            json!({"alg": "XX1", "kid": "k1"}),
        ] {
            let token = format!(
                "{}.{payload}.c2ln",
                URL_SAFE_NO_PAD.encode(header.to_string())
            );
            assert!(looks_like_jwt(token.as_bytes()), "{token}");
            assert_eq!(
                rules().verify(&token, &keys),
                Err(AuthError::JwtAlgorithm),
                "{header}"
            );
        }
        // A JWK that names its algorithm binds the token to it.
        let bound = KeySet::new(vec![PublicKey {
            kid: Some("k1".to_owned()),
            algorithm: Some(Algorithm::ES384),
            key: issuer.decoding.clone(),
        }]);
        assert_eq!(
            rules().verify(&sign(&issuer, Some("k1"), &good_claims()), &bound),
            Err(AuthError::JwtAlgorithm)
        );
        for malformed in ["eyJhbGciOiJFUzI1NiJ9.!!.x", "eyJub3Rqc29u.e30.x"] {
            assert!(rules().verify(malformed, &keys).is_err(), "{malformed}");
        }
        assert_eq!(
            header_of("eyJub3Rqc29u.e30.x"),
            Err(AuthError::JwtMalformed)
        );
    }

    #[test]
    fn static_tokens_do_not_look_like_jwts() {
        for token in ["alice-token", "a.b.c", "eyJ.x", "eyJa.b.c.d", "9f86d08.1.2"] {
            assert!(!looks_like_jwt(token.as_bytes()), "{token}");
        }
    }
}
