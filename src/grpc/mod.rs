//! The gRPC transport: the TodoService handlers, proto <-> domain conversion, the idempotency
//! metadata, the guards every call passes first (size limits, authentication), and the edge
//! layer that gives calls ending before their handler a deliberate status, a log line and a
//! count.

pub mod connections;
pub mod convert;
pub mod edge;
pub mod guard;
pub mod keys;
pub mod limits;
pub mod metadata;
mod service;

pub use service::TodoApi;
