//! Builds the server from a [`Config`]: database, migrations, listener, and the gRPC services
//! (TodoService, health, reflection). The caller owns the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sea_orm::DbErr;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::Config;
use crate::grpc::TodoApi;
use crate::idempotency::Idempotency;
use crate::proto::{self, todo_service_server::TodoServiceServer};
use crate::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot reach the database: {0}")]
    Database(#[from] DbErr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A server ready to run: connected, migrated, and bound to its port.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    storage: Storage,
    api: TodoApi,
    health_check_interval: Duration,
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let storage = Storage::connect(&config.database()).await?;
        if config.run_migrations {
            storage.migrate().await?;
        }
        let page_token_key = storage.page_token_key().await?;
        let idempotency = Idempotency::new(storage.clone(), config.idempotency_retention);
        let api = TodoApi::new(storage.clone(), idempotency, page_token_key);
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.listen_addr,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: config.listen_addr,
            source,
        })?;
        Ok(Self {
            listener,
            local_addr,
            storage,
            api,
            health_check_interval: config.health_check_interval,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Serves until `shutdown` completes, then stops accepting calls and waits for the calls
    /// in flight to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartupError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let health_task = tokio::spawn(report_health(
            health_reporter,
            self.storage.clone(),
            self.health_check_interval,
        ));
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        tracing::info!(addr = %self.local_addr, backend = ?self.storage.backend(), "serving");
        let served = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(TodoServiceServer::new(self.api))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await;
        health_task.abort();
        tracing::info!("stopped");
        self.storage.close().await;
        Ok(served?)
    }
}

/// Reflection describes TodoService, the health service, and the google.rpc error details
/// (so that grpcurl can decode ErrorInfo and BadRequest).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Keeps the health service in step with the database: SERVING for "" and
/// "todo.v1.TodoService" while the database answers, NOT_SERVING while it does not.
async fn report_health(reporter: HealthReporter, storage: Storage, interval: Duration) {
    let name = <TodoServiceServer<TodoApi> as NamedService>::NAME;
    let mut last = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let status = match storage.ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(err) => {
                tracing::warn!(error = %err, "health check: database unreachable");
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
