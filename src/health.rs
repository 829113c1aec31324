//! The standard health service (`grpc.health.v1.Health`): readiness kept in step with the
//! database, liveness with the process.
//!
//! - `""` and `todo.v1.TodoService` (readiness): SERVING while the database answers,
//!   NOT_SERVING while it does not, and from the moment the server is told to stop (the drain).
//! - `liveness`: SERVING for as long as the process serves at all; a database outage never
//!   turns it off (a liveness probe that followed the database would restart every replica
//!   during an outage).

use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::error::Chain;
use crate::proto::todo_service_server::SERVICE_NAME;
use crate::storage::Storage;
use crate::ticker::Ticker;

/// The health name of liveness (for the kubelet's `grpc: {service: liveness}` probe).
pub const LIVENESS: &str = "liveness";

/// The health names of readiness: the server as a whole and its one service.
const READINESS: [&str; 2] = ["", SERVICE_NAME];

/// Marks `liveness` SERVING, then checks the database every `interval` until `draining`
/// turns true, reporting readiness; then reports readiness NOT_SERVING for good.
pub async fn report_health(
    reporter: HealthReporter,
    storage: Storage,
    interval: Duration,
    mut draining: watch::Receiver<bool>,
) {
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    let mut last = None;
    let mut ticker = Ticker::new(interval);
    while ticker.tick_unless_stopped(&mut draining).await {
        let status = tokio::select! {
            result = storage.ping() => match result {
                Ok(()) => ServingStatus::Serving,
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), "health check: database unreachable");
                    ServingStatus::NotServing
                }
            },
            _ = draining.wait_for(|draining| *draining) => break,
        };
        if last != Some(status) {
            set_readiness(&reporter, status).await;
            last = Some(status);
        }
    }
    set_readiness(&reporter, ServingStatus::NotServing).await;
}

async fn set_readiness(reporter: &HealthReporter, status: ServingStatus) {
    for name in READINESS {
        reporter.set_service_status(name, status).await;
    }
}
