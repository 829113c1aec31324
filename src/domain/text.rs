/// A todo's title: trimmed of Unicode whitespace at both ends, then 1 to 256 characters
/// (Unicode scalar values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TodoTitle(String);

/// A todo's description: up to 4096 characters (Unicode scalar values); may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TodoDescription(String);

impl TodoTitle {
    pub const MAX_CHARS: usize = 256;

    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("is required and must not be blank".to_owned());
        }
        let chars = trimmed.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(format!(
                "must be at most {} characters after trimming, got {chars}",
                Self::MAX_CHARS
            ));
        }
        reject_nul(trimmed)?;
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TodoDescription {
    pub const MAX_CHARS: usize = 4096;

    pub fn parse(text: &str) -> Result<Self, String> {
        let chars = text.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(format!(
                "must be at most {} characters, got {chars}",
                Self::MAX_CHARS
            ));
        }
        reject_nul(text)?;
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// U+0000 cannot be stored in a PostgreSQL text column; refuse it up front on every database
/// so that both behave the same.
fn reject_nul(text: &str) -> Result<(), String> {
    if text.contains('\0') {
        Err("must not contain the NUL character (U+0000)".to_owned())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_is_trimmed_of_unicode_whitespace() {
        let title = TodoTitle::parse("\u{3000}\t buy milk \u{a0}\n").unwrap();
        assert_eq!(title.as_str(), "buy milk");
    }

    #[test]
    fn blank_title_is_rejected() {
        assert!(TodoTitle::parse("").is_err());
        assert!(TodoTitle::parse(" \u{2003}\n").is_err());
    }

    #[test]
    fn title_length_counts_unicode_scalar_values_after_trimming() {
        let at_limit = "é".repeat(256);
        assert!(TodoTitle::parse(&format!("  {at_limit}  ")).is_ok());
        assert!(TodoTitle::parse(&"é".repeat(257)).is_err());
        assert!(TodoTitle::parse(&"🦀".repeat(256)).is_ok());
    }

    #[test]
    fn description_may_be_empty_and_is_not_trimmed() {
        assert_eq!(TodoDescription::parse("").unwrap().as_str(), "");
        assert_eq!(TodoDescription::parse("  x ").unwrap().as_str(), "  x ");
    }

    #[test]
    fn description_length_counts_unicode_scalar_values() {
        assert!(TodoDescription::parse(&"ß".repeat(4096)).is_ok());
        assert!(TodoDescription::parse(&"ß".repeat(4097)).is_err());
    }

    #[test]
    fn nul_is_rejected_in_both() {
        assert!(TodoTitle::parse("a\0b").is_err());
        assert!(TodoDescription::parse("a\0b").is_err());
    }
}
