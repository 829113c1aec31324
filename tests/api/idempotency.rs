//! Idempotency keys, clause by clause of CONTRACT.md.

use std::sync::Arc;

use futures::future::join_all;
use todo_service::proto;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

use crate::both_backends;
use crate::helpers::{
    Backend, TestApp, assert_invalid_field, fresh_key, is_replayed, keyed, masked, metric_value,
    new_todo, replace, scrape, spawn_app, spawn_app_with, spawn_on,
};

both_backends!(
    first_call_is_fresh_and_retries_replay_the_same_response,
    replay_survives_change_and_delete_without_resurrecting,
    same_key_with_another_request_is_failed_precondition,
    same_key_on_another_method_is_another_key,
    invalid_keys_are_rejected_and_write_nothing,
    several_keys_are_rejected,
    validation_comes_first_and_consumes_nothing,
    failed_calls_store_nothing_and_the_key_stays_free,
    a_create_whose_insert_fails_in_the_database_leaves_its_key_free,
    concurrent_same_key_creates_make_exactly_one_todo,
    a_duplicate_waits_for_an_uncommitted_claim_and_replays_it,
    concurrent_same_key_updates_write_once,
    update_replays_its_stored_response,
    expired_key_behaves_as_new,
    key_is_shared_across_replicas,
    equal_requests_encoded_differently_match,
    delete_checks_the_key_form,
    a_key_reused_at_once_on_two_todos_changes_one,
    concurrent_same_key_deletes_with_an_etag_all_succeed,
    a_retry_whose_change_would_still_apply_replays_and_writes_nothing,
);

fn assert_key_reused(status: &Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED");
}

async fn first_call_is_fresh_and_retries_replay_the_same_response(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = fresh_key();
    let first = app.create(new_todo("once"), Some(&key)).await.unwrap();
    assert!(
        !is_replayed(&first),
        "a first call carries no replay marker"
    );
    for _ in 0..3 {
        let again = app.create(new_todo("once"), Some(&key)).await.unwrap();
        assert!(is_replayed(&again));
        assert_eq!(
            prost::Message::encode_to_vec(again.get_ref()),
            prost::Message::encode_to_vec(first.get_ref()),
            "byte for byte the same message"
        );
    }
    assert_eq!(app.todo_count().await, 1);
    assert_eq!(app.key_count().await, 1);
}

async fn replay_survives_change_and_delete_without_resurrecting(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = fresh_key();
    let original = app
        .create(new_todo("original"), Some(&key))
        .await
        .unwrap()
        .into_inner();

    let mut changed = original.clone();
    changed.title = "changed".to_owned();
    app.update(replace(changed), None).await.unwrap();
    let replay = app.create(new_todo("original"), Some(&key)).await.unwrap();
    assert!(is_replayed(&replay));
    assert_eq!(
        replay.get_ref(),
        &original,
        "the stored response, not the current row"
    );

    app.delete(&original.id, "").await.unwrap();
    let replay = app.create(new_todo("original"), Some(&key)).await.unwrap();
    assert!(is_replayed(&replay));
    assert_eq!(replay.get_ref(), &original);
    assert_eq!(
        app.todo_count().await,
        0,
        "the replay did not resurrect the todo"
    );
    assert_eq!(
        app.get(&original.id).await.unwrap_err().code(),
        Code::NotFound
    );
}

async fn same_key_with_another_request_is_failed_precondition(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = fresh_key();
    let first = app
        .create(new_todo("milk"), Some(&key))
        .await
        .unwrap()
        .into_inner();
    let status = app.create(new_todo("bread"), Some(&key)).await.unwrap_err();
    assert_key_reused(&status);
    let mut completed = new_todo("milk");
    if let Some(todo) = completed.todo.as_mut() {
        todo.completed = true;
    }
    assert_key_reused(&app.create(completed, Some(&key)).await.unwrap_err());
    assert_eq!(app.todo_count().await, 1, "nothing written");
    assert_eq!(app.list_all(10, None).await, vec![first]);
    // The original request still replays.
    assert!(is_replayed(
        &app.create(new_todo("milk"), Some(&key)).await.unwrap()
    ));
}

async fn same_key_on_another_method_is_another_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = fresh_key();
    let created = app
        .create(new_todo("shared key"), Some(&key))
        .await
        .unwrap()
        .into_inner();
    let mut update = created.clone();
    update.completed = true;
    let updated = app.update(replace(update), Some(&key)).await.unwrap();
    assert!(
        !is_replayed(&updated),
        "a fresh update, not a replay or a mismatch"
    );
    assert!(updated.get_ref().completed);
    assert_eq!(app.key_count().await, 2);
}

async fn invalid_keys_are_rejected_and_write_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let too_long = "k".repeat(256);
    let bad_keys: Vec<MetadataValue<tonic::metadata::Ascii>> = vec![
        MetadataValue::from_static(""),
        MetadataValue::try_from(too_long.as_str()).unwrap(),
        MetadataValue::from_static("has space"),
        MetadataValue::from_static("tab\there"),
        MetadataValue::try_from(&[b'k', 0xC3, 0xA9][..]).unwrap(),
    ];
    for value in bad_keys {
        let mut request = Request::new(new_todo("never"));
        request
            .metadata_mut()
            .insert("idempotency-key", value.clone());
        let status = app.client.clone().create_todo(request).await.unwrap_err();
        assert_invalid_field(&status, "idempotency-key");

        let created = app.create_todo("target").await;
        let mut request = Request::new(replace(created));
        request.metadata_mut().insert("idempotency-key", value);
        let status = app.client.clone().update_todo(request).await.unwrap_err();
        assert_invalid_field(&status, "idempotency-key");
    }
    assert_eq!(
        app.todo_count().await,
        5,
        "only the untouched targets exist"
    );
    assert!(
        app.list_all(10, None)
            .await
            .iter()
            .all(|t| t.title == "target")
    );
    assert_eq!(app.key_count().await, 0);
    // The longest valid key works.
    let longest = "k".repeat(255);
    assert!(app.create(new_todo("ok"), Some(&longest)).await.is_ok());
}

async fn several_keys_are_rejected(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut request = Request::new(new_todo("twice"));
    request
        .metadata_mut()
        .append("idempotency-key", MetadataValue::from_static("a"));
    request
        .metadata_mut()
        .append("idempotency-key", MetadataValue::from_static("a"));
    let status = app.client.clone().create_todo(request).await.unwrap_err();
    assert_invalid_field(&status, "idempotency-key");
    assert_eq!(app.todo_count().await, 0);
}

async fn validation_comes_first_and_consumes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    // An invalid request with a new key consumes nothing: the key then works.
    let key = fresh_key();
    let status = app.create(new_todo(" "), Some(&key)).await.unwrap_err();
    assert_invalid_field(&status, "todo.title");
    assert_eq!(app.key_count().await, 0);
    let created = app.create(new_todo("valid"), Some(&key)).await.unwrap();
    assert!(!is_replayed(&created));

    // An invalid request with a used key is INVALID_ARGUMENT, not a mismatch or a replay.
    let status = app.create(new_todo(""), Some(&key)).await.unwrap_err();
    assert_invalid_field(&status, "todo.title");
    assert_eq!(app.todo_count().await, 1);
}

async fn failed_calls_store_nothing_and_the_key_stays_free(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("guarded").await;

    // NOT_FOUND with a key stores nothing.
    let key = fresh_key();
    let mut ghost = todo.clone();
    ghost.id = "01890a5d-ac96-774b-bcce-b302099a8057".to_owned();
    let status = app.update(replace(ghost), Some(&key)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(app.key_count().await, 0);

    // ABORTED (stale etag) with a key stores nothing; the same key then serves another,
    // valid request as a first call.
    let mut stale = todo.clone();
    stale.etag = "\"999\"".to_owned();
    stale.title = "stale".to_owned();
    let status = app.update(replace(stale), Some(&key)).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(app.key_count().await, 0);

    let mut good = todo.clone();
    good.title = "fresh".to_owned();
    let updated = app.update(replace(good), Some(&key)).await.unwrap();
    assert!(!is_replayed(&updated));
    assert_eq!(updated.get_ref().title, "fresh");
    assert_eq!(app.key_count().await, 1);
}

/// The key's claim and the todo's insert are one unit: when the database refuses the insert,
/// the claim goes with it, and a retry with the same key is a first call.
async fn a_create_whose_insert_fails_in_the_database_leaves_its_key_free(backend: Backend) {
    let app = spawn_app(backend).await;
    // Another writer's rule the server does not know about: no todo may be titled "refused".
    app.db
        .execute(match backend {
            Backend::Postgres => {
                "ALTER TABLE todos ADD CONSTRAINT refused CHECK (title <> 'refused')"
            }
            Backend::Sqlite => {
                "CREATE TRIGGER refused BEFORE INSERT ON todos WHEN NEW.title = 'refused' \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END"
            }
        })
        .await;
    let key = fresh_key();
    let status = app
        .create(new_todo("refused"), Some(&key))
        .await
        .expect_err("the database refuses the insert");
    assert_eq!(status.code(), Code::Internal);
    assert!(
        !status.message().contains("refused"),
        "no database text reaches the client: {}",
        status.message()
    );
    assert_eq!(app.todo_count().await, 0);
    assert_eq!(
        app.key_count().await,
        0,
        "the claim rolled back with the insert"
    );

    app.db
        .execute(match backend {
            Backend::Postgres => "ALTER TABLE todos DROP CONSTRAINT refused",
            Backend::Sqlite => "DROP TRIGGER refused",
        })
        .await;
    let created = app
        .create(new_todo("refused"), Some(&key))
        .await
        .expect("the retry succeeds");
    assert!(!is_replayed(&created), "the retry is a first call");
    assert_eq!(app.todo_count().await, 1);
    assert_eq!(app.key_count().await, 1);
}

async fn concurrent_same_key_creates_make_exactly_one_todo(backend: Backend) {
    same_key_creates_race_into_one_todo(&spawn_app(backend).await).await;
}

/// 64 concurrent creates with one key: one todo, one fresh answer, 63 replays of it.
pub async fn same_key_creates_race_into_one_todo(app: &TestApp) {
    let key = fresh_key();
    let calls = (0..64).map(|_| {
        let key = key.clone();
        async move { app.create(new_todo("racing"), Some(&key)).await }
    });
    let results: Vec<Result<Response<proto::Todo>, Status>> = join_all(calls).await;
    let responses: Vec<Response<proto::Todo>> = results
        .into_iter()
        .map(|r| r.expect("every concurrent call succeeds"))
        .collect();
    let fresh = responses.iter().filter(|r| !is_replayed(r)).count();
    assert_eq!(fresh, 1, "exactly one response without the replay marker");
    let first = responses[0].get_ref();
    assert!(
        responses.iter().all(|r| r.get_ref() == first),
        "all the same todo"
    );
    assert_eq!(&app.get(&first.id).await.expect("stored"), first);
    assert_eq!(app.todo_count().await, 1);
    assert_eq!(app.key_count().await, 1);
}

/// The race the one-statement claim must get right: the key is claimed by a transaction that
/// has not committed when the duplicate arrives (so the duplicate's lookup cannot see it). The
/// duplicate must wait for it, then answer with its stored response, writing nothing.
async fn a_duplicate_waits_for_an_uncommitted_claim_and_replays_it(backend: Backend) {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let app = spawn_app(backend).await;
    let (first_key, racing_key) = (fresh_key(), fresh_key());
    let first = app
        .create(new_todo("waited for"), Some(&first_key))
        .await
        .expect("first create");
    // Another writer claims `racing_key` for the same request, with the first call's response.
    let claim = match backend {
        Backend::Sqlite => app.db.lock_sqlite_writes().await,
        Backend::Postgres => app.db.conn.begin().await.expect("begin"),
    };
    claim
        .execute_unprepared(&format!(
            "INSERT INTO idempotency_keys (caller, method, key, fingerprint, response, created_at_us) \
             SELECT caller, method, '{racing_key}', fingerprint, response, created_at_us \
             FROM idempotency_keys WHERE key = '{first_key}'"
        ))
        .await
        .expect("claim the key, uncommitted");

    let mut client = app.client.clone();
    let duplicate = tokio::spawn(async move {
        client
            .create_todo(keyed(new_todo("waited for"), Some(&racing_key)))
            .await
    });
    wait_until_the_server_waits_for(&app, &claim).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !duplicate.is_finished(),
        "the duplicate waits for the uncommitted claim"
    );
    claim.commit().await.expect("commit the claim");

    let response = duplicate
        .await
        .expect("the call's task")
        .expect("the duplicate succeeds");
    assert!(is_replayed(&response), "answered from the stored response");
    assert_eq!(response.get_ref(), first.get_ref());
    assert_eq!(app.todo_count().await, 1, "the duplicate wrote no todo");
    assert_eq!(app.key_count().await, 2);
}

/// Returns once the server is blocked behind `claim`, the test's open write transaction: on
/// PostgreSQL a server backend waits for a lock `claim` holds; on SQLite the server's one
/// writer connection is in use (taken by the call, waiting for SQLite's write lock). Fails
/// after 10 s.
async fn wait_until_the_server_waits_for(app: &TestApp, claim: &sea_orm::DatabaseTransaction) {
    use sea_orm::{ConnectionTrait, Statement};
    let claim_pid = match app.db.backend {
        Backend::Postgres => {
            let row = claim
                .query_one_raw(Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT pg_backend_pid()",
                ))
                .await
                .expect("query")
                .expect("a row");
            Some(row.try_get_by_index::<i32>(0).expect("a pid"))
        }
        Backend::Sqlite => None,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting = match claim_pid {
            Some(pid) => {
                app.db
                    .scalar(&format!(
                        "SELECT COUNT(*) FROM pg_stat_activity \
                         WHERE {pid} = ANY(pg_blocking_pids(pid))"
                    ))
                    .await
                    > 0
            }
            None => {
                let text = scrape(app).await;
                metric_value(
                    &text,
                    "todo_db_pool_connections{pool=\"writer\",state=\"in_use\"}",
                ) >= 1.0
            }
        };
        if waiting {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the call never reached the server's claim"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn concurrent_same_key_updates_write_once(backend: Backend) {
    same_key_updates_race_into_one_write(&spawn_app(backend).await).await;
}

/// 32 concurrent updates with one key: written once, 31 replays.
pub async fn same_key_updates_race_into_one_write(app: &TestApp) {
    let todo = app.create_todo("counter").await;
    let key = fresh_key();
    let mut update = todo.clone();
    update.title = "updated once".to_owned();
    let calls = (0..32).map(|_| {
        let key = key.clone();
        let request = masked(update.clone(), &["title"]);
        async move { app.update(request, Some(&key)).await }
    });
    let responses: Vec<Response<proto::Todo>> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("no etag conflict: later calls replay the first"))
        .collect();
    assert_eq!(responses.iter().filter(|r| !is_replayed(r)).count(), 1);
    let first = responses[0].get_ref();
    assert!(responses.iter().all(|r| r.get_ref() == first));
    let stored = app.get(&todo.id).await.unwrap();
    assert_eq!(&stored, first);
    assert_eq!(stored.etag, "\"2\"", "written exactly once");
}

async fn update_replays_its_stored_response(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("v1").await;
    let key = fresh_key();
    let mut request = todo.clone();
    request.title = "v2".to_owned();
    let first = app
        .update(replace(request.clone()), Some(&key))
        .await
        .unwrap()
        .into_inner();
    let mut later = first.clone();
    later.title = "v3".to_owned();
    app.update(replace(later), None).await.unwrap();

    // The retry carries the now-stale etag: still a replay of the stored response.
    let replay = app.update(replace(request), Some(&key)).await.unwrap();
    assert!(is_replayed(&replay));
    assert_eq!(replay.get_ref(), &first);
    assert_eq!(app.get(&todo.id).await.unwrap().title, "v3");
}

async fn expired_key_behaves_as_new(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.idempotency_retention = Some(
            todo_service::idempotency::Retention::new(std::time::Duration::from_secs(3600))
                .unwrap(),
        );
    })
    .await;
    let key = fresh_key();
    let first = app
        .create(new_todo("old"), Some(&key))
        .await
        .unwrap()
        .into_inner();
    // Age the row past the retention; it still exists (no sweeper ran).
    let two_hours_us = 2 * 3600 * 1_000_000_i64;
    app.db
        .execute(&format!(
            "UPDATE idempotency_keys SET created_at_us = created_at_us - {two_hours_us}"
        ))
        .await;
    assert_eq!(app.key_count().await, 1);

    // Same request: a fresh call, a new todo.
    let second = app.create(new_todo("old"), Some(&key)).await.unwrap();
    assert!(!is_replayed(&second));
    assert_ne!(second.get_ref().id, first.id);
    // Now the key is live again and replays the second response.
    let third = app.create(new_todo("old"), Some(&key)).await.unwrap();
    assert!(is_replayed(&third));
    assert_eq!(third.get_ref(), second.get_ref());

    // After expiry, another request with the key is not a mismatch either.
    app.db
        .execute(&format!(
            "UPDATE idempotency_keys SET created_at_us = created_at_us - {two_hours_us}"
        ))
        .await;
    let other = app.create(new_todo("different"), Some(&key)).await.unwrap();
    assert!(!is_replayed(&other));
    assert_eq!(app.todo_count().await, 3);
    assert_eq!(app.key_count().await, 1);
}

async fn key_is_shared_across_replicas(backend: Backend) {
    let first = spawn_app(backend).await;
    let second = spawn_on(Arc::clone(&first.db), |_| {}).await;
    let key = fresh_key();
    let created = first
        .create(new_todo("replicated"), Some(&key))
        .await
        .unwrap();
    let replay = second
        .create(new_todo("replicated"), Some(&key))
        .await
        .unwrap();
    assert!(is_replayed(&replay));
    assert_eq!(replay.get_ref(), created.get_ref());
    assert_key_reused(
        &second
            .create(new_todo("other"), Some(&key))
            .await
            .unwrap_err(),
    );

    // Concurrent calls spread over both replicas: still one todo.
    let key = fresh_key();
    let apps: [&TestApp; 2] = [&first, &second];
    let calls = (0..32).map(|i| {
        let app = apps[i % 2];
        let key = key.clone();
        async move { app.create(new_todo("spread"), Some(&key)).await }
    });
    let responses: Vec<Response<proto::Todo>> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("every call succeeds"))
        .collect();
    assert_eq!(responses.iter().filter(|r| !is_replayed(r)).count(), 1);
    assert_eq!(first.todo_count().await, 2);
}

/// A client whose `Todo` has a field the server does not know, and that writes fields in
/// another order: the server decodes the same request, so the key matches.
#[derive(Clone, PartialEq, prost::Message)]
struct ForeignTodo {
    #[prost(string, tag = "99")]
    unknown_to_the_server: String,
    #[prost(bool, tag = "4")]
    completed: bool,
    #[prost(string, tag = "2")]
    title: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ForeignCreateTodoRequest {
    #[prost(message, optional, tag = "1")]
    todo: Option<ForeignTodo>,
}

async fn equal_requests_encoded_differently_match(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = fresh_key();
    let first = app.create(new_todo("portable"), Some(&key)).await.unwrap();

    let channel = Channel::from_shared(app.channel_uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let foreign = ForeignCreateTodoRequest {
        todo: Some(ForeignTodo {
            unknown_to_the_server: "ignored".to_owned(),
            completed: false,
            title: "portable".to_owned(),
        }),
    };
    let codec = tonic_prost::ProstCodec::<ForeignCreateTodoRequest, proto::Todo>::default();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/todo.v1.TodoService/CreateTodo");
    let replay = grpc
        .unary(keyed(foreign, Some(&key)), path, codec)
        .await
        .unwrap();
    assert!(is_replayed(&replay));
    assert_eq!(replay.get_ref(), first.get_ref());
    assert_eq!(app.todo_count().await, 1);
}

async fn delete_checks_the_key_form(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("keep").await;
    let mut request = Request::new(proto::DeleteTodoRequest {
        id: todo.id.clone(),
        etag: String::new(),
    });
    request
        .metadata_mut()
        .insert("idempotency-key", MetadataValue::from_static("bad key"));
    let status = app.client.clone().delete_todo(request).await.unwrap_err();
    assert_invalid_field(&status, "idempotency-key");
    assert_eq!(app.todo_count().await, 1);
    let key = fresh_key();
    let request = keyed(
        proto::DeleteTodoRequest {
            id: todo.id.clone(),
            etag: String::new(),
        },
        Some(&key),
    );
    app.client.clone().delete_todo(request).await.unwrap();
    assert_eq!(app.todo_count().await, 0);
}

/// One key sent at once with updates of two different todos: the first claim wins; every
/// call of the winning request answers its response, every call of the other request is
/// IDEMPOTENCY_KEY_REUSED, and the losing todo is untouched (the losing change rolled back with
/// its claim).
async fn a_key_reused_at_once_on_two_todos_changes_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let todos = [app.create_todo("a").await, app.create_todo("b").await];
    let key = fresh_key();
    let calls = (0..16).map(|i| {
        let (app, key) = (&app, &key);
        let target = &todos[i % 2];
        let request = masked(
            proto::Todo {
                id: target.id.clone(),
                completed: true,
                ..proto::Todo::default()
            },
            &["completed"],
        );
        async move { (i % 2, app.update(request, Some(key)).await) }
    });
    let results = join_all(calls).await;
    let winner = results
        .iter()
        .find_map(|(target, result)| match result {
            Ok(response) if !is_replayed(response) => Some(*target),
            _ => None,
        })
        .expect("one call wrote");
    for (target, result) in &results {
        match result {
            Ok(response) => {
                assert_eq!(*target, winner, "only the winner's request succeeds");
                assert_eq!(response.get_ref().id, todos[winner].id);
            }
            Err(status) => {
                assert_ne!(*target, winner, "{status:?}");
                assert_key_reused(status);
            }
        }
    }
    let fresh = results
        .iter()
        .filter(|(_, result)| result.as_ref().is_ok_and(|r| !is_replayed(r)))
        .count();
    assert_eq!(fresh, 1, "written once");
    let winner_now = app.get(&todos[winner].id).await.expect("winner");
    let loser_now = app.get(&todos[1 - winner].id).await.expect("loser");
    assert_eq!(
        (winner_now.etag.as_str(), winner_now.completed),
        ("\"2\"", true)
    );
    assert_eq!(loser_now, todos[1 - winner], "the other todo is untouched");
    assert_eq!(app.key_count().await, 1);
}

/// 16 deletes of one todo at once with one key and the todo's etag: every one succeeds (one
/// deletes it; the others find it gone, a change made stale, and read again), and DeleteTodo
/// stores no key.
async fn concurrent_same_key_deletes_with_an_etag_all_succeed(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("delete once").await;
    let key = fresh_key();
    let calls = (0..16).map(|_| {
        let mut client = app.client.clone();
        let request = keyed(
            proto::DeleteTodoRequest {
                id: todo.id.clone(),
                etag: todo.etag.clone(),
            },
            Some(&key),
        );
        async move { client.delete_todo(request).await }
    });
    for result in join_all(calls).await {
        result.expect("every duplicate succeeds");
    }
    assert_eq!(app.todo_count().await, 0);
    assert_eq!(app.key_count().await, 0);
}

/// A retry without an etag, after another write undid the first call's change: the retry's
/// plan decides a real change again, but the key is taken, so the change rolls back with the
/// failed claim and the call replays the first response.
async fn a_retry_whose_change_would_still_apply_replays_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let todo = app.create_todo("toggled").await;
    let complete = |completed: bool| {
        masked(
            proto::Todo {
                id: todo.id.clone(),
                completed,
                ..proto::Todo::default()
            },
            &["completed"],
        )
    };
    let key = fresh_key();
    let first = app.update(complete(true), Some(&key)).await.unwrap();
    assert!(!is_replayed(&first));
    let undone = app
        .update(complete(false), None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(undone.etag, "\"3\"");

    let retry = app.update(complete(true), Some(&key)).await.unwrap();
    assert!(is_replayed(&retry));
    assert_eq!(retry.get_ref(), first.get_ref());
    assert_eq!(
        app.get(&todo.id).await.unwrap(),
        undone,
        "the retry wrote nothing"
    );
}
