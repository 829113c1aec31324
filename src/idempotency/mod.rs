//! Idempotency keys: the whole mechanism that makes a retried write happen once.
//!
//! A call that carries a key runs its work inside [`Idempotency::execute`]:
//! 1. a live row for (caller, method, key) already committed? Replay its stored response if
//!    the request's fingerprint matches, else `IDEMPOTENCY_KEY_REUSED` (one indexed read, as
//!    cheap as a GetTodo);
//! 2. otherwise, in ONE database transaction: claim the key (insert its row under the primary
//!    key's unique constraint, or take over an expired row), do the work, store the encoded
//!    response in the row, commit. A concurrent call with the same key blocks on the claim
//!    until the first commits, then replays it; if the first fails, its transaction rolls back,
//!    the key stays free, and the waiting call proceeds.
//!
//! Work that is one new row and nothing else (CreateTodo) goes through
//! [`Idempotency::execute_insert`] instead, which knows the response before it writes. On
//! PostgreSQL the lookup, the claim with the response and the row's insert are ONE statement
//! (one round trip, one implicit transaction; the row is inserted only if the claim
//! succeeded), for a fresh call and a replay alike. On SQLite (no data-modifying CTEs) the
//! row is inserted first and the key then claimed with the response, in one transaction: the
//! insert cannot conflict with a concurrent same-key call's, so the later call still blocks
//! on the claim, finds the committed key, rolls its own insert back and replays. Work that
//! reads and changes existing rows (UpdateTodo) must claim first, or a concurrent duplicate
//! would see the first one's write (a changed etag) instead of waiting for its response.

mod fingerprint;
mod key;
mod persistence;
mod sweeper;

use std::time::Duration;

use futures_core::future::BoxFuture;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend};

pub use fingerprint::RequestFingerprint;
pub use key::IdempotencyKey;
pub use persistence::Entity as IdempotencyKeyEntity;
pub use sweeper::{SweepReport, SweepSettings, run_sweeper, sweep_expired};

use crate::domain::{Caller, Timestamp};
use crate::error::ServiceError;
use crate::storage::{NewRow, Storage};
use persistence::ClaimWithInsert;

/// A write call that carries an idempotency key: its scope (caller, method, key) and what the
/// request was.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    pub caller: Caller,
    /// The full gRPC method path, e.g. `/todo.v1.TodoService/CreateTodo`.
    pub method: &'static str,
    pub key: IdempotencyKey,
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

/// When the key is claimed relative to the work, in the one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimOrder {
    /// Claim, work, store the response: for work that reads or changes existing rows.
    BeforeWork,
    /// Work, then claim with the response: only for work that inserts new rows and nothing else.
    AfterWork,
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
    storage: Storage,
    retention: Duration,
}

/// How many times a call tries to claim the key: again when it lost the claim to a concurrent
/// call (it then reads that call's row), or when the row it lost to disappeared before it could
/// read it (expiry at that very moment); any more is an internal error.
const CLAIM_ATTEMPTS: usize = 3;

impl Idempotency {
    pub fn new(storage: Storage, retention: Duration) -> Self {
        Self { storage, retention }
    }

    /// Runs `work` in a write transaction and returns its response. With a key, at most once:
    /// the key is claimed before the work runs (see the module docs). An error from `work`
    /// rolls the transaction back, which frees the key.
    pub async fn execute<R, F>(
        &self,
        request: Option<&IdempotentRequest>,
        work: F,
    ) -> Result<Executed<R>, ServiceError>
    where
        R: Message + Default,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<R, ServiceError>>,
    {
        self.run(request, ClaimOrder::BeforeWork, work).await
    }

    /// Inserts `row` and returns `response`, the call's response once the row exists. With a
    /// key, at most once, and a replay returns the response stored by the call that inserted
    /// (see the module docs). Without a key: the insert alone, one statement.
    pub async fn execute_insert<R>(
        &self,
        request: Option<&IdempotentRequest>,
        row: NewRow,
        response: R,
    ) -> Result<Executed<R>, ServiceError>
    where
        R: Message + Default + 'static,
    {
        let backend = self.storage.backend();
        let Some(request) = request else {
            self.storage
                .writer()
                .execute_raw(row.insert_statement(backend))
                .await?;
            return Ok(Executed::fresh(response, false));
        };
        if backend != DbBackend::Postgres {
            return self
                .run(Some(request), ClaimOrder::AfterWork, move |txn| {
                    Box::pin(async move {
                        txn.execute_raw(row.insert_statement(backend)).await?;
                        Ok(response)
                    })
                })
                .await;
        }

        let now = Timestamp::now();
        let cutoff = now.minus(self.retention);
        let bytes = response.encode_to_vec();
        for _ in 0..CLAIM_ATTEMPTS {
            let db = self.storage.writer();
            let attempt = persistence::claim_with_insert(
                db,
                request,
                bytes.clone(),
                row.clone(),
                now,
                cutoff,
            );
            match attempt.await? {
                ClaimWithInsert::Claimed => {
                    return Ok(Executed::fresh(response, true));
                }
                ClaimWithInsert::Stored(stored) => return replay(stored, request),
                // Committed after this statement's snapshot: the next one finds it.
                ClaimWithInsert::Lost => continue,
            }
        }
        Err(ServiceError::Internal(format!(
            "idempotency key for {} could be neither claimed nor read",
            request.method
        )))
    }

    async fn run<R, F>(
        &self,
        request: Option<&IdempotentRequest>,
        order: ClaimOrder,
        work: F,
    ) -> Result<Executed<R>, ServiceError>
    where
        R: Message + Default,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<R, ServiceError>>,
    {
        let Some(request) = request else {
            let txn = self.storage.begin_write().await?;
            let response = work(&txn).await?;
            txn.commit().await?;
            return Ok(Executed::fresh(response, false));
        };

        let now = Timestamp::now();
        let cutoff = now.minus(self.retention);
        if let Some(stored) = persistence::find_live(self.storage.reader(), request, cutoff).await?
            && stored.response.is_some()
        {
            return replay(stored, request);
        }

        let mut work = Some(work);
        for _ in 0..CLAIM_ATTEMPTS {
            let txn = self.storage.begin_write().await?;
            let claimed = match order {
                ClaimOrder::BeforeWork => {
                    if persistence::claim(&txn, request, None, now, cutoff).await? {
                        let Some(work) = work.take() else { break };
                        let response = work(&txn).await?;
                        persistence::save_response(&txn, request, response.encode_to_vec()).await?;
                        Some(response)
                    } else {
                        None
                    }
                }
                ClaimOrder::AfterWork => {
                    let Some(work) = work.take() else { break };
                    let response = work(&txn).await?;
                    let bytes = response.encode_to_vec();
                    persistence::claim(&txn, request, Some(bytes), now, cutoff)
                        .await?
                        .then_some(response)
                }
            };
            if let Some(response) = claimed {
                txn.commit().await?;
                return Ok(Executed::fresh(response, true));
            }
            // A live row exists: it was committed before our claim returned (the claim waits
            // for an uncommitted one), so it is visible to the next statement. Whatever this
            // call wrote rolls back.
            let stored = persistence::find_live(&txn, request, cutoff).await?;
            txn.rollback().await?;
            if let Some(stored) = stored {
                return replay(stored, request);
            }
        }
        Err(ServiceError::Internal(format!(
            "idempotency key for {} could be neither claimed nor read",
            request.method
        )))
    }
}

fn replay<R: Message + Default>(
    stored: persistence::StoredKey,
    request: &IdempotentRequest,
) -> Result<Executed<R>, ServiceError> {
    if stored.fingerprint != Some(request.fingerprint) {
        return Err(ServiceError::IdempotencyKeyReused);
    }
    let Some(bytes) = stored.response else {
        return Err(ServiceError::Internal(format!(
            "committed idempotency key for {} has no response",
            request.method
        )));
    };
    let response = R::decode(bytes.as_slice()).map_err(|err| {
        ServiceError::Internal(format!(
            "stored response for {} does not decode: {err}",
            request.method
        ))
    })?;
    Ok(Executed {
        response,
        outcome: Outcome::Replayed,
        keyed: true,
    })
}
