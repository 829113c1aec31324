//! `spawn_app()`: a real server on a real socket (port 0) over a real database, and a
//! generated client talking to it. Every test runs once on SQLite and once on PostgreSQL
//! (see `both_backends!`); each gets its own SQLite file or PostgreSQL schema.
//!
//! PostgreSQL: `TODO_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! The PostgreSQL variants fail, never skip, when it cannot be reached.
//! Logs: set `TEST_LOG=1` to see the server's logs.

use std::sync::{Arc, OnceLock};

use clap::Parser;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use tempfile::TempDir;
use todo_service::TodoServiceClient;
use todo_service::config::{Cli, Config};
use todo_service::proto;
use todo_service::startup::{Application, StartupError};
use todo_service::telemetry::LogFormat;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Runs each named `async fn(TestApp)`-style test on both databases: `name::sqlite` and
/// `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            }
        )+
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

fn init_logs() {
    static LOGS: OnceLock<()> = OnceLock::new();
    LOGS.get_or_init(|| {
        let result = if std::env::var_os("TEST_LOG").is_some() {
            todo_service::telemetry::init(std::io::stdout, LogFormat::Text, false, None)
        } else {
            todo_service::telemetry::init(std::io::sink, LogFormat::Text, false, None)
        };
        drop(result);
    });
}

pub fn postgres_base_url() -> String {
    std::env::var("TODO_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// A database of the test's own: a SQLite file in a temporary directory, or a PostgreSQL
/// schema (dropped when the test ends).
pub struct TestDatabase {
    pub backend: Backend,
    pub url: String,
    /// A connection of the test's own, for looking at (or altering) what the server stored.
    pub conn: DatabaseConnection,
    schema: Option<String>,
    _dir: Option<TempDir>,
}

impl TestDatabase {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite:{}", dir.path().join("todo.db").display());
                let conn = Database::connect(format!("{url}?mode=rwc"))
                    .await
                    .expect("open the test's SQLite file");
                Self {
                    backend,
                    url,
                    conn,
                    schema: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let base = postgres_base_url();
                let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
                let admin = Database::connect(base.as_str())
                    .await
                    .unwrap_or_else(|err| {
                        panic!("PostgreSQL tests need {base} (set TODO_TEST_POSTGRES_URL): {err}")
                    });
                admin
                    .execute_unprepared(&format!("CREATE SCHEMA \"{schema}\""))
                    .await
                    .expect("create the test's schema");
                let _ = admin.close().await;
                let url = with_search_path(&base, &schema);
                let conn = Database::connect(url.as_str())
                    .await
                    .expect("connect to the test's schema");
                Self {
                    backend,
                    url,
                    conn,
                    schema: Some(schema),
                    _dir: None,
                }
            }
        }
    }

    /// A database the test did not create (e.g. a throwaway PostgreSQL cluster's).
    pub async fn attach(backend: Backend, url: &str) -> Self {
        let conn = Database::connect(url)
            .await
            .expect("connect to the database");
        Self {
            backend,
            url: url.to_owned(),
            conn,
            schema: None,
            _dir: None,
        }
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        let row = self
            .conn
            .query_one_raw(Statement::from_string(
                self.conn.get_database_backend(),
                sql,
            ))
            .await
            .expect("query")
            .expect("one row");
        row.try_get_by_index::<i64>(0).expect("an integer")
    }

    /// Holds SQLite's write lock (as another process could) until the transaction ends: the
    /// server's writes then wait for it, its reads do not (WAL).
    pub async fn lock_sqlite_writes(&self) -> sea_orm::DatabaseTransaction {
        use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
        assert_eq!(self.backend, Backend::Sqlite);
        self.conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Exclusive),
                ..TransactionOptions::default()
            })
            .await
            .expect("take SQLite's write lock")
    }

    /// PostgreSQL: the test's schema (also the `application_name` of its connections).
    pub fn schema(&self) -> &str {
        self.schema.as_deref().expect("a PostgreSQL test database")
    }

    /// PostgreSQL: terminates every backend connected with this test's `application_name`
    /// except the test's own `conn`, as a failover or `pg_terminate_backend` by an operator
    /// would. Returns how many were terminated.
    pub async fn terminate_server_backends(&self) -> i64 {
        let schema = self.schema.as_deref().expect("a PostgreSQL test database");
        self.scalar(&format!(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{schema}' AND pid <> pg_backend_pid()) AS terminated"
        ))
        .await
    }

    /// One sweep of expired keys on this database, as a server's sweeper would run it (by the
    /// retention the replicas share), in batches of 10 000.
    pub async fn sweep(&self) -> todo_service::idempotency::SweepReport {
        use todo_service::idempotency::{SweepSettings, sweep_expired};
        use todo_service::storage::{DatabaseSettings, Storage};
        let storage = Storage::connect(&DatabaseSettings {
            url: self.url.clone(),
            pool_size: 2,
            timeout: std::time::Duration::from_secs(5),
            isolation: Default::default(),
        })
        .await
        .expect("connect to the test's database");
        let settings = SweepSettings {
            batch_size: 10_000,
            batch_pause: std::time::Duration::from_millis(1),
        };
        let report = sweep_expired(&storage, settings).await.expect("a sweep");
        storage.close().await;
        report
    }

    pub async fn execute(&self, sql: &str) -> u64 {
        self.conn
            .execute_unprepared(sql)
            .await
            .expect("statement")
            .rows_affected()
    }
}

/// `base` with the test's schema as search path, and as `application_name` (so that a test
/// can find, or terminate, the backends of its own server and no other test's).
fn with_search_path(base: &str, schema: &str) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}&application_name={schema}")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        // Drop runs inside the test's runtime: clean up from a thread with a runtime of its own.
        let base = postgres_base_url();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(admin) = Database::connect(base.as_str()).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A running server and a client connected to it.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The plaintext health-only address, with `--health-listen-addr`.
    pub health_addr: Option<std::net::SocketAddr>,
    pub client: TodoServiceClient<Channel>,
    pub db: Arc<TestDatabase>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), StartupError>>>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = Arc::new(TestDatabase::new(backend).await);
    spawn_on(db, configure).await
}

/// The configuration tests start from: ports 0, the test's database, quick health checks, no
/// background sweeper (tests that want one turn it on).
pub fn test_config(db: &TestDatabase) -> Config {
    Cli::try_parse_from([
        "todo-server",
        "--listen-addr",
        "127.0.0.1:0",
        "--metrics-listen-addr",
        "127.0.0.1:0",
        "--database-url",
        db.url.as_str(),
        "--health-check-interval",
        "100ms",
        "--db-pool-size",
        "8",
        "--sweep-enabled",
        "false",
        "--shutdown-drain",
        "0s",
    ])
    .expect("test configuration")
    .config
}

/// Starts a server on an existing database (another replica, or a restart).
pub async fn spawn_on(db: Arc<TestDatabase>, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut app = spawn_on_lazy(db, configure).await;
    app.client = TodoServiceClient::connect(app.channel_uri())
        .await
        .expect("connect to the test server");
    app
}

/// Like [`spawn_on`], but the plaintext client connects only when first used (for TLS servers,
/// whose tests make their own clients).
pub async fn spawn_on_lazy(db: Arc<TestDatabase>, configure: impl FnOnce(&mut Config)) -> TestApp {
    init_logs();
    let mut config = test_config(&db);
    configure(&mut config);
    let app = Application::build(&config)
        .await
        .expect("the application starts");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let health_addr = app.health_addr();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(
        async {
            let _ = stopped.await;
        },
        std::future::pending(),
    ));
    let client = TodoServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect_lazy(),
    );
    TestApp {
        addr,
        metrics_addr,
        health_addr,
        client,
        db,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

impl TestApp {
    /// Asks the server to stop and waits until it has.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }

    pub fn channel_uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn create(
        &self,
        request: proto::CreateTodoRequest,
        key: Option<&str>,
    ) -> Result<Response<proto::Todo>, Status> {
        self.client.clone().create_todo(keyed(request, key)).await
    }

    /// Creates a todo with this title (no key) and returns it.
    pub async fn create_todo(&self, title: &str) -> proto::Todo {
        self.create(new_todo(title), None)
            .await
            .expect("create succeeds")
            .into_inner()
    }

    pub async fn get(&self, id: &str) -> Result<proto::Todo, Status> {
        self.client
            .clone()
            .get_todo(proto::GetTodoRequest { id: id.to_owned() })
            .await
            .map(Response::into_inner)
    }

    pub async fn list(
        &self,
        page_size: i32,
        page_token: &str,
        completed: Option<bool>,
    ) -> Result<proto::ListTodosResponse, Status> {
        self.client
            .clone()
            .list_todos(proto::ListTodosRequest {
                page_size,
                page_token: page_token.to_owned(),
                completed,
            })
            .await
            .map(Response::into_inner)
    }

    /// Every todo, following page tokens.
    pub async fn list_all(&self, page_size: i32, completed: Option<bool>) -> Vec<proto::Todo> {
        let mut todos = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .list(page_size, &token, completed)
                .await
                .expect("list succeeds");
            todos.extend(page.todos);
            if page.next_page_token.is_empty() {
                return todos;
            }
            token = page.next_page_token;
        }
    }

    pub async fn update(
        &self,
        request: proto::UpdateTodoRequest,
        key: Option<&str>,
    ) -> Result<Response<proto::Todo>, Status> {
        self.client.clone().update_todo(keyed(request, key)).await
    }

    pub async fn delete(&self, id: &str, etag: &str) -> Result<(), Status> {
        self.client
            .clone()
            .delete_todo(proto::DeleteTodoRequest {
                id: id.to_owned(),
                etag: etag.to_owned(),
            })
            .await
            .map(|_| ())
    }

    pub async fn complete(
        &self,
        ids: &[&str],
        key: Option<&str>,
    ) -> Result<Response<proto::CompleteTodosResponse>, Status> {
        let request = proto::CompleteTodosRequest {
            ids: ids.iter().map(|id| (*id).to_owned()).collect(),
            ..proto::CompleteTodosRequest::default()
        };
        self.client
            .clone()
            .complete_todos(keyed(request, key))
            .await
    }

    pub async fn todo_count(&self) -> i64 {
        self.db.count("todos").await
    }

    pub async fn key_count(&self) -> i64 {
        self.db.count("idempotency_keys").await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub fn keyed<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert(
            "idempotency-key",
            key.parse().expect("test keys are valid metadata"),
        );
    }
    request
}

pub fn new_todo(title: &str) -> proto::CreateTodoRequest {
    proto::CreateTodoRequest {
        todo: Some(proto::Todo {
            title: title.to_owned(),
            ..proto::Todo::default()
        }),
        ..proto::CreateTodoRequest::default()
    }
}

/// A full-replacement update of `todo` (empty mask).
pub fn replace(todo: proto::Todo) -> proto::UpdateTodoRequest {
    proto::UpdateTodoRequest {
        todo: Some(todo),
        update_mask: None,
        ..proto::UpdateTodoRequest::default()
    }
}

pub fn masked(todo: proto::Todo, paths: &[&str]) -> proto::UpdateTodoRequest {
    proto::UpdateTodoRequest {
        todo: Some(todo),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        ..proto::UpdateTodoRequest::default()
    }
}

pub fn is_replayed<T>(response: &Response<T>) -> bool {
    match response.metadata().get("idempotent-replayed") {
        None => false,
        Some(value) => {
            assert_eq!(value, "true", "the replay marker is `true` when present");
            true
        }
    }
}

pub fn fresh_key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Asserts INVALID_ARGUMENT with a BadRequest detail naming `field`.
#[track_caller]
pub fn assert_invalid_field(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_request = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest detail in {status:?}"));
    let fields: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert!(
        fields.contains(&field),
        "BadRequest names {fields:?}, not {field:?}"
    );
}

/// GET /metrics over plain HTTP/1.1.
pub async fn scrape(app: &TestApp) -> String {
    let addr = app.metrics_addr.expect("metrics are on in tests");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the sample whose name and labels are exactly `series` (0 if absent).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
