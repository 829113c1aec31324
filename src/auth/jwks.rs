//! The issuer's published keys (`--jwt-jwks`: an `http(s)://` URL or a file), kept current
//! while the server runs:
//!
//! - fetched at start-up (a file that cannot be read is a start-up error; a URL that cannot be
//!   fetched is logged, and fetched again until it can be, while JWT calls are refused);
//! - fetched again on a schedule (`--jwt-jwks-refresh-interval`), and when a token names a `kid`
//!   the set does not have, at most once per `--jwt-jwks-min-refresh-interval`, so tokens with
//!   made-up kids cannot flood the issuer; calls that wait for the same fetch share it;
//! - a fetch that fails, or a set without a usable key, keeps the last good set in force, is
//!   logged, and is counted in `todo_config_reloads_total{file="jwks",result="rejected"}`.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, watch};

use crate::auth::jwt::{ACCEPTED_ALGORITHMS, KeySet, PublicKey};
use crate::error::Chain;
use crate::metrics::{Metrics, Reload, ReloadedFile};
use crate::ticker::Ticker;

/// Longest a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where the JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched by GET (`https://...`, or `http://...` for a sidecar or a test on loopback).
    Url(http::Uri),
    /// Read from a file (a mounted ConfigMap, say).
    File(PathBuf),
}

impl JwksSource {
    /// `http://` or `https://` is a URL; anything else a path.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("http://") || text.starts_with("https://") {
            let uri: http::Uri = text.parse().map_err(|err| format!("not a URL: {err}"))?;
            if uri.host().is_none() {
                return Err("the URL has no host".to_owned());
            }
            Ok(Self::Url(uri))
        } else if text.is_empty() {
            Err("must be a URL or a path".to_owned())
        } else {
            Ok(Self::File(PathBuf::from(text)))
        }
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(uri) => write!(f, "{uri}"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How the JWKS is fetched and kept current.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// `--jwt-jwks`.
    pub source: JwksSource,
    /// `--jwt-jwks-ca`: a PEM bundle trusted for an `https://` JWKS besides the public roots
    /// (a cluster's CA).
    pub ca_file: Option<PathBuf>,
    /// `--jwt-jwks-token-file`: a file whose contents are sent as `Authorization: Bearer` with
    /// each fetch (a Kubernetes API server asks one), re-read at every fetch.
    pub token_file: Option<PathBuf>,
    /// `--jwt-jwks-refresh-interval`.
    pub refresh_interval: Duration,
    /// `--jwt-jwks-min-refresh-interval`.
    pub min_refresh_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read the JWKS file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the JWKS CA bundle {path}")]
    Ca {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot read the JWKS bearer token file {path}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch the JWKS from {url}")]
    Fetch {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("fetching the JWKS from {url} took longer than {FETCH_TIMEOUT:?}")]
    Timeout { url: String },
    #[error("the JWKS at {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the JWKS is not a JSON Web Key Set")]
    Json(#[source] serde_json::Error),
    #[error(
        "the JWKS has no key this server can verify with (RSA, EC P-256/P-384 or Ed25519, for \
         signatures)"
    )]
    NoUsableKey,
}

/// The usable signing keys of a JWKS document. Keys that are not for signatures, of no known
/// type, HMAC (`oct`) or for an algorithm this server does not accept are left out.
pub fn parse_key_set(document: &[u8]) -> Result<KeySet, JwksError> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(document).map_err(JwksError::Json)?;
    let keys: Vec<PublicKey> = document
        .keys
        .into_iter()
        .filter_map(|value| usable_key(serde_json::from_value::<Jwk>(value).ok()?))
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(KeySet::new(keys))
}

fn usable_key(jwk: Jwk) -> Option<PublicKey> {
    if matches!(&jwk.common.public_key_use, Some(usage) if *usage != PublicKeyUse::Signature) {
        return None;
    }
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    let algorithm = match jwk.common.key_algorithm {
        None => None,
        Some(named) => {
            // Named as the JWA names it (`ES256`); key-management names (`RSA-OAEP`) do not parse.
            let algorithm: Algorithm = named.to_string().parse().ok()?;
            if !ACCEPTED_ALGORITHMS.contains(&algorithm) {
                return None;
            }
            Some(algorithm)
        }
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(PublicKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key,
    })
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Reads the JWKS from where it is.
struct Fetcher {
    /// Where it is.
    source: JwksSource,
    /// The HTTP(S) client, for a URL.
    client: Option<HttpsClient>,
    /// The bearer token sent with each fetch, if any.
    token_file: Option<PathBuf>,
}

impl Fetcher {
    fn new(settings: &JwksSettings) -> Result<Self, JwksError> {
        let client = match &settings.source {
            JwksSource::File(_) => None,
            JwksSource::Url(_) => Some(https_client(settings.ca_file.as_ref())?),
        };
        Ok(Self {
            source: settings.source.clone(),
            client,
            token_file: settings.token_file.clone(),
        })
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let document = match (&self.source, &self.client) {
            (JwksSource::File(path), _) => {
                tokio::fs::read(path)
                    .await
                    .map_err(|source| JwksError::Read {
                        path: path.display().to_string(),
                        source,
                    })?
            }
            (JwksSource::Url(uri), Some(client)) => self.get(client, uri).await?.to_vec(),
            (JwksSource::Url(uri), None) => {
                return Err(JwksError::Fetch {
                    url: uri.to_string(),
                    source: "no HTTP client".into(),
                });
            }
        };
        parse_key_set(&document)
    }

    async fn get(&self, client: &HttpsClient, uri: &http::Uri) -> Result<Bytes, JwksError> {
        let url = uri.to_string();
        let fetch_error = |source: Box<dyn std::error::Error + Send + Sync>| JwksError::Fetch {
            url: url.clone(),
            source,
        };
        let mut request = http::Request::get(uri.clone()).header(
            http::header::ACCEPT,
            "application/json, application/jwk-set+json",
        );
        if let Some(path) = &self.token_file {
            let token =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| JwksError::TokenFile {
                        path: path.display().to_string(),
                        source,
                    })?;
            request = request.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|err| fetch_error(err.into()))?;
        let fetched = async {
            let response = client
                .request(request)
                .await
                .map_err(|err| fetch_error(err.into()))?;
            let status = response.status();
            if !status.is_success() {
                return Err(JwksError::Status {
                    url: url.clone(),
                    status: status.as_u16(),
                });
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(fetch_error)?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetched)
            .await
            .map_err(|_| JwksError::Timeout { url: url.clone() })?
    }
}

/// An HTTP(S) client trusting the public web roots and, if given, a CA bundle.
fn https_client(ca_file: Option<&PathBuf>) -> Result<HttpsClient, JwksError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let ca_error = |source: Box<dyn std::error::Error + Send + Sync>| JwksError::Ca {
            path: path.display().to_string(),
            source,
        };
        let certificates =
            CertificateDer::pem_file_iter(path).map_err(|err| ca_error(err.into()))?;
        let mut added = 0;
        for certificate in certificates {
            roots
                .add(certificate.map_err(|err| ca_error(err.into()))?)
                .map_err(|err| ca_error(err.into()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_error("no PEM certificate in the file".into()));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| JwksError::Fetch {
        url: String::new(),
        source: err.into(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

/// Why a fetch ran (the `trigger` of its log line).
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Schedule,
    UnknownKey,
}

/// The issuer's keys in force, and how to fetch them again. Cheap to clone.
#[derive(Clone)]
pub struct CurrentKeys(Arc<Shared>);

struct Shared {
    /// The set in force: replaced whole by a good fetch.
    keys: RwLock<Arc<KeySet>>,
    /// Reads the JWKS.
    fetcher: Fetcher,
    /// When the last fetch started. Held through a fetch, so that calls waiting for one share it.
    last_fetch: Mutex<Option<Instant>>,
    /// Least time between two fetches for unknown kids.
    min_refresh_interval: Duration,
    /// Where fetches are counted.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CurrentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentKeys")
            .field("source", &self.0.fetcher.source)
            .field("keys", &self.get())
            .finish()
    }
}

impl CurrentKeys {
    /// Fetches the JWKS once. A file that cannot be read or parsed is an error; a URL that
    /// cannot be fetched starts with no keys (logged; fetched again on the next JWT call and
    /// on schedule).
    pub async fn start(settings: &JwksSettings, metrics: Arc<Metrics>) -> Result<Self, JwksError> {
        let fetcher = Fetcher::new(settings)?;
        let first = fetcher.fetch().await;
        let keys = match first {
            Ok(keys) => {
                tracing::info!(source = %settings.source, keys = keys.len(), "JWKS fetched");
                keys
            }
            Err(err) if matches!(settings.source, JwksSource::File(_)) => return Err(err),
            Err(err) => {
                tracing::warn!(
                    error = %Chain(&err),
                    "cannot fetch the JWKS at start-up; JWT calls are refused until it is fetched"
                );
                metrics.record_reload(Reload::Rejected(ReloadedFile::Jwks));
                KeySet::default()
            }
        };
        Ok(Self(Arc::new(Shared {
            keys: RwLock::new(Arc::new(keys)),
            fetcher,
            last_fetch: Mutex::new(Some(Instant::now())),
            min_refresh_interval: settings.min_refresh_interval,
            metrics,
        })))
    }

    /// The set in force now.
    pub fn get(&self) -> Arc<KeySet> {
        Arc::clone(&self.0.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether a token naming `kid` calls for a fetch first: the set lacks that key, or (for
    /// a token without a `kid`) has no key at all.
    pub fn lacks(&self, kid: Option<&str>) -> bool {
        let keys = self.get();
        match kid {
            Some(kid) => !keys.has(kid),
            None => keys.is_empty(),
        }
    }

    /// Fetches the JWKS again for a token whose key the set lacks, unless the last fetch was
    /// less than the minimum interval ago. Returns when the set is as fresh as it will get.
    pub async fn refresh_for_unknown_key(&self, kid: Option<&str>) {
        let mut last = self.0.last_fetch.lock().await;
        if !self.lacks(kid) {
            // Fetched while this call waited.
            return;
        }
        if last.is_some_and(|at| at.elapsed() < self.0.min_refresh_interval) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch_and_apply(Trigger::UnknownKey).await;
    }

    async fn refresh_on_schedule(&self) {
        let mut last = self.0.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_apply(Trigger::Schedule).await;
    }

    async fn fetch_and_apply(&self, trigger: Trigger) {
        match self.0.fetcher.fetch().await {
            Ok(keys) => {
                tracing::info!(
                    source = %self.0.fetcher.source,
                    keys = keys.len(),
                    ?trigger,
                    "JWKS fetched"
                );
                *self.0.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                self.0
                    .metrics
                    .record_reload(Reload::Applied(ReloadedFile::Jwks));
            }
            Err(err) => {
                tracing::warn!(
                    error = %Chain(&err),
                    ?trigger,
                    "JWKS not refreshed; the last good one stays in force"
                );
                self.0
                    .metrics
                    .record_reload(Reload::Rejected(ReloadedFile::Jwks));
            }
        }
    }
}

/// Fetches the JWKS every `interval` until `stop`; while no set was ever fetched, every
/// `min_interval` if that is sooner (but at most once a second).
pub async fn refresh_keys(
    keys: CurrentKeys,
    interval: Duration,
    min_interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = Ticker::new(interval);
    let mut retry = Ticker::new(min_interval.min(interval).max(Duration::from_secs(1)));
    // Both tick at once first; the set was just fetched.
    if !(ticker.tick_unless_stopped(&mut stop).await && retry.tick_unless_stopped(&mut stop).await)
    {
        return;
    }
    loop {
        let ticked = if keys.get().is_empty() {
            retry.tick_unless_stopped(&mut stop).await
        } else {
            ticker.tick_unless_stopped(&mut stop).await
        };
        if !ticked {
            return;
        }
        keys.refresh_on_schedule().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_urls_or_paths() {
        assert!(matches!(
            JwksSource::parse("https://issuer.test/keys"),
            Ok(JwksSource::Url(_))
        ));
        assert!(matches!(
            JwksSource::parse("http://127.0.0.1:8080/jwks"),
            Ok(JwksSource::Url(_))
        ));
        assert_eq!(
            JwksSource::parse("/etc/jwks.json"),
            Ok(JwksSource::File("/etc/jwks.json".into()))
        );
        assert!(JwksSource::parse("https://").is_err());
        assert!(JwksSource::parse("").is_err());
    }

    #[test]
    fn only_signing_keys_of_accepted_algorithms_are_kept() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let (x, y) = (b64(&raw[1..33]), b64(&raw[33..65]));
        let document = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "ec", "use": "sig", "alg": "ES256"},
            {"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "enc", "use": "enc"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
            {"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "hs", "alg": "HS256"},
            {"kty": "unknown", "kid": "odd"},
        ]});
        let keys = parse_key_set(document.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys.has("ec"));
        assert!(matches!(
            parse_key_set(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#),
            Err(JwksError::NoUsableKey)
        ));
        assert!(matches!(
            parse_key_set(b"not json"),
            Err(JwksError::Json(_))
        ));
    }
}
