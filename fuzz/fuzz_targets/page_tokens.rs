//! Page tokens as a caller can send them. Properties: nothing panics; a token that is accepted
//! is exactly the one the service would issue for what it decodes to (no second spelling of a
//! token, no token accepted for another filter).
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_service::domain::{Caller, ListFilter, PageTokenKey};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let key = PageTokenKey::from_bytes([7; 32]);
    let caller = Caller::anonymous();
    let filter = ListFilter {
        completed: match selector % 3 {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        },
    };
    if let Ok(token) = key.decode(text, filter, &caller) {
        assert_eq!(token.filter, filter);
        assert_eq!(key.encode(&token, &caller), text);
    }
});
