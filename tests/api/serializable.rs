//! `--db-isolation serializable` on PostgreSQL, the way distributed SQL engines run: every
//! transaction SERIALIZABLE, conflicts (SQLSTATE 40001, 40P01) run again inside the server.
//! The races and the mixed load give the same answers as in read-committed mode: no duplicate,
//! no INTERNAL, and conflicts that were really met (counted in `todo_db_retries_total`).
//! (PostgreSQL only: SQLite is serializable anyway. The 3-replica race is in faults.rs.)

use std::collections::HashMap;

use futures::future::join_all;
use todo_service::proto;
use todo_service::storage::Isolation;
use tonic::Code;

use crate::helpers::{
    Backend, TestApp, fresh_key, masked, metric_value, new_todo, scrape, spawn_app_with,
};
use crate::idempotency::{
    same_key_creates_race_into_one_todo, same_key_updates_race_into_one_write,
};

async fn spawn(isolation: Isolation) -> TestApp {
    spawn_app_with(Backend::Postgres, |config| config.db_isolation = isolation).await
}

async fn conflicts_retried(app: &TestApp) -> f64 {
    metric_value(
        &scrape(app).await,
        "todo_db_retries_total{reason=\"serialization_conflict\"}",
    )
}

#[tokio::test]
async fn same_key_races_write_once_in_serializable_mode() {
    let app = spawn(Isolation::Serializable).await;
    same_key_creates_race_into_one_todo(&app).await;
    same_key_updates_race_into_one_write(&app).await;
}

/// 16 updates of one todo at once, each with the etag it had and its own key: one wins, the
/// others are ABORTED (the etag moved), whatever the isolation.
async fn etag_race(isolation: Isolation) -> HashMap<Code, usize> {
    let app = spawn(isolation).await;
    let todo = app.create_todo("contended").await;
    let calls = (0..16).map(|i| {
        let app = &app;
        let request = masked(
            proto::Todo {
                title: format!("writer {i}"),
                ..todo.clone()
            },
            &["title"],
        );
        async move { app.update(request, Some(&fresh_key())).await }
    });
    let mut codes = HashMap::new();
    for result in join_all(calls).await {
        *codes
            .entry(result.map_or_else(|status| status.code(), |_| Code::Ok))
            .or_insert(0) += 1;
    }
    let stored = app.get(&todo.id).await.expect("stored");
    assert_eq!(stored.etag, "\"2\"", "written once: {codes:?}");
    codes
}

#[tokio::test]
async fn updates_racing_on_one_etag_get_the_same_answers_in_both_modes() {
    let read_committed = etag_race(Isolation::ReadCommitted).await;
    let serializable = etag_race(Isolation::Serializable).await;
    let expected = HashMap::from([(Code::Ok, 1), (Code::Aborted, 15)]);
    assert_eq!(read_committed, expected);
    assert_eq!(serializable, expected);
}

#[tokio::test]
async fn mixed_load_in_serializable_mode_has_no_errors_and_retries_its_conflicts() {
    let app = spawn(Isolation::Serializable).await;
    let mut seeded = Vec::new();
    for i in 0..4 {
        seeded.push(app.create_todo(&format!("seed {i}")).await);
    }
    let workers = (0..16).map(|worker| {
        let (app, seeded) = (&app, &seeded);
        async move {
            let mut failures = Vec::new();
            for call in 0..25 {
                let target = &seeded[(worker + call) % seeded.len()];
                let result = match call % 4 {
                    0 => app
                        .create(
                            new_todo(&format!("mixed {worker}-{call}")),
                            Some(&fresh_key()),
                        )
                        .await
                        .map(drop),
                    1 => app.get(&target.id).await.map(drop),
                    2 => app.list(50, "", None).await.map(drop),
                    _ => app
                        .update(
                            masked(
                                proto::Todo {
                                    id: target.id.clone(),
                                    completed: call % 8 == 3,
                                    ..proto::Todo::default()
                                },
                                &["completed"],
                            ),
                            Some(&fresh_key()),
                        )
                        .await
                        .map(drop),
                };
                if let Err(status) = result {
                    failures.push(status);
                }
            }
            failures
        }
    });
    let failures: Vec<tonic::Status> = join_all(workers).await.into_iter().flatten().collect();
    assert!(failures.is_empty(), "{failures:?}");
    let creates = 16 * (0..25).filter(|call| call % 4 == 0).count();
    assert_eq!(app.todo_count().await, 4 + creates as i64);
    let retried = conflicts_retried(&app).await;
    println!("mixed load, serializable: {retried} serialization conflicts retried");
    assert!(retried > 0.0, "the load met serialization conflicts");
}
