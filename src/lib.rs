//! todo-service: a gRPC TODO service whose every write is safe to retry.
//!
//! A client sends the same `idempotency-key` metadata on every attempt of one logical write;
//! the key's row and the write commit in one database transaction under a unique constraint,
//! so the write happens once and every attempt gets the same response.
//!
//! # Layout
//!
//! Requests flow top to bottom; each layer only calls the ones below it.
//!
//! - [`startup`]: `Application`: connects storage, runs migrations, binds the listener and
//!   serves TodoService, health and reflection until the caller's shutdown signal.
//! - [`config`]: the clap `Config` (`--help` is the reference).
//! - [`auth`]: who is calling: static bearer tokens (the tokens file), JWTs checked against an
//!   issuer's JWKS (fetched and refreshed), SPIFFE IDs of client certificates.
//! - [`reload`]: files re-read while serving (the tokens file, the TLS files; on SIGHUP and
//!   on change).
//! - [`tls`]: TLS on the gRPC listener, from files that may be renewed while serving.
//! - [`telemetry`]: tracing subscriber set-up (text or JSON logs; spans exported over OTLP
//!   when an endpoint is set).
//! - [`ticker`]: the schedule of background tasks (health checks, key sweeper).
//! - [`health`]: the health service, kept in step with the database.
//! - [`metrics`]: Prometheus registry and the `/metrics` endpoint.
//! - [`grpc`]: the transport. Handlers read metadata, convert proto <-> domain (parsing all
//!   input into domain types), call the use cases, and map errors to statuses.
//! - [`idempotency`]: the key mechanism every write RPC runs through: the `Write` shape, key
//!   newtype, request fingerprint, the claim / replay logic over the `idempotency_keys`
//!   table, and the sweep of expired keys.
//! - [`todos`]: the use cases, one per RPC, over storage, independent of gRPC (reads are
//!   functions; writes return a `Write`).
//! - [`domain`]: validated types (`TodoTitle`, `TodoId`, `UpdateMask`, page tokens, ...).
//! - [`storage`]: SeaORM entities and queries; SQLite or PostgreSQL connections.
//! - [`error`]: the one `ServiceError` enum and its mapping to `tonic::Status`.
//! - [`proto`]: the `todo.v1` messages and client (from the `todo-client` crate) and the
//!   generated server stubs.
//! - [`client`]: the `todo-client` crate, for callers: a client over the generated one that
//!   retries safely (one key per logical write, kept across attempts).
//!
//! Schema migrations live in the separate `migration` crate.

pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub mod reload;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod ticker;
pub mod tls;
pub mod todos;

/// The `todo.v1` protobuf messages and generated client (the `todo-client` crate's), and the
/// generated server stubs over them.
pub mod proto {
    pub use todo_client::proto::*;

    mod server {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("todo.v1");
    }
    pub use server::todo_service_server;

    /// The encoded descriptor set of `todo/v1/todo.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("todo_descriptor");
}

/// The client for callers (the `todo-client` crate).
pub use todo_client as client;
/// The generated client, for Rust services that call TodoService.
pub use todo_client::TodoServiceClient;
