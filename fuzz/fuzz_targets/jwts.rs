//! A JWKS document and a bearer JWT against it (the two are split at the first NUL byte).
//! Properties: nothing panics; a JWKS never yields an HMAC key; a JWT that is accepted has the
//! shape the guard routes to the JWT path, an accepted asymmetric `alg` and a caller that is
//! not `anonymous`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_service::auth::jwks::parse_key_set;
use todo_service::auth::jwt::{ACCEPTED_ALGORITHMS, JwtRules, header_of, looks_like_jwt};
use todo_service::domain::Caller;

fuzz_target!(|data: &[u8]| {
    let (document, token) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(keys) = parse_key_set(document) else {
        return;
    };
    assert!(!keys.is_empty());
    let Ok(token) = std::str::from_utf8(token) else {
        return;
    };
    let rules = JwtRules {
        issuer: "https://issuer.test".to_owned(),
        audience: "todo-service".to_owned(),
        caller_claim: "sub".to_owned(),
    };
    if let Ok(caller) = rules.verify(token, &keys) {
        assert!(looks_like_jwt(token.as_bytes()), "{token:?}");
        let header = header_of(token).expect("an accepted token has a header");
        let alg: jsonwebtoken::Algorithm = header.alg.parse().expect("a known alg");
        assert!(ACCEPTED_ALGORITHMS.contains(&alg), "{alg:?}");
        assert_ne!(caller, Caller::anonymous());
    }
});
