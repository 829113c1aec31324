//! Every TodoService request as a caller can send it: bytes decoded as the RPC's message (the
//! first byte picks the RPC), then parsed into domain types. Properties: nothing panics; a
//! message that does not decode is recognised by the edge layer and answered
//! INVALID_ARGUMENT; a message that parses re-encodes to one that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use todo_service::domain::{Caller, PageTokenKey};
use todo_service::grpc::convert;
use todo_service::grpc::call::invalid_request;
use todo_service::proto;

/// Decodes `bytes` as `M`; a decode error must be one the edge layer turns into
/// INVALID_ARGUMENT.
fn decoded<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    match M::decode(bytes) {
        Ok(message) => Some(message),
        Err(err) => {
            let status = invalid_request(&err.to_string())
                .unwrap_or_else(|| panic!("a decode error the edge does not know: {err}"));
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            None
        }
    }
}

fn reparsed<M: Message + Default>(message: &M) -> M {
    M::decode(message.encode_to_vec().as_slice()).expect("a message re-encodes")
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let key = PageTokenKey::from_bytes([7; 32]);
    let caller = Caller::anonymous();
    match selector % 5 {
        0 => {
            if let Some(m) = decoded::<proto::CreateTodoRequest>(bytes) {
                let parsed = convert::new_todo(&m).ok();
                assert_eq!(parsed, convert::new_todo(&reparsed(&m)).ok());
            }
        }
        1 => {
            if let Some(m) = decoded::<proto::GetTodoRequest>(bytes)
                && let Ok(id) = convert::todo_id("id", &m.id)
            {
                assert_eq!(id.to_string(), m.id.to_ascii_lowercase());
            }
        }
        2 => {
            if let Some(m) = decoded::<proto::ListTodosRequest>(bytes) {
                let parsed = convert::list_query(&m, &key, &caller).ok();
                assert_eq!(parsed, convert::list_query(&reparsed(&m), &key, &caller).ok());
            }
        }
        3 => {
            if let Some(m) = decoded::<proto::UpdateTodoRequest>(bytes) {
                let parsed = convert::update_todo(&m).ok();
                assert_eq!(parsed, convert::update_todo(&reparsed(&m)).ok());
            }
        }
        _ => {
            if let Some(m) = decoded::<proto::DeleteTodoRequest>(bytes) {
                let _ = convert::delete_todo(&m);
            }
        }
    }
});
