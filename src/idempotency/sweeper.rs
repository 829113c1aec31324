//! Deletes idempotency keys past their retention, in bounded batches with a pause between
//! them, so a sweep never holds a long lock or starves RPCs. Expired rows already behave as
//! absent (see `find_live` and `claim`); sweeping only reclaims space. The caller schedules
//! sweeps and records their reports (see `startup`).

use std::time::Duration;

use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::persistence::{Column, Entity};
use super::retention::{self, RetentionError};
use crate::domain::Timestamp;
use crate::storage::{During, Storage};

/// How a sweep deletes expired keys (which keys have expired is the shared retention's to
/// say: see `retention.rs`).
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
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

/// Deletes every key that had expired when the sweep started, by the retention stored in the
/// database (during a change, the longer of the old and new values), batch by batch.
pub async fn sweep_expired(
    storage: &Storage,
    settings: SweepSettings,
) -> Result<SweepReport, RetentionError> {
    let now = Timestamp::now();
    let retention = retention::load(storage).await?.for_sweeping(now);
    let cutoff = retention.cutoff(now).unix_micros();
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
