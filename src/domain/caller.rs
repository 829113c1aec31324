/// Who is calling: the caller id a credential maps to (a tokens-file entry, or the SPIFFE ID of
/// a client certificate, e.g. `spiffe://example.org/ns/billing/sa/api`), or "anonymous" when
/// the server authenticates nobody. Todos belong to their caller, and idempotency keys are
/// scoped to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller(String);

impl Caller {
    pub const MAX_LEN: usize = 255;

    pub fn anonymous() -> Self {
        Self("anonymous".to_owned())
    }

    /// A caller id: 1 to 255 visible ASCII characters (`billing`, `system:serviceaccount:ns:sa`,
    /// `spiffe://example.org/ns/billing/sa/api`). Every id of the earlier, narrower form (64 of
    /// letters, digits, `.`, `_`, `-`, `@`) is still one, so stored rows keep their owner.
    pub fn parse(id: &str) -> Result<Self, String> {
        if id.is_empty() || id.len() > Self::MAX_LEN {
            return Err(format!("must be 1 to {} characters", Self::MAX_LEN));
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("may only contain visible ASCII characters (no spaces)".to_owned());
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_caller_is_named_anonymous() {
        assert_eq!(Caller::anonymous().as_str(), "anonymous");
    }

    #[test]
    fn caller_ids_are_visible_ascii_up_to_255() {
        for good in [
            "billing-service",
            "svc@team.example",
            "system:serviceaccount:payments:api",
            "spiffe://example.org/ns/billing/sa/api",
            &"x".repeat(255),
        ] {
            assert!(Caller::parse(good).is_ok(), "{good:?} was refused");
        }
        for bad in ["", "a b", "tab\t", "é", &"x".repeat(256)] {
            assert!(Caller::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
