//! `todo-server migrate`: the release binary migrates a database and exits, so that a job or an
//! init container can run it before a rollout; concurrent runs against one database are safe.

use std::process::Output;
use std::sync::Arc;

use crate::both_backends;
use crate::helpers::{Backend, TestDatabase, spawn_on};

both_backends!(
    concurrent_migrate_runs_apply_each_migration_once,
    status_reports_pending_migrations_and_down_needs_consent,
);

/// The migrations this build knows.
const MIGRATIONS: usize = 4;

async fn todo_server(db: &TestDatabase, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_todo-server"))
        .args(args)
        .args(["--database-url", &db.url, "--log-format", "json"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run todo-server")
}

/// The `applied NAME` / `pending NAME` lines a migrate command printed.
fn states(output: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (state, name) = line.split_once(' ')?;
            matches!(state, "applied" | "pending").then(|| (state.to_owned(), name.to_owned()))
        })
        .collect()
}

async fn concurrent_migrate_runs_apply_each_migration_once(backend: Backend) {
    let db = Arc::new(TestDatabase::new(backend).await);
    let runs = (0..4).map(|_| todo_server(&db, &["migrate", "up"]));
    for output in futures::future::join_all(runs).await {
        assert!(
            output.status.success(),
            "every concurrent run succeeds: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let states = states(&output);
        assert_eq!(states.len(), MIGRATIONS, "{states:?}");
        assert!(
            states.iter().all(|(state, _)| state == "applied"),
            "{states:?}"
        );
    }
    assert_eq!(db.count("seaql_migrations").await, MIGRATIONS as i64);

    let status = todo_server(&db, &["migrate", "status"]).await;
    assert_eq!(status.status.code(), Some(0), "nothing pending");

    // A server that does not migrate serves the migrated database.
    let app = spawn_on(Arc::clone(&db), |config| config.run_migrations = false).await;
    app.create_todo("after migrate").await;
    assert_eq!(app.todo_count().await, 1);
}

async fn status_reports_pending_migrations_and_down_needs_consent(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let fresh = todo_server(&db, &["migrate", "status"]).await;
    assert_eq!(fresh.status.code(), Some(3), "pending migrations: exit 3");
    assert!(states(&fresh).iter().all(|(state, _)| state == "pending"));

    assert!(todo_server(&db, &["migrate", "up"]).await.status.success());
    let refused = todo_server(&db, &["migrate", "down"]).await;
    assert!(!refused.status.success(), "down without consent is refused");
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("--allow-data-loss"),
        "the refusal names the flag"
    );
    assert_eq!(db.count("seaql_migrations").await, MIGRATIONS as i64);

    let reverted = todo_server(&db, &["migrate", "down", "--allow-data-loss"]).await;
    assert!(reverted.status.success());
    let states = states(&reverted);
    let pending: Vec<&str> = states
        .iter()
        .filter(|(state, _)| state == "pending")
        .map(|(_, name)| name.as_str())
        .collect();
    assert_eq!(pending, ["m20261129_000004_sqlite_keyed_todos_inserts"]);
    assert_eq!(db.count("seaql_migrations").await, MIGRATIONS as i64 - 1);
}
