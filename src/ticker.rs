//! The schedule of the server's background tasks (health checks, the key sweeper).

use std::time::Duration;

use tokio::sync::watch;

/// The schedule of a background task: a tick now, then every `interval` (a late tick delays the
/// next ones rather than bunching them), until the server stops.
pub struct Ticker(tokio::time::Interval);

impl Ticker {
    pub fn new(interval: Duration) -> Self {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self(ticker)
    }

    /// Waits for the next tick; false once `stop` has turned true.
    pub async fn tick_unless_stopped(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            _ = self.0.tick() => true,
            _ = stop.wait_for(|stopped| *stopped) => false,
        }
    }
}
