//! Builds the server from a [`Config`]: database, migrations, listeners, and the services
//! (TodoService, health, reflection, metrics, key sweeper). The caller owns the shutdown
//! signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;

use crate::auth::jwks::{CurrentKeys, JwksError, refresh_keys};
use crate::auth::{CallerTokens, ClientCertIdentity, CurrentTokens, JwtIssuer, TokensFileError};
use crate::config::{Config, MigrateAction};
use crate::error::Chain;
use crate::grpc::TodoApi;
use crate::grpc::call::CallLayer;
use crate::grpc::connections::LimitedIncoming;
use crate::grpc::guard::RequestGuard;
use crate::grpc::key_refresh::FetchUnknownKeys;
use crate::grpc::limits::limit_request_bodies;
use crate::health::report_health;
use crate::idempotency::{
    CurrentRetention, Idempotency, RetentionError, StoredRetention, SweepReport, SweepSettings,
    resolve_retention, sweep_expired,
};
use crate::metrics::{self, Metrics};
use crate::proto::{self, todo_service_server::TodoServiceServer};
use crate::reload::{TokensFile, reload_tls, reload_tokens};
use crate::storage::{MigrationState, Pooling, SessionError, Storage, StorageError};
use crate::ticker::Ticker;
use crate::tls::{CurrentTls, TlsError, TlsFiles, TlsIncoming};

/// Why the server could not start (or stopped). Each variant keeps its cause as its source;
/// `main` logs the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot reach the database")]
    Database(#[from] StorageError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot load the JWKS (--jwt-jwks)")]
    Jwks(#[from] JwksError),
    #[error("cannot load the tokens file")]
    Tokens(#[from] TokensFileError),
    #[error("cannot use the idempotency retention")]
    Retention(#[from] RetentionError),
    #[error(
        "refusing to serve anonymous callers on the non-loopback address {0}: configure \
         --tokens-file (TODO_TOKENS_FILE), or pass --allow-anonymous-non-loopback if this \
         is really wanted"
    )]
    AnonymousNonLoopback(SocketAddr),
    #[error(
        "`migrate down` drops the reverted migrations' tables and their data: pass \
         --allow-data-loss to do it"
    )]
    DownNeedsConsent,
    #[error(
        "--client-cert-identity uri-san names callers by their client certificates: it needs \
         --tls-client-ca (TODO_TLS_CLIENT_CA), which makes clients present one"
    )]
    CertIdentityWithoutClientCa,
    #[error("cannot set up TLS from --tls-cert, --tls-key and --tls-client-ca")]
    Tls(#[from] TlsError),
    #[error("the database sessions are not usable as they are")]
    Sessions(#[from] SessionError),
}

/// Who may call, over what.
struct Access {
    /// The callers and their token hashes in force (`--tokens-file`; empty: anonymous).
    tokens: CurrentTokens,
    /// The tokens file to re-read while serving, if there is one.
    tokens_file: Option<TokensFile>,
    /// JWT bearer tokens (`--jwt-issuer`), and how often their JWKS is fetched again.
    jwt: Option<(JwtIssuer, Duration, Duration)>,
    /// Whether callers without a bearer token are named by their client certificates.
    client_certs: ClientCertIdentity,
    /// Serve over TLS (and require client certificates) when set.
    tls: Option<ServingTls>,
}

/// How much one call, one connection and the whole server may take.
struct Limits {
    /// Longest a call may run (`--request-timeout`).
    request_timeout: Duration,
    /// Largest request message (`--max-request-bytes`).
    max_request_bytes: usize,
    /// Largest request metadata (`--max-metadata-bytes`).
    max_metadata_bytes: usize,
    /// Streams open at once on one connection, advertised in HTTP/2 SETTINGS
    /// (`--max-concurrent-calls-per-connection`).
    max_concurrent_streams: u32,
    /// Longest wait for a request message (`--receive-timeout`, at most `--request-timeout`).
    receive_timeout: Duration,
    /// Client connections open at once (`--max-connections`).
    max_connections: usize,
    /// Age at which a connection is sent GOAWAY, and how long it may go on after that
    /// (`--max-connection-age`, `--max-connection-age-grace`).
    max_connection_age: Option<(Duration, Duration)>,
    /// How often an idle connection is pinged, and how long the answer may take
    /// (`--http2-keepalive-interval`, `--http2-keepalive-timeout`; `None`: never).
    keepalive: Option<(Duration, Duration)>,
}

/// How the server stops once told to (`--shutdown-drain`, `--shutdown-timeout`).
#[derive(Debug, Clone, Copy)]
struct ShutdownPlan {
    /// How long new calls are still served while health answers NOT_SERVING.
    drain: Duration,
    /// Longest wait, after GOAWAY, for the calls in flight.
    timeout: Duration,
}

/// When the in-process key sweeper runs, and how it sweeps.
#[derive(Debug, Clone, Copy)]
struct SweeperSchedule {
    /// How each sweep deletes expired keys.
    settings: SweepSettings,
    /// Time between two sweeps (`--sweep-interval`).
    interval: Duration,
}

/// The TLS files and the configuration they make, from `--tls-cert`, `--tls-key` and
/// `--tls-client-ca`, if TLS is on.
fn tls_config(config: &Config) -> Result<Option<ServingTls>, StartupError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: config.tls_client_ca.clone(),
    };
    let current = CurrentTls::new(files.configuration(&files.read()?)?);
    Ok(Some(ServingTls {
        files,
        current,
        reload_interval: config.tls_reload_interval,
    }))
}

/// TLS on the gRPC listener, re-read while serving.
struct ServingTls {
    /// Where the certificate, key and client CA are.
    files: TlsFiles,
    /// The configuration new connections use.
    current: CurrentTls,
    /// How often the files are checked for changes (`--tls-reload-interval`).
    reload_interval: Duration,
}

/// A server ready to run: connected, migrated, and bound to its ports.
pub struct Application {
    /// The gRPC listener, bound at build time (so port 0 is known before serving).
    listener: TcpListener,
    /// The address `listener` is bound to.
    local_addr: SocketAddr,
    /// The `/metrics` listener and its address, when metrics are on.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    /// The plaintext health-only listener and its address (`--health-listen-addr`).
    health_listener: Option<(TcpListener, SocketAddr)>,
    /// How the server stops.
    shutdown: ShutdownPlan,
    /// The database connections, shared with the handlers and background tasks.
    storage: Storage,
    /// This server's metrics registry.
    metrics: Arc<Metrics>,
    /// The TodoService handlers.
    api: TodoApi,
    /// Who may call, over what.
    access: Access,
    /// How calls are bounded.
    limits: Limits,
    /// How often the health service checks the database (and the shared retention is read
    /// again).
    health_check_interval: Duration,
    /// The retention this server honours, kept in step with the database.
    retention: CurrentRetention,
    /// The in-process key sweeper, unless `--sweep-enabled false`.
    sweeper: Option<SweeperSchedule>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartupError> {
    let bind_error = |source| StartupError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// Connects to the database and applies migrations if the configuration says so.
async fn open_storage(config: &Config) -> Result<Storage, StartupError> {
    let settings = config.database();
    let storage = Storage::connect(&settings).await?;
    if let Some(Pooling::TransactionWithPreparedStatements) =
        storage.verify_sessions(&settings).await?
    {
        tracing::warn!(
            "the database connection is pooled per transaction: session settings come from \
             ALTER ROLE/DATABASE, and migrations should run on a direct connection \
             (todo-server migrate up)"
        );
    }
    if config.run_migrations {
        storage.migrate().await?;
    }
    Ok(storage)
}

/// The retention every replica on the database shares (see `idempotency/retention.rs`).
async fn shared_retention(
    storage: &Storage,
    config: &Config,
) -> Result<StoredRetention, StartupError> {
    Ok(resolve_retention(
        storage,
        config.idempotency_retention,
        config.change_idempotency_retention,
    )
    .await?)
}

/// What `todo-server migrate` found or did.
#[derive(Debug)]
pub enum MigrateReport {
    /// Every migration is applied now.
    Applied(Vec<MigrationState>),
    /// The migrations and their state (nothing was changed).
    Status(Vec<MigrationState>),
    /// The last migrations were reverted; the state afterwards.
    Reverted(Vec<MigrationState>),
}

/// `todo-server migrate ACTION`: migrates the database (under its migration lock) and reports
/// the state of every migration. `down` without `--allow-data-loss` is refused before anything
/// is touched.
pub async fn migrate(
    config: &Config,
    action: MigrateAction,
) -> Result<MigrateReport, StartupError> {
    if let MigrateAction::Down {
        allow_data_loss: false,
        ..
    } = action
    {
        return Err(StartupError::DownNeedsConsent);
    }
    let storage = Storage::connect(&config.database()).await?;
    let result = async {
        Ok(match action {
            MigrateAction::Up => {
                storage.migrate().await?;
                MigrateReport::Applied(storage.migration_status().await?)
            }
            MigrateAction::Status => MigrateReport::Status(storage.migration_status().await?),
            MigrateAction::Down { steps, .. } => {
                storage.revert_migrations(steps).await?;
                MigrateReport::Reverted(storage.migration_status().await?)
            }
        })
    }
    .await;
    storage.close().await;
    result
}

/// `todo-server sweep`: deletes the expired idempotency keys once.
pub async fn sweep_once(config: &Config) -> Result<SweepReport, StartupError> {
    let storage = open_storage(config).await?;
    shared_retention(&storage, config).await?;
    let report = sweep_expired(&storage, config.sweep()).await;
    storage.close().await;
    Ok(report?)
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let tokens = match &config.tokens_file {
            Some(path) => CallerTokens::load(path)?,
            None => CallerTokens::default(),
        };
        if config.client_cert_identity == ClientCertIdentity::UriSan
            && config.tls_client_ca.is_none()
        {
            return Err(StartupError::CertIdentityWithoutClientCa);
        }
        if tokens.is_empty()
            && config.jwt_issuer.is_none()
            && config.client_cert_identity == ClientCertIdentity::Off
            && !config.listen_addr.ip().is_loopback()
            && !config.allow_anonymous_non_loopback
        {
            return Err(StartupError::AnonymousNonLoopback(config.listen_addr));
        }
        let mut access = Access {
            jwt: None,
            tokens: CurrentTokens::new(tokens),
            tokens_file: config.tokens_file.clone().map(|path| TokensFile {
                path,
                interval: config.tokens_reload_interval,
            }),
            client_certs: config.client_cert_identity,
            tls: tls_config(config)?,
        };
        let limits = Limits {
            request_timeout: config.request_timeout,
            max_request_bytes: config.max_request_bytes,
            max_metadata_bytes: config.max_metadata_bytes,
            max_concurrent_streams: config.max_concurrent_calls_per_connection.max(1),
            receive_timeout: config.receive_timeout.min(config.request_timeout),
            max_connections: config.max_connections,
            max_connection_age: config
                .max_connection_age
                .map(|age| (age, config.max_connection_age_grace)),
            keepalive: (!config.http2_keepalive_interval.is_zero()).then_some((
                config.http2_keepalive_interval,
                config.http2_keepalive_timeout,
            )),
        };
        let storage = open_storage(config).await?;
        let page_token_key = storage.page_token_key().await?;
        let mut metrics = Metrics::new();
        metrics.register_db_retries(storage.retry_counts());
        if let Some(counts) = storage.group_commit_counts() {
            metrics.register_group_commit(counts);
        }
        let metrics = Arc::new(metrics);
        let jwt = match config.jwt() {
            Some((rules, settings)) => Some((
                JwtIssuer {
                    rules: Arc::new(rules),
                    keys: CurrentKeys::start(&settings, Arc::clone(&metrics)).await?,
                },
                settings.refresh_interval,
                settings.min_refresh_interval,
            )),
            None => None,
        };
        access.jwt = jwt;
        let retention = CurrentRetention::new(shared_retention(&storage, config).await?.current);
        let idempotency = Idempotency::new(storage.clone(), retention.clone());
        let api = TodoApi::new(storage.clone(), idempotency, page_token_key);
        let (listener, local_addr) = bind(config.listen_addr).await?;
        let metrics_listener = if config.metrics_enabled {
            Some(bind(config.metrics_listen_addr).await?)
        } else {
            None
        };
        let health_listener = match config.health_listen_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            metrics_listener,
            health_listener,
            shutdown: ShutdownPlan {
                drain: config.shutdown_drain,
                timeout: config.shutdown_timeout,
            },
            storage,
            metrics,
            api,
            access,
            limits,
            health_check_interval: config.health_check_interval,
            retention,
            sweeper: config.sweep_enabled.then(|| SweeperSchedule {
                settings: config.sweep(),
                interval: config.sweep_interval,
            }),
        })
    }

    /// The gRPC address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The metrics address actually bound, if metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// The plaintext health address actually bound, if `--health-listen-addr` is set.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// Serves until `shutdown` completes; then drains: health turns NOT_SERVING at once, new
    /// calls are still served for `--shutdown-drain`; then stops accepting and sends GOAWAY,
    /// waits (at most `--shutdown-timeout`) for the calls in flight, and stops the background
    /// tasks. If `abort` completes (a second signal) the server stops at once.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
        abort: impl Future<Output = ()> + Send,
    ) -> Result<(), StartupError> {
        let (stop, stopped) = watch::channel(false);
        let (drain, draining) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        tasks.spawn(report_health(
            health_reporter,
            self.storage.clone(),
            self.health_check_interval,
            draining,
        ));
        if let Some((listener, addr)) = self.health_listener {
            tracing::info!(%addr, "serving health (plaintext)");
            let health_only = Server::builder().add_service(health_service.clone());
            let mut stopped = stopped.clone();
            tasks.spawn(async move {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let until_stopped = async move {
                    let _ = stopped.wait_for(|stopped| *stopped).await;
                };
                if let Err(err) = health_only
                    .serve_with_incoming_shutdown(incoming, until_stopped)
                    .await
                {
                    tracing::error!(error = %Chain(&err), "health listener failed");
                }
            });
        }
        tasks.spawn(refresh_retention(
            self.retention,
            self.storage.clone(),
            self.health_check_interval,
            stopped.clone(),
        ));
        if let Some(schedule) = self.sweeper {
            tasks.spawn(sweep_periodically(
                self.storage.clone(),
                schedule,
                Arc::clone(&self.metrics),
                stopped.clone(),
            ));
        }
        if let Some(file) = self.access.tokens_file.clone() {
            tasks.spawn(reload_tokens(
                file,
                self.access.tokens.clone(),
                Arc::clone(&self.metrics),
                stopped.clone(),
            ));
        }
        if let Some((jwt, interval, min_interval)) = &self.access.jwt {
            tasks.spawn(refresh_keys(
                jwt.keys.clone(),
                *interval,
                *min_interval,
                stopped.clone(),
            ));
        }
        if let Some(tls) = &self.access.tls {
            tasks.spawn(reload_tls(
                tls.files.clone(),
                tls.reload_interval,
                tls.current.clone(),
                Arc::clone(&self.metrics),
                stopped.clone(),
            ));
        }
        if let Some((listener, addr)) = self.metrics_listener {
            tracing::info!(%addr, "serving metrics on /metrics");
            tasks.spawn(metrics::serve(
                listener,
                Arc::clone(&self.metrics),
                self.storage.clone(),
                stopped.clone(),
            ));
        }

        tracing::info!(
            addr = %self.local_addr,
            backend = ?self.storage.backend(),
            tls = self.access.tls.is_some(),
            authenticated_callers = !self.access.tokens.get().is_empty(),
            jwt = self.access.jwt.is_some(),
            "serving gRPC"
        );
        let limits = self.limits;
        let mut builder = Server::builder();
        if let Some((age, _grace)) = limits.max_connection_age {
            // GOAWAY at `age` (tonic); the socket is closed `grace` later (LimitedIncoming).
            // tonic's own max_connection_age_grace is not used: with it set, tonic 0.14.9
            // skips the GOAWAY and only cuts the connection at age + grace.
            builder = builder.max_connection_age(age);
        }
        if let Some((interval, timeout)) = limits.keepalive {
            builder = builder
                .http2_keepalive_interval(Some(interval))
                .http2_keepalive_timeout(Some(timeout));
        }
        let jwt = self.access.jwt.map(|(jwt, _, _)| jwt);
        let todo_service = tonic::service::interceptor::InterceptedService::new(
            TodoServiceServer::new(self.api).max_decoding_message_size(limits.max_request_bytes),
            RequestGuard::new(
                self.access.tokens,
                self.access.client_certs,
                jwt.clone(),
                limits.max_metadata_bytes,
                Arc::clone(&self.metrics),
            ),
        );
        let todo_service = FetchUnknownKeys::new(todo_service, jwt);
        let header_list_limit = u32::try_from(limits.max_metadata_bytes.saturating_mul(2))
            .unwrap_or(u32::MAX)
            .max(16 * 1024);
        let router = builder
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_header_list_size(header_list_limit)
            .layer(CallLayer::new(
                Arc::clone(&self.metrics),
                limits.request_timeout,
            ))
            .layer(tower::util::MapRequestLayer::new(limit_request_bodies(
                limits.max_request_bytes,
                limits.receive_timeout,
            )))
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(todo_service);
        let incoming = LimitedIncoming::new(
            self.listener,
            limits.max_connections,
            limits
                .max_connection_age
                .map(|(age, grace)| age.saturating_add(grace)),
            Arc::clone(&self.metrics),
        );
        let (go_away, gone_away) = tokio::sync::oneshot::channel::<()>();
        let stop_accepting = async {
            let _ = gone_away.await;
        };
        let serving: ServeFuture<'_> = match self.access.tls {
            Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                TlsIncoming::new(incoming, tls.current),
                stop_accepting,
            )),
            None => Box::pin(router.serve_with_incoming_shutdown(incoming, stop_accepting)),
        };
        let outcome = stop_in_order(serving, shutdown, abort, self.shutdown, drain, go_away).await;
        stop.send_replace(true);
        match outcome {
            Ok(Stopped::Cleanly) => {
                while tasks.join_next().await.is_some() {}
                self.storage.close().await;
            }
            // Calls still hold database connections: a background task may be waiting for
            // one, and closing the pool would wait for them all.
            Ok(Stopped::Abruptly) | Err(_) => tasks.shutdown().await,
        }
        tracing::info!("stopped");
        outcome.map(|_| ()).map_err(StartupError::from)
    }
}

/// The gRPC server's future, whichever listener it serves.
type ServeFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send + 'a>>;

/// How serving ended.
enum Stopped {
    /// Every call in flight finished.
    Cleanly,
    /// A second signal, or calls still in flight at `--shutdown-timeout`.
    Abruptly,
}

/// Serves until `shutdown`, then drains (readiness NOT_SERVING through `drain`, calls still
/// served for `plan.drain`), then stops accepting and sends GOAWAY (`go_away`), and waits for
/// the calls in flight for at most `plan.timeout`. `abort` ends either wait at once.
async fn stop_in_order(
    mut serving: ServeFuture<'_>,
    shutdown: impl Future<Output = ()> + Send,
    abort: impl Future<Output = ()> + Send,
    plan: ShutdownPlan,
    drain: watch::Sender<bool>,
    go_away: tokio::sync::oneshot::Sender<()>,
) -> Result<Stopped, tonic::transport::Error> {
    tokio::select! {
        served = &mut serving => return served.map(|()| Stopped::Cleanly),
        () = shutdown => {}
    }
    let mut abort = std::pin::pin!(abort);
    drain.send_replace(true);
    tracing::info!(
        drain_ms = plan.drain.as_millis(),
        "shutdown signal received; health NOT_SERVING, still serving new calls while draining"
    );
    tokio::select! {
        served = &mut serving => return served.map(|()| Stopped::Cleanly),
        () = tokio::time::sleep(plan.drain) => {}
        () = &mut abort => {
            tracing::warn!("second shutdown signal; stopping at once");
            return Ok(Stopped::Abruptly);
        }
    }
    tracing::info!("no longer accepting connections; GOAWAY sent, finishing calls in flight");
    let _ = go_away.send(());
    tokio::select! {
        served = &mut serving => served.map(|()| Stopped::Cleanly),
        () = tokio::time::sleep(plan.timeout) => {
            tracing::warn!(
                timeout_ms = plan.timeout.as_millis(),
                "calls still in flight at --shutdown-timeout; stopping anyway"
            );
            Ok(Stopped::Abruptly)
        }
        () = &mut abort => {
            tracing::warn!("second shutdown signal; stopping at once");
            Ok(Stopped::Abruptly)
        }
    }
}

/// Reflection describes TodoService, the health service, and the google.rpc error details
/// (so that grpcurl can decode ErrorInfo and BadRequest).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Reads the shared retention again every `interval` until `stop` (another replica may have
/// changed it).
async fn refresh_retention(
    retention: CurrentRetention,
    storage: Storage,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = Ticker::new(interval);
    while ticker.tick_unless_stopped(&mut stop).await {
        if let Err(err) = retention.refresh(&storage).await {
            tracing::warn!(error = %Chain(&err), "cannot read the idempotency retention");
        }
    }
}

/// Sweeps expired keys on `schedule` until `stop` turns true, recording each sweep.
async fn sweep_periodically(
    storage: Storage,
    schedule: SweeperSchedule,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = Ticker::new(schedule.interval);
    while ticker.tick_unless_stopped(&mut stop).await {
        let started = Instant::now();
        let result = tokio::select! {
            result = sweep_expired(&storage, schedule.settings) => result,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match result {
            Ok(report) => {
                metrics.record_sweep(report, started.elapsed());
                tracing::info!(
                    rows_deleted = report.rows_deleted,
                    batches = report.batches,
                    duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "idempotency keys swept"
                );
            }
            Err(err) => {
                tracing::warn!(error = %Chain(&err), "idempotency key sweep failed; will retry");
            }
        }
    }
}
