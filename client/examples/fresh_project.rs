//! What a caller's own crate does with `todo-client` (CI copies this file into a fresh crate
//! outside the workspace, with `todo-client` as a path dependency, and builds and runs it
//! against a real server): create a todo with a key, retry it with that key, complete it.
//!
//! `cargo run -p todo-client --example fresh_project -- http://127.0.0.1:50051`

use todo_client::{CallOptions, TodoClient, proto};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
    let channel = todo_client::Channel::from_shared(target)?.connect().await?;
    let mut client = TodoClient::new(channel);
    if std::env::var_os("TODO_TOKEN").is_some() {
        // Read again before every attempt: a rotated token is picked up by the next call.
        client = client.with_token_provider(|| std::env::var("TODO_TOKEN").unwrap_or_default());
    }
    let todo = proto::Todo {
        title: "from a fresh crate".into(),
        ..Default::default()
    };
    let created = client.create_todo(todo.clone()).await?;
    let again = client
        .create_todo_with(
            todo,
            CallOptions {
                idempotency_key: Some(created.idempotency_key.clone()),
                deadline: None,
            },
        )
        .await?;
    assert!(
        again.replayed && again.value == created.value,
        "a retry replays"
    );
    let done = client
        .complete_todos(vec![created.value.id.clone()], CallOptions::default())
        .await?;
    assert!(done.value[0].completed);
    println!("created, replayed and completed {}", created.value.id);
    Ok(())
}
