//! Where a write's idempotency key comes from: the `idempotency-key` request metadata, or the
//! AIP-155 `request_id` field of the request message. The two are one key with one meaning;
//! the fingerprint of a request leaves `request_id` out, so a retry that moves the key from
//! one place to the other is the same request.

use std::borrow::Cow;

use crate::domain::FieldViolation;
use crate::error::ServiceError;
use crate::idempotency::IdempotencyKey;
use crate::proto;

use super::metadata::{self, IDEMPOTENCY_KEY};

/// The request message's field that carries the key (AIP-155).
pub const REQUEST_ID_FIELD: &str = "request_id";

/// A write request message, with or without an AIP-155 `request_id` field.
pub trait RequestIdField: prost::Message + Clone {
    /// The `request_id` the client set (empty: none; messages without the field: always).
    fn request_id(&self) -> &str {
        ""
    }

    /// The message as it is fingerprinted: without its `request_id`.
    fn without_request_id(&self) -> Cow<'_, Self> {
        Cow::Borrowed(self)
    }
}

/// `impl RequestIdField` for request messages with an AIP-155 `request_id` field.
macro_rules! with_request_id {
    ($($message:ty),+ $(,)?) => {$(
        impl RequestIdField for $message {
            fn request_id(&self) -> &str {
                &self.request_id
            }

            fn without_request_id(&self) -> Cow<'_, Self> {
                without(self, &self.request_id, |message| message.request_id.clear())
            }
        }
    )+};
}

with_request_id!(
    proto::CreateTodoRequest,
    proto::UpdateTodoRequest,
    proto::CompleteTodosRequest,
);

impl RequestIdField for proto::DeleteTodoRequest {}

fn without<'a, M: Clone>(
    message: &'a M,
    request_id: &str,
    clear: impl FnOnce(&mut M),
) -> Cow<'a, M> {
    if request_id.is_empty() {
        Cow::Borrowed(message)
    } else {
        let mut owned = message.clone();
        clear(&mut owned);
        Cow::Owned(owned)
    }
}

/// The request's key: from the metadata entries `from_metadata`, from `message.request_id`, or
/// from both when they agree. Each is validated alike (1 to 255 visible ASCII characters);
/// two different keys are INVALID_ARGUMENT naming both.
pub fn request_key(
    from_metadata: &[tonic::metadata::AsciiMetadataValue],
    message: &impl RequestIdField,
) -> Result<Option<IdempotencyKey>, ServiceError> {
    let in_metadata = metadata::key_in_headers(from_metadata)?;
    let in_message = match message.request_id() {
        "" => None,
        text => Some(
            IdempotencyKey::parse(text)
                .map_err(|why| ServiceError::invalid(REQUEST_ID_FIELD, why))?,
        ),
    };
    match (in_metadata, in_message) {
        (Some(a), Some(b)) if a != b => Err(ServiceError::InvalidArgument(vec![
            FieldViolation::new(
                IDEMPOTENCY_KEY,
                "differs from request_id: send one key, in either place or in both",
            ),
            FieldViolation::new(
                REQUEST_ID_FIELD,
                "differs from the idempotency-key metadata: send one key, in either place or in both",
            ),
        ])),
        (a, b) => Ok(a.or(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(request_id: &str) -> proto::CreateTodoRequest {
        proto::CreateTodoRequest {
            todo: Some(proto::Todo {
                title: "t".into(),
                ..proto::Todo::default()
            }),
            request_id: request_id.into(),
        }
    }

    fn header(value: &str) -> Vec<tonic::metadata::AsciiMetadataValue> {
        vec![value.parse().expect("ascii")]
    }

    #[test]
    fn the_key_comes_from_either_place_or_both_when_equal() {
        let key = |h: &[tonic::metadata::AsciiMetadataValue], id: &str| {
            request_key(h, &create(id))
                .expect("valid")
                .map(|key| key.as_str().to_owned())
        };
        assert_eq!(key(&[], ""), None);
        assert_eq!(key(&header("k"), ""), Some("k".to_owned()));
        assert_eq!(key(&[], "k"), Some("k".to_owned()));
        assert_eq!(key(&header("k"), "k"), Some("k".to_owned()));
    }

    #[test]
    fn two_different_keys_name_both_places() {
        let Err(ServiceError::InvalidArgument(violations)) =
            request_key(&header("a"), &create("b"))
        else {
            panic!("two keys must be refused");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, [IDEMPOTENCY_KEY, REQUEST_ID_FIELD]);
    }

    #[test]
    fn a_request_id_is_validated_like_the_metadata_key() {
        for bad in ["has space", "é", &"x".repeat(256)] {
            let Err(ServiceError::InvalidArgument(violations)) = request_key(&[], &create(bad))
            else {
                panic!("{bad:?} must be refused");
            };
            assert_eq!(violations[0].field, REQUEST_ID_FIELD);
        }
    }

    #[test]
    fn the_fingerprinted_message_leaves_request_id_out() {
        assert_eq!(*create("k").without_request_id(), create(""));
        assert!(matches!(create("").without_request_id(), Cow::Borrowed(_)));
    }
}
