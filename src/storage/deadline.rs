//! The deadline of a call, and the PostgreSQL writes that commit on their own.
//!
//! A call past its deadline is dropped, and with it any transaction it had open: that rolls
//! back. A write that is ONE autocommit statement has no transaction to drop: once sent, the
//! database runs it to the end, even after the call was answered DEADLINE_EXCEEDED, and if it
//! was waiting for a lock (a row or a key another transaction holds) it would commit whenever
//! that lock is released. So:
//! - such a statement first sets `lock_timeout` for its own implicit transaction
//!   (`set_config(..., true)`) to the time the call has left less [`LOCK_MARGIN`]: a lock
//!   wait that would outlast the call fails with SQLSTATE 55P03 and the statement rolls back,
//!   as the transaction would, and the error is back (answered DEADLINE_EXCEEDED) before the
//!   deadline, even on a busy machine;
//! - and it runs [`shielded`]: a call whose deadline passes while such a statement is in
//!   flight anyway is not answered until the statement has ended. Answering at once would let
//!   a lock holder that sees the answer release its lock before the statement's timeout
//!   fires, and the write commit after its call was told DEADLINE_EXCEEDED.
//! - but only until the call's `answer_by` instant: [`SHIELD_LIMIT`] past the deadline, and
//!   never past the client's own deadline, where tonic's `grpc-timeout` timer (outside every
//!   layer of ours) would drop the call and answer CANCELLED. Past `answer_by` a statement
//!   still running waits for something no timeout of PostgreSQL bounds (above all a commit
//!   waiting for a synchronous standby that is gone), or the machine is too busy to have run
//!   its timeout. The call is then answered DEADLINE_EXCEEDED: its outcome is unknown (the
//!   commit may complete later, or be lost with its server), and a retry with the same key
//!   finds out, replaying the write if it committed.
//!
//! The transport layer runs each call through [`run_within`]; storage reads the deadline with
//! [`lock_timeout`]. Outside a call (tools, tests of storage alone) statements run unchanged.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

tokio::task_local! {
    /// The current call.
    static CALL: Call;
}

/// A call's deadline and its write statements in flight.
#[derive(Clone)]
struct Call {
    /// When the call ends.
    deadline: Instant,
    /// Shielded statements in flight, and a signal each time one ends.
    shielded: Arc<(AtomicUsize, Notify)>,
}

/// The call's deadline passed (`call` was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Longest a call waits, past its deadline, for a [`shielded`] statement still in flight.
pub const SHIELD_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How much sooner than the call's deadline a statement's lock waits end: time for the
/// database's 55P03 to travel back and be answered before the deadline, when the machine is
/// busy (CI runs tests in parallel on 2 cores: 5 ms was not enough).
pub const LOCK_MARGIN: std::time::Duration = std::time::Duration::from_millis(25);

/// Runs `call` until `deadline`; past it, drops it (rolling back any transaction it has open)
/// and answers [`Elapsed`], but only once no [`shielded`] statement of it is in flight, or
/// [`SHIELD_LIMIT`] later, or at `answer_by` if that comes first (just before the client's
/// deadline).
pub async fn run_within<F: Future>(
    deadline: Instant,
    answer_by: Option<Instant>,
    call: F,
) -> Result<F::Output, Elapsed> {
    let shielded: Arc<(AtomicUsize, Notify)> = Arc::default();
    let context = Call {
        deadline,
        shielded: Arc::clone(&shielded),
    };
    let mut call = pin!(CALL.scope(context, call));
    tokio::select! {
        output = &mut call => return Ok(output),
        () = tokio::time::sleep_until(deadline) => {}
    }
    let (in_flight, ended) = &*shielded;
    let shield_ends = deadline + SHIELD_LIMIT;
    let limit = answer_by.map_or(shield_ends, |by| by.clamp(deadline, shield_ends));
    let mut limit = pin!(tokio::time::sleep_until(limit));
    loop {
        let mut one_ended = pin!(ended.notified());
        one_ended.as_mut().enable();
        if in_flight.load(Ordering::Acquire) == 0 {
            return Err(Elapsed);
        }
        tokio::select! {
            output = &mut call => return Ok(output),
            () = one_ended => {}
            () = &mut limit => {
                tracing::warn!(
                    waited_ms = (Instant::now() - deadline).as_millis(),
                    "a write statement still running past its call's deadline (a commit \
                     waiting for a synchronous standby? a machine too busy to run its lock \
                     timeout?); answering DEADLINE_EXCEEDED, the outcome is unknown until a \
                     retry with the same key"
                );
                return Err(Elapsed);
            }
        }
    }
}

/// Runs `statement`, a write that commits on its own, so that the call is not answered past
/// its deadline while it is in flight (see the module docs).
pub async fn shielded<F: Future>(statement: F) -> F::Output {
    let Ok(shielded) = CALL.try_with(|call| Arc::clone(&call.shielded)) else {
        return statement.await;
    };
    struct InFlight(Arc<(AtomicUsize, Notify)>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.0.fetch_sub(1, Ordering::AcqRel);
            self.0.1.notify_waiters();
        }
    }
    shielded.0.fetch_add(1, Ordering::AcqRel);
    let _in_flight = InFlight(shielded);
    statement.await
}

/// The time the current call has left less [`LOCK_MARGIN`], as a PostgreSQL `lock_timeout`
/// value (`"250ms"`, at least 1 ms: 0 would mean no timeout at all); `None` outside a call.
pub fn lock_timeout() -> Option<String> {
    let deadline = CALL.try_with(|call| call.deadline).ok()?;
    let left = deadline.saturating_duration_since(Instant::now() + LOCK_MARGIN);
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
        let left = run_within(in_a_second, None, async { lock_timeout() }).await;
        let millis: u64 = left
            .ok()
            .flatten()
            .as_deref()
            .and_then(|text| text.strip_suffix("ms"))
            .and_then(|number| number.parse().ok())
            .expect("a value in ms");
        let most = 1000 - LOCK_MARGIN.as_millis() as u64;
        assert!((most - 100..=most).contains(&millis), "{millis}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_dropped() {
        let deadline = Instant::now() + Duration::from_millis(100);
        let slow = run_within(deadline, None, tokio::time::sleep(Duration::from_secs(5))).await;
        assert_eq!(slow, Err(Elapsed));
        assert_eq!(Instant::now(), deadline, "answered at the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shielded_statement_in_flight_is_waited_for() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        let call = async {
            shielded(tokio::time::sleep(Duration::from_millis(300))).await;
            // Past the statement, the call is dropped at once.
            tokio::time::sleep(Duration::from_secs(5)).await;
            "finished"
        };
        assert_eq!(run_within(deadline, None, call).await, Err(Elapsed));
        assert_eq!(
            Instant::now() - start,
            Duration::from_millis(300),
            "answered when the statement ended, not before"
        );

        let call = async { shielded(tokio::time::sleep(Duration::from_millis(300))).await };
        let deadline = Instant::now() + Duration::from_millis(100);
        assert_eq!(
            run_within(deadline, None, call).await,
            Ok(()),
            "a call that ends with its statement answers its own result"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shielded_statement_is_waited_for_at_most_the_shield_limit() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        // A commit waiting for a synchronous standby that never answers.
        let call = async { shielded(std::future::pending::<()>()).await };
        let far = Some(deadline + 10 * SHIELD_LIMIT);
        assert_eq!(run_within(deadline, far, call).await, Err(Elapsed));
        assert_eq!(Instant::now(), deadline + SHIELD_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shielded_statement_is_not_waited_for_past_the_client_deadline() {
        let deadline = Instant::now() + Duration::from_millis(100);
        // tonic's own `grpc-timeout` timer would answer CANCELLED 5 ms after `deadline`.
        let answer_by = deadline + Duration::from_millis(4);
        let call = async { shielded(std::future::pending::<()>()).await };
        assert_eq!(
            run_within(deadline, Some(answer_by), call).await,
            Err(Elapsed)
        );
        assert_eq!(Instant::now(), answer_by);
    }
}
