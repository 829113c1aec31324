//! AIP-155: the idempotency key in the request message (`request_id`) means exactly what the
//! `idempotency-key` metadata means, and a retry may move the key from one to the other.

use tonic::Code;

use crate::both_backends;
use crate::helpers::{Backend, assert_invalid_field, is_replayed, masked, new_todo, spawn_app};
use todo_service::proto;

both_backends!(
    request_id_dedupes_creates_like_the_metadata_key,
    a_key_moved_between_metadata_and_request_id_is_the_same_request,
    request_id_with_another_request_is_key_reuse,
    two_different_keys_are_invalid_and_write_nothing,
    an_invalid_request_id_is_invalid_and_writes_nothing,
    request_id_dedupes_updates,
);

fn with_request_id(title: &str, request_id: &str) -> proto::CreateTodoRequest {
    proto::CreateTodoRequest {
        request_id: request_id.to_owned(),
        ..new_todo(title)
    }
}

async fn request_id_dedupes_creates_like_the_metadata_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let request_id = uuid::Uuid::now_v7().to_string();
    let first = app
        .create(with_request_id("aip-155", &request_id), None)
        .await
        .expect("created");
    let second = app
        .create(with_request_id("aip-155", &request_id), None)
        .await
        .expect("replayed");
    assert!(!is_replayed(&first));
    assert!(is_replayed(&second));
    assert_eq!(first.get_ref(), second.get_ref());
    assert_eq!(app.db.count("todos").await, 1);
    assert_eq!(app.db.count("idempotency_keys").await, 1);
}

async fn a_key_moved_between_metadata_and_request_id_is_the_same_request(backend: Backend) {
    let app = spawn_app(backend).await;
    // Metadata first, then the field, then both.
    let first = app
        .create(new_todo("moved"), Some("moving-key"))
        .await
        .expect("created");
    let moved = app
        .create(with_request_id("moved", "moving-key"), None)
        .await
        .expect("the same request");
    let both = app
        .create(with_request_id("moved", "moving-key"), Some("moving-key"))
        .await
        .expect("the same request");
    assert!(is_replayed(&moved) && is_replayed(&both));
    assert_eq!(moved.get_ref(), first.get_ref());
    assert_eq!(both.get_ref(), first.get_ref());
    // The field first, then the metadata.
    let second = app
        .create(with_request_id("moved back", "other-key"), None)
        .await
        .expect("created");
    let back = app
        .create(new_todo("moved back"), Some("other-key"))
        .await
        .expect("the same request");
    assert!(is_replayed(&back));
    assert_eq!(back.get_ref(), second.get_ref());
    assert_eq!(app.db.count("todos").await, 2);
}

async fn request_id_with_another_request_is_key_reuse(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create(with_request_id("first", "reused"), None)
        .await
        .expect("created");
    let status = app
        .create(with_request_id("second", "reused"), None)
        .await
        .expect_err("another request");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // And across places: the metadata key meets the field's stored request.
    let status = app
        .create(new_todo("third"), Some("reused"))
        .await
        .expect_err("another request");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(app.db.count("todos").await, 1);
}

async fn two_different_keys_are_invalid_and_write_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let status = app
        .create(
            with_request_id("two keys", "in-the-field"),
            Some("in-metadata"),
        )
        .await
        .expect_err("two keys");
    assert_invalid_field(&status, "request_id");
    assert_invalid_field(&status, "idempotency-key");
    assert_eq!(app.db.count("todos").await, 0);
    assert_eq!(app.db.count("idempotency_keys").await, 0);
}

async fn an_invalid_request_id_is_invalid_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    for bad in ["has space", "\u{e9}", &"x".repeat(256)] {
        let status = app
            .create(with_request_id("bad key", bad), None)
            .await
            .expect_err("invalid request_id");
        assert_invalid_field(&status, "request_id");
    }
    assert_eq!(app.db.count("todos").await, 0);
}

async fn request_id_dedupes_updates(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_todo("to update").await;
    let update = |title: &str| proto::UpdateTodoRequest {
        request_id: "update-key".to_owned(),
        ..masked(
            proto::Todo {
                id: created.id.clone(),
                title: title.to_owned(),
                ..proto::Todo::default()
            },
            &["title"],
        )
    };
    let first = app.update(update("updated"), None).await.expect("updated");
    let again = app.update(update("updated"), None).await.expect("replayed");
    assert!(!is_replayed(&first) && is_replayed(&again));
    assert_eq!(first.get_ref(), again.get_ref());
    let moved = app
        .update(
            proto::UpdateTodoRequest {
                request_id: String::new(),
                ..update("updated")
            },
            Some("update-key"),
        )
        .await
        .expect("the same request");
    assert!(is_replayed(&moved));
    let status = app
        .update(update("something else"), None)
        .await
        .expect_err("another request");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(app.get(&created.id).await.unwrap().title, "updated");
}
