//! Files the server re-reads while it runs, so that rotated credentials take effect without a
//! restart: the tokens file, and the TLS certificate, key and client CA (read together). Each
//! is re-read on SIGHUP and whenever its contents change (checked every
//! `--tokens-reload-interval` / `--tls-reload-interval`; a Kubernetes Secret volume swaps its
//! files by a symlink, which a read follows). A version that cannot be read or does not parse
//! is refused with a warning and `todo_config_reloads_total{file,result="rejected"}`, and the
//! last good one stays in force; calls in flight (and, for TLS, open connections) keep what
//! they started with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::{CallerTokens, CurrentTokens};
use crate::error::Chain;
use crate::metrics::{Metrics, Reload, ReloadedFile};
use crate::ticker::Ticker;
use crate::tls::{CurrentTls, TlsFiles};

/// Where the tokens file is and how often it is checked.
#[derive(Debug, Clone)]
pub struct TokensFile {
    /// `--tokens-file`.
    pub path: PathBuf,
    /// `--tokens-reload-interval`.
    pub interval: Duration,
}

/// Re-reads `file` on SIGHUP and when its contents change, until `stop`, putting each good
/// version in force in `current`.
pub async fn reload_tokens(
    file: TokensFile,
    current: CurrentTokens,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let path = file.path.clone();
    let apply = move |contents: &[Vec<u8>]| {
        let tokens = CallerTokens::from_file_contents(&contents[0], &path)
            .map_err(|err| Chain(&err).to_string())?;
        tracing::info!(path = %path.display(), callers = tokens.callers(), "tokens file re-read");
        current.replace(tokens);
        Ok(())
    };
    let watched = Watched {
        file: ReloadedFile::Tokens,
        paths: vec![file.path],
        interval: file.interval,
    };
    reread_on_change(watched, apply, metrics, stop).await;
}

/// Re-reads the TLS files on SIGHUP and when their contents change, every `interval`, until
/// `stop`, putting each good configuration in force for new connections.
pub async fn reload_tls(
    files: TlsFiles,
    interval: Duration,
    current: CurrentTls,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let watched = Watched {
        file: ReloadedFile::Tls,
        paths: files.paths(),
        interval,
    };
    let apply = move |contents: &[Vec<u8>]| {
        let config = files
            .configuration(contents)
            .map_err(|err| Chain(&err).to_string())?;
        tracing::info!(cert = %files.cert.display(), "TLS files re-read; new connections use them");
        current.replace(config);
        Ok(())
    };
    reread_on_change(watched, apply, metrics, stop).await;
}

/// Files read together, and how often they are checked.
struct Watched {
    /// Which, for the metric and the log lines.
    file: ReloadedFile,
    /// Their paths.
    paths: Vec<PathBuf>,
    /// How often they are read to see whether they changed.
    interval: Duration,
}

/// Reads `watched` on SIGHUP and every interval until `stop`, and hands contents that differ
/// from the last read (or any, on SIGHUP) to `apply`, which puts them in force or says why not.
async fn reread_on_change(
    watched: Watched,
    mut apply: impl FnMut(&[Vec<u8>]) -> Result<(), String>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut hangup = hangup_signal();
    // What was last read: the files as they were at start-up (already in force), or `None`
    // after a read that failed (so that a failure is reported once, not every interval).
    let mut last: Option<Vec<Vec<u8>>> = read_all(&watched.paths).await.ok();
    let mut ticker = Ticker::new(watched.interval);
    loop {
        let asked = tokio::select! {
            ticked = ticker.tick_unless_stopped(&mut stop) => {
                if !ticked {
                    return;
                }
                false
            }
            () = next_hangup(&mut hangup) => true,
        };
        let contents = match read_all(&watched.paths).await {
            Ok(contents) => contents,
            Err(err) => {
                if asked || last.is_some() {
                    tracing::warn!(
                        file = ?watched.file,
                        error = %err,
                        "cannot read the file; the last good version stays in force"
                    );
                    metrics.record_reload(Reload::Rejected(watched.file));
                }
                last = None;
                continue;
            }
        };
        if !asked && last.as_ref() == Some(&contents) {
            continue;
        }
        match apply(&contents) {
            Ok(()) => metrics.record_reload(Reload::Applied(watched.file)),
            Err(why) => {
                tracing::warn!(
                    file = ?watched.file,
                    error = %why,
                    "file refused; the last good version stays in force"
                );
                metrics.record_reload(Reload::Rejected(watched.file));
            }
        }
        last = Some(contents);
    }
}

/// The contents of every path, or the first error (naming its path).
async fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    let mut contents = Vec::with_capacity(paths.len());
    for path in paths {
        let read = tokio::fs::read(path)
            .await
            .map_err(|err| format!("{}: {err}", path.display()))?;
        contents.push(read);
    }
    Ok(contents)
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; files are still checked on schedule");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

/// The next SIGHUP (never, without one).
async fn next_hangup(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup
        && signal.recv().await.is_some()
    {
        return;
    }
    #[cfg(not(unix))]
    let _ = hangup;
    std::future::pending::<()>().await;
}
