//! The standard health service (`grpc.health.v1.Health`), kept in step with the database.

use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::error::Chain;
use crate::proto::todo_service_server::SERVICE_NAME;
use crate::storage::Storage;
use crate::ticker::Ticker;

/// Checks the database every `interval` until `stop`: SERVING for "" and
/// "todo.v1.TodoService" while it answers, NOT_SERVING while it does not.
pub async fn report_health(
    reporter: HealthReporter,
    storage: Storage,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let name = SERVICE_NAME;
    let mut last = None;
    let mut ticker = Ticker::new(interval);
    while ticker.tick_unless_stopped(&mut stop).await {
        let status = match storage.ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(err) => {
                tracing::warn!(error = %Chain(&err), "health check: database unreachable");
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(name, status).await;
            last = Some(status);
        }
    }
}
