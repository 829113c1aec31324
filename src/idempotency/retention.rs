//! How long keys are honoured: ONE value for the whole key table, stored in the database and
//! shared by every replica, never a per-replica setting (a replica with a shorter value would
//! treat keys the others honour as expired, and its sweeper would delete them).
//!
//! - The first server on a database stores `--idempotency-retention` (default 24 h).
//! - A server started without the flag, or with the stored value, uses the stored value.
//! - A server started with another value refuses to start, unless also given
//!   `--change-idempotency-retention`: it then stores the new value, and every replica picks it
//!   up on its next refresh (every `--health-check-interval`).
//! - After a change, the sweeper keeps using the longer of the old and new values for as long
//!   as the old value (keys honoured under it are not swept early by a shortening).
//! - Values under [`MIN_RETENTION`] are refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::domain::Timestamp;
use crate::storage::{Storage, StorageError};

/// The shortest retention accepted: below it a slow retry would already be a new call.
pub const MIN_RETENTION: Duration = Duration::from_secs(60);
/// The retention a new database starts with.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Its name in `service_settings`.
const SETTING: &str = "idempotency_retention";

/// How long a key is honoured: a key created before `now - retention` behaves as new (even
/// before the sweeper deletes its row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Retention(Duration);

impl Retention {
    /// `retention`, if it is at least [`MIN_RETENTION`].
    pub fn new(retention: Duration) -> Result<Self, String> {
        if retention < MIN_RETENTION {
            return Err(format!(
                "must be at least {} (got {})",
                humantime::format_duration(MIN_RETENTION),
                humantime::format_duration(retention)
            ));
        }
        Ok(Self(retention))
    }

    /// The oldest creation time of a key still honoured at `now`.
    pub fn cutoff(self, now: Timestamp) -> Timestamp {
        now.minus(self.0)
    }

    fn micros(self) -> u64 {
        u64::try_from(self.0.as_micros()).unwrap_or(u64::MAX)
    }

    fn from_micros(micros: u64) -> Self {
        Self(Duration::from_micros(micros))
    }
}

/// The stored setting: the retention, and the one it replaced (with when).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRetention {
    /// The retention in force.
    pub current: Retention,
    /// The retention before the last change (the same as `current` if there was none).
    pub previous: Retention,
    /// When `current` was stored.
    pub changed_at: Timestamp,
}

impl StoredRetention {
    fn first(retention: Retention, now: Timestamp) -> Self {
        Self {
            current: retention,
            previous: retention,
            changed_at: now,
        }
    }

    /// What the sweeper may use at `now`: after a change, the longer of the two values until
    /// the old one has run its course since the change.
    pub fn for_sweeping(&self, now: Timestamp) -> Retention {
        let transition_ends = self
            .changed_at
            .unix_micros()
            .saturating_add(i64::try_from(self.previous.micros()).unwrap_or(i64::MAX));
        if now.unix_micros() < transition_ends {
            self.current.max(self.previous)
        } else {
            self.current
        }
    }

    /// `current previous changed_at`, in microseconds, as ASCII.
    fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {}",
            self.current.micros(),
            self.previous.micros(),
            self.changed_at.unix_micros()
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split(' ');
        let current = fields.next()?.parse().ok()?;
        let previous = fields.next()?.parse().ok()?;
        let changed_at = fields.next()?.parse().ok()?;
        fields.next().is_none().then_some(Self {
            current: Retention::from_micros(current),
            previous: Retention::from_micros(previous),
            changed_at: Timestamp::from_unix_micros(changed_at),
        })
    }
}

/// Why a server may not use the retention it was given.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(
        "--idempotency-retention {requested} differs from the retention {stored} that the \
         replicas on this database share; start without the flag to use {stored}, or add \
         --change-idempotency-retention to store {requested} for every replica"
    )]
    Mismatch { stored: String, requested: String },
    #[error("the stored idempotency retention is unreadable: {0:?}")]
    Corrupt(String),
    #[error("cannot read or store the idempotency retention")]
    Storage(#[from] StorageError),
}

/// The retention for a server started with `requested` (`--idempotency-retention`, if given)
/// and `change` (`--change-idempotency-retention`), as described in the module docs.
pub async fn resolve(
    storage: &Storage,
    requested: Option<Retention>,
    change: bool,
) -> Result<StoredRetention, RetentionError> {
    let now = Timestamp::now();
    let first = StoredRetention::first(requested.unwrap_or(Retention(DEFAULT_RETENTION)), now);
    storage
        .insert_setting_if_absent(SETTING, first.encode())
        .await?;
    let stored = load(storage).await?;
    match requested {
        None => Ok(stored),
        Some(requested) if requested == stored.current => Ok(stored),
        Some(requested) if change => {
            let changed = StoredRetention {
                current: requested,
                previous: stored.current,
                changed_at: now,
            };
            storage.write_setting(SETTING, changed.encode()).await?;
            tracing::warn!(
                from = %humantime::format_duration(stored.current.0),
                to = %humantime::format_duration(requested.0),
                "idempotency retention changed for every replica"
            );
            Ok(changed)
        }
        Some(requested) => Err(RetentionError::Mismatch {
            stored: humantime::format_duration(stored.current.0).to_string(),
            requested: humantime::format_duration(requested.0).to_string(),
        }),
    }
}

/// The stored retention; [`DEFAULT_RETENTION`] if no server has stored one yet.
pub async fn load(storage: &Storage) -> Result<StoredRetention, RetentionError> {
    match storage.read_setting(SETTING).await? {
        None => Ok(StoredRetention::first(
            Retention(DEFAULT_RETENTION),
            Timestamp::from_unix_micros(0),
        )),
        Some(bytes) => StoredRetention::decode(&bytes)
            .ok_or_else(|| RetentionError::Corrupt(String::from_utf8_lossy(&bytes).into_owned())),
    }
}

/// The retention a server honours now, shared by its handlers and refreshed from the database.
#[derive(Debug, Clone)]
pub struct CurrentRetention(Arc<AtomicU64>);

impl CurrentRetention {
    pub fn new(retention: Retention) -> Self {
        Self(Arc::new(AtomicU64::new(retention.micros())))
    }

    pub fn get(&self) -> Retention {
        Retention::from_micros(self.0.load(Ordering::Relaxed))
    }

    /// Reads the stored retention again (another replica may have changed it).
    pub async fn refresh(&self, storage: &Storage) -> Result<(), RetentionError> {
        let stored = load(storage).await?;
        self.0.store(stored.current.micros(), Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn values_under_the_floor_are_refused() {
        assert!(Retention::new(Duration::ZERO).is_err());
        assert!(Retention::new(Duration::from_secs(59)).is_err());
        assert!(Retention::new(MIN_RETENTION).is_ok());
    }

    #[test]
    fn the_stored_form_round_trips() {
        let stored = StoredRetention {
            current: Retention(HOUR),
            previous: Retention(24 * HOUR),
            changed_at: Timestamp::from_unix_micros(1_700_000_000_000_000),
        };
        assert_eq!(StoredRetention::decode(&stored.encode()), Some(stored));
        assert_eq!(StoredRetention::decode(b"1 2"), None);
        assert_eq!(StoredRetention::decode(b"1 2 3 4"), None);
        assert_eq!(StoredRetention::decode(b"x 2 3"), None);
    }

    #[test]
    fn a_shortening_sweeps_with_the_old_value_until_it_has_run_its_course() {
        let changed_at = Timestamp::from_unix_micros(1_700_000_000_000_000);
        let stored = StoredRetention {
            current: Retention(HOUR),
            previous: Retention(24 * HOUR),
            changed_at,
        };
        let later = |hours: i64| {
            Timestamp::from_unix_micros(changed_at.unix_micros() + hours * 3_600_000_000)
        };
        assert_eq!(stored.for_sweeping(later(1)), Retention(24 * HOUR));
        assert_eq!(stored.for_sweeping(later(23)), Retention(24 * HOUR));
        assert_eq!(stored.for_sweeping(later(25)), Retention(HOUR));
        let lengthened = StoredRetention {
            current: Retention(48 * HOUR),
            previous: Retention(HOUR),
            changed_at,
        };
        assert_eq!(lengthened.for_sweeping(later(0)), Retention(48 * HOUR));
    }
}
