//! The gRPC transport, outside in: the listener (`connections`), the bounds on request bodies
//! (`limits`), the per-call layer that owns a call's span, deadline, log line and metrics
//! (`call`), the guard every call passes first (metadata size, authentication: `guard`; a JWT naming a
//! key not yet fetched waits for the fetch first: `key_refresh`), and
//! the TodoService handlers (`service`), which parse (`convert`, `keys`, `metadata`), run the
//! use case and respond.

pub mod call;
pub mod connections;
pub mod convert;
pub mod guard;
pub mod key_refresh;
pub mod keys;
pub mod limits;
pub mod metadata;
mod service;

pub use service::TodoApi;
