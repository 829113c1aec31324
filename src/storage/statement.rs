//! One database statement: run inside a client span of its own (a child of the RPC's span)
//! when traces are exported, its error named after what it did.

use std::future::Future;

use sea_orm::{ConnectionTrait, DbBackend, DbErr};
use tracing::Instrument;

use super::errors::{During, StorageError};
use crate::telemetry;

/// The span of one statement: `db` with the OpenTelemetry database attributes, or no span at
/// all when traces are not exported.
pub fn statement_span(backend: DbBackend, operation: &'static str) -> tracing::Span {
    if !telemetry::exporting_traces() {
        return tracing::Span::none();
    }
    let system = match backend {
        DbBackend::Postgres => "postgresql",
        DbBackend::Sqlite => "sqlite",
        _ => "other_sql",
    };
    tracing::info_span!(
        "db",
        otel.name = operation,
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = operation,
    )
}

/// Runs `future`, one statement on `db`, in its span; its error says it was `operation`.
pub async fn statement<T>(
    db: &impl ConnectionTrait,
    operation: &'static str,
    future: impl Future<Output = Result<T, DbErr>>,
) -> Result<T, StorageError> {
    future
        .instrument(statement_span(db.get_database_backend(), operation))
        .await
        .during(operation)
}
