//! CreateTodo: fields, validation, ids, times, etag.

use todo_service::proto;

use crate::both_backends;
use crate::helpers::{Backend, assert_invalid_field, new_todo, spawn_app};

both_backends!(
    create_returns_the_stored_todo_with_server_fields,
    create_ignores_client_supplied_output_fields,
    create_trims_the_title,
    create_rejects_invalid_titles_and_writes_nothing,
    create_rejects_a_long_description,
    create_counts_unicode_scalar_values,
    create_without_a_todo_is_invalid,
    create_without_a_key_is_not_deduplicated,
);

async fn create_returns_the_stored_todo_with_server_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let request = proto::CreateTodoRequest {
        todo: Some(proto::Todo {
            title: "buy milk".to_owned(),
            description: "two litres".to_owned(),
            completed: true,
            ..proto::Todo::default()
        }),
        ..proto::CreateTodoRequest::default()
    };
    let created = app.create(request, None).await.unwrap().into_inner();

    let id = uuid::Uuid::parse_str(&created.id).unwrap();
    assert_eq!(id.get_version_num(), 7, "ids are UUIDv7");
    assert_eq!(
        created.id,
        id.hyphenated().to_string(),
        "lowercase hyphenated"
    );
    assert_eq!(created.title, "buy milk");
    assert_eq!(created.description, "two litres");
    assert!(created.completed);
    assert!(!created.etag.is_empty());
    let create_time = created.create_time.unwrap();
    assert!(create_time.seconds > 1_700_000_000);
    assert_eq!(created.update_time, Some(create_time));

    assert_eq!(app.get(&created.id).await.unwrap(), created);
    assert_eq!(app.todo_count().await, 1);
}

async fn create_ignores_client_supplied_output_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let request = proto::CreateTodoRequest {
        todo: Some(proto::Todo {
            id: "01890a5d-ac96-774b-bcce-b302099a8057".to_owned(),
            title: "t".to_owned(),
            etag: "\"42\"".to_owned(),
            create_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            update_time: Some(prost_types::Timestamp {
                seconds: 2,
                nanos: 0,
            }),
            ..proto::Todo::default()
        }),
        ..proto::CreateTodoRequest::default()
    };
    let created = app.create(request, None).await.unwrap().into_inner();
    assert_ne!(created.id, "01890a5d-ac96-774b-bcce-b302099a8057");
    assert_ne!(created.etag, "\"42\"");
    assert!(created.create_time.unwrap().seconds > 1_700_000_000);
}

async fn create_trims_the_title(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_todo("\u{3000} \t write report\u{a0}\n").await;
    assert_eq!(created.title, "write report");
}

async fn create_rejects_invalid_titles_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    for title in ["", "   ", "\u{2003}\n\t", &"x".repeat(257), "nul\0inside"] {
        let status = app.create(new_todo(title), None).await.unwrap_err();
        assert_invalid_field(&status, "todo.title");
    }
    assert_eq!(app.todo_count().await, 0);
}

async fn create_rejects_a_long_description(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut request = new_todo("ok");
    if let Some(todo) = request.todo.as_mut() {
        todo.description = "d".repeat(4097);
    }
    let status = app.create(request, None).await.unwrap_err();
    assert_invalid_field(&status, "todo.description");
    assert_eq!(app.todo_count().await, 0);
}

async fn create_counts_unicode_scalar_values(backend: Backend) {
    let app = spawn_app(backend).await;
    // 256 four-byte characters: 1024 bytes, but 256 characters.
    let title = "🦀".repeat(256);
    let description = "é".repeat(4096);
    let mut request = new_todo(&title);
    if let Some(todo) = request.todo.as_mut() {
        todo.description = description.clone();
    }
    let created = app.create(request, None).await.unwrap().into_inner();
    assert_eq!(created.title, title);
    assert_eq!(created.description, description);
    let status = app
        .create(new_todo(&"🦀".repeat(257)), None)
        .await
        .unwrap_err();
    assert_invalid_field(&status, "todo.title");
}

async fn create_without_a_todo_is_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    let status = app
        .create(proto::CreateTodoRequest::default(), None)
        .await
        .unwrap_err();
    assert_invalid_field(&status, "todo");
    assert_eq!(app.todo_count().await, 0);
}

async fn create_without_a_key_is_not_deduplicated(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.create(new_todo("same"), None).await.unwrap();
    let second = app.create(new_todo("same"), None).await.unwrap();
    assert_ne!(first.get_ref().id, second.get_ref().id);
    assert!(first.metadata().get("idempotent-replayed").is_none());
    assert!(second.metadata().get("idempotent-replayed").is_none());
    assert_eq!(app.todo_count().await, 2);
    assert_eq!(app.key_count().await, 0);
}
