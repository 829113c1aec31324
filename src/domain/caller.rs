/// Who is calling. Idempotency keys are scoped to a caller. Until callers authenticate, every
/// caller is the one caller "anonymous", whatever connection or replica it comes through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller(String);

impl Caller {
    pub fn anonymous() -> Self {
        Self("anonymous".to_owned())
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
}
