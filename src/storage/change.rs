//! A change to stored rows that a write decided on from what it read: one UPDATE or DELETE,
//! made conditional on what was read (the row's revision), or nothing at all. The idempotency
//! layer applies it alone, or in one statement (PostgreSQL) or one transaction with the claim
//! of the call's key.
//!
//! First optimistically: nothing is locked between the read and the write. A conditional
//! change that finds its row changed or gone changes nothing and reports [`Applied::Stale`];
//! the write then reads again with the row locked (`RowLock::ForUpdate`) and decides again.

use sea_orm::sea_query::{DeleteStatement, Expr, UpdateStatement, Values};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement};

use super::deadline;
use super::errors::StorageError;
use super::statement::statement;

/// What a write changes.
#[derive(Debug, Clone)]
pub struct Change {
    /// The statement, or `None` when the write changes nothing (an update to the values the
    /// row already has, a delete of a row that is not there).
    statement: Option<ChangeStatement>,
    /// How many rows the statement must change to count as applied (it is guarded by what was
    /// read: each row at the revision read); `None`: it applies whatever it changes.
    expected_rows: Option<u64>,
    /// What the statement does, to name its span and its errors.
    operation: &'static str,
}

/// The SQL of a [`Change`].
#[derive(Debug, Clone)]
pub(super) enum ChangeStatement {
    Update(UpdateStatement),
    Delete(DeleteStatement),
}

/// Whether a change was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Made (or there was nothing to make).
    Yes,
    /// A conditional change whose row had changed or gone since it was read: nothing was
    /// written.
    Stale,
}

impl Change {
    /// No write at all.
    pub fn nothing() -> Self {
        Self {
            statement: None,
            expected_rows: None,
            operation: "no change",
        }
    }

    /// `statement`, applied only if it changes exactly `rows` rows: the ones read, unchanged
    /// since.
    pub(super) fn guarded(statement: ChangeStatement, rows: u64, operation: &'static str) -> Self {
        Self {
            statement: Some(statement),
            expected_rows: Some(rows),
            operation,
        }
    }

    /// `statement`, applied whatever it changes (zero rows is fine).
    pub(super) fn unguarded(statement: ChangeStatement, operation: &'static str) -> Self {
        Self {
            statement: Some(statement),
            expected_rows: None,
            operation,
        }
    }

    /// How many rows it must change to be applied, if it is guarded.
    pub fn expected_rows(&self) -> Option<u64> {
        self.expected_rows
    }

    /// The statement for `backend`, if there is one.
    pub fn statement(&self, backend: DbBackend) -> Option<Statement> {
        self.statement_where(backend, None)
    }

    /// The statement, with `condition` (SQL without parameters) added to its WHERE clause.
    pub fn statement_where(
        &self,
        backend: DbBackend,
        condition: Option<&'static str>,
    ) -> Option<Statement> {
        self.statement.as_ref().map(|statement| match statement {
            ChangeStatement::Update(update) => {
                let mut update = update.clone();
                if let Some(condition) = condition {
                    update.and_where(Expr::cust(condition));
                }
                backend.build(&update)
            }
            ChangeStatement::Delete(delete) => {
                let mut delete = delete.clone();
                if let Some(condition) = condition {
                    delete.and_where(Expr::cust(condition));
                }
                backend.build(&delete)
            }
        })
    }

    /// What the statement does (for spans and errors).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// Makes the change inside `txn` (which a call past its deadline drops, rolling it back).
    pub async fn apply(&self, txn: &DatabaseTransaction) -> Result<Applied, StorageError> {
        let Some(sql) = self.statement(txn.get_database_backend()) else {
            return Ok(Applied::Yes);
        };
        let result = statement(txn, self.operation, txn.execute_raw(sql)).await?;
        Ok(self.outcome(result.rows_affected()))
    }

    /// PostgreSQL: makes the change on its own, one autocommit statement. During a call its
    /// lock waits end at the call's deadline and the call waits for it (`deadline.rs`).
    pub(super) async fn apply_alone(
        &self,
        db: &DatabaseConnection,
    ) -> Result<Applied, StorageError> {
        let backend = db.get_database_backend();
        let sql = match deadline::lock_timeout() {
            Some(timeout) => self
                .statement_where(backend, Some(deadline::EVALUATED_FIRST))
                .map(|mut sql| {
                    let mut values = sql.values.take().map(|values| values.0).unwrap_or_default();
                    sql.sql = format!("WITH {} {}", deadline::cte(values.len() + 1), sql.sql);
                    values.push(timeout.into());
                    sql.values = Some(Values(values));
                    sql
                }),
            None => self.statement(backend),
        };
        let Some(sql) = sql else {
            return Ok(Applied::Yes);
        };
        let run = statement(db, self.operation, db.execute_raw(sql));
        let result = deadline::shielded(run).await?;
        Ok(self.outcome(result.rows_affected()))
    }

    /// Whether a statement that changed `rows` rows applied the change.
    pub fn outcome(&self, rows: u64) -> Applied {
        if self.expected_rows.is_some_and(|expected| rows != expected) {
            Applied::Stale
        } else {
            Applied::Yes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::{Alias, ExprTrait, Query};

    fn update() -> ChangeStatement {
        ChangeStatement::Update(
            Query::update()
                .table(Alias::new("things"))
                .value(Alias::new("name"), "new")
                .and_where(Expr::col(Alias::new("revision")).eq(3))
                .to_owned(),
        )
    }

    #[test]
    fn a_guarded_change_applies_only_to_exactly_its_rows() {
        let change = Change::guarded(update(), 1, "rename thing");
        assert_eq!(change.outcome(1), Applied::Yes);
        assert_eq!(change.outcome(0), Applied::Stale);
        assert_eq!(change.expected_rows(), Some(1));
        let three = Change::guarded(update(), 3, "rename things");
        assert_eq!(three.outcome(3), Applied::Yes);
        assert_eq!(three.outcome(2), Applied::Stale);
    }

    #[test]
    fn an_unguarded_change_applies_to_any_number_of_rows() {
        let change = Change::unguarded(update(), "rename things");
        assert_eq!(change.outcome(0), Applied::Yes);
        assert_eq!(change.outcome(2), Applied::Yes);
    }

    #[test]
    fn nothing_has_no_statement() {
        let change = Change::nothing();
        assert!(change.statement(DbBackend::Postgres).is_none());
        assert_eq!(change.outcome(0), Applied::Yes);
    }

    #[test]
    fn statements_use_each_backends_placeholders() {
        let change = Change::guarded(update(), 1, "rename thing");
        let postgres = change.statement(DbBackend::Postgres).expect("a statement");
        assert_eq!(
            postgres.sql,
            r#"UPDATE "things" SET "name" = $1 WHERE "revision" = $2"#
        );
        let sqlite = change.statement(DbBackend::Sqlite).expect("a statement");
        assert_eq!(
            sqlite.sql,
            r#"UPDATE "things" SET "name" = ? WHERE "revision" = ?"#
        );
    }

    #[test]
    fn a_condition_is_added_to_the_where_clause() {
        let change = Change::guarded(update(), 1, "rename thing");
        let postgres = change
            .statement_where(DbBackend::Postgres, Some("f() IS NOT NULL"))
            .expect("a statement");
        assert_eq!(
            postgres.sql,
            r#"UPDATE "things" SET "name" = $1 WHERE "revision" = $2 AND (f() IS NOT NULL)"#
        );
    }
}
