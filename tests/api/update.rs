//! UpdateTodo: full replacement, update masks, etags, no-op updates.

use todo_service::proto;
use tonic::Code;

use crate::both_backends;
use futures::future::join_all;

use crate::helpers::{Backend, assert_invalid_field, fresh_key, masked, replace, spawn_app};

both_backends!(
    full_replacement_replaces_every_field_and_changes_etag,
    masked_update_changes_only_named_fields,
    star_mask_is_full_replacement,
    invalid_mask_paths_are_rejected,
    update_of_a_missing_todo_is_not_found,
    update_with_a_stale_etag_is_aborted,
    update_with_the_current_etag_succeeds,
    update_that_changes_nothing_is_not_a_write,
    update_validates_id_and_fields,
    every_write_changes_the_etag,
    concurrent_updates_of_one_todo_all_apply,
);

async fn full_replacement_replaces_every_field_and_changes_etag(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut request = crate::helpers::new_todo("old");
    if let Some(todo) = request.todo.as_mut() {
        todo.description = "old description".to_owned();
    }
    let created = app.create(request, None).await.unwrap().into_inner();
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;

    let updated = app
        .update(
            replace(proto::Todo {
                id: created.id.clone(),
                title: " new ".to_owned(),
                description: String::new(),
                completed: true,
                ..proto::Todo::default()
            }),
            None,
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.id, created.id);
    assert_eq!(updated.title, "new");
    assert_eq!(
        updated.description, "",
        "full replacement clears omitted fields"
    );
    assert!(updated.completed);
    assert_ne!(updated.etag, created.etag);
    assert_eq!(updated.create_time, created.create_time);
    let micros = |t: Option<prost_types::Timestamp>| {
        let t = t.unwrap();
        i128::from(t.seconds) * 1_000_000 + i128::from(t.nanos / 1000)
    };
    assert!(micros(updated.update_time) > micros(created.update_time));
    assert_eq!(app.get(&created.id).await.unwrap(), updated);
}

async fn masked_update_changes_only_named_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut request = crate::helpers::new_todo("keep me");
    if let Some(todo) = request.todo.as_mut() {
        todo.description = "and me".to_owned();
    }
    let created = app.create(request, None).await.unwrap().into_inner();
    let updated = app
        .update(
            masked(
                proto::Todo {
                    id: created.id.clone(),
                    title: String::new(), // not in the mask: neither validated nor applied
                    completed: true,
                    ..proto::Todo::default()
                },
                &["completed"],
            ),
            None,
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.title, "keep me");
    assert_eq!(updated.description, "and me");
    assert!(updated.completed);
}

async fn star_mask_is_full_replacement(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_todo("before").await;
    let updated = app
        .update(
            masked(
                proto::Todo {
                    id: created.id.clone(),
                    title: "after".to_owned(),
                    ..proto::Todo::default()
                },
                &["*"],
            ),
            None,
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.title, "after");
}

async fn invalid_mask_paths_are_rejected(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_todo("masked").await;
    for paths in [
        &["id"][..],
        &["etag"],
        &["create_time"],
        &["update_time"],
        &["nope"],
        &["*", "title"],
    ] {
        let status = app
            .update(
                masked(
                    proto::Todo {
                        id: created.id.clone(),
                        title: "changed".to_owned(),
                        ..proto::Todo::default()
                    },
                    paths,
                ),
                None,
            )
            .await
            .unwrap_err();
        assert_invalid_field(&status, "update_mask");
    }
    assert_eq!(
        app.get(&created.id).await.unwrap(),
        created,
        "nothing written"
    );
}

async fn update_of_a_missing_todo_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let status = app
        .update(
            replace(proto::Todo {
                id: "01890a5d-ac96-774b-bcce-b302099a8057".to_owned(),
                title: "ghost".to_owned(),
                ..proto::Todo::default()
            }),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(app.todo_count().await, 0);
}

async fn update_with_a_stale_etag_is_aborted(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_todo("v1").await;
    let mut first = created.clone();
    first.title = "v2".to_owned();
    app.update(replace(first), None).await.unwrap();

    let mut stale = created.clone();
    stale.title = "v3".to_owned();
    let status = app.update(replace(stale), None).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(app.get(&created.id).await.unwrap().title, "v2");
}

async fn update_with_the_current_etag_succeeds(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_todo("v1").await;
    let mut next = created.clone();
    next.title = "v2".to_owned();
    let updated = app.update(replace(next), None).await.unwrap().into_inner();
    assert_eq!(updated.title, "v2");
}

async fn update_that_changes_nothing_is_not_a_write(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_todo("stable").await;
    let mut same = created.clone();
    same.etag.clear();
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let first = app
        .update(replace(same.clone()), None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, created, "etag and update_time unchanged");
    let second = app.update(replace(same), None).await.unwrap().into_inner();
    assert_eq!(
        second, created,
        "repeating it leaves exactly the same state"
    );

    let mut changed = created.clone();
    changed.completed = true;
    let done = app
        .update(replace(changed.clone()), None)
        .await
        .unwrap()
        .into_inner();
    changed.etag = done.etag.clone();
    let again = app
        .update(replace(changed), None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, done, "a repeated full replacement is not a write");
}

async fn update_validates_id_and_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_todo("valid").await;
    let status = app
        .update(
            replace(proto::Todo {
                id: "bad-id".to_owned(),
                title: "x".to_owned(),
                ..proto::Todo::default()
            }),
            None,
        )
        .await
        .unwrap_err();
    assert_invalid_field(&status, "todo.id");

    let status = app
        .update(
            replace(proto::Todo {
                id: created.id.clone(),
                title: " ".to_owned(),
                description: "d".repeat(4097),
                ..proto::Todo::default()
            }),
            None,
        )
        .await
        .unwrap_err();
    assert_invalid_field(&status, "todo.title");
    assert_invalid_field(&status, "todo.description");

    let status = app
        .update(proto::UpdateTodoRequest::default(), None)
        .await
        .unwrap_err();
    assert_invalid_field(&status, "todo");
    assert_eq!(app.get(&created.id).await.unwrap(), created);
}

async fn every_write_changes_the_etag(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut todo = app.create_todo("etag").await;
    let mut seen = vec![todo.etag.clone()];
    for i in 0..5 {
        todo.title = format!("etag {i}");
        todo = app.update(replace(todo), None).await.unwrap().into_inner();
        assert!(!seen.contains(&todo.etag), "etag {} repeated", todo.etag);
        seen.push(todo.etag.clone());
    }
}

/// 64 updates of one todo at once, without etags, half of them keyed: every one applies, on
/// the revision the one before it wrote (none is lost, none fails, however hot the row): a
/// change made stale by a concurrent write is decided again with the row locked.
async fn concurrent_updates_of_one_todo_all_apply(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("contended").await;
    let calls = (0..64).map(|i| {
        let app = &app;
        let request = masked(
            proto::Todo {
                id: todo.id.clone(),
                title: format!("writer {i}"),
                ..proto::Todo::default()
            },
            &["title"],
        );
        let key = (i % 2 == 0).then(fresh_key);
        async move { app.update(request, key.as_deref()).await }
    });
    let mut revisions: Vec<String> = join_all(calls)
        .await
        .into_iter()
        .map(|result| result.expect("every update applies").into_inner().etag)
        .collect();
    revisions.sort_by_key(|etag| etag.trim_matches('"').parse::<u32>().unwrap_or(0));
    let expected: Vec<String> = (2..=65).map(|revision| format!("\"{revision}\"")).collect();
    assert_eq!(revisions, expected, "each update wrote its own revision");
    let stored = app.get(&todo.id).await.expect("stored");
    assert_eq!(stored.etag, "\"65\"");
    assert!(stored.title.starts_with("writer "));
}
