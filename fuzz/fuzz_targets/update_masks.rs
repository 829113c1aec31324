//! `update_mask` paths as a caller can send them. Properties: nothing panics; an accepted mask
//! names only `title`, `description`, `completed`, or is the single path `*`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_service::domain::UpdateMask;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let paths: Vec<&str> = if text.is_empty() {
        Vec::new()
    } else {
        text.split('\n').collect()
    };
    if UpdateMask::parse(&paths).is_ok() {
        let known = ["title", "description", "completed"];
        assert!(
            paths == ["*"] || paths.iter().all(|path| known.contains(path)),
            "{paths:?}"
        );
    }
});
