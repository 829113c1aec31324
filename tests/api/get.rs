//! GetTodo: ids in any case, NOT_FOUND, malformed ids.

use tonic::Code;

use crate::both_backends;
use crate::helpers::{Backend, assert_invalid_field, spawn_app};

both_backends!(
    get_accepts_ids_in_any_case,
    get_of_a_missing_id_is_not_found,
    get_of_a_malformed_id_is_invalid,
);

async fn get_accepts_ids_in_any_case(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_todo("case").await;
    let fetched = app.get(&created.id.to_uppercase()).await.unwrap();
    assert_eq!(fetched.id, created.id);
    assert_eq!(fetched.id, created.id.to_lowercase());
}

async fn get_of_a_missing_id_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let status = app
        .get("01890a5d-ac96-774b-bcce-b302099a8057")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

async fn get_of_a_malformed_id_is_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_todo("x").await;
    for id in [
        String::new(),
        "not-a-uuid".to_owned(),
        format!(" {}", created.id),
        format!("{} ", created.id),
        created.id.replace('-', ""),
        format!("{{{}}}", created.id),
    ] {
        let status = app.get(&id).await.unwrap_err();
        assert_invalid_field(&status, "id");
    }
}
