use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::{Caller, ListFilter, TodoId};

/// The secret that signs page tokens. It is stored in the database, so every replica sharing
/// the database, and every restart, issues and accepts the same tokens.
#[derive(Clone)]
pub struct PageTokenKey([u8; 32]);

/// Where the next page starts, bound to the filter and the caller that produced it. Its text
/// form is opaque: base64url of `version | filter | last id | tag`, where the tag is the first
/// 16 bytes of HMAC-SHA256 over those bytes and the caller id. So a token the service did not
/// issue, or one used with another filter or by another caller, is refused.
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

    fn mac(&self, payload: &[u8], caller: &Caller) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(payload);
        mac.update(caller.as_str().as_bytes());
        mac
    }

    pub fn encode(&self, token: &PageToken, caller: &Caller) -> String {
        let mut bytes = Vec::with_capacity(PAYLOAD_LEN + TAG_LEN);
        bytes.push(VERSION);
        bytes.push(filter_byte(token.filter));
        bytes.extend_from_slice(token.after.as_bytes());
        let tag = self.mac(&bytes, caller).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks a token's integrity and that it was issued for `filter` to `caller`.
    pub fn decode(
        &self,
        text: &str,
        filter: ListFilter,
        caller: &Caller,
    ) -> Result<PageToken, String> {
        const INVALID: &str = "is not a page token issued by this service";
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| INVALID)?;
        if bytes.len() != PAYLOAD_LEN + TAG_LEN || bytes[0] != VERSION {
            return Err(INVALID.to_owned());
        }
        let (payload, tag) = bytes.split_at(PAYLOAD_LEN);
        self.mac(payload, caller)
            .verify_truncated_left(tag)
            .map_err(|_| INVALID)?;
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
        let text = key.encode(&original, &Caller::anonymous());
        assert_eq!(
            key.decode(&text, original.filter, &Caller::anonymous()),
            Ok(original)
        );
    }

    #[test]
    fn refuses_another_filter() {
        let key = PageTokenKey::generate();
        let text = key.encode(&token(None), &Caller::anonymous());
        let other = ListFilter {
            completed: Some(false),
        };
        assert!(key.decode(&text, other, &Caller::anonymous()).is_err());
    }

    #[test]
    fn refuses_another_caller() {
        let key = PageTokenKey::generate();
        let alice = Caller::parse("alice").unwrap();
        let text = key.encode(&token(None), &alice);
        assert!(key.decode(&text, ListFilter::default(), &alice).is_ok());
        let bob = Caller::parse("bob").unwrap();
        assert!(key.decode(&text, ListFilter::default(), &bob).is_err());
    }

    #[test]
    fn refuses_a_token_signed_by_another_key() {
        let text = PageTokenKey::generate().encode(&token(None), &Caller::anonymous());
        assert!(
            PageTokenKey::generate()
                .decode(&text, ListFilter::default(), &Caller::anonymous())
                .is_err()
        );
    }

    #[test]
    fn refuses_altered_truncated_and_made_up_tokens() {
        let key = PageTokenKey::generate();
        let anonymous = Caller::anonymous();
        let text = key.encode(&token(None), &anonymous);
        let filter = ListFilter::default();
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x01;
            assert!(
                key.decode(&URL_SAFE_NO_PAD.encode(&bytes), filter, &anonymous)
                    .is_err(),
                "flipping byte {i} went unnoticed"
            );
            bytes[i] ^= 0x01;
        }
        assert!(
            key.decode(&text[..text.len() - 2], filter, &anonymous)
                .is_err()
        );
        assert!(key.decode("made-up", filter, &anonymous).is_err());
        assert!(key.decode("!!!", filter, &anonymous).is_err());
    }
}
