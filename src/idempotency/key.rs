use std::fmt;

/// The value of the `idempotency-key` request metadata: 1 to 255 visible ASCII characters
/// (0x21..=0x7E).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if text.len() > Self::MAX_LEN {
            return Err(format!(
                "must be at most {} characters, got {}",
                Self::MAX_LEN,
                text.len()
            ));
        }
        if let Some(bad) = text.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
            return Err(format!(
                "must be visible ASCII (0x21..=0x7E); found byte 0x{bad:02X}"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short hash of the key, to correlate log lines without logging the key itself.
    pub fn log_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(self.0.as_bytes())[..6])
    }
}

/// Keys are credentials of a sort (they replay responses): debug output shows only a prefix.
impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take(8).collect();
        write!(f, "IdempotencyKey({prefix}…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_visible_ascii_from_1_to_255_chars() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse("!~").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse("0190d2e4-6f1c-7d55-9b1f-3c2a8e4d5f60").is_ok());
    }

    #[test]
    fn rejects_empty_long_space_control_and_non_ascii() {
        for bad in [
            String::new(),
            "k".repeat(256),
            "a b".to_owned(),
            " a".to_owned(),
            "a\t".to_owned(),
            "a\x7f".to_owned(),
            "clé".to_owned(),
        ] {
            assert!(IdempotencyKey::parse(&bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn log_hash_is_short_stable_and_not_the_key() {
        let key = IdempotencyKey::parse("my-secret-key").unwrap();
        assert_eq!(key.log_hash().len(), 12);
        assert_eq!(
            key.log_hash(),
            IdempotencyKey::parse("my-secret-key").unwrap().log_hash()
        );
        assert_ne!(
            key.log_hash(),
            IdempotencyKey::parse("other").unwrap().log_hash()
        );
        assert!(!key.log_hash().contains("secret"));
    }

    #[test]
    fn debug_does_not_print_the_whole_key() {
        let key = IdempotencyKey::parse("secret-key-0123456789").unwrap();
        assert!(!format!("{key:?}").contains("0123456789"));
    }
}
