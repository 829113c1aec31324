//! Request and response metadata of the idempotency protocol.

use tonic::metadata::{MetadataMap, MetadataValue};

use crate::error::ServiceError;
use crate::idempotency::IdempotencyKey;

/// Request metadata that carries the idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header (initial metadata) set to `true` on a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The request's idempotency key, if it has one. Several keys, or one that is not 1 to 255
/// visible ASCII characters, are INVALID_ARGUMENT.
pub fn idempotency_key(metadata: &MetadataMap) -> Result<Option<IdempotencyKey>, ServiceError> {
    let mut values = metadata.get_all(IDEMPOTENCY_KEY).iter();
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
pub fn request_id(metadata: &MetadataMap) -> String {
    metadata
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// Marks a response as replayed.
pub fn mark_replayed(metadata: &mut MetadataMap) {
    metadata.insert(IDEMPOTENT_REPLAYED, MetadataValue::from_static("true"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_key_is_none() {
        assert_eq!(idempotency_key(&MetadataMap::new()).unwrap(), None);
    }

    #[test]
    fn one_valid_key_is_parsed() {
        let mut metadata = MetadataMap::new();
        metadata.insert(IDEMPOTENCY_KEY, "abc-123".parse().unwrap());
        let key = idempotency_key(&metadata).unwrap().unwrap();
        assert_eq!(key.as_str(), "abc-123");
    }

    #[test]
    fn several_keys_are_invalid() {
        let mut metadata = MetadataMap::new();
        metadata.append(IDEMPOTENCY_KEY, "a".parse().unwrap());
        metadata.append(IDEMPOTENCY_KEY, "a".parse().unwrap());
        assert!(matches!(
            idempotency_key(&metadata),
            Err(ServiceError::InvalidArgument(_))
        ));
    }

    #[test]
    fn request_id_is_taken_from_the_caller_or_generated() {
        let mut metadata = MetadataMap::new();
        assert_eq!(request_id(&metadata).len(), 36);
        metadata.insert(REQUEST_ID, "req-42".parse().unwrap());
        assert_eq!(request_id(&metadata), "req-42");
        metadata.insert(REQUEST_ID, "has space".parse().unwrap());
        assert_ne!(request_id(&metadata), "has space");
    }

    #[test]
    fn key_with_space_is_invalid() {
        let mut metadata = MetadataMap::new();
        metadata.insert(IDEMPOTENCY_KEY, "a b".parse().unwrap());
        assert!(idempotency_key(&metadata).is_err());
    }
}
