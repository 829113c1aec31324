//! What hostile and careless callers get: every refusal a clear status, no limit bypassed by
//! putting metadata where the guard does not look.

use std::io::Write;

use todo_service::auth::hash_token;
use todo_service::proto;
use todo_service::startup::{Application, StartupError};
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::both_backends;
use crate::helpers::{
    Backend, TestDatabase, fresh_key, metric_value, new_todo, replace, scrape, spawn_app,
    test_config,
};
use crate::raw_grpc::RawConnection;

both_backends!(
    an_idempotency_key_in_trailers_is_ignored_and_trailers_count_in_the_limit,
    a_client_deadline_that_expires_on_the_server_is_deadline_exceeded_and_rolls_back,
);

const CREATE: &str = "/todo.v1.TodoService/CreateTodo";

/// Contract (Edges): `idempotency-key` is read from request headers only; limits count headers
/// and trailers together.
async fn an_idempotency_key_in_trailers_is_ignored_and_trailers_count_in_the_limit(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let mut raw = RawConnection::open(app.addr).await;
    let key = fresh_key();
    for _ in 0..2 {
        let response = raw
            .call(
                CREATE,
                &[],
                &new_todo("key in trailers"),
                &[("idempotency-key", &key)],
            )
            .await;
        assert_eq!(response.status, Code::Ok, "{response:?}");
        assert!(
            response.headers.get("idempotent-replayed").is_none(),
            "a key in trailers is not a key"
        );
        let todo = <proto::Todo as prost::Message>::decode(response.body.as_slice()).unwrap();
        assert_eq!(todo.title, "key in trailers");
    }
    assert_eq!(app.todo_count().await, 2);
    assert_eq!(app.key_count().await, 0);

    // 12 KB of trailers: within HTTP/2's header list limit, over --max-metadata-bytes (8 KiB).
    let padding = "p".repeat(12 * 1024);
    let response = raw
        .call(
            CREATE,
            &[("idempotency-key", &fresh_key())],
            &new_todo("padded trailers"),
            &[("x-padding", &padding)],
        )
        .await;
    assert_eq!(response.status, Code::ResourceExhausted, "{response:?}");
    assert!(response.message.contains("trailers"), "{response:?}");
    assert_eq!(app.todo_count().await, 2, "nothing written");
    assert_eq!(app.key_count().await, 0, "no key consumed");
}

/// Contract (Edges): a deadline that expires on the server is DEADLINE_EXCEEDED (not tonic's
/// CANCELLED "Timeout expired"), counted like any call, and rolls its transaction back.
async fn a_client_deadline_that_expires_on_the_server_is_deadline_exceeded_and_rolls_back(
    backend: Backend,
) {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let app = spawn_app(backend).await;
    let todo = app.create_todo("locked").await;
    // The test holds the row (PostgreSQL) or SQLite's write lock, so the update waits.
    let lock = match backend {
        Backend::Sqlite => app.db.lock_sqlite_writes().await,
        Backend::Postgres => {
            let txn = app.db.conn.begin().await.expect("begin");
            txn.execute_unprepared(&format!(
                "SELECT id FROM todos WHERE id = '{}' FOR UPDATE",
                todo.id
            ))
            .await
            .expect("lock the row");
            txn
        }
    };
    let key = fresh_key();
    let mut update = todo.clone();
    update.title = "changed".to_owned();
    let mut raw = RawConnection::open(app.addr).await;
    let started = std::time::Instant::now();
    let response = raw
        .call(
            "/todo.v1.TodoService/UpdateTodo",
            &[("grpc-timeout", "300m"), ("idempotency-key", &key)],
            &replace(update.clone()),
            &[],
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(response.status, Code::DeadlineExceeded, "{response:?}");
    assert!(
        waited >= std::time::Duration::from_millis(250)
            && waited < std::time::Duration::from_secs(3),
        "answered at the client's deadline: {waited:?}"
    );
    lock.rollback().await.expect("release the lock");

    let text = scrape(&app).await;
    assert_eq!(
        metric_value(
            &text,
            "todo_grpc_requests_total{method=\"UpdateTodo\",code=\"DEADLINE_EXCEEDED\"}"
        ),
        1.0
    );
    assert_eq!(
        app.get(&todo.id).await.expect("still there"),
        todo,
        "rolled back"
    );
    let retried = app
        .update(replace(update), Some(&key))
        .await
        .expect("the retry runs");
    assert!(
        retried.metadata().get("idempotent-replayed").is_none(),
        "the expired call stored no key"
    );
    assert_eq!(retried.get_ref().title, "changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_entries_are_unauthenticated() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens, "alice {}", hash_token("alice-token")).unwrap();
    let path = tokens.path().to_owned();
    let app = crate::helpers::spawn_on(std::sync::Arc::new(db), move |config| {
        config.tokens_file = Some(path)
    })
    .await;
    for second in ["Bearer alice-token", "Bearer someone-else"] {
        let mut request = tonic::Request::new(new_todo("two tokens"));
        let metadata = request.metadata_mut();
        metadata.append(
            "authorization",
            MetadataValue::from_static("Bearer alice-token"),
        );
        metadata.append("authorization", MetadataValue::try_from(second).unwrap());
        let status = app.client.clone().create_todo(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let mut request = tonic::Request::new(proto::GetTodoRequest {
        id: uuid::Uuid::now_v7().to_string(),
    });
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer alice-token"),
    );
    let status = app.client.clone().get_todo(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "one entry authenticates");
    assert_eq!(app.todo_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_file_that_names_no_caller_or_anonymous_is_refused_at_start_up() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    for (contents, expected) in [
        ("# only comments\n\n".to_owned(), "no callers"),
        (format!("anonymous {}\n", hash_token("t")), "anonymous"),
    ] {
        let mut tokens = tempfile::NamedTempFile::new().unwrap();
        tokens.write_all(contents.as_bytes()).unwrap();
        let mut config = test_config(&db);
        config.tokens_file = Some(tokens.path().to_owned());
        let Err(err) = Application::build(&config).await else {
            panic!("the server started with tokens file {contents:?}");
        };
        assert!(matches!(err, StartupError::Tokens(_)), "{err:?}");
        let chain = todo_service::error::Chain(&err).to_string();
        assert!(chain.contains(expected), "{chain}");
    }
}
