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
//! the change back; then the key is looked up and replayed). If the change was stale (a
//! concurrent write got there first), the call runs again in one write transaction that reads
//! with `FOR UPDATE`, claims the key and changes: writers of a hot row queue on its lock, as
//! they would with locking alone, instead of retrying. On SQLite, whose writes are serialized
//! anyway, a keyed planned write always takes that transaction. A concurrent duplicate either
//! waits on the row or the key and then replays, or reads the first call's effect: if that
//! makes its plan fail (an etag that moved, a todo gone), it looks the key up and replays the
//! response committed with that effect.

mod fingerprint;
mod key;
mod persistence;
mod retention;
mod statements;
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
use crate::storage::{Applied, During, NewRow, RowLock, Storage, statement_span};
use persistence::{ClaimWithChange, ClaimWithInsert, StoredKey};
use statements::KeyedInsert;

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

/// How a write was answered (the handler passes it on to the per-call layer, which logs and
/// counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// The work ran now; the call carried no key (or one that is only checked, DeleteTodo).
    WithoutKey,
    /// The work ran now and the call's key was claimed with its response.
    Claimed,
    /// The response stored with the key was returned; nothing was written.
    Replayed,
}

/// A response and how it came about.
#[derive(Debug)]
pub struct Executed<R> {
    /// What the call answers.
    pub response: R,
    /// Whether it ran now, with or without a key, or was replayed.
    pub answered: Answered,
}

impl<R> Executed<R> {
    fn new(response: R, answered: Answered) -> Self {
        Self { response, answered }
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

/// How many times a keyed write tries to claim its key: again when it lost the claim to a
/// concurrent call whose row it then could not read (on PostgreSQL it committed after the
/// statement's snapshot; or it expired at that very moment); any more is an internal error.
const CLAIM_ATTEMPTS: usize = 3;

impl Idempotency {
    pub fn new(storage: Storage, retention: CurrentRetention) -> Self {
        Self { storage, retention }
    }

    /// Runs `write` and answers `respond(&output)`. Without a key: once (an insert: one
    /// statement; a planned write: its reads, then one statement). With a key: at most once
    /// per key; a call whose key was already used answers the stored response (see the module
    /// docs). An error rolls everything back and frees the key. An attempt that met a
    /// connection whose session the database had ended, or that the database rolled back on a
    /// serialization conflict or a deadlock, committed nothing, and runs again, key claim
    /// included (`Storage::retry_transient`).
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
                Ok(Executed::new(respond(output), Answered::WithoutKey))
            }
            (None, Write::Planned(plan)) => {
                let response = self.run_planned_unkeyed(plan, respond);
                Ok(Executed::new(response.await?, Answered::WithoutKey))
            }
            (Some(request), Write::Insert { row, output }) => {
                self.insert_keyed(request, row, respond(output)).await
            }
            (Some(request), Write::Planned(plan)) => {
                self.run_planned_keyed(request, plan, respond).await
            }
        }
    }

    /// An insert with a key, in ONE statement for a fresh call and a replay alike
    /// (`statements::KeyedInsert`): it claims the key (with `response`) and inserts the row only
    /// if the claim is this call's.
    /// - PostgreSQL: an autocommit statement, run again while it loses to a duplicate committed
    ///   after it began;
    /// - SQLite: run in the next group commit; it returns what the key holds afterwards: this
    ///   call's response, or the one to replay (the rule it relies on is written in
    ///   `statements.rs`).
    async fn insert_keyed<R: Message + Default>(
        &self,
        request: &IdempotentRequest,
        row: &NewRow,
        response: R,
    ) -> Result<Executed<R>, ServiceError> {
        const OPERATION: &str = "claim idempotency key and insert";
        let now = Timestamp::now();
        let cutoff = self.retention.get().cutoff(now);
        let bytes = response.encode_to_vec();
        // The rule the SQLite statement relies on (`statements.rs`): no other call's response
        // can equal this one, because it names the row's fresh id.
        debug_assert!(
            row.is_named_in(&bytes),
            "a keyed insert's response must carry the new row's id"
        );
        let insert = || KeyedInsert {
            request,
            response: bytes.clone(),
            row: row.clone(),
            now,
            cutoff,
        };
        if self.storage.backend() == DbBackend::Postgres {
            for _ in 0..CLAIM_ATTEMPTS {
                match persistence::claim_with_insert(self.storage.writer(), insert()).await? {
                    ClaimWithInsert::Claimed => {
                        return Ok(Executed::new(response, Answered::Claimed));
                    }
                    ClaimWithInsert::Stored(stored) => return replay(stored, request),
                    // Committed after this statement's snapshot: the next one finds it.
                    ClaimWithInsert::Lost => {}
                }
            }
            return Err(claim_attempts_exhausted(request));
        }
        let claim = insert().statement(DbBackend::Sqlite);
        let returned = self.storage.write_query(OPERATION, claim).await?;
        match persistence::claimed_or_stored(&returned, &bytes).during(OPERATION)? {
            None => Ok(Executed::new(response, Answered::Claimed)),
            Some(stored) => replay(stored, request),
        }
    }

    /// A planned write with a key. First optimistically, on PostgreSQL: the plan's reads
    /// without locks, then ONE statement that makes the change and claims the key; the key is
    /// not looked up first, only when that claim is lost (a live row is replayed). If the change
    /// was stale (a concurrent write got there first), or the key has an expired row to take
    /// over, or on SQLite: one write transaction that reads with locks, claims and changes
    /// ([`Self::run_planned_locked`]).
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
        let now = Timestamp::now();
        let cutoff = self.retention.get().cutoff(now);
        if self.storage.backend() == DbBackend::Postgres {
            let planned = match plan.plan(self.storage.reader(), RowLock::None).await {
                Ok(planned) => planned,
                Err(err) => return self.replay_or(err, request, cutoff).await,
            };
            let response = respond(&planned.output);
            let claim = persistence::claim_with_change(
                self.storage.writer(),
                request,
                response.encode_to_vec(),
                &planned.change,
                now,
            );
            match claim.await? {
                ClaimWithChange::Claimed => return Ok(Executed::new(response, Answered::Claimed)),
                ClaimWithChange::Stale => {}
                // The key has a row, committed before the claim returned.
                ClaimWithChange::Lost => {
                    if let Some(stored) =
                        persistence::find_live(self.storage.reader(), request, cutoff).await?
                    {
                        return replay(stored, request);
                    }
                }
            }
        }
        self.run_planned_locked(Some(request), plan, respond, now, cutoff)
            .await
    }

    /// A planned write in one write transaction whose reads lock what they read (PostgreSQL
    /// `FOR UPDATE`; on SQLite the transaction excludes other writers), so its change cannot
    /// be stale: concurrent writers of one row queue instead of retrying. With a key, the key is
    /// claimed (with the response) before the change, in the same transaction; a key already
    /// live is replayed.
    async fn run_planned_locked<P, R>(
        &self,
        request: Option<&IdempotentRequest>,
        plan: &P,
        respond: &(impl Fn(&P::Output) -> R + Send + Sync),
        now: Timestamp,
        cutoff: Timestamp,
    ) -> Result<Executed<R>, ServiceError>
    where
        P: Plan,
        R: Message + Default,
    {
        for _ in 0..CLAIM_ATTEMPTS {
            let txn = self.storage.begin_write().await?;
            let planned = match plan.plan(&txn, RowLock::ForUpdate).await {
                Ok(planned) => planned,
                Err(err) => {
                    txn.rollback().await.during("roll back")?;
                    return match request {
                        Some(request) => self.replay_or(err, request, cutoff).await,
                        None => Err(err),
                    };
                }
            };
            let response = respond(&planned.output);
            if let Some(request) = request {
                let bytes = response.encode_to_vec();
                if !persistence::claim(&txn, request, bytes, now, cutoff).await? {
                    // A live row, committed before the claim returned: visible now.
                    let stored = persistence::find_live(&txn, request, cutoff).await?;
                    txn.rollback().await.during("roll back")?;
                    match stored {
                        Some(stored) => return replay(stored, request),
                        None => continue,
                    }
                }
            }
            return match planned.change.apply(&txn).await? {
                Applied::Yes => {
                    commit(txn).await?;
                    let answered = match request {
                        Some(_) => Answered::Claimed,
                        None => Answered::WithoutKey,
                    };
                    Ok(Executed::new(response, answered))
                }
                Applied::Stale => Err(ServiceError::internal(format!(
                    "`{}` found its rows changed although it had locked them",
                    planned.change.operation()
                ))),
            };
        }
        let Some(request) = request else {
            return Err(ServiceError::internal("a write without a key lost a claim"));
        };
        Err(claim_attempts_exhausted(request))
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
        match persistence::find_live(self.storage.reader(), request, cutoff).await? {
            Some(stored) => replay(stored, request),
            None => Err(err),
        }
    }

    /// A planned write without a key: the plan's reads without locks, then the change on its
    /// own (`Storage::apply`: one statement); if that was stale (a concurrent write got there
    /// first), again in a write transaction that locks what it reads.
    async fn run_planned_unkeyed<P: Plan, R: Message + Default>(
        &self,
        plan: &P,
        respond: &(impl Fn(&P::Output) -> R + Send + Sync),
    ) -> Result<R, ServiceError> {
        let planned = plan.plan(self.storage.reader(), RowLock::None).await?;
        if self.storage.apply(&planned.change).await? == Applied::Yes {
            return Ok(respond(&planned.output));
        }
        let now = Timestamp::now();
        let cutoff = self.retention.get().cutoff(now);
        let locked = self.run_planned_locked(None, plan, respond, now, cutoff);
        Ok(locked.await?.response)
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
    Ok(Executed::new(response, Answered::Replayed))
}
