use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time with microsecond precision (what both databases store exactly), counted
/// from the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        let micros = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
        };
        Self(micros)
    }

    pub fn from_unix_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn unix_micros(self) -> i64 {
        self.0
    }

    /// Whole seconds and the nanoseconds within that second (always 0..1e9), as
    /// `google.protobuf.Timestamp` wants them.
    pub fn seconds_and_nanos(self) -> (i64, i32) {
        let seconds = self.0.div_euclid(1_000_000);
        let nanos = (self.0.rem_euclid(1_000_000) * 1_000) as i32;
        (seconds, nanos)
    }

    /// This time moved back by `duration` (saturating).
    pub fn minus(self, duration: std::time::Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn seconds_and_nanos_split_positive_and_negative_times() {
        assert_eq!(
            Timestamp::from_unix_micros(1_500_000).seconds_and_nanos(),
            (1, 500_000_000)
        );
        assert_eq!(
            Timestamp::from_unix_micros(-1).seconds_and_nanos(),
            (-1, 999_999_000)
        );
    }

    #[test]
    fn minus_moves_back_and_saturates() {
        let t = Timestamp::from_unix_micros(10_000_000);
        assert_eq!(t.minus(Duration::from_secs(3)).unix_micros(), 7_000_000);
        assert_eq!(
            Timestamp::from_unix_micros(i64::MIN + 1)
                .minus(Duration::from_secs(1))
                .unix_micros(),
            i64::MIN
        );
    }

    #[test]
    fn now_is_after_2020() {
        assert!(Timestamp::now().unix_micros() > 1_577_836_800_000_000);
    }
}
