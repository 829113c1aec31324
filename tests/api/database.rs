//! The database: migrations from empty, start-up without migrations, and UNAVAILABLE while the
//! database is unreachable or locked, with recovery afterwards and no restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use todo_service::startup::Application;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::both_backends;
use crate::helpers::{
    Backend, TestDatabase, fresh_key, is_replayed, new_todo, postgres_base_url, spawn_app_with,
    spawn_on, test_config,
};
use crate::service::wait_for_health;

both_backends!(
    migrations_run_up_and_down_from_empty,
    startup_without_migrations_on_an_empty_database_fails
);

async fn table_exists(db: &TestDatabase, table: &str) -> bool {
    let sql = match db.backend {
        Backend::Sqlite => {
            format!("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
        }
        Backend::Postgres => format!(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = '{table}'"
        ),
    };
    db.scalar(&sql).await == 1
}

async fn migrations_run_up_and_down_from_empty(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let tables = ["todos", "idempotency_keys", "service_settings"];
    for table in tables {
        assert!(!table_exists(&db, table).await);
    }
    Migrator::up(&db.conn, None).await.unwrap();
    for table in tables {
        assert!(table_exists(&db, table).await, "{table} after up");
    }
    Migrator::up(&db.conn, None).await.unwrap();
    Migrator::down(&db.conn, None).await.unwrap();
    for table in tables {
        assert!(!table_exists(&db, table).await, "{table} after down");
    }
    Migrator::up(&db.conn, None).await.unwrap();
    assert!(table_exists(&db, "todos").await);
}

async fn startup_without_migrations_on_an_empty_database_fails(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let mut config = test_config(&db);
    config.run_migrations = false;
    assert!(Application::build(&config).await.is_err());
}

/// A TCP proxy in front of the database that can cut every connection and refuse new ones.
struct CuttableProxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl CuttableProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut up = state.subscribe();
                if !*up.borrow() {
                    continue; // dropped: the connection is refused
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = up.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

async fn health_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_unavailable_and_the_server_recovers() {
    let db = Arc::new(TestDatabase::new(Backend::Postgres).await);
    let base = postgres_base_url();
    let host_port = base
        .split_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_owned();
    let target = tokio::net::lookup_host(host_port.as_str())
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = CuttableProxy::start(target).await;
    let proxied_url = db.url.replacen(&host_port, &proxy.addr.to_string(), 1);
    let app = spawn_on(Arc::clone(&db), |config| {
        config.database_url = proxied_url;
        config.db_timeout = Duration::from_millis(800);
    })
    .await;
    app.create_todo("before the outage").await;
    let health = health_channel(app.addr).await;

    proxy.cut();
    let key = fresh_key();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let status = app
            .create(new_todo("during the outage"), Some(&key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(!status.message().to_lowercase().contains("select"));
        assert!(!status.message().to_lowercase().contains("insert"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no hang past the timeout"
        );
    }
    let status = app.list(10, "", None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    wait_for_health(
        health.clone(),
        "todo.v1.TodoService",
        ServingStatus::NotServing,
    )
    .await;
    // Liveness does not follow the database: an outage must not get every replica restarted.
    wait_for_health(health.clone(), "liveness", ServingStatus::Serving).await;

    proxy.restore();
    wait_for_health(health, "todo.v1.TodoService", ServingStatus::Serving).await;
    let created = app
        .create(new_todo("during the outage"), Some(&key))
        .await
        .expect("the same server serves again");
    assert!(!is_replayed(&created), "the failed attempts stored nothing");
    let replay = app
        .create(new_todo("during the outage"), Some(&key))
        .await
        .unwrap();
    assert!(is_replayed(&replay));
    assert_eq!(db.count("todos").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_is_unavailable_and_recovers() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.db_timeout = Duration::from_millis(300);
    })
    .await;
    let todo = app.create_todo("readable").await;

    let lock = app.db.lock_sqlite_writes().await;
    let key = fresh_key();
    let status = app
        .create(new_todo("blocked"), Some(&key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Reads do not wait for writers (WAL).
    assert_eq!(app.get(&todo.id).await.unwrap(), todo);
    lock.rollback().await.unwrap();

    let created = app.create(new_todo("blocked"), Some(&key)).await.unwrap();
    assert!(!is_replayed(&created));
    assert_eq!(app.todo_count().await, 2);
}

/// PostgreSQL on the same host over its Unix socket (`?host=/var/run/postgresql`): the way to
/// reach a local database (no TCP, no TLS; the measurement: about 13% less server CPU
/// per call). The test's database and schema, reached through the socket instead of TCP.
#[tokio::test]
async fn postgres_over_the_unix_socket_serves_the_same_data() {
    let db = Arc::new(TestDatabase::new(Backend::Postgres).await);
    let tcp = "@127.0.0.1:5432/";
    assert!(
        db.url.contains(tcp),
        "this test expects TODO_TEST_POSTGRES_URL on 127.0.0.1:5432, whose socket is in \
         /var/run/postgresql: {}",
        db.url
    );
    let socket_url = format!(
        "{}&host=/var/run/postgresql",
        db.url.replacen(tcp, "@localhost/", 1)
    );
    let app = spawn_on(Arc::clone(&db), |config| config.database_url = socket_url).await;
    let created = app.create_todo("over the socket").await;
    assert_eq!(app.get(&created.id).await.expect("read back"), created);
    let over_unix = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{}' \
             AND client_addr IS NULL AND pid <> pg_backend_pid()",
            db.schema()
        ))
        .await;
    assert!(over_unix > 0, "the server's connections use the socket");
    assert_eq!(db.count("todos").await, 1);
}

/// SQLite's single writer: concurrent creates, keyed and not, share write transactions (group
/// commit) and every one is committed before it is answered: all 64 are there, in fewer
/// transactions than writes (`todo_sqlite_group_commit*` metrics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_creates_share_transactions() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let creates = (0..64).map(|i| {
        let app = &app;
        let key = (i % 2 == 0).then(fresh_key);
        async move {
            app.create(new_todo(&format!("grouped {i}")), key.as_deref())
                .await
                .expect("created")
        }
    });
    let created = futures::future::join_all(creates).await;
    assert!(created.iter().all(|response| !is_replayed(response)));
    assert_eq!(app.todo_count().await, 64);
    let text = crate::helpers::scrape(&app).await;
    let commits = crate::helpers::metric_value(&text, "todo_sqlite_group_commits_total");
    let writes = crate::helpers::metric_value(&text, "todo_sqlite_group_commit_writes_total");
    assert!(writes >= 64.0, "{writes} writes");
    assert!(commits < writes, "{commits} commits for {writes} writes");
}

/// A plain sqlx pool of one connection on the test's database, checked only by the patched
/// release path (no ping before acquire).
async fn one_connection_pool(db: &TestDatabase) -> sea_orm::sqlx::PgPool {
    sea_orm::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(&db.url)
        .await
        .expect("a pool on the test's database")
}

/// The vendored sqlx patch (vendor/README.md) skips the pool's on-release ping only for a
/// connection that is idle and ready. One given back with an open transaction (its ROLLBACK
/// queued, not sent), or cut off mid-statement inside one (as the deadline path cuts calls),
/// is still flushed and drained as it is given back: the backend ends up idle, with no
/// transaction (and no lock) held, without any further use of the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_given_back_mid_transaction_is_drained_at_once() {
    use sea_orm::sqlx::{self, Connection as _};
    let db = TestDatabase::new(Backend::Postgres).await;
    let pool = one_connection_pool(&db).await;
    let busy_backends = format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{}' \
         AND pid <> pg_backend_pid() AND state <> 'idle'",
        db.schema()
    );
    let settled = |what: &'static str| {
        let (db, busy_backends) = (&db, &busy_backends);
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            loop {
                let busy = db.scalar(busy_backends).await;
                if busy == 0 {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: {busy} backend(s) still busy or idle in a transaction"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // A transaction dropped open, after a statement that ran to completion.
    let mut conn = pool.acquire().await.expect("a connection");
    let mut txn = conn.begin().await.expect("begin");
    sqlx::query("SELECT 1")
        .execute(&mut *txn)
        .await
        .expect("a statement in the transaction");
    drop(txn);
    drop(conn);
    settled("a dropped open transaction").await;

    // A statement cut off mid-way inside a transaction.
    let mut conn = pool.acquire().await.expect("a connection");
    let mut txn = conn.begin().await.expect("begin");
    let cut = tokio::time::timeout(
        Duration::from_millis(100),
        sqlx::query("SELECT pg_sleep(0.4)").execute(&mut *txn),
    )
    .await;
    assert!(cut.is_err(), "the statement was cut off: {cut:?}");
    drop(txn);
    drop(conn);
    settled("a statement cut off in a transaction").await;

    // And the connection answers its next statement, not the one cut off.
    let answer: (i32,) = sqlx::query_as("SELECT 42")
        .fetch_one(&pool)
        .await
        .expect("the next statement");
    assert_eq!(answer.0, 42);
    assert_eq!(pool.size(), 1, "the connection was kept, not replaced");
    pool.close().await;
}

/// The patched pool (`vendor/`) gives an idle, ready connection back in `PoolConnection`'s
/// drop itself, with no task spawned to do it: on a current-thread runtime, where no spawned
/// task can run before the next `.await`, it is idle in the pool at once. One given back
/// mid-transaction still goes through the task (its ROLLBACK must be flushed first).
#[tokio::test(flavor = "current_thread")]
async fn a_ready_pooled_connection_is_back_in_the_pool_as_it_is_dropped() {
    use sea_orm::sqlx::{self, Connection as _};
    let db = TestDatabase::new(Backend::Postgres).await;
    let pool = one_connection_pool(&db).await;

    let mut conn = pool.acquire().await.expect("a connection");
    sqlx::query("SELECT 1")
        .execute(&mut *conn)
        .await
        .expect("a statement");
    assert_eq!(pool.num_idle(), 0, "the connection is out");
    drop(conn);
    assert_eq!(pool.num_idle(), 1, "back in the pool without a task");

    let mut conn = pool.acquire().await.expect("a connection");
    let txn = conn.begin().await.expect("begin");
    drop(txn);
    drop(conn);
    assert_eq!(
        pool.num_idle(),
        0,
        "a queued ROLLBACK is flushed on the task first"
    );
    let answer: (i32,) = sqlx::query_as("SELECT 42")
        .fetch_one(&pool)
        .await
        .expect("the next statement");
    assert_eq!(answer.0, 42);
    pool.close().await;
}
