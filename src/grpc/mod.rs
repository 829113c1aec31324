//! The gRPC transport: the TodoService handlers, proto <-> domain conversion, the idempotency
//! metadata, and the guards every call passes first (size limits, authentication).

mod convert;
pub mod guard;
pub mod limits;
pub mod metadata;
mod service;

pub use service::TodoApi;
