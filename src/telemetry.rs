//! Logging: `tracing` filtered by `RUST_LOG` (default `info`), as text or JSON lines. In JSON
//! each line carries timestamp, level, target, the message and fields, and the fields of the
//! current span (for RPCs: method, request_id, outcome, code, latency_ms, key_hash).
//!
//! `RUST_LOG` is a comma-separated list of `level` and `target=level` directives (for example
//! `warn,todo_service=debug`), read with `tracing_subscriber`'s `Targets` filter: the same
//! syntax as `EnvFilter` without its span and field filters, which would pull in a regex
//! engine (see the README's "Build time").

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogFormat;

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
    let filter = filter_from_env();
    let layer = match format {
        LogFormat::Text => fmt::layer().with_writer(sink).with_ansi(ansi).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(sink)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init()?;
    Ok(())
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
