//! Distributed tracing: the real server binary exports its spans over OTLP/gRPC to a real
//! receiver started here (a tonic server implementing the collector's TraceService). A call
//! sent with a W3C `traceparent` gets a server span in that trace, under that parent, with the
//! RPC semantic-convention attributes and the idempotency outcome; its database statements are
//! child spans; a replay is marked as one; the log line of the call carries the trace id.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use todo_service::TodoServiceClient;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::both_backends;
use crate::helpers::{Backend, TestDatabase, keyed, masked, new_todo};
use crate::server_process::ServerProcess;

both_backends!(
    a_call_continues_the_callers_trace_with_db_child_spans,
    writes_make_the_fewest_round_trips,
);

/// Every span exported to it.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans);
        self.spans.lock().expect("lock").extend(spans);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_receiver() -> (SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (addr, receiver)
}

fn attribute<'s>(span: &'s Span, key: &str) -> Option<&'s Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| value.value.as_ref())
}

fn text<'s>(span: &'s Span, key: &str) -> &'s str {
    match attribute(span, key) {
        Some(Value::StringValue(text)) => text,
        other => panic!("{key} of span {:?}: {other:?}", span.name),
    }
}

async fn a_call_continues_the_callers_trace_with_db_child_spans(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let (receiver_addr, receiver) = start_receiver().await;
    let endpoint = format!("http://{receiver_addr}");
    let mut server = ServerProcess::start_logging(
        &db.url,
        "127.0.0.1:0",
        &["--otlp-endpoint", &endpoint],
        "warn,todo_service::grpc=info,todo_service::startup=info",
    )
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut client = TodoServiceClient::new(server.channel());
    let call = |key: &str| {
        let mut request = Request::new(new_todo("traced"));
        let metadata = request.metadata_mut();
        metadata.insert("idempotency-key", key.parse().expect("ascii"));
        let traceparent = format!("00-{trace_id}-{parent_id}-01");
        metadata.insert("traceparent", traceparent.parse().expect("ascii"));
        metadata.insert("tracestate", "caller=7d3f".parse().expect("ascii"));
        request
    };
    client
        .create_todo(call("traced-key"))
        .await
        .expect("created");
    client
        .create_todo(call("traced-key"))
        .await
        .expect("replayed");

    // The call's log line names its trace.
    let mut logged = Vec::new();
    while let Some(line) = server.next_log_line(Duration::from_secs(5)).await {
        let json: serde_json::Value = serde_json::from_str(&line).expect("JSON log");
        if json["message"] == "rpc finished" {
            logged.push(json);
            if logged.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(logged.len(), 2, "two rpc log lines");
    assert!(
        logged
            .iter()
            .all(|line| line["span"]["trace_id"] == trace_id),
        "{logged:?}"
    );

    // Stopping the server flushes its spans.
    assert!(server.terminate().await.success());
    let spans = receiver.spans.lock().expect("lock").clone();
    let rpcs: Vec<&Span> = spans
        .iter()
        .filter(|span| span.name == "todo.v1.TodoService/CreateTodo")
        .collect();
    assert_eq!(rpcs.len(), 2, "one server span per call: {spans:#?}");
    // The key's hash travels, never the key: no attribute of any span holds it.
    for span in &spans {
        for kv in &span.attributes {
            let shown = format!("{:?}", kv.value);
            assert!(
                !shown.contains("traced-key"),
                "{} of {}: {shown}",
                kv.key,
                span.name
            );
        }
    }
    for (rpc, outcome) in rpcs.iter().zip(["fresh", "replayed"]) {
        assert_eq!(hex::encode(&rpc.trace_id), trace_id);
        assert_eq!(hex::encode(&rpc.parent_span_id), parent_id);
        assert_eq!(rpc.trace_state, "caller=7d3f", "tracestate is carried on");
        assert_eq!(rpc.kind, SpanKind::Server as i32);
        assert_eq!(text(rpc, "rpc.system"), "grpc");
        assert_eq!(text(rpc, "rpc.service"), "todo.v1.TodoService");
        assert_eq!(text(rpc, "rpc.method"), "CreateTodo");
        assert!(matches!(
            attribute(rpc, "rpc.grpc.status_code"),
            Some(Value::IntValue(0))
        ));
        assert_eq!(text(rpc, "outcome"), outcome);
        let key_hash = text(rpc, "key_hash");
        assert!(!key_hash.is_empty() && !key_hash.contains("traced-key"));
        let logged = logged
            .iter()
            .find(|line| line["span"]["outcome"] == outcome)
            .expect("the call's log line");
        assert_eq!(
            text(rpc, "request_id"),
            logged["span"]["request_id"],
            "logs and trace tied"
        );

        let statements: Vec<&Span> = spans
            .iter()
            .filter(|span| span.parent_span_id == rpc.span_id)
            .collect();
        assert!(
            !statements.is_empty(),
            "{outcome}: database spans under the call"
        );
        let names: Vec<&str> = statements.iter().map(|span| span.name.as_str()).collect();
        println!("{backend:?} {outcome}: statement spans {names:?}");
        let system = match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        };
        for statement in statements {
            assert_eq!(statement.trace_id, rpc.trace_id);
            assert_eq!(statement.kind, SpanKind::Client as i32);
            assert_eq!(text(statement, "db.system.name"), system);
            assert_eq!(text(statement, "db.operation.name"), statement.name);
        }
    }
}

/// The database statements of each write, read off its spans (every round trip has one, BEGIN
/// and COMMIT included): on PostgreSQL an UpdateTodo with a key is the plan's read and ONE
/// statement that makes the change and claims the key (the key is looked up only for a
/// replay); without a key (and a DeleteTodo, which stores no key), the read and the change.
/// On SQLite the change and the claim are one transaction.
async fn writes_make_the_fewest_round_trips(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let (receiver_addr, receiver) = start_receiver().await;
    let endpoint = format!("http://{receiver_addr}");
    let mut server =
        ServerProcess::start(&db.url, "127.0.0.1:0", &["--otlp-endpoint", &endpoint]).await;
    let mut client = TodoServiceClient::new(server.channel());
    let todo = client
        .create_todo(keyed(new_todo("counted"), Some("count-create")))
        .await
        .expect("created")
        .into_inner();
    let title = |title: &str| {
        masked(
            todo_service::proto::Todo {
                title: title.to_owned(),
                ..todo.clone()
            },
            &["title"],
        )
    };
    let updated = client
        .update_todo(keyed(title("keyed"), Some("count-update")))
        .await
        .expect("keyed update")
        .into_inner();
    let replayed = client
        .update_todo(keyed(title("keyed"), Some("count-update")))
        .await
        .expect("replayed update");
    assert_eq!(replayed.get_ref(), &updated);
    let mut unkeyed = title("unkeyed");
    unkeyed.todo.as_mut().expect("a todo").etag = updated.etag.clone();
    let updated = client
        .update_todo(keyed(unkeyed, None))
        .await
        .expect("unkeyed update")
        .into_inner();
    let delete = todo_service::proto::DeleteTodoRequest {
        id: updated.id.clone(),
        etag: updated.etag.clone(),
    };
    client
        .delete_todo(keyed(delete, Some("count-delete")))
        .await
        .expect("keyed delete");
    // Stopping the server flushes its spans.
    assert!(server.terminate().await.success());

    let spans = receiver.spans.lock().expect("lock").clone();
    let mut rpcs: Vec<&Span> = spans
        .iter()
        .filter(|span| span.kind == SpanKind::Server as i32)
        .collect();
    rpcs.sort_by_key(|span| span.start_time_unix_nano);
    let statements = |rpc: &Span| {
        let mut children: Vec<&Span> = spans
            .iter()
            .filter(|span| span.parent_span_id == rpc.span_id)
            .collect();
        children.sort_by_key(|span| span.start_time_unix_nano);
        (
            rpc.name.clone(),
            children
                .iter()
                .map(|span| span.name.clone())
                .collect::<Vec<_>>(),
        )
    };
    let observed: Vec<(String, Vec<String>)> = rpcs.into_iter().map(statements).collect();
    let rpc = |method: &str, statements: &[&str]| {
        (
            format!("todo.v1.TodoService/{method}"),
            statements
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
    };
    let expected = match backend {
        Backend::Postgres => vec![
            rpc("CreateTodo", &["claim idempotency key and insert"]),
            rpc(
                "UpdateTodo",
                &["find todo", "claim idempotency key and change"],
            ),
            // The retry: its etag no longer matches, so the key is looked up and replayed.
            rpc("UpdateTodo", &["find todo", "find idempotency key"]),
            rpc("UpdateTodo", &["find todo", "update todo"]),
            // DeleteTodo stores no key.
            rpc("DeleteTodo", &["find todo", "delete todo"]),
        ],
        Backend::Sqlite => vec![
            // One statement, run in a shared transaction (group commit).
            rpc("CreateTodo", &["claim idempotency key and insert"]),
            // With a key, one write transaction that reads, claims and changes.
            rpc(
                "UpdateTodo",
                &[
                    "begin",
                    "find todo",
                    "claim idempotency key",
                    "update todo",
                    "commit",
                ],
            ),
            rpc(
                "UpdateTodo",
                &["begin", "find todo", "find idempotency key"],
            ),
            rpc("UpdateTodo", &["find todo", "update todo"]),
            rpc("DeleteTodo", &["find todo", "delete todo"]),
        ],
    };
    assert_eq!(observed, expected);
}
