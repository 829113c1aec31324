//! The gRPC transport: the TodoService handlers, proto <-> domain conversion, and the
//! idempotency metadata.

mod convert;
pub mod metadata;
mod service;

pub use service::{CREATE_TODO, DELETE_TODO, GET_TODO, LIST_TODOS, Rpc, TodoApi, UPDATE_TODO};
