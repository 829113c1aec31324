//! Logging: `tracing` with an `EnvFilter` (`RUST_LOG`, default `info`), as text or JSON lines.
//! In JSON each line carries timestamp, level, target, the message and fields, and the fields
//! of the current span (for RPCs: method, request_id, outcome, code, latency_ms, key_hash).

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber writing to `sink` (text with colours only when `ansi`).
/// Returns an error if one is already set.
pub fn init<W>(
    sink: W,
    format: LogFormat,
    ansi: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Text => fmt()
            .with_env_filter(filter)
            .with_writer(sink)
            .with_ansi(ansi)
            .try_init(),
        LogFormat::Json => fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(sink)
            .try_init(),
    }
}
