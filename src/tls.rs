//! TLS on the gRPC listener (`--tls-cert`, `--tls-key`, `--tls-client-ca`), with files that
//! may change under a running server: cert-manager and SPIRE renew short-lived certificates in
//! place. The three files are read together into one rustls configuration ([`CurrentTls`]);
//! each new connection's handshake uses the configuration in force when it arrives, so a
//! renewal takes effect for the next connection while connections already open carry on. A set
//! of files that does not make a configuration (unreadable, not PEM, a key that is not the
//! certificate's) is refused and the last good one stays (`reload.rs`).
//!
//! The handshakes run concurrently, off the accept loop, each bounded by
//! [`HANDSHAKE_TIMEOUT`]; a failed one closes its connection and is logged at debug level.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;

use crate::grpc::connections::{CountedConnection, LimitedIncoming};

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS files, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: the PEM certificate chain.
    pub cert: PathBuf,
    /// `--tls-key`: its PEM private key.
    pub key: PathBuf,
    /// `--tls-client-ca`: PEM CA certificates that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} is not a PEM private key")]
    Key {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} is not a PEM certificate bundle")]
    Pem {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the client CA bundle {path} is not usable")]
    ClientCa {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the certificate and key do not make a TLS configuration (does the key belong to it?)")]
    Config(#[source] rustls::Error),
}

impl TlsFiles {
    /// The paths, in the order [`Self::configuration`] takes their contents.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }

    /// Reads the files.
    pub fn read(&self) -> Result<Vec<Vec<u8>>, TlsError> {
        self.paths()
            .iter()
            .map(|path| {
                std::fs::read(path).map_err(|source| TlsError::Read {
                    path: path.display().to_string(),
                    source,
                })
            })
            .collect()
    }

    /// The rustls configuration the files' `contents` (as [`Self::read`] returns them) make:
    /// HTTP/2 by ALPN, client certificates required and checked when a client CA is given.
    pub fn configuration(&self, contents: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
        let [cert, key, rest @ ..] = contents else {
            return Err(TlsError::NoCertificate {
                path: self.cert.display().to_string(),
            });
        };
        let chain = certificates(cert, &self.cert)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| TlsError::Key {
            path: self.key.display().to_string(),
            source,
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match (&self.client_ca, rest.first()) {
            (Some(path), Some(bundle)) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in certificates(bundle, path)? {
                    roots.add(certificate).map_err(|err| TlsError::ClientCa {
                        path: path.display().to_string(),
                        source: err.into(),
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|err| TlsError::ClientCa {
                    path: path.display().to_string(),
                    source: err.into(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn certificates(
    pem: &[u8],
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.display().to_string(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certificates)
}

/// The TLS configuration in force: replaced whole when the files are re-read.
#[derive(Clone)]
pub struct CurrentTls(Arc<RwLock<Arc<ServerConfig>>>);

impl std::fmt::Debug for CurrentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentTls").finish_non_exhaustive()
    }
}

impl CurrentTls {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self(Arc::new(RwLock::new(config)))
    }

    /// The configuration the next handshake uses.
    pub fn get(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `config` in force for every connection that arrives from now on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}

/// The connections of a listener, each through its TLS handshake.
pub struct TlsIncoming {
    /// The accepted TCP connections.
    incoming: LimitedIncoming,
    /// The configuration each handshake starts with.
    tls: CurrentTls,
    /// Handshakes under way.
    handshakes: JoinSet<io::Result<TlsStream<CountedConnection>>>,
    /// Whether the listener has ended (then the stream ends once the handshakes have).
    listener_done: bool,
}

impl TlsIncoming {
    pub fn new(incoming: LimitedIncoming, tls: CurrentTls) -> Self {
        Self {
            incoming,
            tls,
            handshakes: JoinSet::new(),
            listener_done: false,
        }
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<TlsStream<CountedConnection>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while !this.listener_done {
            match Pin::new(&mut this.incoming).poll_next(cx) {
                Poll::Ready(Some(Ok(connection))) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(this.tls.get());
                    this.handshakes.spawn(async move {
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(connection))
                            .await
                            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))?
                    });
                }
                // An accept error is the listener's, as without TLS.
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(None) => this.listener_done = true,
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Ok(stream)))) => return Poll::Ready(Some(Ok(stream))),
                Poll::Ready(Some(Ok(Err(err)))) => {
                    tracing::debug!(error = %err, "TLS handshake failed");
                }
                Poll::Ready(Some(Err(err))) => {
                    tracing::warn!(error = %err, "TLS handshake task failed");
                }
                Poll::Ready(None) if this.listener_done => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
