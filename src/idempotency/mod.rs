//! Idempotency keys: the whole mechanism that makes a retried write happen once.
//!
//! Every write RPC runs through [`Idempotency::execute`], given a [`Write`] that says what it
//! does (see `write.rs`). Every write knows its response before it writes, so a call that
//! carries a key stores that response with the key's claim, atomically with the write:
//! 1. a live row for (caller, method, key) already committed? Replay its stored response if
//!    the request's fingerprint matches, else `IDEMPOTENCY_KEY_REUSED` (for a create, one
//!    indexed read or statement, as cheap as a GetTodo);
//! 2. otherwise the write and the claim of the key (its row, inserted under the primary key's
//!    unique constraint, or an expired row taken over) commit together, or neither does. A
//!    concurrent call with the same key blocks on the claim until the first commits, then
//!    replays it; if the first fails, nothing of it commits, the key stays free, and the
//!    waiting call proceeds.
//!
//! A [`Write::Insert`] (one new row and nothing else: CreateTodo): on PostgreSQL the lookup,
//! the claim and the row's insert are ONE statement (one round trip, one implicit
//! transaction; the row is inserted only if the claim succeeded), for a fresh call and a
//! replay alike. On SQLite (no data-modifying CTEs) it is ONE statement too, for a fresh call
//! and a replay alike: an insert into an always empty table whose triggers claim the key and
//! insert the row only if the claim is this call's, returning what the key holds afterwards
//! (this call's response, or the one to replay).
//!
//! A [`Write::Planned`] (UpdateTodo, DeleteTodo) reads and decides first, locking nothing,
//! then makes its change guarded by the revision it read. It does not look the key up first:
//! on PostgreSQL the change and the claim are ONE statement (the claim is a plain INSERT whose
//! primary key conflict, with a row of the key already there or committed concurrently, rolls
//! the change back; then the key is looked up and replayed); on SQLite, and to take over an
//! expired row, one transaction. A replay is thus the plan's read, the failed claim and the
//! lookup; a fresh call, the read and one statement. A stale change (a concurrent write got
//! there first) writes nothing and the call reads and decides again. A concurrent duplicate
//! either waits on the row or the key and then replays, or reads the first call's effect: if
//! that makes its plan fail (an etag that moved, a todo gone), it looks the key up again and
//! replays the response committed with that effect.

mod fingerprint;
mod key;
mod persistence;
mod retention;
mod sweeper;
mod write;

use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend};
use tracing::Instrument;

pub use fingerprint::RequestFingerprint;
pub use key::IdempotencyKey;
pub use retention::{
    CurrentRetention, Retention, RetentionError, StoredRetention, resolve as resolve_retention,
};
pub use sweeper::{SweepReport, SweepSettings, sweep_expired};
pub use write::{InsertOnly, Plan, Planned, Write};

use crate::domain::{Caller, Timestamp};
use crate::error::ServiceError;
use crate::storage::{Applied, Change, During, NewRow, Storage, statement_span};
use persistence::{ClaimWithChange, ClaimWithInsert, KeyLookup, StoredKey};

/// A write call that carries an idempotency key: its scope (caller, method, key) and what the
/// request was.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    /// Who called; keys of different callers never meet.
    pub caller: Caller,
    /// The full gRPC method path, e.g. `/todo.v1.TodoService/CreateTodo`.
    pub method: &'static str,
    /// The key the client sent.
    pub key: IdempotencyKey,
    /// What the request was, to tell a retry from a reuse of the key.
    pub fingerprint: RequestFingerprint,
}

impl IdempotentRequest {
    pub fn new(
        caller: Caller,
        method: &'static str,
        key: IdempotencyKey,
        request: &impl Message,
    ) -> Self {
        Self {
            caller,
            method,
            key,
            fingerprint: RequestFingerprint::of(method, request),
        }
    }
}

/// How a call was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The work ran now (with or without a key).
    Fresh,
    /// A stored response was returned; nothing was written.
    Replayed,
}

/// A response and how it came about.
#[derive(Debug)]
pub struct Executed<R> {
    pub response: R,
    pub outcome: Outcome,
    /// Whether the call carried an idempotency key.
    pub keyed: bool,
}

impl<R> Executed<R> {
    /// A response of work that ran now.
    pub fn fresh(response: R, keyed: bool) -> Self {
        Self {
            response,
            outcome: Outcome::Fresh,
            keyed,
        }
    }
}

/// Runs write calls exactly once per idempotency key.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// Where keys and the writes they guard are stored, in one transaction per call.
    storage: Storage,
    /// How long a key is honoured: the value shared through the database.
    retention: CurrentRetention,
}

/// How many times a keyed insert on PostgreSQL runs its statement: again when it lost the
/// claim to a concurrent call whose row the statement could not read (it committed after the
/// statement's snapshot, or expired at that very moment); any more is an internal error.
const CLAIM_ATTEMPTS: usize = 3;

/// How many times a planned write reads, decides and tries its change, while concurrent
/// writes to the same rows make the change stale (or win its key) each time. Each stale
/// attempt means another write committed, so only a row written by more than this many
/// calls at once exhausts it; then the call is UNAVAILABLE ([`ServiceError::Contended`]).
const PLAN_ATTEMPTS: usize = 64;

impl Idempotency {
    pub fn new(storage: Storage, retention: CurrentRetention) -> Self {
        Self { storage, retention }
    }

    /// Runs `write` and answers `respond(&output)`. Without a key: once (an insert: one
    /// statement; a planned write: its reads, then one statement). With a key: at most once
    /// per key; a call whose key was already used answers the stored response (see the module
    /// docs). An error rolls
    /// everything back and frees the key. An attempt that met a connection whose session the
    /// database had ended, or that the database rolled back on a serialization conflict or a
    /// deadlock, committed nothing, and runs again, key claim included
    /// (`Storage::retry_transient`).
    pub async fn execute<P, R>(
        &self,
        request: Option<&IdempotentRequest>,
        write: Write<P>,
        respond: impl Fn(&P::Output) -> R + Send + Sync,
    ) -> Result<Executed<R>, ServiceError>
    where
        P: Plan,
        R: Message + Default,
    {
        self.storage
            .retry_transient(|| self.execute_once(request, &write, &respond))
            .await
    }

    async fn execute_once<P, R>(
        &self,
        request: Option<&IdempotentRequest>,
        write: &Write<P>,
        respond: &(impl Fn(&P::Output) -> R + Send + Sync),
    ) -> Result<Executed<R>, ServiceError>
    where
        P: Plan,
        R: Message + Default,
    {
        match (request, write) {
            (None, Write::Insert { row, output }) => {
                let insert = row.clone().insert_statement(self.storage.backend());
                self.storage.write_statement("insert row", insert).await?;
                Ok(Executed::fresh(respond(output), false))
            }
            (None, Write::Planned(plan)) => {
                let response = self.run_planned_unkeyed(plan, respond);
                Ok(Executed::fresh(response.await?, false))
            }
            (Some(request), Write::Insert { row, output })
                if self.storage.backend() == DbBackend::Postgres =>
            {
                self.insert_in_one_postgres_statement(request, row, respond(output))
                    .await
            }
            (Some(request), Write::Insert { row, output }) => {
                self.insert_in_one_sqlite_statement(request, row, respond(output))
                    .await
            }
            (Some(request), Write::Planned(plan)) => {
                self.run_planned_keyed(request, plan, respond).await
            }
        }
    }

    /// PostgreSQL, an insert with a key: lookup, claim (with `response`) and insert in one
    /// statement, again while the statement loses to a duplicate committed after it began.
    async fn insert_in_one_postgres_statement<R: Message + Default>(
        &self,
        request: &IdempotentRequest,
        row: &NewRow,
        response: R,
    ) -> Result<Executed<R>, ServiceError> {
        let now = Timestamp::now();
        let cutoff = self.retention.get().cutoff(now);
        let bytes = response.encode_to_vec();
        for _ in 0..CLAIM_ATTEMPTS {
            let attempt = persistence::claim_with_insert(
                self.storage.writer(),
                request,
                bytes.clone(),
                row.clone(),
                now,
                cutoff,
            );
            match attempt.await? {
                ClaimWithInsert::Claimed => return Ok(Executed::fresh(response, true)),
                ClaimWithInsert::Stored(stored) => return replay(stored, request),
                // Committed after this statement's snapshot: the next one finds it.
                ClaimWithInsert::Lost => {}
            }
        }
        Err(claim_attempts_exhausted(request))
    }

    /// SQLite, an insert with a key: ONE statement, for a fresh call and a replay alike, run
    /// in the next group commit: it claims the key and inserts the row only if the claim is
    /// this call's, and returns what the key holds afterwards: this call's response, or the
    /// one to replay (`persistence::claim_with_insert_sqlite`).
    async fn insert_in_one_sqlite_statement<R: Message + Default>(
        &self,
        request: &IdempotentRequest,
        row: &NewRow,
        response: R,
    ) -> Result<Executed<R>, ServiceError> {
        const OPERATION: &str = "claim idempotency key and insert";
        let now = Timestamp::now();
        let cutoff = self.retention.get().cutoff(now);
        let bytes = response.encode_to_vec();
        let claim =
            persistence::claim_with_insert_sqlite(request, bytes.clone(), row.clone(), now, cutoff);
        let returned = self.storage.write_query(OPERATION, claim).await?;
        match persistence::claimed_or_stored(&returned, &bytes).during(OPERATION)? {
            None => Ok(Executed::fresh(response, true)),
            Some(stored) => replay(stored, request),
        }
    }

    /// A planned write with a key. The key is not looked up first: a fresh call (the common
    /// case) is the plan's reads and then ONE statement on PostgreSQL that makes the change and
    /// claims the key (a write transaction on SQLite). Only when the claim is lost (a live or
    /// expired row of the key exists) or the plan fails is the key looked up: a live row is
    /// replayed, an expired one taken over in a write transaction. A stale change writes
    /// nothing and the call plans again.
    async fn run_planned_keyed<P, R>(
        &self,
        request: &IdempotentRequest,
        plan: &P,
        respond: &(impl Fn(&P::Output) -> R + Send + Sync),
    ) -> Result<Executed<R>, ServiceError>
    where
        P: Plan,
        R: Message + Default,
    {
        let mut operation = "write";
        // Whether a lookup (made only after a lost claim) found an expired row of the key,
        // which a transaction takes over; until then the key is taken to have no row.
        let mut expired_row = false;
        for _ in 0..PLAN_ATTEMPTS {
            let now = Timestamp::now();
            let cutoff = self.retention.get().cutoff(now);
            let planned = match plan.plan(self.storage.reader()).await {
                Ok(planned) => planned,
                Err(err) => return self.replay_or(err, request, cutoff).await,
            };
            let response = respond(&planned.output);
            let bytes = response.encode_to_vec();
            let claim = if !expired_row && self.storage.backend() == DbBackend::Postgres {
                let claim = persistence::claim_with_change(
                    self.storage.writer(),
                    request,
                    bytes,
                    &planned.change,
                    now,
                );
                claim.await?
            } else {
                self.claim_with_change_in_transaction(request, bytes, &planned.change, now, cutoff)
                    .await?
            };
            match claim {
                ClaimWithChange::Claimed => return Ok(Executed::fresh(response, true)),
                ClaimWithChange::Stale => {}
                // The key has a row, committed before the claim returned: read it.
                ClaimWithChange::Lost => {
                    match persistence::lookup(self.storage.reader(), request, cutoff).await? {
                        KeyLookup::Live(stored) => return replay(stored, request),
                        KeyLookup::Expired => expired_row = true,
                        KeyLookup::Absent => expired_row = false,
                    }
                }
            }
            operation = planned.change.operation();
        }
        Err(ServiceError::Contended(operation))
    }

    /// The change and the claim of the key in one write transaction (SQLite; on PostgreSQL
    /// when an expired row of the key must be taken over).
    async fn claim_with_change_in_transaction(
        &self,
        request: &IdempotentRequest,
        response: Vec<u8>,
        change: &Change,
        now: Timestamp,
        cutoff: Timestamp,
    ) -> Result<ClaimWithChange, ServiceError> {
        let txn = self.storage.begin_write().await?;
        if !persistence::claim(&txn, request, response, now, cutoff).await? {
            txn.rollback().await.during("roll back")?;
            return Ok(ClaimWithChange::Lost);
        }
        match change.apply(&txn).await? {
            Applied::Yes => {
                commit(txn).await?;
                Ok(ClaimWithChange::Claimed)
            }
            Applied::Stale => {
                txn.rollback().await.during("roll back")?;
                Ok(ClaimWithChange::Stale)
            }
        }
    }

    /// A plan that failed (NOT_FOUND, ABORTED, ...) may have read the effect of an earlier
    /// attempt of this very call (a retry) or of a concurrent duplicate: that call's key was
    /// committed with its effect, so a lookup now finds it and the call replays it. Otherwise
    /// the error is the answer.
    async fn replay_or<R: Message + Default>(
        &self,
        err: ServiceError,
        request: &IdempotentRequest,
        cutoff: Timestamp,
    ) -> Result<Executed<R>, ServiceError> {
        if matches!(
            err,
            ServiceError::Unavailable(_)
                | ServiceError::Database(_)
                | ServiceError::Internal { .. }
        ) {
            return Err(err);
        }
        match persistence::lookup(self.storage.reader(), request, cutoff)
            .await?
            .live()
        {
            Some(stored) => replay(stored, request),
            None => Err(err),
        }
    }

    /// A planned write without a key: plan, then the change on its own (`Storage::apply`);
    /// again while the change is stale.
    async fn run_planned_unkeyed<P: Plan, R>(
        &self,
        plan: &P,
        respond: &(impl Fn(&P::Output) -> R + Send + Sync),
    ) -> Result<R, ServiceError> {
        let mut operation = "write";
        for _ in 0..PLAN_ATTEMPTS {
            let planned = plan.plan(self.storage.reader()).await?;
            if self.storage.apply(&planned.change).await? == Applied::Yes {
                return Ok(respond(&planned.output));
            }
            operation = planned.change.operation();
        }
        Err(ServiceError::Contended(operation))
    }
}

async fn commit(txn: DatabaseTransaction) -> Result<(), ServiceError> {
    let span = statement_span(txn.get_database_backend(), "commit");
    Ok(txn.commit().instrument(span).await.during("commit")?)
}

fn claim_attempts_exhausted(request: &IdempotentRequest) -> ServiceError {
    ServiceError::internal(format!(
        "idempotency key for {} could be neither claimed nor read in {CLAIM_ATTEMPTS} attempts",
        request.method
    ))
}

fn replay<R: Message + Default>(
    stored: StoredKey,
    request: &IdempotentRequest,
) -> Result<Executed<R>, ServiceError> {
    if stored.fingerprint != Some(request.fingerprint) {
        return Err(ServiceError::IdempotencyKeyReused);
    }
    let Some(bytes) = stored.response else {
        return Err(ServiceError::internal(format!(
            "committed idempotency key for {} has no response",
            request.method
        )));
    };
    let response = R::decode(bytes.as_slice()).map_err(|err| {
        ServiceError::internal_caused_by(
            format!("stored response for {} does not decode", request.method),
            err,
        )
    })?;
    Ok(Executed {
        response,
        outcome: Outcome::Replayed,
        keyed: true,
    })
}
