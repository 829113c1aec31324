/// Who is calling: the caller id a bearer token maps to, or "anonymous" when the server has no
/// tokens configured. Todos belong to their caller, and idempotency keys are scoped to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller(String);

impl Caller {
    pub const MAX_LEN: usize = 64;

    pub fn anonymous() -> Self {
        Self("anonymous".to_owned())
    }

    /// A caller id: 1 to 64 characters among ASCII letters, digits, `.`, `_`, `-`, `@`.
    pub fn parse(id: &str) -> Result<Self, String> {
        if id.is_empty() || id.len() > Self::MAX_LEN {
            return Err(format!("must be 1 to {} characters", Self::MAX_LEN));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
        {
            return Err("may only contain ASCII letters, digits, '.', '_', '-' and '@'".to_owned());
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
    fn caller_ids_are_short_and_plain() {
        assert!(Caller::parse("billing-service").is_ok());
        assert!(Caller::parse("svc@team.example").is_ok());
        for bad in ["", "a b", "tab\t", "é", &"x".repeat(65)] {
            assert!(Caller::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
