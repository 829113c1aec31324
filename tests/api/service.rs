//! The server as a whole: health, reflection, concurrent writers, graceful shutdown.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1 as reflection_v1;
use tonic_reflection::pb::v1alpha as reflection_v1alpha;

use crate::both_backends;
use crate::helpers::{Backend, TestApp, fresh_key, is_replayed, new_todo, spawn_app, spawn_on};

both_backends!(
    health_reports_serving_for_both_names,
    reflection_lists_the_services_in_v1_and_v1alpha,
    sixty_four_concurrent_writers_all_succeed,
    graceful_shutdown_loses_nothing_acknowledged,
);

async fn channel(app: &TestApp) -> Channel {
    Channel::from_shared(app.channel_uri())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Polls the health service until `service` reports `want` (or fails after 5 s).
pub async fn wait_for_health(channel: Channel, service: &str, want: ServingStatus) {
    let mut health = HealthClient::new(channel);
    let mut last = None;
    for _ in 0..100 {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await;
        if let Ok(response) = &response
            && response.get_ref().status == want as i32
        {
            return;
        }
        last = Some(response);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health of {service:?} never became {want:?}; last answer {last:?}");
}

async fn health_reports_serving_for_both_names(backend: Backend) {
    let app = spawn_app(backend).await;
    let channel = channel(&app).await;
    wait_for_health(channel.clone(), "", ServingStatus::Serving).await;
    wait_for_health(channel, "todo.v1.TodoService", ServingStatus::Serving).await;
}

async fn reflection_lists_the_services_in_v1_and_v1alpha(backend: Backend) {
    let app = spawn_app(backend).await;
    let channel = channel(&app).await;
    let want = ["todo.v1.TodoService", "grpc.health.v1.Health"];

    let mut v1 =
        reflection_v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = reflection_v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection_v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = v1
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(reflection_v1::server_reflection_response::MessageResponse::ListServicesResponse(
        list,
    )) = response.message_response
    else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in want {
        assert!(
            names.contains(name),
            "v1 reflection lacks {name}: {names:?}"
        );
    }

    let mut v1alpha =
        reflection_v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = reflection_v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection_v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "todo.v1.TodoService".to_owned(),
            ),
        ),
    };
    let mut responses = v1alpha
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(
        reflection_v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            files,
        ),
    ) = response.message_response
    else {
        panic!("unexpected v1alpha reflection answer {response:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

async fn sixty_four_concurrent_writers_all_succeed(backend: Backend) {
    let app = spawn_app(backend).await;
    let calls = (0..64).map(|i| {
        let app = &app;
        async move {
            let key = fresh_key();
            app.create(new_todo(&format!("writer {i}")), Some(&key))
                .await
        }
    });
    for result in join_all(calls).await {
        let response = result.expect("no writer sees a busy database");
        assert!(!is_replayed(&response));
    }
    assert_eq!(app.todo_count().await, 64);
}

async fn graceful_shutdown_loses_nothing_acknowledged(backend: Backend) {
    let app = spawn_app(backend).await;
    let keys: Vec<String> = (0..48).map(|_| fresh_key()).collect();
    let client = app.client.clone();
    let calls: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let mut client = client.clone();
            let request = crate::helpers::keyed(new_todo(&format!("inflight {i}")), Some(key));
            tokio::spawn(async move { client.create_todo(request).await })
        })
        .collect();
    // Stop as soon as the first call has been answered, with the others still in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !calls.iter().any(|call| call.is_finished()) {
        assert!(std::time::Instant::now() < deadline, "no call was answered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let db = Arc::clone(&app.db);
    app.stop().await;

    let mut acknowledged = Vec::new();
    for call in calls {
        if let Ok(response) = call.await.unwrap() {
            acknowledged.push(response.into_inner());
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "at least the call answered before the stop was acknowledged"
    );
    // Every acknowledged todo survives the shutdown.
    let restarted = spawn_on(db, |_| {}).await;
    for todo in &acknowledged {
        assert_eq!(&restarted.get(&todo.id).await.unwrap(), todo);
    }
    // Retrying every call with its key completes the set: one todo per key, no duplicates.
    for (i, key) in keys.iter().enumerate() {
        restarted
            .create(new_todo(&format!("inflight {i}")), Some(key))
            .await
            .unwrap();
    }
    assert_eq!(restarted.todo_count().await, 48);
    println!(
        "graceful shutdown: {} of 48 acknowledged before stop, 48 rows after retries",
        acknowledged.len()
    );
}
