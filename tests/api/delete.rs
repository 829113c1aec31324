//! DeleteTodo: Empty whether or not the todo existed, etags, malformed ids.

use tonic::Code;

use crate::both_backends;
use crate::helpers::{Backend, assert_invalid_field, replace, spawn_app};

both_backends!(
    delete_removes_the_todo_and_repeats_succeed,
    delete_of_a_missing_todo_is_empty_even_with_an_etag,
    delete_with_a_stale_etag_is_aborted_and_keeps_the_row,
    delete_with_the_current_etag_deletes,
    delete_of_a_malformed_id_is_invalid,
    delete_accepts_ids_in_any_case,
);

async fn delete_removes_the_todo_and_repeats_succeed(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("short-lived").await;
    app.delete(&todo.id, "").await.unwrap();
    assert_eq!(app.get(&todo.id).await.unwrap_err().code(), Code::NotFound);
    app.delete(&todo.id, "").await.unwrap();
    assert_eq!(app.todo_count().await, 0);
}

async fn delete_of_a_missing_todo_is_empty_even_with_an_etag(backend: Backend) {
    let app = spawn_app(backend).await;
    app.delete("01890a5d-ac96-774b-bcce-b302099a8057", "\"7\"")
        .await
        .unwrap();
}

async fn delete_with_a_stale_etag_is_aborted_and_keeps_the_row(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("guarded").await;
    let mut changed = todo.clone();
    changed.completed = true;
    app.update(replace(changed), None).await.unwrap();

    let status = app.delete(&todo.id, &todo.etag).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert!(app.get(&todo.id).await.is_ok());
    let status = app.delete(&todo.id, "made-up").await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(app.todo_count().await, 1);
}

async fn delete_with_the_current_etag_deletes(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("guarded").await;
    app.delete(&todo.id, &todo.etag).await.unwrap();
    assert_eq!(app.todo_count().await, 0);
}

async fn delete_of_a_malformed_id_is_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("stays").await;
    for id in ["", "nope", &format!(" {}", todo.id)] {
        let status = app.delete(id, "").await.unwrap_err();
        assert_invalid_field(&status, "id");
    }
    assert_eq!(app.todo_count().await, 1);
}

async fn delete_accepts_ids_in_any_case(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("upper").await;
    app.delete(&todo.id.to_uppercase(), "").await.unwrap();
    assert_eq!(app.todo_count().await, 0);
}
