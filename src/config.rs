//! Configuration: every setting is a command-line flag and an environment variable, and
//! `todo-server --help` is the reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, Args, Parser, Subcommand};

use crate::auth::ClientCertIdentity;
use crate::auth::jwks::{JwksSettings, JwksSource};
use crate::auth::jwt::JwtRules;
use crate::idempotency::{Retention, SweepSettings};
use crate::storage::{DatabaseSettings, Isolation};
use crate::telemetry::LogFormat;

/// The command line: an optional subcommand (default `serve`) and the configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "todo-server",
    version,
    about = "TodoService: a gRPC TODO service whose every write is safe to retry"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Serve gRPC until SIGINT or SIGTERM (the default).
    Serve,
    /// Delete the expired idempotency keys once, in batches, then exit (for a cron job; see
    /// also --sweep-enabled).
    Sweep,
    /// Read a bearer token from standard input and print its SHA-256, as the tokens file
    /// wants it.
    HashToken,
    /// Migrate the database and exit (for a job or an init container before a rollout; the
    /// servers then start with --run-migrations false). Concurrent runs are safe: one migrates,
    /// the others wait for it and find nothing left to do.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
}

/// What `todo-server migrate` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// List the migrations of this build and whether each is applied (exit 0 if all are, 3 if
    /// some are pending).
    Status,
    /// Revert the last applied migrations: this drops tables and the data in them.
    Down {
        /// How many migrations to revert.
        #[arg(long, default_value_t = 1)]
        steps: u32,
        /// Required: says that dropping the reverted migrations' data is meant.
        #[arg(long, default_value_t = false)]
        allow_data_loss: bool,
    },
}

/// `--idempotency-retention`: a duration (`humantime`) of at least the floor.
fn parse_retention(text: &str) -> Result<Retention, String> {
    let duration = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    Retention::new(duration)
}

/// `--log-format`: `text` or `json`, onto telemetry's type.
fn log_format() -> impl TypedValueParser<Value = LogFormat> {
    PossibleValuesParser::new(["text", "json"]).map(|name| match name.as_str() {
        "json" => LogFormat::Json,
        _ => LogFormat::Text,
    })
}

/// `--client-cert-identity`: `none` or `uri-san`, onto auth's type.
fn client_cert_identity() -> impl TypedValueParser<Value = ClientCertIdentity> {
    PossibleValuesParser::new(["none", "uri-san"]).map(|name| match name.as_str() {
        "uri-san" => ClientCertIdentity::UriSan,
        _ => ClientCertIdentity::Off,
    })
}

/// `--db-isolation`: `read-committed` or `serializable`, onto storage's type.
fn isolation() -> impl TypedValueParser<Value = Isolation> {
    PossibleValuesParser::new(["read-committed", "serializable"]).map(|name| match name.as_str() {
        "serializable" => Isolation::Serializable,
        _ => Isolation::ReadCommitted,
    })
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to serve gRPC on (plaintext HTTP/2). Port 0 picks a free port.
    #[arg(
        long,
        env = "TODO_LISTEN_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen_addr: SocketAddr,

    /// Database URL: `sqlite:<file>` (created if missing) or `postgres://user@host:port/db`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite:todo.db",
        global = true
    )]
    pub database_url: String,

    /// How long an idempotency key is remembered (e.g. `24h`, `90m`; at least `1m`). A key
    /// older than this behaves as new. ONE value for the whole key table, stored in the
    /// database: the first server stores it (default 24h); later servers use the stored value,
    /// and one given another value refuses to start unless --change-idempotency-retention.
    #[arg(long, env = "TODO_IDEMPOTENCY_RETENTION", value_parser = parse_retention, global = true)]
    pub idempotency_retention: Option<Retention>,

    /// Store --idempotency-retention as the retention of every replica on this database (they
    /// pick it up within their --health-check-interval). After a shortening the sweeper keeps
    /// the old value for as long as the old value.
    #[arg(long, env = "TODO_CHANGE_IDEMPOTENCY_RETENTION", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", requires = "idempotency_retention", global = true)]
    pub change_idempotency_retention: bool,

    /// Most database connections in the pool (on SQLite: readers; writes use one connection).
    #[arg(long, env = "TODO_DB_POOL_SIZE", default_value_t = 10, global = true)]
    pub db_pool_size: u32,

    /// Longest wait to connect to the database, to get a pooled connection, and (PostgreSQL)
    /// for one statement. Past it the RPC fails with UNAVAILABLE.
    #[arg(long, env = "TODO_DB_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub db_timeout: Duration,

    /// Export traces over OTLP/gRPC to this collector endpoint (e.g. `http://127.0.0.1:4317`:
    /// an OpenTelemetry Collector, Jaeger or Tempo). Unset: no spans are exported, at no cost.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,

    /// Isolation of every PostgreSQL transaction: `read-committed` (PostgreSQL's default) or
    /// `serializable` (as distributed SQL engines run; conflicts are retried in the server).
    /// SQLite is always serializable.
    #[arg(
        long,
        env = "TODO_DB_ISOLATION",
        value_parser = isolation(),
        default_value = "read-committed",
        global = true
    )]
    pub db_isolation: Isolation,

    /// Apply pending database migrations at start-up (`true` or `false`).
    #[arg(long, env = "TODO_RUN_MIGRATIONS", default_value_t = true, action = ArgAction::Set, global = true)]
    pub run_migrations: bool,

    /// How often the health service checks that the database answers.
    #[arg(long, env = "TODO_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub health_check_interval: Duration,

    /// Run the expired-key sweeper inside the server (`true` or `false`; with `false`, run
    /// `todo-server sweep` from cron instead).
    #[arg(long, env = "TODO_SWEEP_ENABLED", default_value_t = true, action = ArgAction::Set, global = true)]
    pub sweep_enabled: bool,

    /// How often the in-process sweeper runs.
    #[arg(long, env = "TODO_SWEEP_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub sweep_interval: Duration,

    /// Most expired keys one sweep batch (one DELETE) removes.
    #[arg(
        long,
        env = "TODO_SWEEP_BATCH_SIZE",
        default_value_t = 10_000,
        global = true
    )]
    pub sweep_batch_size: u64,

    /// Pause between two sweep batches, so a sweep never starves RPCs.
    #[arg(long, env = "TODO_SWEEP_BATCH_PAUSE", default_value = "100ms", value_parser = humantime::parse_duration, global = true)]
    pub sweep_batch_pause: Duration,

    /// Serve Prometheus metrics on `--metrics-listen-addr` (`true` or `false`).
    #[arg(long, env = "TODO_METRICS_ENABLED", default_value_t = true, action = ArgAction::Set, global = true)]
    pub metrics_enabled: bool,

    /// Address of the HTTP endpoint `GET /metrics` (Prometheus text format).
    #[arg(
        long,
        env = "TODO_METRICS_LISTEN_ADDR",
        default_value = "127.0.0.1:9464",
        global = true
    )]
    pub metrics_listen_addr: SocketAddr,

    /// Log format: `text` or `json` (one object per line). `RUST_LOG` sets the filter.
    #[arg(long, env = "TODO_LOG_FORMAT", value_parser = log_format(), default_value = "text", global = true)]
    pub log_format: LogFormat,

    /// File of callers and the SHA-256 of their bearer tokens (`<caller-id> <sha256-hex>` per
    /// line; a caller may have several lines, so old and new tokens overlap). With it, every
    /// TodoService call needs `authorization: Bearer <token>`; without it, every caller is
    /// "anonymous". Re-read on SIGHUP and when it changes (--tokens-reload-interval); a version
    /// that does not parse is refused and the last good one stays in force.
    #[arg(long, env = "TODO_TOKENS_FILE", global = true)]
    pub tokens_file: Option<PathBuf>,

    /// How often the tokens file is checked for changes.
    #[arg(long, env = "TODO_TOKENS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub tokens_reload_interval: Duration,

    /// Allow serving anonymous callers (no --tokens-file) on a non-loopback address. Without
    /// it the server refuses to start that way.
    #[arg(long, env = "TODO_ALLOW_ANONYMOUS_NON_LOOPBACK", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", global = true)]
    pub allow_anonymous_non_loopback: bool,

    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = "TODO_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "TODO_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): require client certificates signed by it (mutual TLS).
    #[arg(long, env = "TODO_TLS_CLIENT_CA", requires = "tls_cert", global = true)]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files (--tls-cert, --tls-key, --tls-client-ca) are checked for
    /// changes; they are also re-read on SIGHUP. A renewed certificate serves new connections.
    #[arg(long, env = "TODO_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub tls_reload_interval: Duration,

    /// `uri-san`: a call without a bearer token is the caller its client certificate names in
    /// its one URI SAN (a SPIFFE ID from Istio, Linkerd or SPIRE); a certificate with none or
    /// several is refused. `none`: the certificate only gates the connection.
    #[arg(long, env = "TODO_CLIENT_CERT_IDENTITY", value_parser = client_cert_identity(), default_value = "none", global = true)]
    pub client_cert_identity: ClientCertIdentity,

    /// Accept JWT bearer tokens from this issuer: a token's `iss` must equal it. Needs
    /// --jwt-audience and --jwt-jwks. A bearer token with a JWT's shape is judged as a JWT;
    /// any other as a static token of --tokens-file.
    #[arg(long, env = "TODO_JWT_ISSUER", requires_all = ["jwt_audience", "jwt_jwks"], global = true)]
    pub jwt_issuer: Option<String>,

    /// The audience JWTs must be meant for: `aud` must be or contain it (for a Kubernetes
    /// projected service-account token, the `audience` of its volume projection).
    #[arg(
        long,
        env = "TODO_JWT_AUDIENCE",
        requires = "jwt_issuer",
        global = true
    )]
    pub jwt_audience: Option<String>,

    /// The issuer's JSON Web Key Set: an `https://` (or `http://`) URL, or a file. Fetched at
    /// start-up, on --jwt-jwks-refresh-interval, and when a token names an unknown `kid`.
    #[arg(long, env = "TODO_JWT_JWKS", value_parser = JwksSource::parse, requires = "jwt_issuer", global = true)]
    pub jwt_jwks: Option<JwksSource>,

    /// The JWT claim whose value is the caller id.
    #[arg(
        long,
        env = "TODO_JWT_CALLER_CLAIM",
        default_value = "sub",
        global = true
    )]
    pub jwt_caller_claim: String,

    /// How often the JWKS is fetched again.
    #[arg(long, env = "TODO_JWT_JWKS_REFRESH_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub jwt_jwks_refresh_interval: Duration,

    /// Least time between two fetches of the JWKS caused by tokens with unknown `kid`s (so that
    /// made-up kids cannot flood the issuer).
    #[arg(long, env = "TODO_JWT_JWKS_MIN_REFRESH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub jwt_jwks_min_refresh_interval: Duration,

    /// PEM CA bundle trusted for an `https://` JWKS, besides the public web roots (e.g. a
    /// cluster's `ca.crt`).
    #[arg(long, env = "TODO_JWT_JWKS_CA", requires = "jwt_jwks", global = true)]
    pub jwt_jwks_ca: Option<PathBuf>,

    /// File whose contents are sent as `Authorization: Bearer` when fetching the JWKS (a
    /// Kubernetes API server may ask for the pod's own service-account token), re-read at each
    /// fetch.
    #[arg(
        long,
        env = "TODO_JWT_JWKS_TOKEN_FILE",
        requires = "jwt_jwks",
        global = true
    )]
    pub jwt_jwks_token_file: Option<PathBuf>,

    /// Largest request message accepted, in bytes; larger is RESOURCE_EXHAUSTED.
    #[arg(long, env = "TODO_MAX_REQUEST_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_request_bytes: usize,

    /// Largest request metadata (headers) accepted, in bytes as HTTP/2 counts them; larger is
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "TODO_MAX_METADATA_BYTES", default_value_t = 8 * 1024, global = true)]
    pub max_metadata_bytes: usize,

    /// Longest a call may run before it fails with DEADLINE_EXCEEDED (and rolls back).
    #[arg(long, env = "TODO_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub request_timeout: Duration,

    /// Most calls open at once on one connection, advertised to clients as HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS (clients queue further calls on their side; a stream
    /// beyond it is refused with REFUSED_STREAM, never queued by the server). With
    /// --max-connections it bounds the streams, and so the memory, a server holds (about 28 KiB
    /// per stream waiting for its message). hyper and tonic clients assume 100 until they have
    /// the server's SETTINGS: below that, calls a fresh connection sends at once are refused.
    #[arg(
        long,
        env = "TODO_MAX_CONCURRENT_CALLS_PER_CONNECTION",
        default_value_t = 100,
        global = true
    )]
    pub max_concurrent_calls_per_connection: u32,

    /// Longest a call may take to send its request message once its headers have arrived
    /// (the shorter of this and --request-timeout applies); then DEADLINE_EXCEEDED. Ends
    /// streams that never send their body.
    #[arg(long, env = "TODO_RECEIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub receive_timeout: Duration,

    /// Most client connections open at once; a connection beyond it is closed as soon as it
    /// is accepted.
    #[arg(
        long,
        env = "TODO_MAX_CONNECTIONS",
        default_value_t = 512,
        global = true
    )]
    pub max_connections: usize,

    /// After SIGTERM or SIGINT: how long to go on serving new calls while the health service
    /// already answers NOT_SERVING, so that load balancers and Kubernetes stop sending here
    /// first (endpoints are withdrawn seconds after a pod is told to stop). Then GOAWAY.
    #[arg(long, env = "TODO_SHUTDOWN_DRAIN", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_drain: Duration,

    /// After the drain: longest wait for the calls in flight to finish before the server
    /// exits anyway (a second SIGTERM or SIGINT exits at once).
    #[arg(long, env = "TODO_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_timeout: Duration,

    /// Age after which a client connection is sent GOAWAY (its calls in flight finish, the
    /// client opens a new connection, possibly to another replica), so that connections
    /// balanced once at connect time spread to new replicas. Off unless set (e.g. `5m`).
    #[arg(long, env = "TODO_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration, global = true)]
    pub max_connection_age: Option<Duration>,

    /// With --max-connection-age: how long a connection may go on after its GOAWAY before it
    /// is closed, calls still in flight or not.
    #[arg(long, env = "TODO_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub max_connection_age_grace: Duration,

    /// How often the server pings an idle client connection (HTTP/2 PING) to find peers that
    /// are gone without a FIN (a crashed node, a NAT that forgot the flow). `0s`: never.
    #[arg(long, env = "TODO_HTTP2_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub http2_keepalive_interval: Duration,

    /// How long the server waits for the answer to its PING before it closes the connection.
    #[arg(long, env = "TODO_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub http2_keepalive_timeout: Duration,

    /// Also serve the health service (and nothing else) here, in plaintext, for probes that
    /// cannot present a client certificate or do TLS (the kubelet's gRPC probe). Port 0 picks
    /// a free port.
    #[arg(long, env = "TODO_HEALTH_LISTEN_ADDR", global = true)]
    pub health_listen_addr: Option<SocketAddr>,
}

impl Config {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            pool_size: self.db_pool_size,
            timeout: self.db_timeout,
            isolation: self.db_isolation,
        }
    }

    pub fn sweep(&self) -> SweepSettings {
        SweepSettings {
            batch_size: self.sweep_batch_size,
            batch_pause: self.sweep_batch_pause,
        }
    }

    /// The JWT rules and JWKS settings, if `--jwt-issuer` is set.
    pub fn jwt(&self) -> Option<(JwtRules, JwksSettings)> {
        let (Some(issuer), Some(audience), Some(source)) =
            (&self.jwt_issuer, &self.jwt_audience, &self.jwt_jwks)
        else {
            return None;
        };
        let rules = JwtRules {
            issuer: issuer.clone(),
            audience: audience.clone(),
            caller_claim: self.jwt_caller_claim.clone(),
        };
        let settings = JwksSettings {
            source: source.clone(),
            ca_file: self.jwt_jwks_ca.clone(),
            token_file: self.jwt_jwks_token_file.clone(),
            refresh_interval: self.jwt_jwks_refresh_interval,
            min_refresh_interval: self.jwt_jwks_min_refresh_interval,
        };
        Some((rules, settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["todo-server"]).unwrap();
        assert_eq!(cli.command, None);
        let config = cli.config;
        assert_eq!(config.listen_addr, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(
            config.idempotency_retention, None,
            "the stored value, else 24h"
        );
        assert!(!config.change_idempotency_retention);
        assert!(config.run_migrations);
        assert_eq!(config.sweep_batch_size, 10_000);
        assert_eq!(config.sweep_interval, Duration::from_secs(300));
        assert_eq!(
            config.metrics_listen_addr,
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.tokens_file, None);
        assert!(!config.allow_anonymous_non_loopback);
        assert_eq!(config.max_request_bytes, 65_536);
        assert_eq!(config.shutdown_drain, Duration::from_secs(5));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(20));
        assert_eq!(config.max_connection_age, None);
        assert_eq!(config.health_listen_addr, None);
    }

    #[test]
    fn a_retention_under_one_minute_is_refused() {
        for value in ["0s", "59s", "500ms"] {
            let err = Cli::try_parse_from(["todo-server", "--idempotency-retention", value])
                .expect_err(value);
            assert!(err.to_string().contains("at least 1m"), "{value}: {err}");
        }
        assert!(Cli::try_parse_from(["todo-server", "--idempotency-retention", "1m"]).is_ok());
        assert!(
            Cli::try_parse_from(["todo-server", "--change-idempotency-retention"]).is_err(),
            "a change needs a value"
        );
    }

    #[test]
    fn tls_key_without_cert_is_refused() {
        assert!(Cli::try_parse_from(["todo-server", "--tls-key", "k.pem"]).is_err());
        assert!(
            Cli::try_parse_from(["todo-server", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
                .is_ok()
        );
    }

    #[test]
    fn certificate_identity_needs_a_client_ca() {
        let cli = Cli::try_parse_from(["todo-server"]).unwrap();
        assert_eq!(cli.config.client_cert_identity, ClientCertIdentity::Off);
        let with_ca = [
            "todo-server",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-client-ca",
            "ca.pem",
            "--client-cert-identity",
            "uri-san",
        ];
        let cli = Cli::try_parse_from(with_ca).unwrap();
        assert_eq!(cli.config.client_cert_identity, ClientCertIdentity::UriSan);
    }

    #[test]
    fn allow_flag_works_bare() {
        let cli = Cli::try_parse_from(["todo-server", "--allow-anonymous-non-loopback"]).unwrap();
        assert!(cli.config.allow_anonymous_non_loopback);
    }

    #[test]
    fn flags_override_defaults_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "todo-server",
            "--listen-addr",
            "127.0.0.1:0",
            "sweep",
            "--idempotency-retention",
            "90m",
            "--run-migrations",
            "false",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.command, Some(Command::Sweep));
        assert_eq!(cli.config.listen_addr.port(), 0);
        assert_eq!(
            cli.config.idempotency_retention,
            Some(Retention::new(Duration::from_secs(90 * 60)).unwrap())
        );
        assert!(!cli.config.run_migrations);
        assert_eq!(cli.config.log_format, LogFormat::Json);
    }

    #[test]
    fn migrate_takes_an_action_and_down_a_flag() {
        let cli = Cli::try_parse_from(["todo-server", "migrate", "up"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Migrate {
                action: MigrateAction::Up
            })
        );
        let cli = Cli::try_parse_from(["todo-server", "migrate", "down", "--steps", "2"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Migrate {
                action: MigrateAction::Down {
                    steps: 2,
                    allow_data_loss: false
                }
            })
        );
        assert!(Cli::try_parse_from(["todo-server", "migrate"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
