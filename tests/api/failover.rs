//! What a PostgreSQL failover and a connection pooler do to the server's sessions, with the
//! real PostgreSQL and a real PgBouncer (Debian's package, installed by `.ci/run`):
//! - a connection that reaches a read-only server (a standby, a demoted primary: SQLSTATE
//!   25006) is UNAVAILABLE, never INTERNAL, and the pool's connections are replaced, so the
//!   service writes again by itself once the database does;
//! - PgBouncer in session mode works end to end once the session settings are set for the
//!   database (it drops the start-up options, which the server notices and names);
//! - PgBouncer 1.18 in transaction mode (no prepared statements across sessions) is refused at
//!   start-up with a message that says so.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sea_orm::{ConnectionTrait, Database};
use todo_service::config::Cli;
use todo_service::error::Chain;
use todo_service::startup::Application;
use tonic::Code;

use crate::cluster::{ThrowawayCluster, free_port, postgres_owned_tempdir};
use crate::helpers::{
    Backend, TestDatabase, fresh_key, is_replayed, masked, new_todo, postgres_base_url, spawn_on,
};

/// A database of the test's own on the shared PostgreSQL server (not a schema: a pooler drops
/// the `search_path` option a schema needs), dropped at the end.
struct ScratchDatabase {
    /// Its name.
    name: String,
}

impl ScratchDatabase {
    async fn new() -> Self {
        let name = format!("f_{}", uuid::Uuid::now_v7().simple());
        admin_sql(&format!("CREATE DATABASE \"{name}\"")).await;
        Self { name }
    }

    /// Its URL on the shared server, directly.
    fn url(&self) -> String {
        let base = postgres_base_url();
        let (server, _) = base.rsplit_once('/').expect("a database in the URL");
        format!("{server}/{}", self.name)
    }

    /// `ALTER DATABASE <it> <clause>` (for the sessions opened after it).
    async fn alter(&self, clause: &str) {
        admin_sql(&format!("ALTER DATABASE \"{}\" {clause}", self.name)).await;
    }

    /// Ends every session of the database but the caller's.
    async fn terminate_sessions(&self) {
        admin_sql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' \
             AND pid <> pg_backend_pid()",
            self.name
        ))
        .await;
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::process::Command::new("psql")
            .arg(postgres_base_url())
            .args(["-q", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn admin_sql(sql: &str) {
    let admin = Database::connect(postgres_base_url())
        .await
        .expect("connect to the shared PostgreSQL");
    admin
        .execute_unprepared(sql)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
    let _ = admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_is_unavailable_and_the_pool_reconnects_when_it_is_writable() {
    let scratch = ScratchDatabase::new().await;
    let db = Arc::new(TestDatabase::attach(Backend::Postgres, &scratch.url()).await);
    let app = spawn_on(Arc::clone(&db), |_| {}).await;
    app.create_todo("before").await;

    // What a pooled connection meets after a failover: the server it reaches is read only.
    scratch
        .alter("SET default_transaction_read_only = on")
        .await;
    scratch.terminate_sessions().await;
    let key = fresh_key();
    for _ in 0..3 {
        let status = app
            .create(new_todo("during"), Some(&key))
            .await
            .expect_err("a read-only server takes no write");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            !status.message().contains("read-only"),
            "opaque: {status:?}"
        );
    }
    let read = app.list_all(10, None).await;
    assert_eq!(read.len(), 1, "a read-only server still serves reads");

    // The new primary: sessions opened from now on are writable. The pooled connections that
    // met the read-only server are not handed out again.
    scratch.alter("RESET default_transaction_read_only").await;
    let created = app
        .create(new_todo("during"), Some(&key))
        .await
        .expect("writes again without a restart");
    assert!(
        !is_replayed(&created),
        "the refused attempts stored nothing"
    );
    let replay = app
        .create(new_todo("during"), Some(&key))
        .await
        .expect("a retry replays");
    assert!(is_replayed(&replay));
    assert_eq!(app.todo_count().await, 2);
    let metrics = crate::helpers::scrape(&app).await;
    assert!(
        crate::helpers::metric_value(
            &metrics,
            "todo_db_retries_total{reason=\"read_only_server\"}"
        ) >= 1.0,
        "{metrics}"
    );
    app.stop().await;
    drop(db);
}

/// A PgBouncer of the test's own in front of the shared PostgreSQL, in `mode`, serving
/// `database` as `todo`.
struct PgBouncer {
    /// Its configuration, log and pid file.
    dir: tempfile::TempDir,
    /// The port it listens on, on 127.0.0.1.
    port: u16,
    /// The process (it refuses to run as root: run as `postgres`).
    child: tokio::process::Child,
}

impl PgBouncer {
    async fn start(mode: &str, database: &str) -> Self {
        let dir = postgres_owned_tempdir().await;
        let port = free_port().await;
        let base = postgres_base_url();
        let authority = base
            .split_once('@')
            .and_then(|(_, rest)| rest.split('/').next())
            .expect("host:port in the URL");
        let (host, server_port) = authority.rsplit_once(':').unwrap_or((authority, "5432"));
        let ini = dir.path().join("pgbouncer.ini");
        // sqlx sends `options` (the session settings) and `extra_float_digits`; PgBouncer
        // refuses unknown start-up parameters unless told to ignore them, and then drops them.
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 todo = host={host} port={server_port} dbname={database} user=postgres\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = any\n\
                 pool_mode = {mode}\n\
                 default_pool_size = 20\n\
                 max_client_conn = 200\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {log}\n",
                log = dir.path().join("pgbouncer.log").display()
            ),
        )
        .expect("write pgbouncer.ini");
        let child = tokio::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "pgbouncer"])
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start pgbouncer (apt-get install pgbouncer; .ci/run installs it)");
        let bouncer = Self { dir, port, child };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return bouncer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "pgbouncer did not listen: {}",
            std::fs::read_to_string(bouncer.dir.path().join("pgbouncer.log")).unwrap_or_default()
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/todo", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Builds the server on `url` (no listener is kept): the start-up error, if any.
async fn start_up_error(url: &str) -> Option<String> {
    let config = Cli::try_parse_from([
        "todo-server",
        "--listen-addr",
        "127.0.0.1:0",
        "--metrics-enabled",
        "false",
        "--database-url",
        url,
    ])
    .expect("configuration")
    .config;
    match Application::build(&config).await {
        Ok(_) => None,
        Err(err) => Some(Chain(&err).to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_in_session_mode_the_dropped_settings_are_named_then_it_serves() {
    let scratch = ScratchDatabase::new().await;
    let bouncer = PgBouncer::start("session", &scratch.name).await;

    // PgBouncer drops the start-up options: the server notices and says what to do.
    let err = start_up_error(&bouncer.url())
        .await
        .expect("refused: the statement timeout is not in force");
    assert!(err.contains("statement_timeout"), "{err}");
    assert!(err.contains("ALTER ROLE"), "{err}");

    // Set for the database, the settings hold whatever the pooler does with start-up options
    // (for the server sessions opened after it: a new PgBouncer, as after a deploy).
    drop(bouncer);
    scratch.alter("SET statement_timeout = '5000ms'").await;
    scratch
        .alter("SET default_transaction_isolation = 'read committed'")
        .await;
    let bouncer = PgBouncer::start("session", &scratch.name).await;
    let db = Arc::new(TestDatabase::attach(Backend::Postgres, &scratch.url()).await);
    let url = bouncer.url();
    let app = spawn_on(Arc::clone(&db), |config| {
        config.database_url = url;
        config.db_timeout = Duration::from_secs(5);
    })
    .await;
    // The smoke path: keyed create and its replay, get, list, update, delete.
    let key = fresh_key();
    let created = app
        .create(new_todo("through pgbouncer"), Some(&key))
        .await
        .expect("created through pgbouncer")
        .into_inner();
    let replay = app
        .create(new_todo("through pgbouncer"), Some(&key))
        .await
        .expect("replayed");
    assert!(is_replayed(&replay));
    assert_eq!(replay.get_ref().id, created.id);
    assert_eq!(
        app.get(&created.id).await.expect("get").title,
        created.title
    );
    assert_eq!(app.list_all(10, None).await.len(), 1);
    let mut changed = created.clone();
    changed.completed = true;
    let updated = app
        .update(masked(changed, &["completed"]), Some(&fresh_key()))
        .await
        .expect("updated")
        .into_inner();
    assert!(updated.completed);
    app.delete(&updated.id, &updated.etag)
        .await
        .expect("deleted");
    assert_eq!(app.todo_count().await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_in_transaction_mode_the_server_refuses_to_start_and_says_why() {
    let scratch = ScratchDatabase::new().await;
    // Settings set for the database, so that only the pooling itself is in the way.
    scratch.alter("SET statement_timeout = '5000ms'").await;
    let bouncer = PgBouncer::start("transaction", &scratch.name).await;
    let err = start_up_error(&bouncer.url())
        .await
        .expect("refused: PgBouncer 1.18 loses prepared statements between sessions");
    assert!(err.contains("pooled per transaction"), "{err}");
    assert!(err.contains("pool_mode = session"), "{err}");
    // Nothing was migrated through it.
    let direct = Database::connect(scratch.url()).await.expect("connect");
    let tables = direct
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT COUNT(*) AS n FROM pg_tables WHERE schemaname = 'public'",
        ))
        .await
        .expect("count tables")
        .expect("a row")
        .try_get::<i64>("", "n")
        .expect("a count");
    assert_eq!(tables, 0, "refused before migrating");
    let _ = direct.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waiting_for_a_lost_synchronous_standby_ends_at_the_deadline_and_a_retry_replays()
{
    let cluster = ThrowawayCluster::start().await;
    let db = Arc::new(TestDatabase::attach(Backend::Postgres, &cluster.url()).await);
    // The server's own deadline (a client's grpc-timeout would also be enforced by the client).
    let app = spawn_on(Arc::clone(&db), |config| {
        config.request_timeout = Duration::from_secs(1);
    })
    .await;
    let before = app.create_todo("before").await;
    let second = app.create_todo("second").await;

    // A synchronous standby that never confirms (gone in a failover, or a partition): every
    // commit waits, and no PostgreSQL timeout bounds that wait.
    db.execute("ALTER SYSTEM SET synchronous_standby_names = 'gone'")
        .await;
    db.execute("SELECT pg_reload_conf()").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = fresh_key();
    let started = std::time::Instant::now();
    let request = crate::helpers::keyed(new_todo("waits for the standby"), Some(&key));
    let status = app
        .client
        .clone()
        .create_todo(request)
        .await
        .expect_err("the commit cannot be confirmed");
    let answered_after = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        answered_after < Duration::from_secs(5),
        "answered {answered_after:?} after the call began: the wait must be bounded"
    );

    // A keyed update is one autocommit statement, waited for past the deadline so that a lock
    // wait cannot commit after the answer; a commit wait is waited for only so long.
    let update_key = fresh_key();
    let mut changed = before.clone();
    changed.completed = true;
    let started = std::time::Instant::now();
    let request = crate::helpers::keyed(masked(changed.clone(), &["completed"]), Some(&update_key));
    let status = app
        .client
        .clone()
        .update_todo(request)
        .await
        .expect_err("the commit cannot be confirmed");
    let update_answered_after = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        update_answered_after < Duration::from_secs(5),
        "answered {update_answered_after:?} after the call began: the wait must be bounded"
    );

    // With a client deadline shorter than the server's, the wait for such a statement ends
    // just before the client's deadline, answered DEADLINE_EXCEEDED by the service: tonic's
    // own `grpc-timeout` timer, outside the service's layers, would answer CANCELLED there.
    let deadline_key = fresh_key();
    let mut second_changed = second.clone();
    second_changed.completed = true;
    let mut raw = crate::raw_grpc::RawConnection::open(app.addr).await;
    let started = std::time::Instant::now();
    let response = raw
        .call(
            "/todo.v1.TodoService/UpdateTodo",
            &[("grpc-timeout", "800m"), ("idempotency-key", &deadline_key)],
            &masked(second_changed.clone(), &["completed"]),
            &[],
        )
        .await;
    let client_deadline_answered_after = started.elapsed();
    assert_eq!(response.status, Code::DeadlineExceeded, "{response:?}");
    assert!(
        client_deadline_answered_after < Duration::from_secs(1),
        "answered {client_deadline_answered_after:?} after the call began, not at the \
         client's deadline"
    );

    // The standby is back (or the failover is over): the commit completes, and a retry with the
    // same key finds out what happened.
    db.execute("ALTER SYSTEM RESET synchronous_standby_names")
        .await;
    db.execute("SELECT pg_reload_conf()").await;
    let mut replayed = None;
    for _ in 0..50 {
        match app
            .create(new_todo("waits for the standby"), Some(&key))
            .await
        {
            Ok(response) => {
                replayed = Some(is_replayed(&response));
                break;
            }
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
                    "{status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        replayed,
        Some(true),
        "the write had committed: its retry replays"
    );
    for (changed, key) in [(changed, &update_key), (second_changed, &deadline_key)] {
        let updated = app
            .update(masked(changed, &["completed"]), Some(key))
            .await
            .expect("the update's retry");
        assert!(
            is_replayed(&updated),
            "the update had committed: its retry replays"
        );
        assert!(updated.get_ref().completed);
    }
    assert_eq!(app.todo_count().await, 3, "one todo per logical write");
    println!(
        "1 s calls answered DEADLINE_EXCEEDED after {answered_after:?} (create) and \
         {update_answered_after:?} (update); an update with an 800 ms client deadline after \
         {client_deadline_answered_after:?}"
    );
    app.stop().await;
}
