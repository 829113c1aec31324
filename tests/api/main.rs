//! The integration tests: one binary, every test against a real server on a real socket, on
//! SQLite and on PostgreSQL. See `helpers.rs`.

mod helpers;
mod raw_grpc;
mod server_process;

mod client;
mod cluster;
mod complete;
mod create;
mod database;
mod delete;
mod failover;
mod faults;
mod get;
mod hardening;
mod idempotency;
mod identity;
mod jwt;
mod list;
mod migrate;
mod operations;
mod patroni;
mod request_id;
mod rollout;
mod rotation;
mod security;
mod serializable;
mod service;
mod tls_rotation;
mod tracing;
mod update;
