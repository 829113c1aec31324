/// Which fields an UpdateTodo replaces: `title`, `description`, `completed`, or `*` alone for
/// all of them. An empty mask means full replacement (AIP-134).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateMask {
    pub title: bool,
    pub description: bool,
    pub completed: bool,
}

impl UpdateMask {
    pub const ALL: Self = Self {
        title: true,
        description: true,
        completed: true,
    };

    pub fn parse<S: AsRef<str>>(paths: &[S]) -> Result<Self, String> {
        if paths.is_empty() {
            return Ok(Self::ALL);
        }
        if paths.iter().any(|path| path.as_ref() == "*") {
            if paths.len() == 1 {
                return Ok(Self::ALL);
            }
            return Err("`*` must be the only path when it is used".to_owned());
        }
        let mut mask = Self {
            title: false,
            description: false,
            completed: false,
        };
        for path in paths {
            match path.as_ref() {
                "title" => mask.title = true,
                "description" => mask.description = true,
                "completed" => mask.completed = true,
                other => {
                    return Err(format!(
                        "unknown or read-only path {other:?}; allowed: title, description, completed, or * alone"
                    ));
                }
            }
        }
        Ok(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_star_mean_everything() {
        assert_eq!(UpdateMask::parse::<&str>(&[]).unwrap(), UpdateMask::ALL);
        assert_eq!(UpdateMask::parse(&["*"]).unwrap(), UpdateMask::ALL);
    }

    #[test]
    fn named_paths_select_fields() {
        let mask = UpdateMask::parse(&["completed", "title"]).unwrap();
        assert!(mask.title && mask.completed && !mask.description);
    }

    #[test]
    fn output_only_unknown_and_mixed_star_paths_are_rejected() {
        for bad in [
            vec!["id"],
            vec!["etag"],
            vec!["create_time"],
            vec!["update_time"],
            vec!["titel"],
            vec!["Title"],
            vec!["*", "title"],
            vec![""],
        ] {
            assert!(UpdateMask::parse(&bad).is_err(), "{bad:?} was accepted");
        }
    }
}
