//! What operators rely on: the expired-key sweeper (in-process and `todo-server sweep`),
//! the Prometheus endpoint, and JSON logs.

use std::sync::Arc;
use std::time::Duration;

use todo_service::idempotency::IdempotencyKey;
use tonic::Request;
use tonic::metadata::MetadataValue;

use crate::both_backends;
use crate::helpers::{
    Backend, TestDatabase, fresh_key, is_replayed, metric_value, new_todo, scrape, spawn_app,
    spawn_app_with,
};
use crate::server_process::ServerProcess;

both_backends!(
    sweep_deletes_expired_keys_and_keeps_live_ones,
    sweep_works_in_bounded_batches,
    background_sweeper_deletes_expired_keys_and_counts_them,
    sweep_command_runs_one_sweep_and_exits,
    metrics_endpoint_counts_real_calls,
);

/// Inserts `count` key rows created at `created_at_us` (bulk SQL, not through the API).
async fn insert_keys(db: &TestDatabase, count: u32, created_at_us: i64) {
    let sql = match db.backend {
        Backend::Sqlite => format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {count}) \
             INSERT INTO idempotency_keys (caller, method, key, fingerprint, response, created_at_us) \
             SELECT 'anonymous', '/bulk', 'bulk-' || n || '-' || {created_at_us}, x'00', x'00', {created_at_us} FROM g"
        ),
        Backend::Postgres => format!(
            "INSERT INTO idempotency_keys (caller, method, key, fingerprint, response, created_at_us) \
             SELECT 'anonymous', '/bulk', 'bulk-' || g || '-' || {created_at_us}, decode('00', 'hex'), \
             decode('00', 'hex'), {created_at_us} FROM generate_series(1, {count}) AS g"
        ),
    };
    db.execute(&sql).await;
}

fn micros_ago(ago: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(now.saturating_sub(ago).as_micros()).unwrap()
}

const DAY: Duration = Duration::from_secs(24 * 3600);

async fn sweep_deletes_expired_keys_and_keeps_live_ones(backend: Backend) {
    let app = spawn_app(backend).await;
    let live_key = fresh_key();
    let live = app
        .create(new_todo("live"), Some(&live_key))
        .await
        .unwrap()
        .into_inner();
    insert_keys(&app.db, 40, micros_ago(DAY + Duration::from_secs(60))).await;
    insert_keys(&app.db, 7, micros_ago(DAY - Duration::from_secs(600))).await;
    assert_eq!(app.key_count().await, 48);

    let report = app.db.sweep().await;
    assert_eq!(report.rows_deleted, 40);
    assert_eq!(app.key_count().await, 8, "unexpired keys are kept");

    let replay = app.create(new_todo("live"), Some(&live_key)).await.unwrap();
    assert!(
        is_replayed(&replay),
        "a live key still replays after a sweep"
    );
    assert_eq!(replay.get_ref(), &live);
}

async fn sweep_works_in_bounded_batches(backend: Backend) {
    let app = spawn_app(backend).await;
    insert_keys(&app.db, 25_000, micros_ago(2 * DAY)).await;
    insert_keys(&app.db, 5, micros_ago(Duration::from_secs(1))).await;
    let report = app.db.sweep().await;
    assert_eq!(report.rows_deleted, 25_000);
    assert_eq!(report.batches, 3, "10 000 + 10 000 + 5 000");
    assert_eq!(app.key_count().await, 5);
}

async fn background_sweeper_deletes_expired_keys_and_counts_them(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.sweep_enabled = true;
        config.sweep_interval = Duration::from_millis(100);
        config.sweep_batch_size = 7;
        config.sweep_batch_pause = Duration::from_millis(1);
    })
    .await;
    insert_keys(&app.db, 30, micros_ago(2 * DAY)).await;
    insert_keys(&app.db, 3, micros_ago(Duration::from_secs(1))).await;
    for _ in 0..100 {
        if app.key_count().await == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.key_count().await, 3);
    let metrics = scrape(&app).await;
    assert!(metric_value(&metrics, "todo_idempotency_keys_swept_total") >= 30.0);
    assert!(metric_value(&metrics, "todo_idempotency_sweeps_total") >= 1.0);
    assert!(metric_value(&metrics, "todo_idempotency_sweep_duration_seconds_count") >= 1.0);
}

async fn sweep_command_runs_one_sweep_and_exits(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    migration_up(&db).await;
    insert_keys(&db, 12, micros_ago(2 * DAY)).await;
    insert_keys(&db, 2, micros_ago(Duration::from_secs(1))).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_todo-server"))
        .args([
            "sweep",
            "--database-url",
            db.url.as_str(),
            "--sweep-batch-size",
            "5",
            "--log-format",
            "json",
        ])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "sweep failed: {stdout}");
    assert_eq!(db.count("idempotency_keys").await, 2);
    let finished = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "sweep finished")
        .expect("a `sweep finished` log line");
    assert_eq!(finished["rows_deleted"], 12);
    assert_eq!(finished["batches"], 3);
}

async fn migration_up(db: &TestDatabase) {
    use migration::MigratorTrait;
    migration::Migrator::up(&db.conn, None).await.unwrap();
}

async fn metrics_endpoint_counts_real_calls(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = fresh_key();
    app.create(new_todo("counted"), Some(&key)).await.unwrap();
    app.create(new_todo("counted"), Some(&key)).await.unwrap();
    app.create(new_todo("counted"), Some(&key)).await.unwrap();
    app.create(new_todo("different"), Some(&key))
        .await
        .unwrap_err();
    let mut bad = Request::new(new_todo("bad key"));
    bad.metadata_mut()
        .insert("idempotency-key", MetadataValue::from_static("bad key"));
    app.client.clone().create_todo(bad).await.unwrap_err();
    app.create(new_todo("unkeyed"), None).await.unwrap();
    app.get("01890a5d-ac96-774b-bcce-b302099a8057")
        .await
        .unwrap_err();

    let text = scrape(&app).await;
    let value = |series: &str| metric_value(&text, series);
    let idempotent = |outcome: &str| {
        value(&format!(
            "todo_idempotent_requests_total{{method=\"CreateTodo\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(idempotent("fresh"), 1.0, "{text}");
    assert_eq!(
        idempotent("replayed"),
        2.0,
        "a replay counts as replayed, not fresh"
    );
    assert_eq!(idempotent("mismatch"), 1.0);
    assert_eq!(idempotent("invalid_key"), 1.0);
    assert_eq!(
        value("todo_grpc_requests_total{method=\"CreateTodo\",code=\"OK\"}"),
        4.0
    );
    assert_eq!(
        value("todo_grpc_requests_total{method=\"CreateTodo\",code=\"FAILED_PRECONDITION\"}"),
        1.0
    );
    assert_eq!(
        value("todo_grpc_requests_total{method=\"CreateTodo\",code=\"INVALID_ARGUMENT\"}"),
        1.0
    );
    assert_eq!(
        value("todo_grpc_requests_total{method=\"GetTodo\",code=\"NOT_FOUND\"}"),
        1.0
    );
    assert_eq!(
        value("todo_grpc_request_duration_seconds_count{method=\"CreateTodo\"}"),
        6.0
    );
    assert!(text.contains("todo_db_pool_connections{"), "{text}");

    // Counters only grow: one more replay moves `replayed` by one.
    app.create(new_todo("counted"), Some(&key)).await.unwrap();
    let text = scrape(&app).await;
    assert_eq!(
        metric_value(
            &text,
            "todo_idempotent_requests_total{method=\"CreateTodo\",outcome=\"replayed\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &text,
            "todo_idempotent_requests_total{method=\"CreateTodo\",outcome=\"fresh\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_rpc_fields_and_never_the_key() {
    let db = Arc::new(TestDatabase::new(Backend::Sqlite).await);
    let mut server = ServerProcess::start_logging(&db.url, "127.0.0.1:0", &[], "info").await;
    let client = todo_service::TodoServiceClient::new(server.channel());
    let key = "secret-key-material-0001";
    let mut request = Request::new(new_todo("logged"));
    request
        .metadata_mut()
        .insert("idempotency-key", MetadataValue::try_from(key).unwrap());
    request
        .metadata_mut()
        .insert("x-request-id", MetadataValue::from_static("req-from-test"));
    client.clone().create_todo(request).await.unwrap();

    let mut log = server.startup_log.clone();
    let finished = loop {
        let line = server
            .next_log_line(Duration::from_secs(10))
            .await
            .expect("the server logs the call");
        log.push(line.clone());
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        if json["message"] == "rpc finished" {
            break json;
        }
    };
    assert!(finished["timestamp"].is_string());
    assert_eq!(finished["level"], "INFO");
    assert!(finished["target"].is_string());
    let span = &finished["span"];
    assert_eq!(span["method"], "CreateTodo");
    assert_eq!(span["outcome"], "fresh");
    assert_eq!(span["code"], "OK");
    assert_eq!(span["request_id"], "req-from-test");
    assert!(span["latency_ms"].as_f64().is_some());
    // The span names the key by its hash, and only by its hash.
    let expected_hash = IdempotencyKey::parse(key).unwrap().log_hash();
    assert_eq!(span["key_hash"], expected_hash.as_str());

    let status = server.terminate().await;
    while let Some(line) = server.next_log_line(Duration::from_secs(1)).await {
        log.push(line);
    }
    for line in &log {
        assert!(!line.contains(key), "the key leaked: {line}");
    }
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}
