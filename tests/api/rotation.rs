//! Rotation without restart: the tokens file is re-read when it changes and on SIGHUP; a
//! caller may hold an old and a new token at once; a version that does not parse is refused
//! and the last good one stays in force; calls in flight and under load are not disturbed.

use std::path::Path;
use std::time::Duration;

use todo_service::auth::hash_token;
use todo_service::client::{CallError, CallOptions, TodoClient};
use todo_service::proto;
use tokio::time::Instant;
use tonic::Code;

use crate::helpers::{Backend, metric_value, scrape, spawn_app_with};
use crate::server_process::{ServerProcess, channel_to};

/// Replaces the file at once, as a Kubernetes Secret volume or an atomic deploy does.
fn write_tokens(path: &Path, lines: &[(&str, &str)]) {
    let text: String = lines
        .iter()
        .map(|(caller, token)| format!("{caller} {}\n", hash_token(token)))
        .collect();
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).expect("write the staged tokens file");
    std::fs::rename(&staged, path).expect("swap the tokens file in");
}

fn todo(title: &str) -> proto::Todo {
    proto::Todo {
        title: title.to_owned(),
        ..proto::Todo::default()
    }
}

/// Whether a call with `token` is accepted, asked until `accepted` holds (or 10 s pass).
async fn until_accepted(addr: std::net::SocketAddr, token: &str, accepted: bool) {
    let client = TodoClient::new(channel_to(addr))
        .with_token(token)
        .expect("token");
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client.get_todo(
            "01890a5d-ac96-774b-bcce-b302099a8057",
            CallOptions::default(),
        );
        let code = match answer.await {
            Ok(_) => Code::Ok,
            Err(err) => err.code(),
        };
        // NOT_FOUND: authenticated (the todo does not exist); UNAUTHENTICATED: refused.
        if (code == Code::NotFound) == accepted {
            return;
        }
        assert!(Instant::now() < give_up, "{token}: still {code:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_tokens_file_is_in_force_without_a_restart_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("tokens");
    write_tokens(&path, &[("alice", "alice-old")]);
    let configured = path.clone();
    let app = spawn_app_with(Backend::Sqlite, move |config| {
        config.tokens_file = Some(configured);
        config.tokens_reload_interval = Duration::from_millis(100);
    })
    .await;
    until_accepted(app.addr, "alice-old", true).await;
    until_accepted(app.addr, "alice-new", false).await;

    // Old and new overlap while alice's deployments move to the new token.
    write_tokens(&path, &[("alice", "alice-old"), ("alice", "alice-new")]);
    until_accepted(app.addr, "alice-new", true).await;
    until_accepted(app.addr, "alice-old", true).await;
    // Both name the same caller: the new token sees the old token's todos.
    let old = TodoClient::new(channel_to(app.addr))
        .with_token("alice-old")
        .expect("token");
    let new = TodoClient::new(channel_to(app.addr))
        .with_token("alice-new")
        .expect("token");
    let created = old.create_todo(todo("rotating")).await.expect("created");
    assert_eq!(
        new.get_todo(&created.value.id, CallOptions::default())
            .await
            .expect("read"),
        created.value
    );

    // The old token revoked.
    write_tokens(&path, &[("alice", "alice-new")]);
    until_accepted(app.addr, "alice-old", false).await;
    match old
        .get_todo(&created.value.id, CallOptions::default())
        .await
    {
        Err(CallError::Rejected { status }) => assert_eq!(status.code(), Code::Unauthenticated),
        other => panic!("a revoked token is refused: {other:?}"),
    }

    // A file that does not parse: refused, counted, and the last good one stays.
    std::fs::write(&path, "alice not-a-hash\n").expect("break the file");
    let give_up = Instant::now() + Duration::from_secs(10);
    let rejected = "todo_config_reloads_total{file=\"tokens\",result=\"rejected\"}";
    while metric_value(&scrape(&app).await, rejected) < 1.0 {
        assert!(Instant::now() < give_up, "the broken file was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_accepted(app.addr, "alice-new", true).await;
    let metrics = scrape(&app).await;
    assert_eq!(
        metric_value(
            &metrics,
            "todo_config_reloads_total{file=\"tokens\",result=\"applied\"}"
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_tokens_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("tokens");
    write_tokens(&path, &[("alice", "before")]);
    let db = dir.path().join("todo.db");
    let tokens = path.to_str().expect("a UTF-8 path");
    // Checked on schedule only once an hour: only the signal can make the change take effect.
    let server = ServerProcess::start(
        &format!("sqlite:{}", db.display()),
        "127.0.0.1:0",
        &["--tokens-file", tokens, "--tokens-reload-interval", "1h"],
    )
    .await;
    until_accepted(server.addr, "before", true).await;
    write_tokens(&path, &[("alice", "after")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    until_accepted(server.addr, "after", false).await;
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(sent.success());
    until_accepted(server.addr, "after", true).await;
    until_accepted(server.addr, "before", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_tokens_file_under_load_fails_no_call() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("tokens");
    write_tokens(&path, &[("alice", "steady")]);
    let configured = path.clone();
    let app = spawn_app_with(Backend::Sqlite, move |config| {
        config.tokens_file = Some(configured);
        config.tokens_reload_interval = Duration::from_millis(20);
    })
    .await;
    let client = TodoClient::new(channel_to(app.addr))
        .with_token("steady")
        .expect("token");
    let load = tokio::spawn(async move {
        let mut failures = Vec::new();
        for n in 0..300 {
            if let Err(err) = client.create_todo(todo(&format!("load {n}"))).await {
                failures.push(err.code());
            }
        }
        failures
    });
    // Other callers come and go while alice keeps her token.
    for round in 0..30 {
        let other = format!("other-{round}");
        write_tokens(&path, &[("alice", "steady"), ("bob", &other)]);
        tokio::time::sleep(Duration::from_millis(15)).await;
        write_tokens(&path, &[("alice", "steady")]);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let failures = load.await.expect("the load task");
    assert_eq!(
        failures,
        Vec::<Code>::new(),
        "no call failed during the rewrites"
    );
    assert_eq!(app.todo_count().await, 300);
    let applied = metric_value(
        &scrape(&app).await,
        "todo_config_reloads_total{file=\"tokens\",result=\"applied\"}",
    );
    assert!(
        applied >= 10.0,
        "the file was re-read during the load: {applied}"
    );
}
