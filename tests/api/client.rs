//! `todo_client::TodoClient` (re-exported as `todo_service::client`), the retrying client for
//! Rust callers, against the real
//! server: replays, typed errors that are never retried, and the per-attempt and overall
//! deadlines. (The shared fault scenarios run it under faults: `bench/tests/fault_scenarios.rs`.)

use std::time::Duration;

use todo_service::client::{CallError, CallOptions, RetryPolicy, TodoClient};
use todo_service::proto;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::Code;

use crate::both_backends;
use crate::helpers::{Backend, spawn_app};
use crate::security::{ALICE, BOB, spawn_with_callers};
use crate::server_process::channel_to;

both_backends!(
    client_gives_each_write_its_key_and_reports_replays,
    client_surfaces_key_reuse_as_a_typed_error_without_retrying,
    client_names_invalid_fields_and_does_not_retry_final_answers,
    client_sends_its_token_and_does_not_retry_unauthenticated_calls,
    a_token_provider_is_asked_for_the_current_token_on_every_call,
    the_client_runs_over_the_callers_own_tower_layers,
    client_completes_todos_with_one_key_per_logical_write,
);

fn todo(title: &str) -> proto::Todo {
    proto::Todo {
        title: title.to_owned(),
        ..proto::Todo::default()
    }
}

async fn client_gives_each_write_its_key_and_reports_replays(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = TodoClient::new(channel_to(app.addr));
    let first = client.create_todo(todo("one")).await.expect("created");
    let second = client.create_todo(todo("one")).await.expect("created");
    assert!(!first.replayed && !second.replayed);
    assert_ne!(
        first.idempotency_key, second.idempotency_key,
        "a fresh key per logical write"
    );
    assert!(
        uuid::Uuid::parse_str(&first.idempotency_key).is_ok_and(|key| key.get_version_num() == 7)
    );
    assert_eq!(first.attempts.count, 1);

    // Retrying the first logical write with its key replays its answer.
    let again = client
        .create_todo_with(
            todo("one"),
            CallOptions {
                idempotency_key: Some(first.idempotency_key.clone()),
                deadline: None,
            },
        )
        .await
        .expect("replayed");
    assert!(again.replayed);
    assert_eq!(again.value, first.value);
    assert_eq!(app.db.count("todos").await, 2);

    // Updates are keyed too; reads and deletes go through the same retry loop.
    let mut done = first.value.clone();
    done.completed = true;
    let mask = prost_types::FieldMask {
        paths: vec!["completed".to_owned()],
    };
    let updated = client
        .update_todo(done, Some(mask), CallOptions::default())
        .await
        .expect("updated");
    assert!(updated.value.completed && !updated.replayed);
    let fetched = client
        .get_todo(&first.value.id, CallOptions::default())
        .await
        .expect("read");
    assert_eq!(fetched, updated.value);
    client
        .delete_todo(&first.value.id, "", CallOptions::default())
        .await
        .expect("deleted");
    let page = client
        .list_todos(proto::ListTodosRequest::default(), CallOptions::default())
        .await
        .expect("listed");
    assert_eq!(page.todos, vec![second.value]);
}

async fn client_surfaces_key_reuse_as_a_typed_error_without_retrying(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = TodoClient::new(channel_to(app.addr));
    let first = client.create_todo(todo("first")).await.expect("created");
    let reused = client
        .create_todo_with(
            todo("another request"),
            CallOptions {
                idempotency_key: Some(first.idempotency_key.clone()),
                deadline: None,
            },
        )
        .await
        .expect_err("one key, two requests");
    match reused {
        CallError::KeyReused {
            idempotency_key,
            status,
        } => {
            assert_eq!(idempotency_key, first.idempotency_key);
            assert_eq!(status.code(), Code::FailedPrecondition);
        }
        other => panic!("expected KeyReused, got {other:?}"),
    }
    assert_eq!(app.db.count("todos").await, 1);
}

async fn client_names_invalid_fields_and_does_not_retry_final_answers(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = TodoClient::new(channel_to(app.addr));
    let started = Instant::now();
    match client.create_todo(todo("")).await {
        Err(CallError::InvalidArgument { violations, .. }) => {
            assert_eq!(violations[0].field, "todo.title");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match client
        .get_todo(
            "01890a5d-ac96-774b-bcce-b302099a8057",
            CallOptions::default(),
        )
        .await
    {
        Err(CallError::Rejected { status }) => assert_eq!(status.code(), Code::NotFound),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    // A stale etag: ABORTED from the server, final.
    let created = client.create_todo(todo("etag")).await.expect("created");
    let mut changed = created.value.clone();
    changed.title = "changed".to_owned();
    client
        .update_todo(changed, None, CallOptions::default())
        .await
        .expect("updated");
    let mut stale = created.value.clone();
    stale.title = "stale".to_owned();
    match client
        .update_todo(stale, None, CallOptions::default())
        .await
    {
        Err(CallError::Rejected { status }) => assert_eq!(status.code(), Code::Aborted),
        other => panic!("expected ABORTED, got {other:?}"),
    }
    // Answered at once: nothing was retried with backoff (the first pause alone is 25-50 ms,
    // and retries would go on for the 30 s budget).
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(app.db.count("todos").await, 1);
}

async fn client_sends_its_token_and_does_not_retry_unauthenticated_calls(backend: Backend) {
    let (app, _tokens) = spawn_with_callers(backend).await;
    let anonymous = TodoClient::new(channel_to(app.addr));
    let started = Instant::now();
    match anonymous.create_todo(todo("no token")).await {
        Err(CallError::Rejected { status }) => assert_eq!(status.code(), Code::Unauthenticated),
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
    let alice = TodoClient::new(channel_to(app.addr))
        .with_token(ALICE)
        .expect("a valid token");
    let created = alice.create_todo(todo("alice's")).await.expect("created");
    assert_eq!(
        alice
            .get_todo(&created.value.id, CallOptions::default())
            .await
            .expect("read back"),
        created.value
    );
    assert_eq!(app.db.count("todos").await, 1);
}

#[tokio::test]
async fn client_retries_an_unreachable_server_until_the_callers_deadline() {
    // A port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let client = TodoClient::new(channel_to(addr));
    let started = Instant::now();
    let deadline = started + Duration::from_millis(800);
    let err = client
        .create_todo_with(
            todo("nobody answers"),
            CallOptions {
                idempotency_key: None,
                deadline: Some(deadline),
            },
        )
        .await
        .expect_err("no server");
    let elapsed = started.elapsed();
    match &err {
        CallError::OutcomeUnknown {
            attempts,
            idempotency_key,
            ..
        } => {
            assert!(attempts.count >= 3, "retried: {attempts:?}");
            assert!(
                attempts
                    .failures
                    .iter()
                    .all(|code| *code == Code::Unavailable)
            );
            assert!(idempotency_key.is_some(), "the key to retry with later");
        }
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        elapsed <= Duration::from_millis(900),
        "the deadline holds: {elapsed:?}"
    );
}

#[tokio::test]
async fn client_gives_each_attempt_its_own_deadline_within_the_budget() {
    // Accepts connections and never answers: every attempt times out.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let policy = RetryPolicy {
        budget: Duration::from_millis(1500),
        attempt_timeout: Duration::from_millis(300),
        ..RetryPolicy::default()
    };
    let client = TodoClient::new(channel_to(addr)).with_policy(policy);
    let started = Instant::now();
    let err = client
        .get_todo(
            "01890a5d-ac96-774b-bcce-b302099a8057",
            CallOptions::default(),
        )
        .await
        .expect_err("no answer");
    let elapsed = started.elapsed();
    match &err {
        CallError::OutcomeUnknown { attempts, .. } => {
            assert!(attempts.count >= 3, "{attempts:?}");
            assert!(
                attempts
                    .failures
                    .iter()
                    .all(|code| *code == Code::DeadlineExceeded)
            );
        }
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed <= Duration::from_millis(1700),
        "{elapsed:?}"
    );
    held.abort();
}

async fn a_token_provider_is_asked_for_the_current_token_on_every_call(backend: Backend) {
    use std::sync::{Arc, Mutex};

    let (app, _tokens) = spawn_with_callers(backend).await;
    // What a projected service-account token file does: the credential changes under the
    // running client.
    let current = Arc::new(Mutex::new(ALICE.to_owned()));
    let source = Arc::clone(&current);
    let client = TodoClient::new(channel_to(app.addr))
        .with_token_provider(move || source.lock().map(|token| token.clone()).unwrap_or_default());
    let alices = client.create_todo(todo("alice's")).await.expect("as alice");
    *current.lock().expect("lock") = BOB.to_owned();
    match client
        .get_todo(&alices.value.id, CallOptions::default())
        .await
    {
        Err(CallError::Rejected { status }) => assert_eq!(status.code(), Code::NotFound),
        other => panic!("bob must not see alice's todo: {other:?}"),
    }
    let bobs = client.create_todo(todo("bob's")).await.expect("as bob");
    *current.lock().expect("lock") = "revoked-token".to_owned();
    match client
        .get_todo(&bobs.value.id, CallOptions::default())
        .await
    {
        Err(CallError::Rejected { status }) => assert_eq!(status.code(), Code::Unauthenticated),
        other => panic!("an unknown token is refused: {other:?}"),
    }
    assert_eq!(app.db.count("todos").await, 2);
}

async fn the_client_runs_over_the_callers_own_tower_layers(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (app, _tokens) = spawn_with_callers(backend).await;
    // The caller's own layer (here: an interceptor that adds the credential and counts calls).
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen);
    let authorization: tonic::metadata::AsciiMetadataValue =
        format!("Bearer {ALICE}").parse().expect("ascii");
    let layered = tonic::service::interceptor::InterceptedService::new(
        channel_to(app.addr),
        move |mut request: tonic::Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
            Ok(request)
        },
    );
    let client = TodoClient::new(layered);
    let created = client
        .create_todo(todo("through layers"))
        .await
        .expect("created");
    let read = client
        .get_todo(&created.value.id, CallOptions::default())
        .await
        .expect("read back");
    assert_eq!(read, created.value);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "both calls went through the layer"
    );
}

async fn client_completes_todos_with_one_key_per_logical_write(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = TodoClient::new(channel_to(app.addr));
    let a = client.create_todo(todo("a")).await.expect("a").value;
    let b = client.create_todo(todo("b")).await.expect("b").value;
    let ids = vec![b.id.clone(), a.id.clone()];
    let done = client
        .complete_todos(ids.clone(), CallOptions::default())
        .await
        .expect("completed");
    assert!(!done.replayed);
    let order: Vec<&str> = done.value.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order, [b.id.as_str(), a.id.as_str()]);
    assert!(done.value.iter().all(|t| t.completed));
    let retried = client
        .complete_todos(
            ids,
            CallOptions {
                idempotency_key: Some(done.idempotency_key.clone()),
                deadline: None,
            },
        )
        .await
        .expect("the retry");
    assert!(retried.replayed, "a retry with the key replays");
    assert_eq!(retried.value, done.value);
}
