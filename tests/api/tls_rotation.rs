//! TLS files renewed under a running server (cert-manager, SPIRE): a new server certificate,
//! key and client CA take effect for new connections without a restart; a broken set is refused
//! and the last good one stays; calls under load, each on a fresh mTLS connection, do not fail.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use todo_service::TodoServiceClient;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{
    Backend, TestApp, TestDatabase, metric_value, new_todo, scrape, spawn_on_lazy,
};
use crate::identity::{BILLING, Pki};

/// Replaces `path` at once (a staged file renamed over it), as a Secret volume swap does.
fn swap_in(path: &Path, contents: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).expect("write the staged file");
    std::fs::rename(&staged, path).expect("swap the file in");
}

/// A fresh mTLS connection trusting `server_cas`, presenting `identity`.
async fn connect(
    app: &TestApp,
    server_cas: &[&str],
    identity: Identity,
) -> Result<TodoServiceClient<Channel>, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificates(server_cas.iter().map(Certificate::from_pem))
        .identity(identity)
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(TodoServiceClient::new(channel))
}

/// One CreateTodo on a fresh connection; the error says where it failed.
async fn create_on_fresh_connection(
    app: &TestApp,
    server_cas: &[&str],
    identity: Identity,
) -> Result<(), String> {
    let mut client = connect(app, server_cas, identity)
        .await
        .map_err(|err| format!("connect: {err:?}"))?;
    client
        .create_todo(new_todo("on a fresh connection"))
        .await
        .map(|_| ())
        .map_err(|status| format!("call: {status:?}"))
}

async fn reloads(app: &TestApp, result: &str) -> f64 {
    let metrics = scrape(app).await;
    metric_value(
        &metrics,
        &format!("todo_config_reloads_total{{file=\"tls\",result=\"{result}\"}}"),
    )
}

async fn until_reloads(app: &TestApp, result: &str, at_least: f64) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while reloads(app, result).await < at_least {
        assert!(Instant::now() < give_up, "no TLS reload {result}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_tls_files_serve_new_connections_without_a_restart_or_a_failed_call() {
    let (old, new) = (Pki::new(), Pki::new());
    let dir = tempfile::tempdir().expect("temporary directory");
    let (cert, key, ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    swap_in(&cert, &old.server.0);
    swap_in(&key, &old.server.1);
    swap_in(&ca, &old.ca);
    let db = Arc::new(TestDatabase::new(Backend::Sqlite).await);
    let paths = (cert.clone(), key.clone(), ca.clone());
    let app = spawn_on_lazy(db, move |config| {
        config.tls_cert = Some(paths.0);
        config.tls_key = Some(paths.1);
        config.tls_client_ca = Some(paths.2);
        config.client_cert_identity = todo_service::auth::ClientCertIdentity::UriSan;
        config.tls_reload_interval = Duration::from_millis(100);
    })
    .await;
    let app = Arc::new(app);

    // Before: a client trusting only the new CA, with a new client certificate, is refused.
    assert!(
        create_on_fresh_connection(&app, &[&new.ca], new.client(&[BILLING]))
            .await
            .is_err(),
        "the new certificate is not served yet"
    );

    // Load: a fresh connection for every call, trusting both CAs, with an old client
    // certificate (the client CA bundle keeps the old CA across the renewal).
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (app, stop, served, failed) =
            (app.clone(), stop.clone(), served.clone(), failed.clone());
        let cas = (old.ca.clone(), new.ca.clone());
        let identity = old.client(&[BILLING]);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let answer =
                    create_on_fresh_connection(&app, &[&cas.0, &cas.1], identity.clone()).await;
                match answer {
                    Ok(()) => served.fetch_add(1, Ordering::SeqCst),
                    Err(why) => {
                        eprintln!("failed under load: {why}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The renewal: the client CA bundle first (old and new CA), then the new certificate and
    // key, one file at a time, as a renewal writes them. A half-written set (new certificate,
    // old key) is refused until the key follows.
    swap_in(&ca, &format!("{}{}", old.ca, new.ca));
    swap_in(&cert, &new.server.0);
    tokio::time::sleep(Duration::from_millis(150)).await;
    swap_in(&key, &new.server.1);
    until_reloads(&app, "applied", 1.0).await;
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        // A client trusting only the new CA, with a certificate of the new CA.
        let attempt = create_on_fresh_connection(&app, &[&new.ca], new.client(&[BILLING])).await;
        match attempt {
            Ok(_) => break,
            Err(why) => {
                assert!(
                    Instant::now() < give_up,
                    "the renewed files are not served: {why}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // A broken key: refused, counted, and the renewed set stays in force.
    let rejected = reloads(&app, "rejected").await;
    swap_in(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    until_reloads(&app, "rejected", rejected + 1.0).await;
    create_on_fresh_connection(&app, &[&new.ca], new.client(&[BILLING]))
        .await
        .expect("the last good set serves");

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load task");
    let (served, failed) = (served.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(failed, 0, "{failed} of {} calls failed", served + failed);
    assert!(served >= 10, "only {served} calls under load");
    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
}
