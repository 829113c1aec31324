use super::{Timestamp, TodoDescription, TodoId, TodoTitle};

/// A stored todo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Todo {
    pub id: TodoId,
    pub title: TodoTitle,
    pub description: TodoDescription,
    pub completed: bool,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    /// Counts the writes to this todo (1 after creation). The etag is derived from it, so it
    /// changes on every write and on nothing else.
    pub revision: i64,
}

/// What CreateTodo asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTodo {
    pub title: TodoTitle,
    pub description: TodoDescription,
    pub completed: bool,
}

/// The fields an UpdateTodo replaces; `None` leaves the field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TodoPatch {
    pub title: Option<TodoTitle>,
    pub description: Option<TodoDescription>,
    pub completed: Option<bool>,
}

impl Todo {
    /// A todo as first created, with a fresh id.
    pub fn create(new: NewTodo, now: Timestamp) -> Self {
        Self {
            id: TodoId::generate(),
            title: new.title,
            description: new.description,
            completed: new.completed,
            create_time: now,
            update_time: now,
            revision: 1,
        }
    }

    /// The entity tag clients send back to make a write conditional (AIP-154).
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }

    /// Whether an etag sent by a client matches; an empty one matches anything.
    pub fn etag_matches(&self, etag: &str) -> bool {
        etag.is_empty() || etag == self.etag()
    }

    /// The todo after `patch`, or `None` when the patch changes nothing (then it is not a write:
    /// etag and update time stay as they were).
    pub fn apply(&self, patch: TodoPatch, now: Timestamp) -> Option<Self> {
        let mut next = self.clone();
        if let Some(title) = patch.title {
            next.title = title;
        }
        if let Some(description) = patch.description {
            next.description = description;
        }
        if let Some(completed) = patch.completed {
            next.completed = completed;
        }
        if next == *self {
            return None;
        }
        next.revision = self.revision + 1;
        // Never let update_time go backwards if the clock does.
        next.update_time = now.max(self.update_time);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Todo {
        Todo::create(
            NewTodo {
                title: TodoTitle::parse("write tests").unwrap(),
                description: TodoDescription::parse("").unwrap(),
                completed: false,
            },
            Timestamp::from_unix_micros(1_000),
        )
    }

    #[test]
    fn created_todo_has_revision_one_and_equal_times() {
        let todo = sample();
        assert_eq!(todo.revision, 1);
        assert_eq!(todo.create_time, todo.update_time);
        assert_eq!(todo.etag(), "\"1\"");
    }

    #[test]
    fn apply_changes_revision_etag_and_update_time() {
        let todo = sample();
        let patch = TodoPatch {
            completed: Some(true),
            ..TodoPatch::default()
        };
        let next = todo
            .apply(patch, Timestamp::from_unix_micros(2_000))
            .unwrap();
        assert!(next.completed);
        assert_eq!(next.revision, 2);
        assert_ne!(next.etag(), todo.etag());
        assert_eq!(next.update_time, Timestamp::from_unix_micros(2_000));
        assert_eq!(next.create_time, todo.create_time);
    }

    #[test]
    fn apply_that_changes_nothing_is_not_a_write() {
        let todo = sample();
        let same = TodoPatch {
            title: Some(todo.title.clone()),
            description: Some(todo.description.clone()),
            completed: Some(todo.completed),
        };
        assert_eq!(todo.apply(same, Timestamp::from_unix_micros(9_000)), None);
        assert_eq!(
            todo.apply(TodoPatch::default(), Timestamp::from_unix_micros(9_000)),
            None
        );
    }

    #[test]
    fn etag_matching() {
        let todo = sample();
        assert!(todo.etag_matches(""));
        assert!(todo.etag_matches("\"1\""));
        assert!(!todo.etag_matches("\"2\""));
        assert!(!todo.etag_matches("1"));
    }
}
