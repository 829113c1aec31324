//! Pooled connections that reach a server which is no longer the primary.
//!
//! After a PostgreSQL failover a pooled connection can still reach the old primary, now read
//! only: through a writer endpoint whose DNS or proxy moved later than the connection was
//! made, or to a demoted server that came back as a standby. Every write on it fails with
//! SQLSTATE 25006 (read-only transaction), and a pool would hand it out again and again. So the
//! first such error marks the moment, and every connection opened before it is discarded when
//! it is next taken from the pool: a comparison of its age, no round trip. The work that met
//! the error committed nothing (a read-only transaction writes nothing) and runs again on
//! another connection ([`Storage::retry_transient`](super::Storage::retry_transient)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When connections were last found to reach a read-only server.
#[derive(Debug)]
pub struct StaleConnections {
    /// The clock's zero (before any connection of the pool was opened).
    origin: Instant,
    /// Nanoseconds after `origin`, plus one, of the last mark; 0: never marked.
    marked_at: AtomicU64,
}

impl Default for StaleConnections {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            marked_at: AtomicU64::new(0),
        }
    }
}

impl StaleConnections {
    /// Every connection opened until now is stale.
    pub fn mark_all(&self) {
        let now = self.nanos_since_origin(Duration::ZERO);
        self.marked_at
            .fetch_max(now.saturating_add(1), Ordering::AcqRel);
    }

    /// Whether a connection opened `age` ago was opened before the last mark.
    pub fn is_stale(&self, age: Duration) -> bool {
        let marked_at = self.marked_at.load(Ordering::Acquire);
        marked_at != 0 && self.nanos_since_origin(age) < marked_at
    }

    /// When something that happened `ago` happened, in nanoseconds after `origin`.
    fn nanos_since_origin(&self, ago: Duration) -> u64 {
        let at = self.origin.elapsed().saturating_sub(ago);
        u64::try_from(at.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_stale_until_marked() {
        let stale = StaleConnections::default();
        assert!(!stale.is_stale(Duration::ZERO));
        assert!(!stale.is_stale(Duration::from_secs(3600)));
    }

    #[test]
    fn connections_opened_before_the_mark_are_stale_and_later_ones_are_not() {
        let stale = StaleConnections::default();
        std::thread::sleep(Duration::from_millis(20));
        stale.mark_all();
        // Opened 10 ms ago: before the mark (which is about 0 ms ago).
        assert!(stale.is_stale(Duration::from_millis(10)));
        std::thread::sleep(Duration::from_millis(20));
        // Opened 5 ms ago: after the mark (about 20 ms ago).
        assert!(!stale.is_stale(Duration::from_millis(5)));
        assert!(stale.is_stale(Duration::from_millis(30)));
    }
}
