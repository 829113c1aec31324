use prost::Message;
use sha2::{Digest, Sha256};

/// SHA-256 of the RPC method and the request message as the server decoded it, re-encoded.
/// prost encodes a message deterministically (fields in number order, unknown fields dropped),
/// so two clients that encode the same request differently get the same fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFingerprint([u8; 32]);

impl RequestFingerprint {
    pub fn of(method: &str, request: &impl Message) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(method.as_bytes());
        hasher.update([0]);
        hasher.update(request.encode_to_vec());
        Self(hasher.finalize().into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CreateTodoRequest, Todo};

    fn request(title: &str) -> CreateTodoRequest {
        CreateTodoRequest {
            todo: Some(Todo {
                title: title.to_owned(),
                ..Todo::default()
            }),
            ..CreateTodoRequest::default()
        }
    }

    #[test]
    fn equal_requests_have_equal_fingerprints() {
        assert_eq!(
            RequestFingerprint::of("/m", &request("a")),
            RequestFingerprint::of("/m", &request("a"))
        );
    }

    #[test]
    fn method_and_every_field_count() {
        let base = RequestFingerprint::of("/m", &request("a"));
        assert_ne!(base, RequestFingerprint::of("/n", &request("a")));
        assert_ne!(base, RequestFingerprint::of("/m", &request("b")));
        let mut completed = request("a");
        if let Some(todo) = completed.todo.as_mut() {
            todo.completed = true;
        }
        assert_ne!(base, RequestFingerprint::of("/m", &completed));
    }

    #[test]
    fn unknown_fields_and_field_order_on_the_wire_do_not_count() {
        // Field 2 (title) then an unknown field 99, inside field 1 (todo), followed by a
        // completed=false written explicitly (proto3 default): decodes to the same message.
        let mut inner = Vec::new();
        prost::encoding::string::encode(2, &"a".to_owned(), &mut inner);
        prost::encoding::uint64::encode(99, &7, &mut inner);
        prost::encoding::bool::encode(4, &false, &mut inner);
        let mut wire = Vec::new();
        prost::encoding::bytes::encode(1, &inner, &mut wire);
        let decoded = CreateTodoRequest::decode(wire.as_slice()).unwrap();
        assert_eq!(
            RequestFingerprint::of("/m", &decoded),
            RequestFingerprint::of("/m", &request("a"))
        );
    }
}
