//! Authentication, per-caller isolation of todos and keys, TLS and mTLS, and the limits
//! against abuse.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tempfile::NamedTempFile;
use todo_service::TodoServiceClient;
use todo_service::auth::hash_token;
use todo_service::proto;
use todo_service::startup::{Application, StartupError};
use tokio::io::AsyncWriteExt;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Response, Status};

use crate::both_backends;
use crate::helpers::{
    Backend, TestApp, TestDatabase, assert_invalid_field, fresh_key, is_replayed, metric_value,
    new_todo, replace, scrape, spawn_app_with, test_config,
};
use crate::server_process::ServerProcess;

both_backends!(
    unauthenticated_calls_are_refused_and_consume_nothing,
    callers_see_only_their_own_todos,
    keys_are_scoped_to_their_caller,
    concurrent_callers_with_one_key_string_get_one_todo_each,
    page_tokens_are_bound_to_their_caller,
);

pub const ALICE: &str = "alice-token-5b1f0e";
pub const BOB: &str = "bob-token-c93a77";

fn tokens_file() -> NamedTempFile {
    let mut file = NamedTempFile::new().unwrap();
    writeln!(
        file,
        "# caller  sha256(token)\nalice {}\nbob {}",
        hash_token(ALICE),
        hash_token(BOB)
    )
    .unwrap();
    file
}

/// A server with callers alice and bob.
pub async fn spawn_with_callers(backend: Backend) -> (TestApp, NamedTempFile) {
    let file = tokens_file();
    let path = file.path().to_owned();
    let app = spawn_app_with(backend, move |config| config.tokens_file = Some(path)).await;
    (app, file)
}

pub fn authed<T>(message: T, authorization: Option<&str>, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::try_from(value).unwrap());
    }
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("idempotency-key", MetadataValue::try_from(key).unwrap());
    }
    request
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn create_as(
    app: &TestApp,
    token: &str,
    title: &str,
    key: Option<&str>,
) -> Result<Response<proto::Todo>, Status> {
    app.client
        .clone()
        .create_todo(authed(new_todo(title), Some(&bearer(token)), key))
        .await
}

async fn get_as(app: &TestApp, token: &str, id: &str) -> Result<proto::Todo, Status> {
    app.client
        .clone()
        .get_todo(authed(
            proto::GetTodoRequest { id: id.to_owned() },
            Some(&bearer(token)),
            None,
        ))
        .await
        .map(Response::into_inner)
}

async fn list_as(
    app: &TestApp,
    token: &str,
    page_size: i32,
    page_token: &str,
) -> Result<proto::ListTodosResponse, Status> {
    app.client
        .clone()
        .list_todos(authed(
            proto::ListTodosRequest {
                page_size,
                page_token: page_token.to_owned(),
                completed: None,
            },
            Some(&bearer(token)),
            None,
        ))
        .await
        .map(Response::into_inner)
}

async fn unauthenticated_calls_are_refused_and_consume_nothing(backend: Backend) {
    let (app, _tokens) = spawn_with_callers(backend).await;
    let key = fresh_key();
    let target = create_as(&app, ALICE, "target", None)
        .await
        .unwrap()
        .into_inner();
    for authorization in [
        None,
        Some("alice-token-5b1f0e"),
        Some("Basic YWxpY2U="),
        Some("Bearer nope"),
    ] {
        let mut client = app.client.clone();
        let status = client
            .create_todo(authed(new_todo("never"), authorization, Some(&key)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{authorization:?}");
        assert!(!status.message().contains("alice-token"));
        let status = client
            .get_todo(authed(
                proto::GetTodoRequest {
                    id: target.id.clone(),
                },
                authorization,
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let mut changed = target.clone();
        changed.title = "hijacked".to_owned();
        let status = client
            .update_todo(authed(replace(changed), authorization, Some(&key)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = client
            .delete_todo(authed(
                proto::DeleteTodoRequest {
                    id: target.id.clone(),
                    etag: String::new(),
                },
                authorization,
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = client
            .list_todos(authed(
                proto::ListTodosRequest::default(),
                authorization,
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // An invalid request without a token is UNAUTHENTICATED too: authentication comes first.
    let status = app
        .client
        .clone()
        .create_todo(authed(new_todo(""), None, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    assert_eq!(app.todo_count().await, 1);
    assert_eq!(app.key_count().await, 0, "no key consumed");
    let metrics = scrape(&app).await;
    assert_eq!(
        metric_value(
            &metrics,
            "todo_rejected_requests_total{reason=\"unauthenticated\"}"
        ),
        21.0,
        "4 bad credentials x 5 RPCs + 1, counted: {metrics}"
    );
    assert_eq!(get_as(&app, ALICE, &target.id).await.unwrap(), target);
    let fresh = create_as(&app, ALICE, "never", Some(&key)).await.unwrap();
    assert!(!is_replayed(&fresh), "the key is still free");
}

async fn callers_see_only_their_own_todos(backend: Backend) {
    let (app, _tokens) = spawn_with_callers(backend).await;
    let alices = create_as(&app, ALICE, "alice's", None)
        .await
        .unwrap()
        .into_inner();

    let status = get_as(&app, BOB, &alices.id).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "not PERMISSION_DENIED");
    let mut hijack = alices.clone();
    hijack.title = "bob was here".to_owned();
    let status = app
        .client
        .clone()
        .update_todo(authed(replace(hijack), Some(&bearer(BOB)), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    for etag in ["", alices.etag.as_str()] {
        app.client
            .clone()
            .delete_todo(authed(
                proto::DeleteTodoRequest {
                    id: alices.id.clone(),
                    etag: etag.to_owned(),
                },
                Some(&bearer(BOB)),
                None,
            ))
            .await
            .expect("Empty, as for a missing todo");
    }
    assert!(list_as(&app, BOB, 10, "").await.unwrap().todos.is_empty());

    assert_eq!(
        get_as(&app, ALICE, &alices.id).await.unwrap(),
        alices,
        "untouched"
    );
    assert_eq!(
        list_as(&app, ALICE, 10, "").await.unwrap().todos,
        vec![alices]
    );
}

async fn keys_are_scoped_to_their_caller(backend: Backend) {
    let (app, _tokens) = spawn_with_callers(backend).await;
    let key = fresh_key();
    let alices = create_as(&app, ALICE, "same request", Some(&key))
        .await
        .unwrap();
    let bobs = create_as(&app, BOB, "same request", Some(&key))
        .await
        .unwrap();
    assert!(!is_replayed(&alices));
    assert!(!is_replayed(&bobs), "bob cannot replay alice's response");
    assert_ne!(alices.get_ref().id, bobs.get_ref().id);
    // A different request with the same key string is a mismatch only within one caller.
    let status = create_as(&app, BOB, "other request", Some(&key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let replay = create_as(&app, ALICE, "same request", Some(&key))
        .await
        .unwrap();
    assert!(is_replayed(&replay));
    assert_eq!(replay.get_ref(), alices.get_ref());
    assert_eq!(app.todo_count().await, 2);
}

async fn concurrent_callers_with_one_key_string_get_one_todo_each(backend: Backend) {
    let (app, _tokens) = spawn_with_callers(backend).await;
    let key = fresh_key();
    let calls = (0..32).map(|i| {
        let app = &app;
        let key = key.clone();
        let token = if i % 2 == 0 { ALICE } else { BOB };
        async move { (token, create_as(app, token, "raced", Some(&key)).await) }
    });
    let results = join_all(calls).await;
    let mut ids = std::collections::HashMap::new();
    for (token, result) in results {
        let response = result.expect("every call succeeds");
        ids.entry(token)
            .or_insert_with(Vec::new)
            .push((response.get_ref().id.clone(), is_replayed(&response)));
    }
    for token in [ALICE, BOB] {
        let calls = &ids[token];
        assert_eq!(calls.len(), 16);
        assert!(
            calls.iter().all(|(id, _)| *id == calls[0].0),
            "one todo per caller"
        );
        assert_eq!(calls.iter().filter(|(_, replayed)| !replayed).count(), 1);
        let listed = list_as(&app, token, 10, "").await.unwrap().todos;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, calls[0].0, "each caller sees only its own");
    }
    assert_ne!(ids[ALICE][0].0, ids[BOB][0].0);
    assert_eq!(app.todo_count().await, 2);
}

async fn page_tokens_are_bound_to_their_caller(backend: Backend) {
    let (app, _tokens) = spawn_with_callers(backend).await;
    for i in 0..3 {
        create_as(&app, ALICE, &format!("a{i}"), None)
            .await
            .unwrap();
    }
    let page = list_as(&app, ALICE, 1, "").await.unwrap();
    assert!(list_as(&app, ALICE, 1, &page.next_page_token).await.is_ok());
    let status = list_as(&app, BOB, 1, &page.next_page_token)
        .await
        .unwrap_err();
    assert_invalid_field(&status, "page_token");
}

#[tokio::test]
async fn anonymous_callers_on_a_non_loopback_address_are_refused_by_default() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let mut config = test_config(&db);
    config.listen_addr = "0.0.0.0:0".parse().unwrap();
    let Err(err) = Application::build(&config).await else {
        panic!("the server started anonymous on 0.0.0.0");
    };
    assert!(matches!(err, StartupError::AnonymousNonLoopback(_)));
    assert!(err.to_string().contains("--allow-anonymous-non-loopback"));
    assert!(err.to_string().contains("--tokens-file"));

    config.allow_anonymous_non_loopback = true;
    assert!(Application::build(&config).await.is_ok());

    let tokens = tokens_file();
    config.allow_anonymous_non_loopback = false;
    config.tokens_file = Some(tokens.path().to_owned());
    assert!(
        Application::build(&config).await.is_ok(),
        "callers authenticate"
    );
}

#[tokio::test]
async fn hash_token_command_prints_the_sha256_of_stdin() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_todo-server"))
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"my-new-token\n").await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        hash_token("my-new-token")
    );
}

/// A CA, a server certificate for localhost/127.0.0.1, and a client certificate, as PEM.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["client.test".to_owned()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    Pki {
        ca: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn write_temp(text: &str) -> NamedTempFile {
    let mut file = NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

async fn tls_channel(
    app: &TestApp,
    pki: &Pki,
    identity: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn plaintext_call_fails(app: &TestApp) {
    let plaintext = TodoServiceClient::connect(format!("http://{}", app.addr)).await;
    if let Ok(mut client) = plaintext {
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            client.create_todo(new_todo("plaintext")),
        )
        .await
        .expect("no hang");
        assert!(result.is_err(), "a plaintext call succeeded against TLS");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_trusting_clients_and_refuses_plaintext() {
    let pki = pki();
    let (cert, key) = (write_temp(&pki.server_cert), write_temp(&pki.server_key));
    let (cert_path, key_path) = (cert.path().to_owned(), key.path().to_owned());
    let app = spawn_app_tls(move |config| {
        config.tls_cert = Some(cert_path);
        config.tls_key = Some(key_path);
    })
    .await;
    let mut client = TodoServiceClient::new(tls_channel(&app, &pki, false).await.unwrap());
    let todo = client
        .create_todo(new_todo("over TLS"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(todo.title, "over TLS");
    plaintext_call_fails(&app).await;
    assert_eq!(app.todo_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate() {
    let pki = pki();
    let (cert, key, ca) = (
        write_temp(&pki.server_cert),
        write_temp(&pki.server_key),
        write_temp(&pki.ca),
    );
    let paths = (
        cert.path().to_owned(),
        key.path().to_owned(),
        ca.path().to_owned(),
    );
    let app = spawn_app_tls(move |config| {
        config.tls_cert = Some(paths.0);
        config.tls_key = Some(paths.1);
        config.tls_client_ca = Some(paths.2);
    })
    .await;

    let anonymous_tls = match tls_channel(&app, &pki, false).await {
        Ok(channel) => TodoServiceClient::new(channel)
            .create_todo(new_todo("no client cert"))
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(anonymous_tls, "a client without a certificate was served");
    plaintext_call_fails(&app).await;

    let mut client = TodoServiceClient::new(tls_channel(&app, &pki, true).await.unwrap());
    client
        .create_todo(new_todo("with client cert"))
        .await
        .unwrap();
    assert_eq!(app.todo_count().await, 1);
}

/// Like `spawn_app_with`, but the test client cannot speak plaintext to a TLS server, so the
/// server is started here and its `client` field left as a lazy plaintext channel.
async fn spawn_app_tls(configure: impl FnOnce(&mut todo_service::config::Config)) -> TestApp {
    crate::helpers::spawn_on_lazy(
        Arc::new(TestDatabase::new(Backend::Sqlite).await),
        configure,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_resource_exhausted_and_write_nothing() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let mut big = new_todo("big");
    if let Some(todo) = big.todo.as_mut() {
        todo.description = "x".repeat(70 * 1024);
    }
    let key = fresh_key();
    let status = app.create(big, Some(&key)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Under the size limit, the field limits still answer INVALID_ARGUMENT.
    let mut long = new_todo("long");
    if let Some(todo) = long.todo.as_mut() {
        todo.description = "x".repeat(5000);
    }
    assert_invalid_field(
        &app.create(long, None).await.unwrap_err(),
        "todo.description",
    );
    assert_eq!(app.todo_count().await, 0);
    assert_eq!(app.key_count().await, 0);
    assert!(!is_replayed(
        &app.create(new_todo("big"), Some(&key)).await.unwrap()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_metadata_is_resource_exhausted() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let mut request = Request::new(new_todo("heavy headers"));
    request.metadata_mut().insert(
        "x-padding",
        MetadataValue::try_from("p".repeat(10 * 1024)).unwrap(),
    );
    let status = app.client.clone().create_todo(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(app.todo_count().await, 0);
    let metrics = scrape(&app).await;
    assert_eq!(
        metric_value(
            &metrics,
            "todo_rejected_requests_total{reason=\"metadata_too_large\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_hit_the_request_timeout_and_write_nothing() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.request_timeout = Duration::from_millis(300);
        config.db_timeout = Duration::from_secs(5);
    })
    .await;
    let lock = app.db.lock_sqlite_writes().await;
    let key = fresh_key();
    let started = Instant::now();
    let status = app.create(new_todo("slow"), Some(&key)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    lock.rollback().await.unwrap();
    assert_eq!(app.todo_count().await, 0);
    assert_eq!(app.key_count().await, 0);
    assert!(!is_replayed(
        &app.create(new_todo("slow"), Some(&key)).await.unwrap()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_connection_are_limited() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.max_concurrent_calls_per_connection = 1;
        config.db_timeout = Duration::from_secs(4);
    })
    .await;
    let todo = app.create_todo("readable").await;
    let lock = app.db.lock_sqlite_writes().await;
    // One slow write occupies the connection's only slot...
    let mut blocked = app.client.clone();
    let slow = tokio::spawn(async move { blocked.create_todo(new_todo("blocked")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a read on the same connection waits for it, while one on another connection
    // does not.
    let other = TodoServiceClient::connect(app.channel_uri()).await.unwrap();
    let started = Instant::now();
    let mut other_client = other.clone();
    other_client
        .get_todo(proto::GetTodoRequest {
            id: todo.id.clone(),
        })
        .await
        .unwrap();
    let other_connection = started.elapsed();
    let started = Instant::now();
    app.get(&todo.id).await.unwrap();
    let same_connection = started.elapsed();
    lock.rollback().await.unwrap();
    let _ = slow.await.unwrap();
    assert!(
        other_connection < Duration::from_millis(500),
        "{other_connection:?}"
    );
    assert!(
        same_connection > Duration::from_millis(800),
        "the read did not wait for the connection's slot: {same_connection:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_logs() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let tokens = tokens_file();
    let tokens_path = tokens.path().to_str().expect("a UTF-8 temporary path");
    let mut server = ServerProcess::start_logging(
        &db.url,
        "127.0.0.1:0",
        &["--tokens-file", tokens_path],
        "debug",
    )
    .await;
    let mut client = TodoServiceClient::new(server.channel());
    client
        .create_todo(authed(new_todo("with token"), Some(&bearer(ALICE)), None))
        .await
        .unwrap();
    client
        .create_todo(authed(
            new_todo("bad token"),
            Some("Bearer guessed-secret-123"),
            None,
        ))
        .await
        .unwrap_err();
    let mut log = server.startup_log.clone();
    let status = server.terminate().await;
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    while let Some(line) = server.next_log_line(Duration::from_secs(1)).await {
        log.push(line);
    }
    // The refused call is logged once, by its `rpc finished` line, with the reason.
    let refused: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("UNAUTHENTICATED"))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let refused: serde_json::Value = serde_json::from_str(refused[0]).expect("JSON");
    assert_eq!(refused["message"], "rpc finished");
    assert_eq!(refused["span"]["reason"], "unknown token");
    let log = log.join("\n");
    assert!(log.contains("rpc finished"), "the calls were logged");
    for secret in [ALICE, "guessed-secret-123", &hash_token(ALICE)] {
        assert!(!log.contains(secret), "{secret} leaked into the logs");
    }
}
