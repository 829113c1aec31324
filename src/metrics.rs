//! Prometheus metrics. Each `Application` has its own registry (no global state), served as
//! text on `GET /metrics` at `--metrics-listen-addr`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::AuthError;
use crate::idempotency::SweepReport;
use crate::storage::{GroupCommitCounts, RetryCounts, Storage};

/// How an idempotent request (a write carrying, or trying to carry, a key) was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotentOutcome {
    Fresh,
    Replayed,
    Mismatch,
    InvalidKey,
}

impl IdempotentOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Replayed => "replayed",
            Self::Mismatch => "mismatch",
            Self::InvalidKey => "invalid_key",
        }
    }
}

/// Why a call, or a connection, was refused before any handler ran
/// (`todo_rejected_requests_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Request metadata over `--max-metadata-bytes`.
    MetadataTooLarge,
    /// No valid credential while callers are configured.
    Unauthenticated,
    /// A connection beyond `--max-connections`.
    TooManyConnections,
}

impl Rejection {
    fn as_str(self) -> &'static str {
        match self {
            Self::MetadataTooLarge => "metadata_too_large",
            Self::Unauthenticated => "unauthenticated",
            Self::TooManyConnections => "too_many_connections",
        }
    }
}

/// A configuration file re-read while the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadedFile {
    /// `--tokens-file`.
    Tokens,
    /// `--jwt-jwks` (a file or a URL).
    Jwks,
    /// `--tls-cert`, `--tls-key` and `--tls-client-ca`, read together.
    Tls,
}

/// How a re-read went (`todo_config_reloads_total{file, result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Read and put in force.
    Applied(ReloadedFile),
    /// Could not be read, or did not parse: the last good version stays in force.
    Rejected(ReloadedFile),
}

impl Reload {
    fn labels(self) -> ReloadLabels {
        let (file, result) = match self {
            Self::Applied(file) => (file, "applied"),
            Self::Rejected(file) => (file, "rejected"),
        };
        let file = match file {
            ReloadedFile::Tokens => "tokens",
            ReloadedFile::Jwks => "jwks",
            ReloadedFile::Tls => "tls",
        };
        ReloadLabels { file, result }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    file: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdempotentLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~4 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// The service's metrics: one registry per `Application`, shared by its handlers and tasks.
pub struct Metrics {
    /// Every metric below, registered under its Prometheus name.
    registry: Registry,
    /// `todo_idempotent_requests_total{method, outcome}`.
    idempotent_requests: Family<IdempotentLabels, Counter>,
    /// `todo_grpc_requests_total{method, code}`.
    grpc_requests: Family<GrpcLabels, Counter>,
    /// `todo_grpc_request_duration_seconds{method}`.
    grpc_latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// `todo_rejected_requests_total{reason}`.
    rejected_requests: Family<ReasonLabels, Counter>,
    /// `todo_config_reloads_total{file, result}`.
    config_reloads: Family<ReloadLabels, Counter>,
    /// `todo_auth_failures_total{reason}`.
    auth_failures: Family<ReasonLabels, Counter>,
    /// `todo_idempotency_keys_swept_total`.
    swept_rows: Counter,
    /// `todo_idempotency_sweeps_total`.
    sweeps: Counter,
    /// `todo_idempotency_sweep_duration_seconds`.
    sweep_duration: Histogram,
    /// `todo_db_pool_connections{pool, state}`, read at each scrape.
    pool_connections: Family<PoolLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let idempotent_requests = Family::<IdempotentLabels, Counter>::default();
        registry.register(
            "todo_idempotent_requests",
            "Write calls that carried an idempotency-key, by method and outcome (fresh, replayed, mismatch, invalid_key)",
            idempotent_requests.clone(),
        );
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "todo_grpc_requests",
            "TodoService calls by method and gRPC status code",
            grpc_requests.clone(),
        );
        let grpc_latency: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "todo_grpc_request_duration_seconds",
            "TodoService call latency in seconds, by method",
            grpc_latency.clone(),
        );
        let rejected_requests = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "todo_rejected_requests",
            "TodoService calls refused before they ran, by reason (unauthenticated, metadata_too_large)",
            rejected_requests.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "todo_auth_failures",
            "TodoService calls refused as UNAUTHENTICATED, by what was wrong with the credential",
            auth_failures.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "todo_config_reloads",
            "Configuration files re-read while serving, by file and result (applied; rejected: \
             the last good one stays in force)",
            config_reloads.clone(),
        );
        let swept_rows = Counter::default();
        registry.register(
            "todo_idempotency_keys_swept",
            "Expired idempotency keys deleted by the sweeper",
            swept_rows.clone(),
        );
        let sweeps = Counter::default();
        registry.register(
            "todo_idempotency_sweeps",
            "Sweeps of expired idempotency keys completed",
            sweeps.clone(),
        );
        let sweep_duration = Histogram::new(exponential_buckets(0.001, 4.0, 10));
        registry.register(
            "todo_idempotency_sweep_duration_seconds",
            "Duration of one sweep of expired idempotency keys, in seconds",
            sweep_duration.clone(),
        );
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "todo_db_pool_connections",
            "Database pool connections by pool and state (in_use, idle)",
            pool_connections.clone(),
        );
        Self {
            registry,
            idempotent_requests,
            grpc_requests,
            grpc_latency,
            rejected_requests,
            config_reloads,
            auth_failures,
            swept_rows,
            sweeps,
            sweep_duration,
            pool_connections,
        }
    }

    /// Exposes storage's retry counts as `todo_db_retries_total{reason}`, read at each scrape.
    pub fn register_db_retries(&mut self, counts: Arc<RetryCounts>) {
        self.registry
            .register_collector(Box::new(DbRetries(counts)));
    }

    /// SQLite: `todo_sqlite_group_commits_total` and `todo_sqlite_group_commit_writes_total`,
    /// read from storage's counters when scraped.
    pub fn register_group_commit(&mut self, counts: Arc<GroupCommitCounts>) {
        self.registry
            .register_collector(Box::new(GroupCommits(counts)));
    }

    pub fn record_rpc(&self, method: &'static str, code: tonic::Code, latency: Duration) {
        self.grpc_requests
            .get_or_create(&GrpcLabels {
                method,
                code: code_name(code),
            })
            .inc();
        self.grpc_latency
            .get_or_create(&MethodLabels { method })
            .observe(latency.as_secs_f64());
    }

    pub fn record_idempotent(&self, method: &'static str, outcome: IdempotentOutcome) {
        self.idempotent_requests
            .get_or_create(&IdempotentLabels {
                method,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A call the request guard refused before any handler ran.
    pub fn record_rejected(&self, rejection: Rejection) {
        self.rejected_requests
            .get_or_create(&ReasonLabels {
                reason: rejection.as_str(),
            })
            .inc();
    }

    /// A call refused as UNAUTHENTICATED, and why.
    pub fn record_auth_failure(&self, error: AuthError) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                reason: error.label(),
            })
            .inc();
    }

    /// A configuration file re-read (or refused) while serving.
    pub fn record_reload(&self, reload: Reload) {
        self.config_reloads.get_or_create(&reload.labels()).inc();
    }

    pub fn record_sweep(&self, report: SweepReport, duration: Duration) {
        self.swept_rows.inc_by(report.rows_deleted);
        self.sweeps.inc();
        self.sweep_duration.observe(duration.as_secs_f64());
    }

    /// The metrics in the text exposition format, with pool gauges read now.
    pub fn render(&self, storage: &Storage) -> String {
        for (pool, size, idle) in storage.pool_stats() {
            let idle = i64::try_from(idle).unwrap_or(i64::MAX);
            let in_use = i64::from(size) - idle;
            self.pool_connections
                .get_or_create(&PoolLabels {
                    pool,
                    state: "in_use",
                })
                .set(in_use.max(0));
            self.pool_connections
                .get_or_create(&PoolLabels {
                    pool,
                    state: "idle",
                })
                .set(idle);
        }
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        text
    }
}

/// `todo_db_retries_total{reason}`: the database work storage ran again because it committed
/// nothing (its own counters, read when scraped).
#[derive(Debug)]
struct DbRetries(Arc<RetryCounts>);

impl Collector for DbRetries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "todo_db_retries",
            "Database work run again by the server because it committed nothing, by reason \
             (serialization_conflict: SQLSTATE 40001/40P01; session_ended: 57P01/57P02; \
             read_only_server: 25006, a standby or a demoted primary)",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in [
            ("serialization_conflict", &self.0.serialization_conflicts),
            ("session_ended", &self.0.sessions_ended),
            ("read_only_server", &self.0.read_only_servers),
        ] {
            let labels = ReasonLabels { reason };
            ConstCounter::new(count.load(Ordering::Relaxed))
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// SQLite group commit: transactions committed, and the writes they held.
#[derive(Debug)]
struct GroupCommits(Arc<GroupCommitCounts>);

impl Collector for GroupCommits {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, count) in [
            (
                "todo_sqlite_group_commits",
                "SQLite write transactions committed by group commit",
                &self.0.commits,
            ),
            (
                "todo_sqlite_group_commit_writes",
                "Single-statement writes committed by group commit (writes / commits is the \
                 mean batch)",
                &self.0.writes,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(count.load(Ordering::Relaxed)).encode(metric)?;
        }
        Ok(())
    }
}

/// Serves `GET /metrics` in the Prometheus text format on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    storage: Storage,
    mut stop: watch::Receiver<bool>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                metrics.render(&storage),
            )
        }),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await;
    if let Err(err) = served {
        tracing::error!(error = %err, "metrics endpoint failed");
    }
}

/// The canonical upper-case name of a gRPC status code (`OK`, `INVALID_ARGUMENT`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_appear_in_the_text_format_with_prometheus_names() {
        let metrics = Metrics::new();
        metrics.record_idempotent("CreateTodo", IdempotentOutcome::Replayed);
        metrics.record_rpc("CreateTodo", tonic::Code::Ok, Duration::from_millis(3));
        metrics.record_rejected(Rejection::Unauthenticated);
        metrics.record_sweep(
            SweepReport {
                rows_deleted: 7,
                batches: 1,
            },
            Duration::from_millis(10),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        assert!(text.contains(
            "todo_idempotent_requests_total{method=\"CreateTodo\",outcome=\"replayed\"} 1"
        ));
        assert!(text.contains("todo_grpc_requests_total{method=\"CreateTodo\",code=\"OK\"} 1"));
        assert!(text.contains("todo_grpc_request_duration_seconds_count{method=\"CreateTodo\"} 1"));
        assert!(text.contains("todo_idempotency_keys_swept_total 7"));
        assert!(text.contains("todo_rejected_requests_total{reason=\"unauthenticated\"} 1"));
        assert!(text.contains("todo_idempotency_sweeps_total 1"));
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(
            code_name(tonic::Code::FailedPrecondition),
            "FAILED_PRECONDITION"
        );
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }
}
