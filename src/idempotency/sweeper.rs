//! Deletes idempotency keys past their retention, in bounded batches with a pause between
//! them, so a sweep never holds a long lock or starves RPCs. Expired rows already behave as
//! absent (see `find_live` and `claim`); sweeping only reclaims space. The caller schedules
//! sweeps and records their reports (see `startup`).

use std::time::Duration;

use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::Retention;
use super::persistence::{Column, Entity};
use crate::domain::Timestamp;
use crate::storage::{During, Storage, StorageError};

/// How a sweep deletes expired keys.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// Keys older than this are deleted.
    pub retention: Retention,
    /// Most rows one DELETE removes.
    pub batch_size: u64,
    /// Pause between two batches.
    pub batch_pause: Duration,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired keys deleted.
    pub rows_deleted: u64,
    /// DELETE statements that removed at least one row.
    pub batches: u32,
}

/// Deletes every key that had expired when the sweep started, batch by batch.
pub async fn sweep_expired(
    storage: &Storage,
    settings: SweepSettings,
) -> Result<SweepReport, StorageError> {
    let cutoff = settings.retention.cutoff(Timestamp::now()).unix_micros();
    let batch_size = Ord::max(settings.batch_size, 1);
    let mut report = SweepReport::default();
    loop {
        // The outer `created_at_us < cutoff` is re-checked on PostgreSQL against a row that a
        // concurrent claim has just taken over (and so refreshed): that row is not deleted.
        let batch = Query::select()
            .columns([Column::Caller, Column::Method, Column::Key])
            .from(Entity)
            .and_where(Expr::col(Column::CreatedAtUs).lt(cutoff))
            .limit(batch_size)
            .to_owned();
        let deleted = Entity::delete_many()
            .filter(Column::CreatedAtUs.lt(cutoff))
            .filter(
                Expr::tuple([
                    Expr::col(Column::Caller),
                    Expr::col(Column::Method),
                    Expr::col(Column::Key),
                ])
                .in_subquery(batch),
            )
            .exec(storage.writer())
            .await
            .during("delete expired idempotency keys")?
            .rows_affected;
        if deleted > 0 {
            report.rows_deleted += deleted;
            report.batches += 1;
        }
        if deleted < batch_size {
            return Ok(report);
        }
        tokio::time::sleep(settings.batch_pause).await;
    }
}
