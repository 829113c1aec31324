use std::fmt;

use uuid::Uuid;

/// A todo's id: a UUID. Accepted as a hyphenated UUID in any case; always shown in lowercase
/// hyphenated form. New ids are UUIDv7, monotonic within this process, so ordering by id is
/// creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TodoId(Uuid);

impl TodoId {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses the text form; anything but a 36-character hyphenated UUID (in any case, with no
    /// surrounding whitespace, braces or prefix) is rejected.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("is required".to_owned());
        }
        if text.len() != 36 {
            return Err(
                "must be a hyphenated UUID such as 01890a5d-ac96-774b-bcce-b302099a8057".to_owned(),
            );
        }
        Uuid::try_parse(text).map(Self).map_err(|_| {
            "must be a hyphenated UUID such as 01890a5d-ac96-774b-bcce-b302099a8057".to_owned()
        })
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for TodoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hyphenated_uuid_in_any_case_and_prints_lowercase() {
        let id = TodoId::parse("01890A5D-AC96-774B-BCCE-B302099A8057").unwrap();
        assert_eq!(id.to_string(), "01890a5d-ac96-774b-bcce-b302099a8057");
    }

    #[test]
    fn rejects_everything_that_is_not_a_hyphenated_uuid() {
        for bad in [
            "",
            "nope",
            " 01890a5d-ac96-774b-bcce-b302099a8057",
            "01890a5d-ac96-774b-bcce-b302099a8057 ",
            "01890a5dac96774bbcceb302099a8057",
            "{01890a5d-ac96-774b-bcce-b302099a8057}",
            "urn:uuid:01890a5d-ac96-774b-bcce-b302099a8057",
            "01890a5d-ac96-774b-bcce-b302099a805g",
            "01890a5d_ac96_774b_bcce_b302099a8057",
        ] {
            assert!(TodoId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn generated_ids_are_version_7_and_increase() {
        let ids: Vec<TodoId> = (0..1000).map(|_| TodoId::generate()).collect();
        assert!(ids.iter().all(|id| id.as_uuid().get_version_num() == 7));
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
