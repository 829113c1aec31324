//! `idempotency-key` metadata as a caller can send it (one or several entries). Properties:
//! nothing panics; an accepted key is 1 to 255 visible ASCII characters and is the entry
//! itself; several entries are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_service::grpc::metadata::key_in_headers;
use tonic::metadata::AsciiMetadataValue;

fuzz_target!(|data: &[u8]| {
    let entries: Vec<AsciiMetadataValue> = data
        .split(|byte| *byte == b'\n')
        .filter_map(|entry| AsciiMetadataValue::try_from(entry).ok())
        .collect();
    match key_in_headers(&entries) {
        Ok(Some(key)) => {
            assert_eq!(entries.len(), 1);
            let text = key.as_str();
            assert!((1..=255).contains(&text.len()));
            assert!(text.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(entries[0].as_encoded_bytes(), text.as_bytes());
        }
        Ok(None) => assert!(entries.is_empty()),
        Err(_) => {}
    }
});
