//! Logging: `tracing` with an `EnvFilter` (`RUST_LOG`, default `info`).

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber writing to `sink` (with colours only when `ansi`). Returns
/// an error if one is already set.
pub fn init<W>(sink: W, ansi: bool) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_ansi(ansi)
        .try_init()
}
