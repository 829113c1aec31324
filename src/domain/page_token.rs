use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::{ListFilter, TodoId};

/// The secret that signs page tokens. It is stored in the database, so every replica sharing
/// the database, and every restart, issues and accepts the same tokens.
#[derive(Clone)]
pub struct PageTokenKey([u8; 32]);

/// Where the next page starts, bound to the filter that produced it. Its text form is opaque:
/// base64url of `version | filter | last id | HMAC-SHA256 tag (16 bytes)`, so a token the
/// service did not issue, or one used with another filter, is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    pub filter: ListFilter,
    pub after: TodoId,
}

/// Never prints the secret.
impl std::fmt::Debug for PageTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenKey(..)")
    }
}

const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 1 + 1 + 16;
const TAG_LEN: usize = 16;

impl PageTokenKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn generate() -> Self {
        Self(rand::random())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC-SHA256 accepts keys of any length")
    }

    pub fn encode(&self, token: &PageToken) -> String {
        let mut bytes = Vec::with_capacity(PAYLOAD_LEN + TAG_LEN);
        bytes.push(VERSION);
        bytes.push(filter_byte(token.filter));
        bytes.extend_from_slice(token.after.as_bytes());
        let mut mac = self.mac();
        mac.update(&bytes);
        let tag = mac.finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks a token's integrity and that it was issued for `filter`.
    pub fn decode(&self, text: &str, filter: ListFilter) -> Result<PageToken, String> {
        const INVALID: &str = "is not a page token issued by this service";
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| INVALID)?;
        if bytes.len() != PAYLOAD_LEN + TAG_LEN || bytes[0] != VERSION {
            return Err(INVALID.to_owned());
        }
        let (payload, tag) = bytes.split_at(PAYLOAD_LEN);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_truncated_left(tag).map_err(|_| INVALID)?;
        if payload[1] != filter_byte(filter) {
            return Err("was issued for a different `completed` filter".to_owned());
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&payload[2..]);
        Ok(PageToken {
            filter,
            after: TodoId::from_uuid(Uuid::from_bytes(id)),
        })
    }
}

fn filter_byte(filter: ListFilter) -> u8 {
    match filter.completed {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(completed: Option<bool>) -> PageToken {
        PageToken {
            filter: ListFilter { completed },
            after: TodoId::generate(),
        }
    }

    #[test]
    fn round_trips_with_the_same_key_and_filter() {
        let key = PageTokenKey::generate();
        let original = token(Some(true));
        let text = key.encode(&original);
        assert_eq!(key.decode(&text, original.filter), Ok(original));
    }

    #[test]
    fn refuses_another_filter() {
        let key = PageTokenKey::generate();
        let text = key.encode(&token(None));
        assert!(
            key.decode(
                &text,
                ListFilter {
                    completed: Some(false)
                }
            )
            .is_err()
        );
    }

    #[test]
    fn refuses_a_token_signed_by_another_key() {
        let text = PageTokenKey::generate().encode(&token(None));
        assert!(
            PageTokenKey::generate()
                .decode(&text, ListFilter::default())
                .is_err()
        );
    }

    #[test]
    fn refuses_altered_truncated_and_made_up_tokens() {
        let key = PageTokenKey::generate();
        let text = key.encode(&token(None));
        let filter = ListFilter::default();
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x01;
            assert!(
                key.decode(&URL_SAFE_NO_PAD.encode(&bytes), filter).is_err(),
                "flipping byte {i} went unnoticed"
            );
            bytes[i] ^= 0x01;
        }
        assert!(key.decode(&text[..text.len() - 2], filter).is_err());
        assert!(key.decode("made-up", filter).is_err());
        assert!(key.decode("!!!", filter).is_err());
    }
}
