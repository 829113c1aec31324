//! Request and response metadata of the idempotency protocol.

use std::time::Duration;

use http::HeaderMap;
use tonic::metadata::{AsciiMetadataValue, MetadataMap, MetadataValue};

use crate::error::ServiceError;
use crate::idempotency::IdempotencyKey;

/// Request metadata that carries the idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header (initial metadata) set to `true` on a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The request's idempotency key, from the `idempotency-key` entries of its headers, if it has
/// one. Several keys, or one that is not 1 to 255 visible ASCII characters, are
/// INVALID_ARGUMENT.
pub fn key_in_headers(
    entries: &[AsciiMetadataValue],
) -> Result<Option<IdempotencyKey>, ServiceError> {
    let mut values = entries.iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ServiceError::invalid(
            IDEMPOTENCY_KEY,
            "must be sent once; the request carries several",
        ));
    }
    let text = value.to_str().map_err(|_| {
        ServiceError::invalid(IDEMPOTENCY_KEY, "must be visible ASCII (0x21..=0x7E)")
    })?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|why| ServiceError::invalid(IDEMPOTENCY_KEY, why))
}

/// Request metadata a caller may set to correlate its logs with ours.
pub const REQUEST_ID: &str = "x-request-id";

/// The caller's `x-request-id` if it is short visible ASCII, else a new UUIDv7.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// The client's deadline for the call, from `grpc-timeout` (`<1 to 8 digits><H|M|S|m|u|n>`),
/// if it sent a valid one.
pub fn client_deadline(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Marks a response as replayed.
pub fn mark_replayed(metadata: &mut MetadataMap) {
    metadata.insert(IDEMPOTENT_REPLAYED, MetadataValue::from_static("true"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(values: &[&str]) -> Vec<AsciiMetadataValue> {
        values.iter().map(|value| value.parse().unwrap()).collect()
    }

    #[test]
    fn absent_key_is_none() {
        assert_eq!(key_in_headers(&[]).unwrap(), None);
    }

    #[test]
    fn one_valid_key_is_parsed() {
        let key = key_in_headers(&entries(&["abc-123"])).unwrap().unwrap();
        assert_eq!(key.as_str(), "abc-123");
    }

    #[test]
    fn several_keys_are_invalid() {
        assert!(matches!(
            key_in_headers(&entries(&["a", "a"])),
            Err(ServiceError::InvalidArgument(_))
        ));
    }

    #[test]
    fn request_id_is_taken_from_the_caller_or_generated() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_id(&headers).len(), 36);
        headers.insert(REQUEST_ID, "req-42".parse().unwrap());
        assert_eq!(request_id(&headers), "req-42");
        headers.insert(REQUEST_ID, "has space".parse().unwrap());
        assert_ne!(request_id(&headers), "has space");
    }

    #[test]
    fn client_deadlines_are_read_from_grpc_timeout() {
        let deadline = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            client_deadline(&headers)
        };
        assert_eq!(deadline("250m"), Some(Duration::from_millis(250)));
        assert_eq!(deadline("2S"), Some(Duration::from_secs(2)));
        assert_eq!(deadline("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            deadline("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for invalid in ["", "m", "123456789m", "10x", "-1S", "1.5S", "+1S"] {
            assert_eq!(deadline(invalid), None, "{invalid:?}");
        }
        assert_eq!(client_deadline(&HeaderMap::new()), None);
    }

    #[test]
    fn key_with_space_is_invalid() {
        assert!(key_in_headers(&entries(&["a b"])).is_err());
    }
}
