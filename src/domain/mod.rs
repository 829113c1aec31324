//! Domain types: everything a request means once it has been parsed. Each type can only be
//! built through a validating constructor, so code past the gRPC boundary never re-checks input.

mod caller;
mod field_violation;
mod list;
mod page_token;
mod text;
mod time;
mod todo;
mod todo_id;
mod todo_ids;
mod update_mask;

pub use caller::Caller;
pub use field_violation::FieldViolation;
pub use list::{ListFilter, ListQuery, PageSize};
pub use page_token::{PageToken, PageTokenKey};
pub use text::{TodoDescription, TodoTitle};
pub use time::Timestamp;
pub use todo::{NewTodo, Todo, TodoPatch};
pub use todo_id::TodoId;
pub use todo_ids::TodoIds;
pub use update_mask::UpdateMask;
