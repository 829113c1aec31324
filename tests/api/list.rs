//! ListTodos: order, page sizes, filters, page tokens.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::join_all;

use crate::both_backends;
use crate::helpers::{Backend, assert_invalid_field, replace, spawn_app, spawn_on};

both_backends!(
    list_is_ordered_by_id_which_is_creation_order,
    page_size_zero_means_fifty,
    page_size_above_1000_means_1000,
    negative_page_size_is_invalid,
    completed_filter_selects_rows,
    altered_truncated_and_made_up_tokens_are_invalid,
    token_used_with_another_filter_is_invalid,
    token_stays_valid_across_replicas_and_restarts,
    paging_never_skips_or_repeats_rows_during_writes,
);

async fn list_is_ordered_by_id_which_is_creation_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(app.create_todo(&format!("todo {i}")).await.id);
    }
    let listed: Vec<String> = app
        .list_all(3, None)
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, created);
}

async fn create_many(app: &crate::helpers::TestApp, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(16) {
        join_all(chunk.iter().map(|i| async move {
            app.create_todo(&format!("bulk {i}")).await;
        }))
        .await;
    }
}

async fn page_size_zero_means_fifty(backend: Backend) {
    let app = spawn_app(backend).await;
    create_many(&app, 51).await;
    let page = app.list(0, "", None).await.unwrap();
    assert_eq!(page.todos.len(), 50);
    assert!(!page.next_page_token.is_empty());
    let rest = app.list(0, &page.next_page_token, None).await.unwrap();
    assert_eq!(rest.todos.len(), 1);
    assert!(
        rest.next_page_token.is_empty(),
        "no token after the last page"
    );
}

async fn page_size_above_1000_means_1000(backend: Backend) {
    let app = spawn_app(backend).await;
    create_many(&app, 1001).await;
    let page = app.list(5000, "", None).await.unwrap();
    assert_eq!(page.todos.len(), 1000);
    assert!(!page.next_page_token.is_empty());
}

async fn negative_page_size_is_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    let status = app.list(-1, "", None).await.unwrap_err();
    assert_invalid_field(&status, "page_size");
}

async fn completed_filter_selects_rows(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut done = Vec::new();
    for i in 0..6 {
        let mut todo = app.create_todo(&format!("t{i}")).await;
        if i % 2 == 0 {
            todo.completed = true;
            let todo = app.update(replace(todo), None).await.unwrap().into_inner();
            done.push(todo.id);
        }
    }
    let completed: Vec<String> = app
        .list_all(2, Some(true))
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(completed, done);
    let open = app.list_all(2, Some(false)).await;
    assert_eq!(open.len(), 3);
    assert!(open.iter().all(|t| !t.completed));
    assert_eq!(app.list_all(2, None).await.len(), 6);
}

async fn altered_truncated_and_made_up_tokens_are_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    create_many(&app, 3).await;
    let token = app.list(1, "", None).await.unwrap().next_page_token;
    let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
    bytes[5] ^= 0x40;
    let altered = URL_SAFE_NO_PAD.encode(&bytes);
    for bad in [
        altered.as_str(),
        &token[..token.len() - 3],
        "bWFkZS11cA",
        "not base64 at all!",
    ] {
        let status = app.list(1, bad, None).await.unwrap_err();
        assert_invalid_field(&status, "page_token");
    }
}

async fn token_used_with_another_filter_is_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    create_many(&app, 3).await;
    let token = app.list(1, "", Some(false)).await.unwrap().next_page_token;
    assert!(!token.is_empty());
    assert!(app.list(1, &token, Some(false)).await.is_ok());
    for other in [None, Some(true)] {
        let status = app.list(1, &token, other).await.unwrap_err();
        assert_invalid_field(&status, "page_token");
    }
}

async fn token_stays_valid_across_replicas_and_restarts(backend: Backend) {
    let first = spawn_app(backend).await;
    create_many(&first, 4).await;
    let page = first.list(2, "", None).await.unwrap();
    let db = Arc::clone(&first.db);
    first.stop().await;

    let restarted = spawn_on(Arc::clone(&db), |_| {}).await;
    let replica = spawn_on(db, |_| {}).await;
    let from_restarted = restarted
        .list(2, &page.next_page_token, None)
        .await
        .unwrap();
    let from_replica = replica.list(2, &page.next_page_token, None).await.unwrap();
    assert_eq!(from_restarted.todos.len(), 2);
    assert_eq!(from_restarted, from_replica);
    assert!(page.todos.iter().all(|t| !from_restarted.todos.contains(t)));
}

async fn paging_never_skips_or_repeats_rows_during_writes(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut throughout = Vec::new();
    for i in 0..20 {
        throughout.push(app.create_todo(&format!("stays {i}")).await.id);
    }
    let doomed: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(app.create_todo(&format!("doomed {i}")).await.id);
        }
        ids
    };

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut round = 0;
    loop {
        let page = app.list(3, &token, None).await.unwrap();
        seen.extend(page.todos.into_iter().map(|t| t.id));
        // Between pages: new rows arrive and others go.
        app.create_todo(&format!("newcomer {round}")).await;
        if let Some(id) = doomed.get(round) {
            app.delete(id, "").await.unwrap();
        }
        round += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for id in &throughout {
        let times = seen.iter().filter(|s| *s == id).count();
        assert_eq!(times, 1, "{id} seen {times} times");
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no row repeated");
}
