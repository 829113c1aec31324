//! The tokens file, and `authorization` values against it. Properties: nothing panics; an
//! accepted file never names `anonymous`; a token authenticates as at most one caller, and only
//! in the `Bearer <token>` form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_service::auth::{CallerTokens, hash_token};
use todo_service::domain::Caller;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, header) = text.split_once('\u{0}').unwrap_or((text, ""));
    let Ok(tokens) = CallerTokens::parse(file) else {
        return;
    };
    if let Ok(caller) = tokens.authenticate(Some(header.as_bytes())) {
        assert!(tokens.is_empty() || caller != Caller::anonymous());
        if !tokens.is_empty() {
            let token = header
                .get(7..)
                .unwrap_or_default()
                .trim_matches(|c: char| c.is_ascii_whitespace());
            let file = file.to_ascii_lowercase();
            assert!(file.contains(&hash_token(token)), "{header:?}");
        }
    }
});
