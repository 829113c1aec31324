//! CompleteTodos (AIP-136 custom method): all named todos completed in one transaction, or none;
//! keyed like every write.

use tonic::Code;

use crate::both_backends;
use crate::helpers::{Backend, assert_invalid_field, fresh_key, is_replayed, masked, spawn_app};
use crate::security::{ALICE, BOB, authed, bearer, spawn_with_callers};
use todo_service::proto;

both_backends!(
    completes_every_named_todo_in_request_order_and_leaves_completed_ones_as_they_are,
    an_unknown_id_is_not_found_naming_it_and_changes_nothing,
    another_callers_todo_is_not_found_and_stays_as_it_is,
    a_retry_with_the_key_replays_and_another_request_with_it_is_refused,
    concurrent_duplicates_complete_once_and_all_get_the_same_answer,
    invalid_ids_are_invalid_argument_and_consume_no_key,
);

async fn completes_every_named_todo_in_request_order_and_leaves_completed_ones_as_they_are(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let a = app.create_todo("a").await;
    let b = app.create_todo("b").await;
    let mut done = app.create_todo("done").await;
    done.completed = true;
    let done = app
        .update(masked(done, &["completed"]), None)
        .await
        .expect("update")
        .into_inner();

    let response = app
        .complete(&[&done.id, &b.id, &a.id], None)
        .await
        .expect("complete")
        .into_inner();
    let ids: Vec<&str> = response.todos.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [&done.id, &b.id, &a.id], "in request order");
    assert!(response.todos.iter().all(|t| t.completed));
    assert_eq!(
        response.todos[0], done,
        "already completed: unchanged, etag too"
    );
    for (answered, before) in response.todos[1..].iter().zip([&b, &a]) {
        assert_ne!(
            answered.etag, before.etag,
            "a completed todo has a new etag"
        );
        assert_eq!(answered.title, before.title);
        let stored = app.get(&before.id).await.expect("get");
        assert_eq!(&stored, answered, "the answer is what was stored");
    }
    let untouched = app.get(&done.id).await.expect("get");
    assert_eq!(untouched, done);
}

async fn an_unknown_id_is_not_found_naming_it_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.create_todo("a").await;
    let b = app.create_todo("b").await;
    let unknown = "01890a5d-ac96-774b-bcce-b302099a8057";
    let key = fresh_key();
    let status = app
        .complete(&[&a.id, unknown, &b.id], Some(&key))
        .await
        .expect_err("an unknown id");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains(unknown), "{status:?}");
    for todo in [&a, &b] {
        assert_eq!(&app.get(&todo.id).await.expect("get"), todo, "unchanged");
    }
    assert_eq!(app.key_count().await, 0, "a failed write stores no key");
}

async fn another_callers_todo_is_not_found_and_stays_as_it_is(backend: Backend) {
    let (app, _tokens) = spawn_with_callers(backend).await;
    let mut client = app.client.clone();
    let alices = client
        .create_todo(authed(
            crate::helpers::new_todo("alice's"),
            Some(&bearer(ALICE)),
            None,
        ))
        .await
        .expect("create")
        .into_inner();
    let request = proto::CompleteTodosRequest {
        ids: vec![alices.id.clone()],
        ..proto::CompleteTodosRequest::default()
    };
    let status = client
        .complete_todos(authed(request, Some(&bearer(BOB)), Some("bob-key")))
        .await
        .expect_err("bob cannot complete alice's todo");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let stored = client
        .get_todo(authed(
            proto::GetTodoRequest {
                id: alices.id.clone(),
            },
            Some(&bearer(ALICE)),
            None,
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(stored, alices, "alice's todo is unchanged");
}

async fn a_retry_with_the_key_replays_and_another_request_with_it_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.create_todo("a").await;
    let b = app.create_todo("b").await;
    let key = fresh_key();
    let first = app
        .complete(&[&a.id, &b.id], Some(&key))
        .await
        .expect("first");
    assert!(!is_replayed(&first));
    let retry = app
        .complete(&[&a.id, &b.id], Some(&key))
        .await
        .expect("retry");
    assert!(is_replayed(&retry), "the retry is a replay");
    assert_eq!(retry.get_ref(), first.get_ref());
    assert_eq!(
        app.get(&a.id).await.expect("get").etag,
        first.get_ref().todos[0].etag,
        "written once"
    );

    // The AIP-155 request_id is the same key.
    let by_request_id = proto::CompleteTodosRequest {
        ids: vec![a.id.clone(), b.id.clone()],
        request_id: key.clone(),
    };
    let moved = app
        .client
        .clone()
        .complete_todos(by_request_id)
        .await
        .expect("the key in request_id");
    assert!(is_replayed(&moved));

    let status = app
        .complete(&[&b.id], Some(&key))
        .await
        .expect_err("the key with another request");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(app.key_count().await, 1);
}

async fn concurrent_duplicates_complete_once_and_all_get_the_same_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.create_todo("a").await;
    let b = app.create_todo("b").await;
    let key = fresh_key();
    let ids = [a.id.as_str(), b.id.as_str()];
    let calls = (0..8).map(|_| app.complete(&ids, Some(&key)));
    let answers: Vec<proto::CompleteTodosResponse> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|answer| answer.expect("every duplicate succeeds").into_inner())
        .collect();
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "{answers:?}"
    );
    let stored = app.get(&a.id).await.expect("get");
    assert_eq!(stored, answers[0].todos[0]);
    assert_eq!(stored.etag, "\"2\"", "completed once");
}

async fn invalid_ids_are_invalid_argument_and_consume_no_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.create_todo("a").await;
    let too_many: Vec<String> = (0..101)
        .map(|n| format!("01890a5d-ac96-774b-bcce-{n:012}"))
        .collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let cases: [(&[&str], &str); 4] = [
        (&[], "ids"),
        (&[&a.id, "nope"], "ids[1]"),
        (&[&a.id, &a.id], "ids[1]"),
        (&too_many, "ids"),
    ];
    for (ids, field) in cases {
        let status = app
            .complete(ids, Some("k-invalid"))
            .await
            .expect_err("invalid");
        assert_invalid_field(&status, field);
    }
    assert_eq!(app.key_count().await, 0);
    assert_eq!(app.get(&a.id).await.expect("get"), a);
}
