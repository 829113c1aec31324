//! Callers named by JWTs checked against an issuer's JWKS (`--jwt-issuer`, `--jwt-audience`,
//! `--jwt-jwks`). The issuer is real: keys made at run time (RS256, ES256, EdDSA), its JWKS
//! served over HTTP on 127.0.0.1 by a server the test starts, and its keys rotated while the
//! service runs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use todo_service::auth::hash_token;
use todo_service::proto;
use todo_service::startup::{Application, StartupError};
use tonic::{Code, Request, Status};

use crate::both_backends;
use crate::helpers::{
    Backend, TestApp, TestDatabase, assert_invalid_field, metric_value, new_todo, scrape, spawn_on,
    spawn_on_lazy, test_config,
};
use crate::identity::{BILLING, Pki, client, temp};

both_backends!(callers_of_every_source_are_isolated_from_each_other);

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "todo-service";

/// A signing key of the test issuer.
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    /// The public half, as the JWKS publishes it.
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    fn new(kid: &str, algorithm: Algorithm) -> Self {
        let (encoding, mut jwk) = match algorithm {
            Algorithm::ES256 => {
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .expect("P-256 key");
                let raw = pair.public_key_raw();
                (
                    EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC key"),
                    json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
                )
            }
            Algorithm::EdDSA => {
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519");
                (
                    EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("Ed key"),
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key_raw())}),
                )
            }
            Algorithm::RS256 => {
                use rsa::pkcs8::EncodePrivateKey;
                let private =
                    rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
                let pem = private
                    .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                    .expect("PKCS#8");
                let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA key");
                let jwk = serde_json::to_value(
                    Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("JWK"),
                )
                .expect("JSON");
                (encoding, jwk)
            }
            other => panic!("no test key for {other:?}"),
        };
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Self {
            kid: kid.to_owned(),
            algorithm,
            encoding,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signed")
    }
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Claims that pass, for `sub`.
fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 600})
}

/// The issuer: its keys, and an HTTP server on 127.0.0.1 publishing their JWKS.
struct TestIssuer {
    /// The JWK of each published key.
    published: Arc<Mutex<Vec<Value>>>,
    /// How many times the JWKS was fetched.
    fetches: Arc<AtomicUsize>,
    /// While true, the JWKS endpoint answers 503.
    failing: Arc<AtomicBool>,
    /// `http://127.0.0.1:PORT/jwks`.
    url: String,
    /// The HTTP server.
    server: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    async fn start(keys: &[&SigningKey]) -> Self {
        let published: Arc<Mutex<Vec<Value>>> =
            Arc::new(Mutex::new(keys.iter().map(|key| key.jwk.clone()).collect()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let router = {
            let (published, fetches, failing) =
                (published.clone(), fetches.clone(), failing.clone());
            axum::Router::new().route(
                "/jwks",
                axum::routing::get(move || {
                    let (published, fetches, failing) =
                        (published.clone(), fetches.clone(), failing.clone());
                    async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        if failing.load(Ordering::SeqCst) {
                            return (http::StatusCode::SERVICE_UNAVAILABLE, String::new());
                        }
                        let keys = published.lock().expect("keys").clone();
                        (http::StatusCode::OK, json!({"keys": keys}).to_string())
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the issuer");
        let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            published,
            fetches,
            failing,
            url,
            server,
        }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.published.lock().expect("keys") = keys.iter().map(|key| key.jwk.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn jwt_config(config: &mut todo_service::config::Config, jwks: &str) {
    config.jwt_issuer = Some(ISSUER.to_owned());
    config.jwt_audience = Some(AUDIENCE.to_owned());
    config.jwt_jwks = Some(todo_service::auth::jwks::JwksSource::parse(jwks).expect("source"));
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// `message` from the caller of `token`, or (None) of the connection's certificate.
fn as_caller<T>(message: T, token: &Option<String>) -> Request<T> {
    match token {
        Some(token) => bearer(message, token),
        None => Request::new(message),
    }
}

fn keyed<T>(mut request: Request<T>, key: &str) -> Request<T> {
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().expect("ascii"));
    request
}

async fn create_with(app: &TestApp, token: &str, title: &str) -> Result<proto::Todo, Status> {
    app.client
        .clone()
        .create_todo(bearer(new_todo(title), token))
        .await
        .map(tonic::Response::into_inner)
}

fn list(page_size: i32, page_token: &str) -> proto::ListTodosRequest {
    proto::ListTodosRequest {
        page_size,
        page_token: page_token.to_owned(),
        completed: None,
    }
}

async fn callers_of_every_source_are_isolated_from_each_other(backend: Backend) {
    let (es, rs, ed) = (
        SigningKey::new("es-1", Algorithm::ES256),
        SigningKey::new("rs-1", Algorithm::RS256),
        SigningKey::new("ed-1", Algorithm::EdDSA),
    );
    let issuer = TestIssuer::start(&[&es, &rs, &ed]).await;
    let pki = Pki::new();
    let files = (temp(&pki.server.0), temp(&pki.server.1), temp(&pki.ca));
    let tokens = temp(&format!("alice {}\n", hash_token("alice-token")));
    let paths = (
        files.0.path().to_owned(),
        files.1.path().to_owned(),
        files.2.path().to_owned(),
        tokens.path().to_owned(),
    );
    let db = Arc::new(TestDatabase::new(backend).await);
    let url = issuer.url.clone();
    let app = spawn_on_lazy(db, move |config| {
        config.tls_cert = Some(paths.0);
        config.tls_key = Some(paths.1);
        config.tls_client_ca = Some(paths.2);
        config.tokens_file = Some(paths.3);
        config.client_cert_identity = todo_service::auth::ClientCertIdentity::UriSan;
        jwt_config(config, &url);
    })
    .await;
    // One mTLS connection whose certificate names BILLING; each call picks its credential.
    let mut channel = client(&app, &pki, pki.client(&[BILLING])).await;

    let credentials: Vec<(&str, Option<String>)> = vec![
        (
            "jwt billing (ES256)",
            Some(es.sign(&claims("system:serviceaccount:billing:api"))),
        ),
        (
            "jwt reports (RS256)",
            Some(rs.sign(&claims("system:serviceaccount:reports:api"))),
        ),
        (
            "jwt oidc user (EdDSA)",
            Some(ed.sign(&claims("oidc-user-1234"))),
        ),
        ("static token alice", Some("alice-token".to_owned())),
        ("spiffe certificate billing", None),
    ];
    let mut created = Vec::new();
    for (name, token) in &credentials {
        // The same key string for every caller: keys are scoped to the caller.
        let todo = channel
            .create_todo(keyed(as_caller(new_todo(name), token), "one-key-for-all"))
            .await
            .unwrap_or_else(|status| panic!("{name}: {status:?}"))
            .into_inner();
        let replay = channel
            .create_todo(keyed(as_caller(new_todo(name), token), "one-key-for-all"))
            .await
            .unwrap_or_else(|status| panic!("{name}: {status:?}"))
            .into_inner();
        assert_eq!(replay.id, todo.id, "{name}: a retry replays its own answer");
        created.push(todo);
    }
    assert_eq!(app.todo_count().await, 5, "one todo per caller");

    // Each caller sees exactly its own todo, and nobody else's by id.
    for (index, (name, token)) in credentials.iter().enumerate() {
        let seen: Vec<String> = channel
            .list_todos(as_caller(list(10, ""), token))
            .await
            .expect("list")
            .into_inner()
            .todos
            .into_iter()
            .map(|todo| todo.id)
            .collect();
        assert_eq!(seen, vec![created[index].id.clone()], "{name}");
        for (other, todo) in created.iter().enumerate().filter(|(i, _)| *i != index) {
            let get = proto::GetTodoRequest {
                id: todo.id.clone(),
            };
            let status = channel
                .get_todo(as_caller(get, token))
                .await
                .expect_err("another's todo");
            assert_eq!(status.code(), Code::NotFound, "{name} reading #{other}");
        }
    }

    // Page tokens are bound to their caller too.
    let billing_api = es.sign(&claims("system:serviceaccount:billing:api"));
    create_on(&mut channel, &billing_api, "second").await;
    let page = channel
        .list_todos(bearer(list(1, ""), &billing_api))
        .await
        .expect("first page")
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    let reports_api = rs.sign(&claims("system:serviceaccount:reports:api"));
    for foreign in [
        bearer(list(1, &page.next_page_token), &reports_api),
        bearer(list(1, &page.next_page_token), "alice-token"),
        Request::new(list(1, &page.next_page_token)),
    ] {
        let status = channel
            .list_todos(foreign)
            .await
            .expect_err("foreign token");
        assert_invalid_field(&status, "page_token");
    }

    // A JWT may not name a caller that another source names.
    for sub in ["alice", BILLING] {
        let status = channel
            .create_todo(bearer(new_todo("impostor"), &es.sign(&claims(sub))))
            .await
            .expect_err("a JWT naming another source's caller");
        assert_eq!(status.code(), Code::Unauthenticated, "{sub}");
    }
    let metrics = scrape(&app).await;
    assert_eq!(
        metric_value(
            &metrics,
            "todo_auth_failures_total{reason=\"caller_of_another_source\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(app.todo_count().await, 6);
    app.stop().await;
}

async fn create_on(
    channel: &mut todo_service::TodoServiceClient<tonic::transport::Channel>,
    token: &str,
    title: &str,
) {
    channel
        .create_todo(bearer(new_todo(title), token))
        .await
        .expect("create");
}

/// Signs `claims` with `alg` in the header but the given raw signature bytes.
fn forged(header: Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

#[tokio::test]
async fn every_wrong_jwt_is_unauthenticated_before_anything_is_written() {
    let key = SigningKey::new("k1", Algorithm::ES256);
    let rsa = SigningKey::new("r1", Algorithm::RS256);
    let stranger = SigningKey::new("k1", Algorithm::ES256);
    let issuer = TestIssuer::start(&[&key, &rsa]).await;
    let db = Arc::new(TestDatabase::new(Backend::Sqlite).await);
    let url = issuer.url.clone();
    let app = spawn_on(db, move |config| {
        jwt_config(config, &url);
        config.jwt_jwks_min_refresh_interval = Duration::ZERO;
    })
    .await;
    assert!(
        create_with(&app, &key.sign(&claims("svc")), "good")
            .await
            .is_ok()
    );

    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims("svc");
        change(&mut claims);
        key.sign(&claims)
    };
    // The classic confusion: HS256 with the issuer's public key as the HMAC secret.
    let hmac_with_public_key = {
        let public = serde_json::to_vec(&rsa.jwk).expect("JSON");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("r1".to_owned());
        jsonwebtoken::encode(&header, &claims("svc"), &EncodingKey::from_secret(&public))
            .expect("HS256")
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing"),
        ("not bearer", Some("Basic c3ZjOnB3".to_owned()), "malformed"),
        (
            "not a JWT, no tokens file",
            Some("Bearer plain-token".to_owned()),
            "unknown_token",
        ),
        (
            "undecodable JWT",
            Some("Bearer eyJhbGciOi.eyJzdWIi.c2ln".to_owned()),
            "jwt_malformed",
        ),
        (
            "bad signature",
            Some(format!("Bearer {}", stranger.sign(&claims("svc")))),
            "jwt_bad_signature",
        ),
        (
            "unknown kid after refresh",
            Some(format!("Bearer {}", {
                let mut header = Header::new(Algorithm::ES256);
                header.kid = Some("never-published".to_owned());
                jsonwebtoken::encode(&header, &claims("svc"), &key.encoding).expect("signed")
            })),
            "jwt_unknown_key",
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                with(&|c| c["exp"] = json!(now() - 120))
            )),
            "jwt_expired",
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                with(&|c| c["nbf"] = json!(now() + 120))
            )),
            "jwt_not_yet_valid",
        ),
        (
            "wrong issuer",
            Some(format!(
                "Bearer {}",
                with(&|c| c["iss"] = json!("https://evil.test"))
            )),
            "jwt_wrong_issuer",
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                with(&|c| c["aud"] = json!("another-service"))
            )),
            "jwt_wrong_audience",
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                with(&|c| {
                    c.as_object_mut().expect("object").remove("exp");
                })
            )),
            "jwt_missing_claim",
        ),
        (
            "alg none",
            Some(format!(
                "Bearer {}",
                forged(json!({"alg": "none", "kid": "k1"}), &claims("svc"), b"")
            )),
            "jwt_algorithm",
        ),
        (
            "HS256 signed with the public key",
            Some(format!("Bearer {hmac_with_public_key}")),
            "jwt_algorithm",
        ),
        (
            "RS256 header on the EC key",
            Some(format!(
                "Bearer {}",
                forged(json!({"alg": "RS256", "kid": "k1"}), &claims("svc"), b"sig")
            )),
            "jwt_algorithm",
        ),
    ];
    let before = app.todo_count().await;
    for (index, (name, authorization, reason)) in cases.iter().enumerate() {
        let mut request = keyed(Request::new(new_todo(name)), &format!("key-{index}"));
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("ascii"));
        }
        let status = app
            .client
            .clone()
            .create_todo(request)
            .await
            .expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        // The credential never comes back in the answer.
        if let Some(value) = authorization {
            let token = value
                .trim_start_matches("Bearer ")
                .trim_start_matches("Basic ");
            assert!(!status.message().contains(token), "{name}: {status:?}");
        }
        let metrics = scrape(&app).await;
        let series = format!("todo_auth_failures_total{{reason=\"{reason}\"}}");
        assert!(
            metric_value(&metrics, &series) >= 1.0,
            "{name}: no {series}\n{metrics}"
        );
    }
    assert_eq!(app.todo_count().await, before, "nothing written");
    assert_eq!(app.key_count().await, 0, "no key consumed");
    // Health stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(app.channel_uri())
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no credential");
    app.stop().await;
}

#[tokio::test]
async fn issuer_key_rotation_takes_effect_without_a_restart_and_unknown_kids_cannot_flood_it() {
    let old = SigningKey::new("2026-old", Algorithm::ES256);
    let new = SigningKey::new("2026-new", Algorithm::EdDSA);
    let issuer = TestIssuer::start(&[&old]).await;
    let db = Arc::new(TestDatabase::new(Backend::Sqlite).await);
    let url = issuer.url.clone();
    let min_refresh = Duration::from_millis(800);
    let app = spawn_on(db, move |config| {
        jwt_config(config, &url);
        config.jwt_jwks_min_refresh_interval = min_refresh;
        config.jwt_jwks_refresh_interval = Duration::from_secs(3600);
    })
    .await;
    assert_eq!(issuer.fetches(), 1, "fetched at start-up");
    create_with(&app, &old.sign(&claims("svc")), "old key")
        .await
        .expect("the old key");

    // The issuer rotates: the new key in, the old one out.
    issuer.publish(&[&new]);
    tokio::time::sleep(min_refresh + Duration::from_millis(200)).await;
    let token = new.sign(&claims("svc"));
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let app_client = app.client.clone();
            let token = token.clone();
            tokio::spawn(async move {
                app_client
                    .clone()
                    .create_todo(bearer(new_todo(&format!("new key {i}")), &token))
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await
            .expect("task")
            .expect("the new key works on its first calls");
    }
    assert_eq!(issuer.fetches(), 2, "16 concurrent calls shared one fetch");
    let status = create_with(&app, &old.sign(&claims("svc")), "old key")
        .await
        .expect_err("the removed key");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Made-up kids: at most one fetch per minimum interval.
    for i in 0..30 {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(format!("made-up-{i}"));
        let token = jsonwebtoken::encode(&header, &claims("svc"), &new.encoding).expect("signed");
        let status = create_with(&app, &token, "flood")
            .await
            .expect_err("unknown kid");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    assert!(
        issuer.fetches() <= 3,
        "30 unknown kids fetched the JWKS {} times",
        issuer.fetches()
    );

    // An issuer that fails: the last good set stays, and the failure is counted.
    issuer.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(min_refresh + Duration::from_millis(200)).await;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("yet-another".to_owned());
    let unknown = jsonwebtoken::encode(&header, &claims("svc"), &new.encoding).expect("signed");
    create_with(&app, &unknown, "x")
        .await
        .expect_err("unknown kid");
    create_with(&app, &new.sign(&claims("svc")), "still good")
        .await
        .expect("the last good set stays in force");
    let metrics = scrape(&app).await;
    assert!(
        metric_value(
            &metrics,
            "todo_config_reloads_total{file=\"jwks\",result=\"rejected\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "todo_config_reloads_total{file=\"jwks\",result=\"applied\"}"
        ) >= 1.0,
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_jwks_is_fetched_on_schedule_and_a_server_starts_while_the_issuer_is_down() {
    let first = SigningKey::new("first", Algorithm::ES256);
    let second = SigningKey::new("second", Algorithm::ES256);
    let issuer = TestIssuer::start(&[&first]).await;
    issuer.failing.store(true, Ordering::SeqCst);
    let db = Arc::new(TestDatabase::new(Backend::Sqlite).await);
    let url = issuer.url.clone();
    let app = spawn_on(db, move |config| {
        jwt_config(config, &url);
        config.jwt_jwks_refresh_interval = Duration::from_millis(300);
        // Unknown kids never cause a fetch here: only the schedule does.
        config.jwt_jwks_min_refresh_interval = Duration::from_secs(3600);
    })
    .await;
    let status = create_with(&app, &first.sign(&claims("svc")), "too early")
        .await
        .expect_err("no keys yet");
    assert_eq!(status.code(), Code::Unauthenticated);

    issuer.failing.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while create_with(&app, &first.sign(&claims("svc")), "once fetched")
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the JWKS was never fetched again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    issuer.publish(&[&first, &second]);
    let fetched = issuer.fetches();
    while issuer.fetches() < fetched + 2 {
        assert!(tokio::time::Instant::now() < deadline, "no scheduled fetch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create_with(&app, &second.sign(&claims("svc")), "second key")
        .await
        .expect("the scheduled fetch brought the second key");
    app.stop().await;
}

#[tokio::test]
async fn a_jwks_file_is_read_at_start_and_a_missing_one_refuses_to_start() {
    let key = SigningKey::new("file-key", Algorithm::ES256);
    let file = temp(&json!({"keys": [key.jwk]}).to_string());
    let db = Arc::new(TestDatabase::new(Backend::Sqlite).await);
    let path = file.path().display().to_string();
    let app = spawn_on(db.clone(), move |config| jwt_config(config, &path)).await;
    create_with(&app, &key.sign(&claims("svc")), "from a file")
        .await
        .expect("a key from the JWKS file");
    app.stop().await;

    let mut config = test_config(&db);
    jwt_config(&mut config, "/nonexistent/jwks.json");
    match Application::build(&config).await {
        Err(err @ StartupError::Jwks(_)) => {
            assert!(err.to_string().contains("--jwt-jwks"), "{err}");
        }
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("started without its JWKS"),
    }
}

#[tokio::test]
async fn jwts_never_reach_the_logs() {
    let key = SigningKey::new("log-key", Algorithm::ES256);
    let jwks = temp(&json!({"keys": [key.jwk]}).to_string());
    let db = TestDatabase::new(Backend::Sqlite).await;
    let mut server = crate::server_process::ServerProcess::start_logging(
        &db.url,
        "127.0.0.1:0",
        &[
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
            "--jwt-jwks",
            jwks.path().to_str().expect("a UTF-8 temporary path"),
        ],
        "debug",
    )
    .await;
    let mut client = todo_service::TodoServiceClient::new(server.channel());
    let good = key.sign(&claims("svc"));
    let mut expired_claims = claims("svc");
    expired_claims["exp"] = json!(now() - 3600);
    let expired = key.sign(&expired_claims);
    client
        .create_todo(bearer(new_todo("with a JWT"), &good))
        .await
        .expect("a good JWT");
    client
        .create_todo(bearer(new_todo("expired"), &expired))
        .await
        .expect_err("an expired JWT");
    let mut log = server.startup_log.clone();
    let status = server.terminate().await;
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    while let Some(line) = server.next_log_line(Duration::from_secs(1)).await {
        log.push(line);
    }
    let refused: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("UNAUTHENTICATED"))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let refused: Value = serde_json::from_str(refused[0]).expect("JSON");
    assert_eq!(refused["span"]["reason"], "the JWT has expired");
    let log = log.join("\n");
    assert!(log.contains("rpc finished"), "the calls were logged");
    for token in [&good, &expired] {
        // Any of its three parts would be a leak (the signature above all).
        for part in token.split('.') {
            assert!(!log.contains(part), "part of a JWT leaked into the logs");
        }
    }
}
