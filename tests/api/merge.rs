//! `POST /contexts/merge`: every strategy, lineage, targets and errors.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Setup, TestApp, problem};

async fn merged(app: &TestApp, body: Value) -> (StatusCode, Value) {
    let response = app.post("/contexts/merge", body).await;
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn union_creates_merged_hex_with_its_lineage(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("a", json!({"x": 1, "shared": "a"})).await;
    app.put_data("b", json!({"y": 2})).await;
    app.put_data("b", json!({"y": 2, "shared": "b"})).await;
    let response = app
        .post(
            "/contexts/merge",
            json!({"context_ids": ["a", "b"], "strategy": "union"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["context_id"].as_str().unwrap();
    assert!(
        id.len() == "merged_".len() + 8
            && id.starts_with("merged_")
            && id[7..].chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(location, format!("/contexts/{id}"));
    assert_eq!(body["data"], json!({"x": 1, "y": 2, "shared": "b"}));
    assert_eq!(body["parent_id"], "a");
    assert_eq!(body["source"], "mcp");
    assert_eq!(body["version"], 1);
    assert_eq!(
        body["metadata"]["merged_from"],
        json!([{"context_id": "a", "version": 1}, {"context_id": "b", "version": 2}])
    );
    let history: Value = app
        .get(&format!("/contexts/{id}/versions"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["items"][0]["change_type"], "merge");
}

async fn latest_takes_the_most_recently_updated(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("old", json!({"v": "old"})).await;
    app.put_data("new", json!({"v": "new"})).await;
    app.put_data("old2", json!({"v": "old2"})).await;
    app.put_data("new", json!({"v": "newest"})).await;
    let (status, body) = merged(
        &app,
        json!({"context_ids": ["new", "old", "old2"], "strategy": "latest"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["data"], json!({"v": "newest"}));
}

async fn intersection_keeps_shared_keys_with_the_first_values(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("a", json!({"k": 1, "only_a": true, "m": "a"}))
        .await;
    app.put_data("b", json!({"k": 2, "m": "b"})).await;
    let (_, body) = merged(
        &app,
        json!({"context_ids": ["a", "b"], "strategy": "intersection"}),
    )
    .await;
    assert_eq!(body["data"], json!({"k": 1, "m": "a"}));
}

async fn deep_merges_nested_objects(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data(
        "a",
        json!({"user": {"name": "jo", "prefs": {"theme": "dark"}}, "n": 1}),
    )
    .await;
    app.put_data("b", json!({"user": {"prefs": {"lang": "fr"}}, "n": 2}))
        .await;
    let (_, body) = merged(&app, json!({"context_ids": ["a", "b"], "strategy": "deep"})).await;
    assert_eq!(
        body["data"],
        json!({"user": {"name": "jo", "prefs": {"theme": "dark", "lang": "fr"}}, "n": 2})
    );
}

async fn a_target_id_names_the_result_and_a_second_merge_makes_its_next_version(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("a", json!({"x": 1})).await;
    app.put_data("b", json!({"y": 1})).await;
    let request = json!({"context_ids": ["a", "b"], "strategy": "union",
                         "target_id": "combined", "source": "factory"});
    let (status, body) = merged(&app, request.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["context_id"], "combined");
    assert_eq!(body["source"], "factory");
    app.put_data("b", json!({"y": 2})).await;
    let (status, body) = merged(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], 2);
    assert_eq!(body["data"], json!({"x": 1, "y": 2}));
}

async fn missing_ids_are_all_named_in_a_404(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("a", json!({})).await;
    let body = problem(
        app.post(
            "/contexts/merge",
            json!({"context_ids": ["a", "ghost1", "ghost2"], "strategy": "union"}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("ghost1") && detail.contains("ghost2"),
        "{detail}"
    );
}

async fn bad_merges_answer_422_and_store_nothing(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("a", json!({})).await;
    app.put_data("b", json!({})).await;
    let too_many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    for body in [
        json!({"context_ids": ["a", "b"], "strategy": "newest"}),
        json!({"context_ids": ["a"], "strategy": "union"}),
        json!({"context_ids": too_many, "strategy": "union"}),
        json!({"context_ids": ["a", "bad id"], "strategy": "union"}),
        json!({"context_ids": ["a", "b"], "strategy": "union", "target_id": "no/slash"}),
        json!({"context_ids": ["a", "b"], "strategy": "union", "source": "slack"}),
        json!({"context_ids": ["a", "b"]}),
    ] {
        problem(
            app.post("/contexts/merge", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let list: Value = app.get("/contexts").await.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

crate::on_both_stores!(
    union_creates_merged_hex_with_its_lineage,
    latest_takes_the_most_recently_updated,
    intersection_keeps_shared_keys_with_the_first_values,
    deep_merges_nested_objects,
    a_target_id_names_the_result_and_a_second_merge_makes_its_next_version,
    missing_ids_are_all_named_in_a_404,
    bad_merges_answer_422_and_store_nothing,
);
