//! History: listing, reading, retention, restore.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Setup, TestApp, problem};

async fn versions_are_listed_newest_first_and_page_by_cursor(store: Setup) {
    let app = TestApp::spawn(store).await;
    for n in 1..=5 {
        app.put_data("c", json!({"n": n})).await;
    }
    let first: Value = app
        .get("/contexts/c/versions?limit=2")
        .await
        .json()
        .await
        .unwrap();
    let versions = |page: &Value| -> Vec<i64> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["version"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(versions(&first), vec![5, 4]);
    assert_eq!(first["items"][0]["change_type"], "update");
    assert_eq!(first["items"][0]["size_bytes"], r#"{"n":5}{}"#.len());
    assert!(first["items"][0]["changed_at"].is_string());

    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get(&format!("/contexts/c/versions?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(versions(&second), vec![3, 2]);
    let cursor = second["next_cursor"].as_str().unwrap();
    let last: Value = app
        .get(&format!("/contexts/c/versions?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(versions(&last), vec![1]);
    assert_eq!(last["items"][0]["change_type"], "create");
    assert_eq!(last["next_cursor"], Value::Null);
}

async fn one_version_is_returned_with_its_data_and_who_changed_it(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put(
        "c",
        json!({"data": {"a": 1}, "metadata": {"m": 1}, "source": "mcp", "changed_by": "agent-7"}),
    )
    .await;
    app.put_data("c", json!({"a": 2})).await;
    let response = app.get("/contexts/c/versions/1").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["context_id"], "c");
    assert_eq!(body["version"], 1);
    assert_eq!(body["data"], json!({"a": 1}));
    assert_eq!(body["metadata"], json!({"m": 1}));
    assert_eq!(body["change_type"], "create");
    assert_eq!(body["changed_by"], "agent-7");
    assert!(body["changed_at"].is_string());

    problem(
        app.get("/contexts/c/versions/3").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get("/contexts/c/versions/0").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get("/contexts/c/versions/x").await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

async fn retention_prunes_in_the_write_and_a_pruned_version_answers_410(store: Setup) {
    let app = TestApp::spawn_with(store, |s| s.versions.retention = 3).await;
    for n in 1..=5 {
        app.put_data("c", json!({"n": n})).await;
    }
    let page: Value = app.get("/contexts/c/versions").await.json().await.unwrap();
    let kept: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["version"].as_i64().unwrap())
        .collect();
    assert_eq!(kept, vec![5, 4, 3]);

    let rows = app
        .db
        .scalar("SELECT count(*) FROM factory_context_versions WHERE context_id = 'c'")
        .await;
    assert_eq!(rows, 3);

    for path in [
        "/contexts/c/versions/2",
        "/contexts/c/versions/1",
        "/contexts/c?version=2",
    ] {
        problem(app.get(path).await, StatusCode::GONE).await;
    }
    problem(
        app.post("/contexts/c/versions/1/restore", json!({})).await,
        StatusCode::GONE,
    )
    .await;
    assert_eq!(
        app.get("/contexts/c/versions/3").await.status(),
        StatusCode::OK
    );
}

async fn restore_makes_a_new_version_with_the_old_data(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put(
        "c",
        json!({"data": {"a": 1}, "metadata": {"m": "old"}, "source": "mcp"}),
    )
    .await;
    app.put(
        "c",
        json!({"data": {"a": 2}, "metadata": {"m": "new"}, "source": "mcp"}),
    )
    .await;
    let response = app
        .http
        .post(app.url("/contexts/c/versions/1/restore"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"3\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 3);
    assert_eq!(body["data"], json!({"a": 1}));
    assert_eq!(body["metadata"], json!({"m": "old"}));

    let v3: Value = app
        .get("/contexts/c/versions/3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v3["change_type"], "restore");
}

async fn restore_records_who_asked_for_it(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    app.put_data("c", json!({"a": 2})).await;
    let response = app
        .post(
            "/contexts/c/versions/1/restore",
            json!({"changed_by": "ops"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let v3: Value = app
        .get("/contexts/c/versions/3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v3["changed_by"], "ops");
}

async fn restore_of_an_unknown_context_or_version_answers_404(store: Setup) {
    let app = TestApp::spawn(store).await;
    problem(
        app.post("/contexts/nope/versions/1/restore", json!({}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    app.put_data("c", json!({"a": 1})).await;
    problem(
        app.post("/contexts/c/versions/9/restore", json!({})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // No version 0 or below, whatever the preconditions say (404 before any 412).
    for n in ["0", "-3"] {
        let response = app
            .http
            .post(app.url(&format!("/contexts/c/versions/{n}/restore")))
            .header("If-Match", "\"9\"")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        problem(response, StatusCode::NOT_FOUND).await;
    }
}

crate::on_both_stores!(
    versions_are_listed_newest_first_and_page_by_cursor,
    one_version_is_returned_with_its_data_and_who_changed_it,
    retention_prunes_in_the_write_and_a_pruned_version_answers_410,
    restore_makes_a_new_version_with_the_old_data,
    restore_records_who_asked_for_it,
    restore_of_an_unknown_context_or_version_answers_404,
);
