//! The bad-input table of API.md: every client mistake is problem+json with its status, and
//! nothing is stored.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Setup, TestApp, problem};

async fn raw_put(
    app: &TestApp,
    id: &str,
    content_type: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = app
        .http
        .put(app.url(&format!("/contexts/{id}")))
        .body(body.to_owned());
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    request.send().await.unwrap()
}

async fn assert_not_stored(app: &TestApp, id: &str) {
    problem(
        app.get(&format!("/contexts/{id}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

async fn malformed_json_answers_400(store: Setup) {
    let app = TestApp::spawn(store).await;
    for body in [
        "{\"data\":",
        "not json",
        "",
        "{\"data\": {}, \"source\": \"mcp\"} trailing",
    ] {
        problem(
            raw_put(&app, "c", Some("application/json"), body).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    assert_not_stored(&app, "c").await;
}

async fn a_body_that_is_not_json_answers_415(store: Setup) {
    let app = TestApp::spawn(store).await;
    let body = r#"{"data": {}, "source": "mcp"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        problem(
            raw_put(&app, "c", content_type, body).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        )
        .await;
    }
    assert_not_stored(&app, "c").await;
}

async fn an_unknown_route_answers_404(store: Setup) {
    let app = TestApp::spawn(store).await;
    problem(app.get("/nothing/here").await, StatusCode::NOT_FOUND).await;
    problem(app.get("/contexts/a/b/c/d").await, StatusCode::NOT_FOUND).await;
}

async fn a_wrong_method_answers_405_with_allow(store: Setup) {
    let app = TestApp::spawn(store).await;
    let response = app.http.patch(app.url("/contexts/c")).send().await.unwrap();
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    for method in ["GET", "PUT", "DELETE"] {
        assert!(allow.contains(method), "{allow}");
    }
    problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    let response = app.http.delete(app.url("/contexts")).send().await.unwrap();
    problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
}

async fn a_context_over_the_size_limit_answers_413_with_limit_and_actual_and_stores_nothing(
    store: Setup,
) {
    let app = TestApp::spawn_with(store, |s| s.limits.max_context_bytes = 4096).await;
    let data = json!({"blob": "x".repeat(4096)});
    let actual = serde_json::to_string(&data).unwrap().len() + "{}".len();
    let body = problem(
        app.put("big", json!({"data": data, "source": "mcp"})).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(body["limit"], 4096);
    assert_eq!(body["actual"], actual);
    assert_not_stored(&app, "big").await;

    // Metadata counts too; exactly at the limit is fine.
    let metadata = json!({"m": "y".repeat(4096 - r#"{}{"m":""}"#.len())});
    let at_limit = app
        .put(
            "edge",
            json!({"data": {}, "metadata": metadata, "source": "mcp"}),
        )
        .await;
    assert_eq!(at_limit.status(), StatusCode::CREATED);
    assert_eq!(at_limit.json::<Value>().await.unwrap()["size_bytes"], 4096);
}

async fn a_body_far_over_any_limit_answers_413_problem(store: Setup) {
    let app = TestApp::spawn_with(store, |s| s.limits.max_context_bytes = 4096).await;
    let body = format!(
        r#"{{"data": {{"blob": "{}"}}, "source": "mcp"}}"#,
        "x".repeat(1 << 20)
    );
    problem(
        raw_put(&app, "huge", Some("application/json"), &body).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_not_stored(&app, "huge").await;
}

async fn well_formed_but_invalid_writes_answer_422_and_store_nothing(store: Setup) {
    let app = TestApp::spawn(store).await;
    let cases = [
        ("c", json!({"data": [1, 2], "source": "mcp"})),
        ("c", json!({"data": "text", "source": "mcp"})),
        ("c", json!({"data": null, "source": "mcp"})),
        ("c", json!({"source": "mcp"})),
        ("c", json!({"data": {}})),
        ("c", json!({"data": {}, "source": "slack"})),
        ("c", json!({"data": {}, "source": "mcp", "metadata": [1]})),
        (
            "c",
            json!({"data": {}, "source": "mcp", "parent_id": "bad id"}),
        ),
        ("c", json!({"data": {}, "source": "mcp", "parent_id": "c"})),
        (
            "c",
            json!({"data": {}, "source": "mcp", "embedding": [1.0, 2.0]}),
        ),
        (
            "c",
            json!({"data": {}, "source": "mcp", "embedding": [0.0, 0.0, 0.0, 0.0]}),
        ),
        (
            "c",
            json!({"data": {}, "source": "mcp", "embedding": ["a", 1, 2, 3]}),
        ),
        (
            "c",
            json!({"data": {}, "source": "mcp", "context_id": "other"}),
        ),
        (
            "c",
            json!({"data": {}, "source": "mcp", "changed_by": "x".repeat(256)}),
        ),
        ("bad%20id", json!({"data": {}, "source": "mcp"})),
        ("bad!", json!({"data": {}, "source": "mcp"})),
    ];
    for (id, body) in cases {
        problem(
            app.put(id, body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let too_long = "a".repeat(256);
    problem(
        app.put(&too_long, json!({"data": {}, "source": "mcp"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        app.post(
            "/contexts",
            json!({"context_id": "no/slash", "data": {}, "source": "mcp"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_not_stored(&app, "c").await;
    let list: Value = app.get("/contexts").await.json().await.unwrap();
    assert_eq!(list["items"], json!([]));
}

async fn bad_query_values_answer_422(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({})).await;
    for path in [
        "/contexts?limit=0",
        "/contexts?limit=1001",
        "/contexts?limit=-1",
        "/contexts?limit=ten",
        "/contexts?source=slack",
        "/contexts?parent_id=bad%20id",
        "/contexts/c/versions?limit=0",
        "/contexts/c?include=everything",
        "/contexts/bad%20id",
    ] {
        problem(app.get(path).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let response = app
        .http
        .put(app.url("/contexts/c?on_conflict=maybe"))
        .json(&json!({"data": {"a": 1}, "source": "mcp"}))
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
}

async fn a_malformed_if_match_answers_400_and_writes_nothing(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    let response = app
        .http
        .put(app.url("/contexts/c"))
        .header("If-Match", "W/\"1\"")
        .json(&json!({"data": {"a": 2}, "source": "mcp"}))
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::BAD_REQUEST).await;
    let current: Value = app.get("/contexts/c").await.json().await.unwrap();
    assert_eq!(current["version"], 1);
}

crate::on_both_stores!(
    malformed_json_answers_400,
    a_body_that_is_not_json_answers_415,
    an_unknown_route_answers_404,
    a_wrong_method_answers_405_with_allow,
    a_context_over_the_size_limit_answers_413_with_limit_and_actual_and_stores_nothing,
    a_body_far_over_any_limit_answers_413_problem,
    well_formed_but_invalid_writes_answer_422_and_store_nothing,
    bad_query_values_answer_422,
    a_malformed_if_match_answers_400_and_writes_nothing,
);
