//! The deadline of the call a statement runs for, carried into PostgreSQL statements that
//! commit on their own.
//!
//! A call past its deadline is dropped, and with it any transaction it had open: that rolls
//! back. A write that is ONE autocommit statement has no transaction to drop: once sent, the
//! database runs it to the end, even after the call was answered DEADLINE_EXCEEDED, and if it
//! was waiting for a lock (a row or a key another transaction holds) it would commit whenever
//! that lock is released. So such a statement first sets `lock_timeout` for its own implicit
//! transaction (`set_config(..., true)`) to the time the call has left: a wait that outlasts
//! the call fails with SQLSTATE 55P03 and the statement rolls back, as the transaction would.
//!
//! The transport layer scopes each call with [`within`]; storage reads it with
//! [`lock_timeout`]. Outside a call (tools, tests of storage alone) statements run unchanged.

use std::future::Future;

use tokio::time::Instant;

tokio::task_local! {
    /// When the current call ends.
    static CALL_DEADLINE: Instant;
}

/// Runs `call` with `deadline` as the deadline of its statements.
pub async fn within<F: Future>(deadline: Instant, call: F) -> F::Output {
    CALL_DEADLINE.scope(deadline, call).await
}

/// The time the current call has left, as a PostgreSQL `lock_timeout` value (`"250ms"`, at
/// least 1 ms: 0 would mean no timeout at all); `None` outside a call.
pub fn lock_timeout() -> Option<String> {
    let deadline = CALL_DEADLINE.try_with(|deadline| *deadline).ok()?;
    let left = deadline.saturating_duration_since(Instant::now());
    Some(format!("{}ms", left.as_millis().max(1)))
}

/// A CTE named `deadline` that sets `lock_timeout` from parameter `$param`; a statement makes
/// each of its writes wait for it with [`EVALUATED_FIRST`] in their WHERE clauses.
pub fn cte(param: usize) -> String {
    format!("deadline AS (SELECT set_config('lock_timeout', ${param}, true) AS lock_timeout)")
}

/// A condition that is always true, and that PostgreSQL must evaluate (so running the
/// `deadline` CTE) before the write it guards takes any lock.
pub const EVALUATED_FIRST: &str = "(SELECT lock_timeout FROM deadline) IS NOT NULL";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_call_has_the_time_it_has_left() {
        assert_eq!(lock_timeout(), None, "outside a call");
        let in_a_second = Instant::now() + Duration::from_secs(1);
        let left = within(in_a_second, async { lock_timeout() }).await;
        let millis: u64 = left
            .as_deref()
            .and_then(|text| text.strip_suffix("ms"))
            .and_then(|number| number.parse().ok())
            .expect("a value in ms");
        assert!((900..=1000).contains(&millis), "{millis}");
        let past = within(Instant::now(), async { lock_timeout() }).await;
        assert_eq!(past.as_deref(), Some("1ms"), "never 0, which is no timeout");
    }
}
