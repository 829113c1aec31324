//! Rollouts: the drain after SIGTERM (health NOT_SERVING at once, new calls still served, then
//! GOAWAY and exit 0), a second signal, calls in flight at shutdown, `--shutdown-timeout`,
//! health on a plaintext address of its own, and connections recycled by age.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use todo_service::client::TodoClient;
use todo_service::proto::{self, GetTodoRequest};
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{Backend, TestDatabase, fresh_key, keyed, new_todo, spawn_app_with};
use crate::identity::Pki;
use crate::server_process::{ServerProcess, channel_to};
use crate::service::wait_for_health;

/// What the health service answers for `service` (None if it cannot answer).
async fn health_of(channel: Channel, service: &str) -> Option<ServingStatus> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.get_ref().status).ok()
}

#[tokio::test]
async fn sigterm_turns_readiness_off_at_once_and_serves_new_calls_through_the_drain() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let mut server = ServerProcess::start(
        &db.url,
        "127.0.0.1:0",
        &[
            "--shutdown-drain",
            "2s",
            "--health-listen-addr",
            "127.0.0.1:0",
        ],
    )
    .await;
    let health_addr = server
        .logged_addr("serving health (plaintext)")
        .expect("the health address is logged");
    let channel = server.channel();
    let health_only = channel_to(health_addr);
    for service in ["", "todo.v1.TodoService", "liveness"] {
        wait_for_health(channel.clone(), service, ServingStatus::Serving).await;
        wait_for_health(health_only.clone(), service, ServingStatus::Serving).await;
    }
    // The health address serves health and nothing else.
    let status = todo_service::TodoServiceClient::new(health_only.clone())
        .get_todo(GetTodoRequest {
            id: "0190d1a0-0000-7000-8000-000000000000".into(),
        })
        .await
        .expect_err("TodoService is not served on the health address");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    let signalled = Instant::now();
    server.signal("TERM");
    loop {
        if health_of(channel.clone(), "").await == Some(ServingStatus::NotServing) {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(500),
            "readiness still SERVING 0.5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let not_serving_after = signalled.elapsed();
    for (channel, name) in [(&channel, "main"), (&health_only, "health-only")] {
        for service in ["", "todo.v1.TodoService"] {
            assert_eq!(
                health_of(channel.clone(), service).await,
                Some(ServingStatus::NotServing),
                "{service:?} on the {name} address while draining"
            );
        }
        assert_eq!(
            health_of(channel.clone(), "liveness").await,
            Some(ServingStatus::Serving),
            "liveness on the {name} address while draining"
        );
    }

    // A load balancer that has not yet noticed opens new connections and sends new calls.
    let mut created: i64 = 0;
    while signalled.elapsed() < Duration::from_millis(1500) {
        let mut client = todo_service::TodoServiceClient::new(channel_to(server.addr));
        client
            .create_todo(keyed(new_todo("during the drain"), Some(&fresh_key())))
            .await
            .expect("a new call on a new connection is served during the drain");
        created += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(created >= 5, "{created} calls during the drain");
    let status = server
        .exit_status(Duration::from_secs(10))
        .await
        .expect("the server exits after the drain");
    let exited_after = signalled.elapsed();
    assert!(status.success(), "exit 0 after a drain: {status:?}");
    assert!(
        exited_after >= Duration::from_secs(2),
        "exited {exited_after:?} after SIGTERM, before the 2 s drain was over"
    );
    assert_eq!(db.count("todos").await, created);
    println!(
        "readiness NOT_SERVING {not_serving_after:?} after SIGTERM; {created} calls served while \
         draining; exit 0 after {exited_after:?}"
    );
}

#[tokio::test]
async fn a_second_signal_stops_the_server_at_once() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let mut server =
        ServerProcess::start(&db.url, "127.0.0.1:0", &["--shutdown-drain", "60s"]).await;
    let channel = server.channel();
    wait_for_health(channel.clone(), "", ServingStatus::Serving).await;
    server.signal("TERM");
    wait_for_health(channel, "", ServingStatus::NotServing).await;
    assert!(
        server
            .exit_status(Duration::from_millis(500))
            .await
            .is_none(),
        "still draining after one signal"
    );
    let second = Instant::now();
    server.signal("TERM");
    let status = server
        .exit_status(Duration::from_secs(5))
        .await
        .expect("a second signal ends the drain at once");
    assert!(status.success(), "{status:?}");
    assert!(second.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_call_in_flight_at_shutdown_finishes_before_the_server_stops() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let db = Arc::clone(&app.db);
    // The call waits for SQLite's write lock, held here, so it is in flight when the stop begins.
    let lock = db.lock_sqlite_writes().await;
    let mut client = app.client.clone();
    let call = tokio::spawn(async move {
        client
            .create_todo(keyed(new_todo("in flight"), Some(&fresh_key())))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !stopping.is_finished(),
        "the server stopped with a call in flight"
    );
    drop(lock);
    let created = call
        .await
        .expect("the call's task")
        .expect("the call in flight is answered");
    assert_eq!(created.get_ref().title, "in flight");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the server stops once the call is answered")
        .expect("the stop task");
    assert_eq!(db.count("todos").await, 1);
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_wait_for_calls_in_flight() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.shutdown_timeout = Duration::from_millis(300);
    })
    .await;
    let db = Arc::clone(&app.db);
    let lock = db.lock_sqlite_writes().await;
    let mut client = app.client.clone();
    let call = tokio::spawn(async move {
        client
            .create_todo(keyed(new_todo("still waiting"), Some(&fresh_key())))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), app.stop())
        .await
        .expect("the server stops at --shutdown-timeout, calls in flight or not");
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(lock);
    call.abort();
}

#[tokio::test]
async fn connections_older_than_max_connection_age_are_replaced_without_failed_calls() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.max_connection_age = Some(Duration::from_millis(400));
    })
    .await;
    let connects = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connects);
    let addr = app.addr;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
    // A plain tonic client has no transparent retry: a call it sends as its connection closes
    // can end CANCELLED ("connection closed"). The shipped client retries it with its key.
    let client = TodoClient::new(channel);
    let started = Instant::now();
    let (mut calls, mut retried): (i64, u32) = (0, 0);
    while started.elapsed() < Duration::from_millis(2000) {
        let written = client
            .create_todo(proto::Todo {
                title: "across connections".into(),
                ..proto::Todo::default()
            })
            .await
            .expect("no call fails when its connection is recycled");
        calls += 1;
        retried += written.attempts.count - 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connections = connects.load(Ordering::SeqCst);
    assert!(
        connections >= 3,
        "{connections} connections for 2 s of calls with a 400 ms max age"
    );
    assert_eq!(app.todo_count().await, calls, "one todo per logical write");
    println!("{calls} calls over {connections} connections, {retried} attempts retried");
    app.stop().await;
}

#[tokio::test]
async fn with_mutual_tls_on_the_main_port_probes_check_health_in_plaintext_on_their_own() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    let write = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write a PEM file");
        path
    };
    let (cert, key, ca) = (
        write("tls.crt", &pki.server.0),
        write("tls.key", &pki.server.1),
        write("ca.crt", &pki.ca),
    );
    let app = spawn_app_with(Backend::Sqlite, move |config| {
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
        config.tls_client_ca = Some(ca);
        config.health_listen_addr = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let health_addr = app.health_addr.expect("the health address is bound");
    // What the kubelet's gRPC probe does: plaintext, no certificate.
    let probe = channel_to(health_addr);
    wait_for_health(probe.clone(), "", ServingStatus::Serving).await;
    wait_for_health(probe, "liveness", ServingStatus::Serving).await;
    assert!(
        health_of(channel_to(app.addr), "").await.is_none(),
        "the main port takes no plaintext, certificate-less connection"
    );
    app.stop().await;
}

/// Opens an HTTP/2 connection (preface and SETTINGS) that never reads again, so it never
/// answers a PING; returns how long until the server closed it, if within `wait`.
async fn silent_http2_connection_closed_after(
    addr: std::net::SocketAddr,
    wait: Duration,
) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let started = Instant::now();
    // Read (and drop) what the server sends, PINGs included, without ever acknowledging.
    let mut buf = [0u8; 4096];
    tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn a_peer_that_does_not_answer_keepalive_pings_is_disconnected() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.http2_keepalive_interval = Duration::from_millis(200);
        config.http2_keepalive_timeout = Duration::from_millis(200);
    })
    .await;
    let closed = silent_http2_connection_closed_after(app.addr, Duration::from_secs(5)).await;
    let closed = closed.expect("a peer that never answers PING is closed");
    assert!(closed >= Duration::from_millis(300), "{closed:?}");
    app.stop().await;

    // Control: with keepalive off, the same connection stays open.
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.http2_keepalive_interval = Duration::ZERO;
    })
    .await;
    assert_eq!(
        silent_http2_connection_closed_after(app.addr, Duration::from_secs(2)).await,
        None,
        "closed without keepalive"
    );
    app.stop().await;
}
