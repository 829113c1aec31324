//! Files the server re-reads while it runs, so that rotated credentials take effect without a
//! restart: the tokens file, on SIGHUP and whenever its contents change (checked every
//! `--tokens-reload-interval`; a Kubernetes Secret volume swaps its files by a symlink, which a
//! read follows). A file that no longer parses (or names no caller) is refused with a warning
//! and `todo_config_reloads_total{file="tokens",result="rejected"}`, and the last good one stays
//! in force; calls in flight keep the set they started with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::{CallerTokens, CurrentTokens};
use crate::error::Chain;
use crate::metrics::{Metrics, Reload, ReloadedFile};
use crate::ticker::Ticker;

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
    mut stop: watch::Receiver<bool>,
) {
    let mut hangup = hangup_signal();
    // What was last read: the file as it was at start-up (already in force), or `None` after a
    // read that failed (so that a failure is reported once, not every interval).
    let mut last: Option<Vec<u8>> = tokio::fs::read(&file.path).await.ok();
    let mut ticker = Ticker::new(file.interval);
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
        let contents = match tokio::fs::read(&file.path).await {
            Ok(contents) => contents,
            Err(err) => {
                if asked || last.is_some() {
                    tracing::warn!(
                        path = %file.path.display(),
                        error = %err,
                        "cannot read the tokens file; the last good one stays in force"
                    );
                    metrics.record_reload(Reload::Rejected(ReloadedFile::Tokens));
                }
                last = None;
                continue;
            }
        };
        if !asked && last.as_deref() == Some(contents.as_slice()) {
            continue;
        }
        match CallerTokens::from_file_contents(&contents, &file.path) {
            Ok(tokens) => {
                tracing::info!(
                    path = %file.path.display(),
                    callers = tokens.callers(),
                    "tokens file re-read"
                );
                current.replace(tokens);
                metrics.record_reload(Reload::Applied(ReloadedFile::Tokens));
            }
            Err(err) => {
                tracing::warn!(
                    error = %Chain(&err),
                    "tokens file refused; the last good one stays in force"
                );
                metrics.record_reload(Reload::Rejected(ReloadedFile::Tokens));
            }
        }
        last = Some(contents);
    }
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
            tracing::warn!(error = %err, "cannot listen for SIGHUP; the tokens file is still checked on schedule");
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
