//! The ids of a CompleteTodos request: 1 to 100 distinct todo ids, in the caller's order.

use super::{FieldViolation, TodoId};

/// 1 to [`TodoIds::MAX`] distinct todo ids, in the order the caller sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TodoIds(Vec<TodoId>);

impl TodoIds {
    /// Most ids one request may name.
    pub const MAX: usize = 100;

    /// Parses the request field `field` (`ids`): every id that is not a UUID, and every id that
    /// repeats an earlier one, is named by its index (`ids[3]`); none at all or more than
    /// [`Self::MAX`] names the field itself.
    pub fn parse(field: &str, texts: &[String]) -> Result<Self, Vec<FieldViolation>> {
        if texts.is_empty() {
            return Err(vec![FieldViolation::new(
                field,
                format!("is required: 1 to {} todo ids", Self::MAX),
            )]);
        }
        if texts.len() > Self::MAX {
            return Err(vec![FieldViolation::new(
                field,
                format!("at most {} ids; the request has {}", Self::MAX, texts.len()),
            )]);
        }
        let mut ids: Vec<TodoId> = Vec::with_capacity(texts.len());
        let mut violations = Vec::new();
        for (index, text) in texts.iter().enumerate() {
            match TodoId::parse(text) {
                Ok(id) => match ids.iter().position(|seen| *seen == id) {
                    Some(first) => violations.push(FieldViolation::new(
                        format!("{field}[{index}]"),
                        format!("repeats {field}[{first}]: each id may appear once"),
                    )),
                    None => ids.push(id),
                },
                Err(why) => violations.push(FieldViolation::new(format!("{field}[{index}]"), why)),
            }
        }
        if violations.is_empty() {
            Ok(Self(ids))
        } else {
            Err(violations)
        }
    }

    pub fn as_slice(&self) -> &[TodoId] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "01890a5d-ac96-774b-bcce-b302099a8057";
    const B: &str = "01890a5d-ac96-774b-bcce-b302099a8058";

    fn fields(result: Result<TodoIds, Vec<FieldViolation>>) -> Vec<String> {
        result
            .expect_err("invalid")
            .into_iter()
            .map(|violation| violation.field)
            .collect()
    }

    #[test]
    fn distinct_ids_keep_their_order() {
        let ids = TodoIds::parse("ids", &[B.to_owned(), A.to_owned()]).expect("valid");
        let shown: Vec<String> = ids.as_slice().iter().map(ToString::to_string).collect();
        assert_eq!(shown, [B, A]);
    }

    #[test]
    fn none_or_too_many_name_the_field() {
        assert_eq!(fields(TodoIds::parse("ids", &[])), ["ids"]);
        let many: Vec<String> = (0..=TodoIds::MAX)
            .map(|n| format!("01890a5d-ac96-774b-bcce-{n:012}"))
            .collect();
        assert_eq!(fields(TodoIds::parse("ids", &many)), ["ids"]);
        assert!(TodoIds::parse("ids", &many[..TodoIds::MAX]).is_ok());
    }

    #[test]
    fn bad_and_repeated_ids_are_named_by_index() {
        let texts = [A.to_owned(), "nope".to_owned(), A.to_uppercase()];
        assert_eq!(fields(TodoIds::parse("ids", &texts)), ["ids[1]", "ids[2]"]);
    }
}
