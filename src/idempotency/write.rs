//! The one shape of a write: what a write use case returns, and the one thing
//! [`Idempotency::execute`](super::Idempotency::execute) runs, with or without a key.
//!
//! A write is either [`Write::Insert`] (one new row and nothing else: CreateTodo) or
//! [`Write::Transaction`] (work that reads or changes existing rows: UpdateTodo, DeleteTodo).
//! The variant says how the call's idempotency key is claimed; the work itself is a plain
//! `async fn run(&self, txn)` of a type implementing [`Work`].

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;

use sea_orm::DatabaseTransaction;

use crate::error::ServiceError;
use crate::storage::NewRow;

/// Work a write does inside one database transaction, the one its key is claimed in.
///
/// `run` may be called again, in a new transaction, when an attempt lost its key to a
/// concurrent call whose row then expired before it could be read (see `CLAIM_ATTEMPTS`): an
/// attempt that does not commit leaves no trace, so running again is safe.
pub trait Work: Send + Sync {
    /// What the write produces (a domain value; the handler turns it into the response).
    type Output: Send + Sync;

    /// Does the work in `txn`. An error rolls the transaction back and frees the key.
    fn run(
        &self,
        txn: &DatabaseTransaction,
    ) -> impl Future<Output = Result<Self::Output, ServiceError>> + Send;
}

/// A write, and so how its idempotency key is claimed.
pub enum Write<W: Work> {
    /// Inserts `row` and nothing else; `output` is the write's result once the row exists.
    /// The key is claimed together with the insert, with the response already known: on
    /// PostgreSQL lookup, claim and insert are one statement.
    Insert { row: NewRow, output: W::Output },
    /// Reads or changes existing rows. The key is claimed first, in the same transaction, so
    /// a concurrent duplicate waits for this call's response instead of seeing its effect
    /// (a changed etag, a deleted row).
    Transaction(W),
}

impl<T: Send + Sync> Write<InsertOnly<T>> {
    /// A write that inserts `row` and answers `output`.
    pub fn insert(row: NewRow, output: T) -> Self {
        Self::Insert { row, output }
    }
}

/// The [`Work`] of a [`Write::Insert`]: there is none beyond the insert (this type has no
/// values).
pub struct InsertOnly<T>(Infallible, PhantomData<fn() -> T>);

impl<T: Send + Sync> Work for InsertOnly<T> {
    type Output = T;

    async fn run(&self, _txn: &DatabaseTransaction) -> Result<T, ServiceError> {
        match self.0 {}
    }
}
