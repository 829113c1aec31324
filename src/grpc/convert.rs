//! Proto messages <-> domain types. Parsing collects every invalid field of a request into one
//! INVALID_ARGUMENT whose BadRequest names them by their request path (`todo.title`, ...).
//! Public for the fuzz targets (`fuzz/`), which feed it every request a caller could send.

use prost_types::Timestamp as ProtoTimestamp;

use crate::domain::{
    Caller, FieldViolation, ListFilter, ListQuery, NewTodo, PageSize, PageTokenKey, Timestamp,
    Todo, TodoDescription, TodoId, TodoIds, TodoPatch, TodoTitle, UpdateMask,
};
use crate::error::ServiceError;
use crate::proto;
use crate::todos::{CompleteTodos, DeleteTodo, UpdateTodo};

/// Collects field violations while a request is parsed.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        parsed
            .map_err(|why| self.0.push(FieldViolation::new(field, why)))
            .ok()
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, ServiceError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(ServiceError::InvalidArgument(self.0)),
        }
    }
}

pub fn todo_id(field: &str, text: &str) -> Result<TodoId, ServiceError> {
    TodoId::parse(text).map_err(|why| ServiceError::invalid(field, why))
}

pub fn new_todo(request: &proto::CreateTodoRequest) -> Result<NewTodo, ServiceError> {
    let Some(todo) = &request.todo else {
        return Err(ServiceError::invalid("todo", "is required"));
    };
    let mut violations = Violations::default();
    let title = violations.check("todo.title", TodoTitle::parse(&todo.title));
    let description = violations.check(
        "todo.description",
        TodoDescription::parse(&todo.description),
    );
    let new = title.zip(description).map(|(title, description)| NewTodo {
        title,
        description,
        completed: todo.completed,
    });
    violations.finish(new)
}

pub fn update_todo(request: &proto::UpdateTodoRequest) -> Result<UpdateTodo, ServiceError> {
    let Some(todo) = &request.todo else {
        return Err(ServiceError::invalid("todo", "is required"));
    };
    let mut violations = Violations::default();
    let id = violations.check("todo.id", TodoId::parse(&todo.id));
    let paths: &[String] = request
        .update_mask
        .as_ref()
        .map_or(&[], |mask| mask.paths.as_slice());
    let mask = violations.check("update_mask", UpdateMask::parse(paths));
    let mut patch = TodoPatch::default();
    if let Some(mask) = mask {
        if mask.title {
            patch.title = violations.check("todo.title", TodoTitle::parse(&todo.title));
        }
        if mask.description {
            patch.description = violations.check(
                "todo.description",
                TodoDescription::parse(&todo.description),
            );
        }
        if mask.completed {
            patch.completed = Some(todo.completed);
        }
    }
    let update = id.map(|id| UpdateTodo {
        id,
        etag: todo.etag.clone(),
        patch,
    });
    violations.finish(update)
}

pub fn delete_todo(request: &proto::DeleteTodoRequest) -> Result<DeleteTodo, ServiceError> {
    Ok(DeleteTodo {
        id: todo_id("id", &request.id)?,
        etag: request.etag.clone(),
    })
}

pub fn complete_todos(
    request: &proto::CompleteTodosRequest,
) -> Result<CompleteTodos, ServiceError> {
    let ids = TodoIds::parse("ids", &request.ids).map_err(ServiceError::InvalidArgument)?;
    Ok(CompleteTodos { ids })
}

pub fn list_query(
    request: &proto::ListTodosRequest,
    key: &PageTokenKey,
    caller: &Caller,
) -> Result<ListQuery, ServiceError> {
    let filter = ListFilter {
        completed: request.completed,
    };
    let mut violations = Violations::default();
    let page_size = violations.check("page_size", PageSize::parse(request.page_size));
    let after = if request.page_token.is_empty() {
        Some(None)
    } else {
        violations
            .check(
                "page_token",
                key.decode(&request.page_token, filter, caller),
            )
            .map(|token| Some(token.after))
    };
    let query = page_size.zip(after).map(|(page_size, after)| ListQuery {
        filter,
        after,
        page_size,
    });
    violations.finish(query)
}

fn timestamp(time: Timestamp) -> ProtoTimestamp {
    let (seconds, nanos) = time.seconds_and_nanos();
    ProtoTimestamp { seconds, nanos }
}

pub fn todo(todo: &Todo) -> proto::Todo {
    proto::Todo {
        id: todo.id.to_string(),
        title: todo.title.as_str().to_owned(),
        description: todo.description.as_str().to_owned(),
        completed: todo.completed,
        create_time: Some(timestamp(todo.create_time)),
        update_time: Some(timestamp(todo.update_time)),
        etag: todo.etag(),
    }
}

pub fn completed_todos(todos: &[Todo]) -> proto::CompleteTodosResponse {
    proto::CompleteTodosResponse {
        todos: todos.iter().map(todo).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(err: ServiceError) -> Vec<String> {
        match err {
            ServiceError::InvalidArgument(violations) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn create_without_todo_names_todo() {
        let err = new_todo(&proto::CreateTodoRequest::default()).unwrap_err();
        assert_eq!(fields(err), ["todo"]);
    }

    #[test]
    fn create_reports_every_bad_field() {
        let request = proto::CreateTodoRequest {
            todo: Some(proto::Todo {
                title: " ".to_owned(),
                description: "x".repeat(4097),
                ..proto::Todo::default()
            }),
            ..proto::CreateTodoRequest::default()
        };
        assert_eq!(
            fields(new_todo(&request).unwrap_err()),
            ["todo.title", "todo.description"]
        );
    }

    #[test]
    fn update_only_checks_fields_in_the_mask() {
        let request = proto::UpdateTodoRequest {
            todo: Some(proto::Todo {
                id: "01890a5d-ac96-774b-bcce-b302099a8057".to_owned(),
                title: String::new(),
                completed: true,
                ..proto::Todo::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["completed".to_owned()],
            }),
            ..proto::UpdateTodoRequest::default()
        };
        let update = update_todo(&request).unwrap();
        assert_eq!(update.patch.completed, Some(true));
        assert_eq!(update.patch.title, None);
    }

    #[test]
    fn update_with_empty_mask_replaces_everything_and_needs_a_title() {
        let request = proto::UpdateTodoRequest {
            todo: Some(proto::Todo {
                id: "nope".to_owned(),
                ..proto::Todo::default()
            }),
            update_mask: None,
            ..proto::UpdateTodoRequest::default()
        };
        assert_eq!(
            fields(update_todo(&request).unwrap_err()),
            ["todo.id", "todo.title"]
        );
    }

    #[test]
    fn list_rejects_negative_page_size_and_foreign_token() {
        let key = PageTokenKey::generate();
        let request = proto::ListTodosRequest {
            page_size: -1,
            page_token: "forged".to_owned(),
            completed: None,
        };
        assert_eq!(
            fields(list_query(&request, &key, &Caller::anonymous()).unwrap_err()),
            ["page_size", "page_token"]
        );
    }

    #[test]
    fn todo_to_proto_uses_lowercase_id_and_exact_times() {
        let domain = Todo::create(
            NewTodo {
                title: TodoTitle::parse("t").unwrap(),
                description: TodoDescription::default(),
                completed: false,
            },
            Timestamp::from_unix_micros(1_700_000_000_123_456),
        );
        let message = todo(&domain);
        assert_eq!(message.id, domain.id.to_string().to_lowercase());
        assert_eq!(
            message.create_time,
            Some(ProtoTimestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_000
            })
        );
        assert_eq!(message.etag, domain.etag());
    }
}
