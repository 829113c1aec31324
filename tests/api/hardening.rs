//! What hostile and careless callers get: every refusal a clear status, no limit bypassed by
//! putting metadata where the guard does not look.

use std::io::Write;

use todo_service::auth::hash_token;
use todo_service::proto;
use todo_service::startup::{Application, StartupError};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_types::StatusExt;

use crate::both_backends;
use crate::helpers::{
    Backend, TestDatabase, fresh_key, metric_value, new_todo, replace, scrape, spawn_app,
    test_config,
};
use crate::raw_grpc::RawConnection;
use crate::server_process::ServerProcess;

both_backends!(
    retention_is_one_shared_value_that_no_replica_changes_by_accident,
    an_idempotency_key_in_trailers_is_ignored_and_trailers_count_in_the_limit,
    a_client_deadline_that_expires_on_the_server_is_deadline_exceeded_and_rolls_back,
    an_unkeyed_update_past_its_deadline_never_commits,
);

const CREATE: &str = "/todo.v1.TodoService/CreateTodo";

/// Contract (Edges): retention is one value for the whole key table, shared by every replica;
/// no replica can shorten it or sweep keys the others still honour; values under a floor are
/// refused (`config::tests`).
async fn retention_is_one_shared_value_that_no_replica_changes_by_accident(backend: Backend) {
    use std::sync::Arc;
    use std::time::Duration;
    use todo_service::idempotency::Retention;

    let hour = Retention::new(Duration::from_secs(3600)).unwrap();
    let first = spawn_app(backend).await; // stores the default, 24 h
    let db = Arc::clone(&first.db);

    // A replica started with another value refuses to start, and says how to change it.
    let mut config = test_config(&db);
    config.idempotency_retention = Some(hour);
    let Err(err) = Application::build(&config).await else {
        panic!("a replica with a 1 h retention started beside one with 24 h");
    };
    let chain = todo_service::error::Chain(&err).to_string();
    assert!(matches!(err, StartupError::Retention(_)), "{chain}");
    assert!(chain.contains("1day") && chain.contains("1h"), "{chain}");
    assert!(chain.contains("--change-idempotency-retention"), "{chain}");

    // A key two hours old is honoured under 24 h.
    let key = fresh_key();
    let created = first.create(new_todo("kept"), Some(&key)).await.unwrap();
    let two_hours_us = 2 * 3600 * 1_000_000_i64;
    db.execute(&format!(
        "UPDATE idempotency_keys SET created_at_us = created_at_us - {two_hours_us}"
    ))
    .await;
    let replay = first.create(new_todo("kept"), Some(&key)).await.unwrap();
    assert!(crate::helpers::is_replayed(&replay));
    assert_eq!(replay.get_ref(), created.get_ref());

    // Changed on purpose: the new replica starts and stores 1 h for everyone ...
    let second = crate::helpers::spawn_on(Arc::clone(&db), move |config| {
        config.idempotency_retention = Some(hour);
        config.change_idempotency_retention = true;
    })
    .await;
    // ... but a sweep right after the shortening still uses 24 h: the key stays.
    let report = db.sweep().await;
    assert_eq!(
        report.rows_deleted, 0,
        "nothing a replica may still honour is swept"
    );
    assert_eq!(first.key_count().await, 1);

    // The first replica picks up the new value at its next refresh: the 2-hour-old key has
    // expired for it too, and the same request is a new call.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = first.create(new_todo("kept"), Some(&key)).await.unwrap();
        if !crate::helpers::is_replayed(&again) {
            assert_ne!(again.get_ref().id, created.get_ref().id);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the change never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(second.todo_count().await, 2);
}

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
    update_past_its_deadline(backend, Some(&fresh_key())).await;
}

/// An update without a key is ONE autocommit statement on PostgreSQL: past the deadline it
/// must not commit either, when the lock it waited for is released (`storage::deadline`).
async fn an_unkeyed_update_past_its_deadline_never_commits(backend: Backend) {
    update_past_its_deadline(backend, None).await;
}

/// An update that waits for a lock the test holds, with a client deadline of 300 ms.
async fn update_past_its_deadline(backend: Backend, key: Option<&str>) {
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
    let mut update = todo.clone();
    update.title = "changed".to_owned();
    let mut raw = RawConnection::open(app.addr).await;
    let started = std::time::Instant::now();
    let mut headers = vec![("grpc-timeout", "300m")];
    headers.extend(key.map(|key| ("idempotency-key", key)));
    let response = raw
        .call(
            "/todo.v1.TodoService/UpdateTodo",
            &headers,
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
    // Whatever the database was still running for the call has ended by now.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        app.get(&todo.id).await.expect("still there"),
        todo,
        "nothing committed after the deadline"
    );
    let retried = app
        .update(replace(update), key)
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

/// Request bodies that do not decode as a CreateTodoRequest, and the field each names (if the
/// decoder knows it).
fn undecodable_bodies() -> Vec<(&'static str, bytes::Bytes, Option<&'static str>)> {
    use crate::raw_grpc::frame;
    // Field 15 as a group start (wire type 3) nested 120 deep, past prost's limit of 100.
    let mut deep = vec![0x7b_u8; 120];
    deep.extend(std::iter::repeat_n(0x7c_u8, 120));
    vec![
        // CreateTodoRequest { todo: Todo { title: 0xFF } }: not UTF-8.
        (
            "invalid UTF-8",
            frame(&[0x0a, 0x03, 0x12, 0x01, 0xff]),
            Some("todo.title"),
        ),
        // Field 1 (a message) sent as a varint.
        ("wrong wire type", frame(&[0x08, 0x01]), None),
        // Field 1 claims 5 bytes and has none.
        ("truncated", frame(&[0x0a, 0x05]), None),
        ("nested too deep", frame(&deep), None),
        // A unary call whose body ends before any message.
        ("no message", bytes::Bytes::new(), None),
    ]
}

/// Contract (Edges): a request that does not decode is INVALID_ARGUMENT (BadRequest where the
/// field is known), never INTERNAL with decoder text; a unary call without a request message
/// is INVALID_ARGUMENT; both are counted like every other call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_decode_are_invalid_argument_and_counted() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut raw = RawConnection::open(app.addr).await;
    let bodies = undecodable_bodies();
    for (case, body, field) in &bodies {
        let response = raw.call_bytes(CREATE, &[], body.clone(), &[]).await;
        assert_eq!(
            response.status,
            Code::InvalidArgument,
            "{case}: {response:?}"
        );
        for internals in [
            "decode Protobuf",
            "UTF-8",
            "wire type",
            "recursion",
            "Missing",
        ] {
            assert!(
                !response.message.contains(internals),
                "{case}: {response:?}"
            );
        }
        let status = tonic::Status::from_header_map(&response.headers).expect("a status");
        let named: Vec<String> = status
            .get_details_bad_request()
            .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        match field {
            Some(field) => assert_eq!(named, vec![(*field).to_owned()], "{case}"),
            None => assert!(named.iter().all(|name| !name.is_empty()), "{case}"),
        }
    }
    let text = scrape(&app).await;
    assert_eq!(
        metric_value(
            &text,
            "todo_grpc_requests_total{method=\"CreateTodo\",code=\"INVALID_ARGUMENT\"}"
        ),
        bodies.len() as f64,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "todo_grpc_requests_total{method=\"CreateTodo\",code=\"INTERNAL\"}"
        ),
        0.0
    );
    assert_eq!(app.todo_count().await, 0);
}

/// The same calls each get an `rpc finished` log line with their status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_decode_are_logged() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let mut server = ServerProcess::start_logging(&db.url, "127.0.0.1:0", &[], "info").await;
    let mut raw = RawConnection::open(server.addr).await;
    let bodies = undecodable_bodies();
    for (_, body, _) in &bodies {
        raw.call_bytes(
            CREATE,
            &[("x-request-id", "undecodable")],
            body.clone(),
            &[],
        )
        .await;
    }
    let mut logged = 0;
    while logged < bodies.len() {
        let line = server
            .next_log_line(std::time::Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{logged} of {} calls logged", bodies.len()));
        let json: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        if json["message"] == "rpc finished" {
            let span = &json["span"];
            assert_eq!(span["method"], "CreateTodo", "{line}");
            assert_eq!(span["code"], "INVALID_ARGUMENT", "{line}");
            assert_eq!(span["request_id"], "undecodable", "{line}");
            logged += 1;
        }
    }
    assert!(server.terminate().await.success());
}

/// Contract (Edges): health is NOT_SERVING only while the database is really unreachable; a
/// pooled connection that died while idle never fails a call by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_died_while_idle_fail_neither_health_nor_calls() {
    use std::time::{Duration, Instant};
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let app = spawn_app(Backend::Postgres).await;
    // Fill the pool: concurrent calls open several connections, which then sit idle.
    let todo = app.create_todo("survives").await;
    let reads = (0..8).map(|_| app.get(&todo.id));
    for read in futures::future::join_all(reads).await {
        read.expect("a read");
    }
    let terminated = app.db.terminate_server_backends().await;
    assert!(
        terminated >= 2,
        "the server had idle connections: {terminated}"
    );

    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(app.channel_uri())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(12);
    let mut checks = 0;
    while Instant::now() < until {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(
            status,
            ServingStatus::Serving as i32,
            "after {checks} checks"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Terminate them again, then call: no call fails for a dead idle connection.
    let terminated = app.db.terminate_server_backends().await;
    assert!(terminated >= 1, "{terminated}");
    let mut failures = Vec::new();
    for i in 0..20 {
        let result = match i % 4 {
            0 => app.get(&todo.id).await.map(|_| ()),
            1 => app.list(10, "", None).await.map(|_| ()),
            2 => app
                .create(new_todo("keyed"), Some(&fresh_key()))
                .await
                .map(|_| ()),
            _ => app.create(new_todo("unkeyed"), None).await.map(|_| ()),
        };
        if let Err(status) = result {
            failures.push(format!("call {i}: {status:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
