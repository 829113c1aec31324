//! The one shape of a write: what a write use case returns, and the one thing
//! [`Idempotency::execute`](super::Idempotency::execute) runs, with or without a key.
//!
//! Every write knows what it will answer before it writes anything, so the answer can be
//! stored with the key's claim in the same statement or transaction as the write:
//! - [`Write::Insert`]: one new row and nothing else (CreateTodo); its output is known from
//!   the request alone;
//! - [`Write::Planned`]: a write that depends on stored rows (UpdateTodo, DeleteTodo). Its
//!   [`Plan::plan`] reads them and decides the [`Change`] to make and the output, without
//!   locking anything. The change is conditional on what was read (the row's revision): if a
//!   concurrent write got there first, nothing is written and the plan runs again, this time
//!   in a write transaction that locks what it reads, so a hot row queues its writers instead
//!   of making them retry.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;

use sea_orm::ConnectionTrait;

use crate::error::ServiceError;
use crate::storage::{Change, NewRow, RowLock};

/// A decided write: the change to make and what the call answers once it is made.
#[derive(Debug)]
pub struct Planned<T> {
    /// What to write (possibly nothing), conditional on what the plan read.
    pub change: Change,
    /// The write's result (a domain value; the handler turns it into the response).
    pub output: T,
}

/// A write that reads stored rows to decide what to write.
///
/// `plan` may run several times for one call (after a concurrent write made its change stale):
/// it only reads, so running it again is safe.
pub trait Plan: Send + Sync {
    /// What the write produces.
    type Output: Send + Sync;

    /// Reads what the write depends on through `db`, with `lock` (first outside any
    /// transaction without locks; after a stale attempt, inside the write transaction with
    /// `RowLock::ForUpdate`), and decides. An error (NOT_FOUND, ABORTED on an etag mismatch,
    /// ...) writes nothing.
    fn plan<C: ConnectionTrait + Sync>(
        &self,
        db: &C,
        lock: RowLock,
    ) -> impl Future<Output = Result<Planned<Self::Output>, ServiceError>> + Send;
}

/// A write, and so how its idempotency key is claimed.
pub enum Write<P: Plan> {
    /// Inserts `row` and nothing else; `output` is the write's result once the row exists.
    /// On PostgreSQL lookup, claim and insert are one statement.
    Insert { row: NewRow, output: P::Output },
    /// Reads, then changes existing rows; the change and the key's claim (with the response)
    /// are one statement on PostgreSQL, one transaction on SQLite.
    Planned(P),
}

impl<T: Send + Sync> Write<InsertOnly<T>> {
    /// A write that inserts `row` and answers `output`. The response made from `output` must be
    /// this call's alone (it carries the new row's freshly generated id): the SQLite keyed
    /// insert tells its own claim from another call's by comparing the response bytes the key
    /// holds (`statements.rs`).
    pub fn insert(row: NewRow, output: T) -> Self {
        Self::Insert { row, output }
    }
}

/// The [`Plan`] of a [`Write::Insert`]: there is none beyond the insert (this type has no
/// values).
pub struct InsertOnly<T>(Infallible, PhantomData<fn() -> T>);

impl<T: Send + Sync> Plan for InsertOnly<T> {
    type Output = T;

    async fn plan<C: ConnectionTrait + Sync>(
        &self,
        _db: &C,
        _lock: RowLock,
    ) -> Result<Planned<T>, ServiceError> {
        match self.0 {}
    }
}
