//! Idempotency keys: the whole mechanism that makes a retried write happen once.
//!
//! Every write RPC runs through [`Idempotency::execute`], given a [`Write`] that says what it
//! does (see `write.rs`). A call that carries a key:
//! 1. a live row for (caller, method, key) already committed? Replay its stored response if
//!    the request's fingerprint matches, else `IDEMPOTENCY_KEY_REUSED` (one indexed read, as
//!    cheap as a GetTodo);
//! 2. otherwise, in ONE database transaction: claim the key (insert its row under the primary
//!    key's unique constraint, or take over an expired row), do the work, store the encoded
//!    response in the row, commit. A concurrent call with the same key blocks on the claim
//!    until the first commits, then replays it; if the first fails, its transaction rolls back,
//!    the key stays free, and the waiting call proceeds.
//!
//! A [`Write::Insert`] (one new row and nothing else: CreateTodo) knows its response before it
//! writes. On PostgreSQL the lookup, the claim with the response and the row's insert are ONE
//! statement (one round trip, one implicit transaction; the row is inserted only if the claim
//! succeeded), for a fresh call and a replay alike. On SQLite (no data-modifying CTEs) the
//! row is inserted first and the key then claimed with the response, in one transaction: the
//! insert cannot conflict with a concurrent same-key call's, so the later call still blocks
//! on the claim, finds the committed key, rolls its own insert back and replays. A
//! [`Write::Transaction`] (UpdateTodo, DeleteTodo) claims first, or a concurrent duplicate
//! would see the first one's write (a changed etag) instead of waiting for its response.

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
pub use write::{InsertOnly, Work, Write};

use crate::domain::{Caller, Timestamp};
use crate::error::ServiceError;
use crate::storage::{During, NewRow, Storage, statement, statement_span};
use persistence::{ClaimWithInsert, StoredKey};

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

/// How many times a call tries to claim the key, on every path: again when it lost the claim
/// to a concurrent call whose row then could not be read (it expired at that very moment, or
/// on PostgreSQL it committed after the claiming statement's snapshot); any more is an
/// internal error.
const CLAIM_ATTEMPTS: usize = 3;

impl Idempotency {
    pub fn new(storage: Storage, retention: CurrentRetention) -> Self {
        Self { storage, retention }
    }

    /// Runs `write` and answers `respond(&output)`. Without a key: once, in one transaction
    /// (an insert alone: one statement). With a key: at most once per key; a call whose key
    /// was already used answers the stored response (see the module docs). An error rolls
    /// everything back and frees the key. An attempt that met a connection whose session the
    /// database had ended, or that the database rolled back on a serialization conflict or a
    /// deadlock, committed nothing, and runs again, key claim included
    /// (`Storage::retry_transient`).
    pub async fn execute<W, R>(
        &self,
        request: Option<&IdempotentRequest>,
        write: Write<W>,
        respond: impl Fn(&W::Output) -> R + Send + Sync,
    ) -> Result<Executed<R>, ServiceError>
    where
        W: Work,
        R: Message + Default,
    {
        self.storage
            .retry_transient(|| self.execute_once(request, &write, &respond))
            .await
    }

    async fn execute_once<W, R>(
        &self,
        request: Option<&IdempotentRequest>,
        write: &Write<W>,
        respond: &(impl Fn(&W::Output) -> R + Send + Sync),
    ) -> Result<Executed<R>, ServiceError>
    where
        W: Work,
        R: Message + Default,
    {
        let Some(request) = request else {
            let response = self.run_unkeyed(write, respond).await?;
            return Ok(Executed::fresh(response, false));
        };
        match write {
            Write::Insert { row, output } if self.storage.backend() == DbBackend::Postgres => {
                self.insert_in_one_statement(request, row, respond(output))
                    .await
            }
            write => self.run_keyed(request, write, respond).await,
        }
    }

    /// PostgreSQL, an insert with a key: lookup, claim (with `response`) and insert in one
    /// statement, again while the statement loses to a duplicate committed after it began.
    async fn insert_in_one_statement<R: Message + Default>(
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

    /// Any other write with a key: a lookup (a replay is one read), then one write transaction
    /// that claims the key and does the work (an insert claims after it, with the response;
    /// other work claims before it and stores the response after).
    async fn run_keyed<W, R>(
        &self,
        request: &IdempotentRequest,
        write: &Write<W>,
        respond: &(impl Fn(&W::Output) -> R + Send + Sync),
    ) -> Result<Executed<R>, ServiceError>
    where
        W: Work,
        R: Message + Default,
    {
        let now = Timestamp::now();
        let cutoff = self.retention.get().cutoff(now);
        if let Some(stored) = persistence::find_live(self.storage.reader(), request, cutoff).await?
            && stored.response.is_some()
        {
            return replay(stored, request);
        }
        for _ in 0..CLAIM_ATTEMPTS {
            let txn = self.storage.begin_write().await?;
            let claimed = match write {
                Write::Transaction(work) => {
                    if persistence::claim(&txn, request, None, now, cutoff).await? {
                        let response = respond(&work.run(&txn).await?);
                        persistence::save_response(&txn, request, response.encode_to_vec()).await?;
                        Some(response)
                    } else {
                        None
                    }
                }
                Write::Insert { row, output } => {
                    let insert =
                        txn.execute_raw(row.clone().insert_statement(txn.get_database_backend()));
                    statement(&txn, "insert row", insert).await?;
                    let response = respond(output);
                    let bytes = response.encode_to_vec();
                    persistence::claim(&txn, request, Some(bytes), now, cutoff)
                        .await?
                        .then_some(response)
                }
            };
            if let Some(response) = claimed {
                commit(txn).await?;
                return Ok(Executed::fresh(response, true));
            }
            // A live row exists: it was committed before our claim returned (the claim waits
            // for an uncommitted one), so it is visible to the next statement. Whatever this
            // call wrote rolls back.
            let stored = persistence::find_live(&txn, request, cutoff).await?;
            txn.rollback().await.during("roll back")?;
            if let Some(stored) = stored {
                return replay(stored, request);
            }
        }
        Err(claim_attempts_exhausted(request))
    }

    /// A write without a key: an insert alone is one autocommit statement; work runs in a
    /// write transaction of its own.
    async fn run_unkeyed<W: Work, R>(
        &self,
        write: &Write<W>,
        respond: &(impl Fn(&W::Output) -> R + Send + Sync),
    ) -> Result<R, ServiceError> {
        match write {
            Write::Insert { row, output } => {
                let writer = self.storage.writer();
                let insert =
                    writer.execute_raw(row.clone().insert_statement(self.storage.backend()));
                statement(writer, "insert row", insert).await?;
                Ok(respond(output))
            }
            Write::Transaction(work) => {
                let txn = self.storage.begin_write().await?;
                let response = respond(&work.run(&txn).await?);
                commit(txn).await?;
                Ok(response)
            }
        }
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
