use super::TodoId;

/// How many todos a ListTodos page holds: 0 means the default 50, more than 1000 is capped at
/// 1000, negative is invalid (AIP-158).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u16);

impl PageSize {
    pub const DEFAULT: u16 = 50;
    pub const MAX: u16 = 1000;

    pub fn parse(requested: i32) -> Result<Self, String> {
        match requested {
            n if n < 0 => Err(format!("must not be negative, got {n}")),
            0 => Ok(Self(Self::DEFAULT)),
            n if n > i32::from(Self::MAX) => Ok(Self(Self::MAX)),
            n => Ok(Self(n as u16)),
        }
    }

    pub fn get(self) -> u64 {
        u64::from(self.0)
    }
}

/// The ListTodos filter; a page token is only valid with the filter that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListFilter {
    pub completed: Option<bool>,
}

/// One page request: the filter, where to start (after which id), and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: ListFilter,
    pub after: Option<TodoId>,
    pub page_size: PageSize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_caps_and_rejects_negative() {
        assert_eq!(PageSize::parse(0).unwrap().get(), 50);
        assert_eq!(PageSize::parse(1).unwrap().get(), 1);
        assert_eq!(PageSize::parse(1000).unwrap().get(), 1000);
        assert_eq!(PageSize::parse(1001).unwrap().get(), 1000);
        assert_eq!(PageSize::parse(i32::MAX).unwrap().get(), 1000);
        assert!(PageSize::parse(-1).is_err());
        assert!(PageSize::parse(i32::MIN).is_err());
    }
}
