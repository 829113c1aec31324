//! Deletes idempotency keys past their retention, in bounded batches with a pause between
//! them, so a sweep never holds a long lock or starves RPCs. Expired rows already behave as
//! absent (see `find_live` and `claim`); sweeping only reclaims space.

use std::time::{Duration, Instant};

use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter};
use tokio::sync::watch;

use super::persistence::{Column, Entity};
use crate::domain::Timestamp;
use crate::metrics::Metrics;
use crate::storage::Storage;
use crate::ticker::Ticker;

#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// Keys created longer ago than this are deleted.
    pub retention: Duration,
    /// Most rows one DELETE removes.
    pub batch_size: u64,
    /// Pause between two batches.
    pub batch_pause: Duration,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub rows_deleted: u64,
    /// DELETE statements that removed at least one row.
    pub batches: u32,
}

/// Deletes every key that had expired when the sweep started, batch by batch.
pub async fn sweep_expired(
    storage: &Storage,
    settings: SweepSettings,
) -> Result<SweepReport, DbErr> {
    let cutoff = Timestamp::now().minus(settings.retention).unix_micros();
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
            .await?
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

/// Sweeps every `interval` until `stop` turns true.
pub async fn run_sweeper(
    storage: Storage,
    settings: SweepSettings,
    interval: Duration,
    metrics: std::sync::Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = Ticker::new(interval);
    while ticker.tick_unless_stopped(&mut stop).await {
        let started = Instant::now();
        let result = tokio::select! {
            result = sweep_expired(&storage, settings) => result,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match result {
            Ok(report) => {
                metrics.record_sweep(report, started.elapsed());
                tracing::info!(
                    rows_deleted = report.rows_deleted,
                    batches = report.batches,
                    duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "idempotency keys swept"
                );
            }
            Err(err) => tracing::warn!(error = %err, "idempotency key sweep failed; will retry"),
        }
    }
}
