//! Callers named by the platform's credentials: the SPIFFE ID in a client certificate's URI SAN
//! (`--client-cert-identity uri-san`, over real mutual TLS), alongside callers named by bearer
//! tokens, all isolated from each other; certificates that name no caller are refused.

use std::io::Write;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use tempfile::NamedTempFile;
use todo_service::TodoServiceClient;
use todo_service::auth::hash_token;
use todo_service::config::Config;
use todo_service::proto;
use todo_service::startup::{Application, StartupError};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};

use crate::both_backends;
use crate::helpers::{
    Backend, TestApp, TestDatabase, metric_value, new_todo, scrape, spawn_on_lazy, test_config,
};

both_backends!(spiffe_callers_and_token_callers_are_isolated_from_each_other);

pub const BILLING: &str = "spiffe://example.org/ns/billing/sa/api";
const REPORTS: &str = "spiffe://example.org/ns/reports/sa/api";

/// A CA, a server certificate, and client certificates with the given URI SANs.
pub struct Pki {
    pub ca: String,
    pub server: (String, String),
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("key");
        let ca = ca_params.self_signed(&ca_key).expect("CA").pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        Self {
            ca,
            server: (server.pem(), server_key.serialize_pem()),
            issuer,
        }
    }

    /// A client certificate (PEM, key) with these URI SANs.
    pub fn client(&self, uris: &[&str]) -> Identity {
        let mut params = CertificateParams::new(vec!["client.test".to_owned()]).expect("params");
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().expect("an IA5 string")));
        }
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        Identity::from_pem(cert.pem(), key.serialize_pem())
    }
}

pub fn temp(text: &str) -> NamedTempFile {
    let mut file = NamedTempFile::new().expect("temporary file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

pub async fn client(app: &TestApp, pki: &Pki, identity: Identity) -> TodoServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .identity(identity)
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .expect("uri")
        .tls_config(tls)
        .expect("TLS")
        .connect()
        .await
        .expect("connect over mTLS");
    TodoServiceClient::new(channel)
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

fn list() -> proto::ListTodosRequest {
    proto::ListTodosRequest::default()
}

async fn spiffe_callers_and_token_callers_are_isolated_from_each_other(backend: Backend) {
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
    let app = spawn_on_lazy(db, move |config| {
        config.tls_cert = Some(paths.0);
        config.tls_key = Some(paths.1);
        config.tls_client_ca = Some(paths.2);
        config.tokens_file = Some(paths.3);
        config.client_cert_identity = todo_service::auth::ClientCertIdentity::UriSan;
    })
    .await;

    let mut billing = client(&app, &pki, pki.client(&[BILLING])).await;
    let mut reports = client(&app, &pki, pki.client(&[REPORTS])).await;
    let billings = billing
        .create_todo(new_todo("billing's"))
        .await
        .expect("billing, by its SPIFFE ID")
        .into_inner();
    // Another workload's SPIFFE ID sees nothing of billing's.
    let status = reports
        .get_todo(proto::GetTodoRequest {
            id: billings.id.clone(),
        })
        .await
        .expect_err("reports cannot read billing's todo");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        reports
            .list_todos(list())
            .await
            .expect("list")
            .into_inner()
            .todos
            .is_empty()
    );
    // A keyed create: keys are scoped to the caller too.
    let mut keyed = Request::new(new_todo("same key"));
    keyed
        .metadata_mut()
        .insert("idempotency-key", "k-1".parse().expect("ascii"));
    let mut keyed_again = Request::new(new_todo("same key"));
    keyed_again
        .metadata_mut()
        .insert("idempotency-key", "k-1".parse().expect("ascii"));
    let first = billing
        .create_todo(keyed)
        .await
        .expect("billing's keyed create");
    let second = reports
        .create_todo(keyed_again)
        .await
        .expect("reports' keyed create");
    assert_ne!(
        first.get_ref().id,
        second.get_ref().id,
        "one key string, two callers, two todos"
    );

    // A bearer token is judged by the tokens file, even over a SPIFFE certificate.
    let alices = billing
        .create_todo(with_token(new_todo("alice's"), "alice-token"))
        .await
        .expect("alice, by her token")
        .into_inner();
    let alice_sees: Vec<String> = billing
        .list_todos(with_token(list(), "alice-token"))
        .await
        .expect("alice lists")
        .into_inner()
        .todos
        .into_iter()
        .map(|todo| todo.id)
        .collect();
    assert_eq!(
        alice_sees,
        std::slice::from_ref(&alices.id),
        "alice sees only her own"
    );
    let status = billing
        .get_todo(with_token(
            proto::GetTodoRequest {
                id: alices.id.clone(),
            },
            "guessed",
        ))
        .await
        .expect_err("an unknown token over a valid certificate");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Certificates that name no caller.
    for (uris, label) in [
        (&[][..], "no_uri_san"),
        (&[BILLING, REPORTS][..], "several_uri_sans"),
    ] {
        let mut nameless = client(&app, &pki, pki.client(uris)).await;
        let status = nameless
            .create_todo(new_todo("nobody's"))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{uris:?}");
        let metrics = scrape(&app).await;
        let series = format!("todo_auth_failures_total{{reason=\"{label}\"}}");
        assert_eq!(metric_value(&metrics, &series), 1.0, "{metrics}");
    }
    assert_eq!(app.todo_count().await, 4, "billing 2, reports 1, alice 1");
}

#[tokio::test]
async fn certificate_identity_without_a_client_ca_refuses_to_start() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let mut config: Config = test_config(&db);
    config.client_cert_identity = todo_service::auth::ClientCertIdentity::UriSan;
    match Application::build(&config).await {
        Err(err @ StartupError::CertIdentityWithoutClientCa) => {
            assert!(err.to_string().contains("--tls-client-ca"), "{err}");
        }
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("started without a client CA"),
    }
}
