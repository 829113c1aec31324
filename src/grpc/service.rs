//! The TodoService handlers: parse the request, run the use case, respond. Nothing here touches
//! SQL, and nothing here logs, times or counts a call: the per-call layer (`call.rs`) does, for
//! every call alike.

use tonic::{Request, Response, Status};

use super::call;
use super::guard;
use super::keys::{self, RequestIdField};
use super::{convert, metadata};
use crate::domain::{Caller, PageTokenKey};
use crate::error::ServiceError;
use crate::idempotency::{Answered, Executed, Idempotency, IdempotentRequest, Plan, Write};
use crate::proto::{self, todo_service_server::TodoService};
use crate::storage::Storage;
use crate::todos;

/// What a write RPC does with the idempotency key a call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyUse {
    /// Stored with the write, with the response; a retry with the key replays that response.
    StoreAndReplay,
    /// Checked for its form only: the write is idempotent by nature (DeleteTodo).
    CheckOnly,
}

/// The gRPC face of the service.
#[derive(Debug, Clone)]
pub struct TodoApi {
    /// The database, for reads.
    storage: Storage,
    /// Runs every write, with or without an idempotency key.
    idempotency: Idempotency,
    /// Signs and checks ListTodos page tokens (shared by every replica).
    page_token_key: PageTokenKey,
}

impl TodoApi {
    pub fn new(storage: Storage, idempotency: Idempotency, page_token_key: PageTokenKey) -> Self {
        Self {
            storage,
            idempotency,
            page_token_key,
        }
    }

    /// Every write RPC, the one way: reads the caller and the idempotency key (recorded in the
    /// call's span as a hash), parses the message with `parse` (all validation happens here, so
    /// an invalid request consumes no key), turns it into a [`Write`] with `plan`, and runs it
    /// through [`Idempotency::execute`], answering `respond(&output)` or the stored response.
    async fn write<M, P, W, R>(
        &self,
        key_use: KeyUse,
        request: Request<M>,
        parse: impl FnOnce(&M) -> Result<P, ServiceError> + Send,
        plan: impl FnOnce(Caller, P) -> Write<W> + Send,
        respond: impl Fn(&W::Output) -> R + Send + Sync,
    ) -> Result<Response<R>, Status>
    where
        M: RequestIdField + Send + Sync,
        P: Send,
        W: Plan,
        R: prost::Message + Default,
    {
        let (metadata, extensions, message) = request.into_parts();
        let admitted = guard::admitted(&metadata, &extensions)?;
        let method = call::method_of(&extensions)?;
        let key = keys::request_key(&admitted.idempotency_keys, &message)?;
        if let Some(key) = &key {
            tracing::Span::current().record("key_hash", key.log_hash());
        }
        let caller = admitted.caller;
        let parsed = parse(&message)?;
        let keyed = key
            .filter(|_| key_use == KeyUse::StoreAndReplay)
            .map(|key| {
                let fingerprinted = message.without_request_id();
                IdempotentRequest::new(
                    caller.clone(),
                    method.path.as_str(),
                    key,
                    fingerprinted.as_ref(),
                )
            });
        let write = plan(caller, parsed);
        let executed = self
            .idempotency
            .execute(keyed.as_ref(), write, respond)
            .await?;
        Ok(answer(executed))
    }
}

/// The gRPC response of a write: marked `idempotent-replayed` when it is a replay, and telling
/// the per-call layer how it was answered.
fn answer<R>(executed: Executed<R>) -> Response<R> {
    let mut response = Response::new(executed.response);
    if executed.answered == Answered::Replayed {
        metadata::mark_replayed(response.metadata_mut());
    }
    response.extensions_mut().insert(executed.answered);
    response
}

#[tonic::async_trait]
impl TodoService for TodoApi {
    async fn create_todo(
        &self,
        request: Request<proto::CreateTodoRequest>,
    ) -> Result<Response<proto::Todo>, Status> {
        self.write(
            KeyUse::StoreAndReplay,
            request,
            convert::new_todo,
            |caller, new| todos::create(&caller, new),
            convert::todo,
        )
        .await
    }

    async fn get_todo(
        &self,
        request: Request<proto::GetTodoRequest>,
    ) -> Result<Response<proto::Todo>, Status> {
        let caller = guard::admitted(request.metadata(), request.extensions())?.caller;
        let id = convert::todo_id("id", &request.get_ref().id)?;
        let todo = todos::get(&self.storage, &caller, id).await?;
        Ok(Response::new(convert::todo(&todo)))
    }

    async fn list_todos(
        &self,
        request: Request<proto::ListTodosRequest>,
    ) -> Result<Response<proto::ListTodosResponse>, Status> {
        let caller = guard::admitted(request.metadata(), request.extensions())?.caller;
        let query = convert::list_query(request.get_ref(), &self.page_token_key, &caller)?;
        let page = todos::list(&self.storage, &caller, &self.page_token_key, query).await?;
        Ok(Response::new(proto::ListTodosResponse {
            todos: page.todos.iter().map(convert::todo).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_todo(
        &self,
        request: Request<proto::UpdateTodoRequest>,
    ) -> Result<Response<proto::Todo>, Status> {
        self.write(
            KeyUse::StoreAndReplay,
            request,
            convert::update_todo,
            todos::update,
            convert::todo,
        )
        .await
    }

    async fn delete_todo(
        &self,
        request: Request<proto::DeleteTodoRequest>,
    ) -> Result<Response<()>, Status> {
        self.write(
            KeyUse::CheckOnly,
            request,
            convert::delete_todo,
            todos::delete,
            |_: &()| (),
        )
        .await
    }

    async fn complete_todos(
        &self,
        request: Request<proto::CompleteTodosRequest>,
    ) -> Result<Response<proto::CompleteTodosResponse>, Status> {
        self.write(
            KeyUse::StoreAndReplay,
            request,
            convert::complete_todos,
            todos::complete,
            |todos: &Vec<_>| convert::completed_todos(todos),
        )
        .await
    }
}
