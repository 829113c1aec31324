//! Logging: `tracing` filtered by `RUST_LOG` (default `info`), as text or JSON lines. In JSON
//! each line carries timestamp, level, target, the message and fields, and the fields of the
//! current span (for RPCs: method, request_id, outcome, code, latency_ms, key_hash).
//!
//! `RUST_LOG` is a comma-separated list of `level` and `target=level` directives (for example
//! `warn,todo_service=debug`), read with `tracing_subscriber`'s `Targets` filter: the same
//! syntax as `EnvFilter` without its span and field filters, which would pull in a regex
//! engine (see the README's "Build time").
//!
//! Distributed tracing: with an OTLP endpoint, the spans of this crate (one server span per
//! RPC, one client span per database statement) are also exported over OTLP/gRPC, whatever
//! `RUST_LOG` says, and each RPC's span continues the caller's W3C `traceparent`. Without
//! one, no OpenTelemetry layer is installed and no statement span is even created.
//!
//! The server writes its lines from a thread of its own, several at a time ([`LogThread`]).

mod json;
mod writer;

pub use writer::{LineWriter, LogThread};

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The `service.name` of exported spans.
const SERVICE_NAME: &str = "todo-service";

/// Whether spans are exported (set once, by [`init`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported over OTLP: when not, tracing-only work (statement spans, the
/// trace context) is skipped.
pub fn exporting_traces() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The OpenTelemetry context a caller sent in its request headers (W3C `traceparent` and
/// `tracestate`); an empty context when it sent none or an invalid one.
pub fn remote_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

struct HeaderExtractor<'h>(&'h http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Flushes and stops the span exporter when the server stops (nothing to do without one).
#[derive(Debug, Default)]
pub struct Telemetry {
    /// The exporting tracer provider, when `--otlp-endpoint` is set.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("cannot flush the trace exporter: {err}");
        }
    }
}

/// The filter `RUST_LOG` asks for; `info` when it is unset, and `info` with a warning on
/// standard error when it does not parse.
fn filter_from_env() -> Targets {
    let Ok(directives) = std::env::var("RUST_LOG") else {
        return Targets::new().with_default(LevelFilter::INFO);
    };
    directives.parse().unwrap_or_else(|err| {
        eprintln!("RUST_LOG={directives:?} is not a valid filter ({err}); logging at info");
        Targets::new().with_default(LevelFilter::INFO)
    })
}

/// Installs the global subscriber writing to `sink` (text with colours only when `ansi`), and
/// with `otlp_endpoint` (e.g. `http://127.0.0.1:4317`) an OpenTelemetry layer exporting this
/// crate's spans there. Must run inside the Tokio runtime (the exporter's channel lives on it).
/// Returns an error if a subscriber is already set or the exporter cannot be built.
pub fn init<W>(
    sink: W,
    format: LogFormat,
    ansi: bool,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, Box<dyn std::error::Error + Send + Sync>>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter_from_env();
    let layer = match format {
        LogFormat::Text => fmt::layer().with_writer(sink).with_ansi(ansi).boxed(),
        LogFormat::Json => fmt::layer()
            .fmt_fields(json::JsonFragment)
            .event_format(json::JsonLines)
            .with_writer(sink)
            .boxed(),
    };
    let provider = match otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint)?),
        None => None,
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE_NAME))
            .with_filter(Targets::new().with_target("todo_service", Level::INFO))
    });
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .with(otel)
        .try_init()?;
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}

fn tracer_provider(
    endpoint: &str,
) -> Result<SdkTracerProvider, Box<dyn std::error::Error + Send + Sync>> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build())
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn rust_log_directives_parse_into_targets() {
        let targets: Targets = "warn,todo_service::startup=info".parse().unwrap();
        assert!(targets.would_enable("todo_service::startup", &Level::INFO));
        assert!(!targets.would_enable("todo_service::grpc", &Level::INFO));
        assert!(targets.would_enable("sqlx", &Level::WARN));
    }
}
