//! Optimistic concurrency: If-Match, If-None-Match, conflict strategies, concurrent writers.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Setup, TestApp, problem};

async fn put_if_match(app: &TestApp, path: &str, if_match: &str, data: Value) -> reqwest::Response {
    app.http
        .put(app.url(path))
        .header("If-Match", if_match)
        .json(&json!({"data": data, "source": "mcp"}))
        .send()
        .await
        .unwrap()
}

async fn a_matching_if_match_writes(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    let response = put_if_match(&app, "/contexts/c", "\"1\"", json!({"a": 2})).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["version"], 2);
}

async fn a_stale_if_match_is_rejected_with_412_and_the_current_version(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    app.put_data("c", json!({"a": 2})).await;
    for path in ["/contexts/c", "/contexts/c?on_conflict=reject"] {
        let body = problem(
            put_if_match(&app, path, "\"1\"", json!({"a": 3})).await,
            StatusCode::PRECONDITION_FAILED,
        )
        .await;
        assert_eq!(body["current_version"], 2);
    }
    let current: Value = app.get("/contexts/c").await.json().await.unwrap();
    assert_eq!(current["data"], json!({"a": 2}));
}

async fn overwrite_writes_over_a_stale_if_match(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    app.put_data("c", json!({"a": 2})).await;
    let response = put_if_match(
        &app,
        "/contexts/c?on_conflict=overwrite",
        "\"1\"",
        json!({"a": 3}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 3);
    assert_eq!(body["data"], json!({"a": 3}));
}

async fn merge_keeps_changes_to_different_keys_from_both_sides(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1, "b": 1, "gone": true}))
        .await;
    // Theirs: changes a. Ours (based on v1): changes b, removes `gone`, adds c.
    app.put_data("c", json!({"a": 2, "b": 1, "gone": true}))
        .await;
    let response = put_if_match(
        &app,
        "/contexts/c?on_conflict=merge",
        "\"1\"",
        json!({"a": 1, "b": 3, "c": 4}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 3);
    assert_eq!(body["data"], json!({"a": 2, "b": 3, "c": 4}));
}

async fn merge_with_a_key_changed_on_both_sides_answers_409_listing_it(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1, "b": 1})).await;
    app.put_data("c", json!({"a": 2, "b": 1})).await;
    let body = problem(
        put_if_match(
            &app,
            "/contexts/c?on_conflict=merge",
            "\"1\"",
            json!({"a": 3, "b": 2}),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(body["conflicts"], json!(["a"]));
    assert_eq!(body["current_version"], 2);
    let current: Value = app.get("/contexts/c").await.json().await.unwrap();
    assert_eq!(current["version"], 2);
}

async fn if_none_match_star_creates_only(store: Setup) {
    let app = TestApp::spawn(store).await;
    let create = |data: Value| {
        app.http
            .put(app.url("/contexts/c"))
            .header("If-None-Match", "*")
            .json(&json!({"data": data, "source": "mcp"}))
            .send()
    };
    assert_eq!(
        create(json!({"a": 1})).await.unwrap().status(),
        StatusCode::CREATED
    );
    let body = problem(
        create(json!({"a": 2})).await.unwrap(),
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    assert_eq!(body["current_version"], 1);
}

async fn if_match_on_a_missing_context_answers_412(store: Setup) {
    let app = TestApp::spawn(store).await;
    let body = problem(
        put_if_match(&app, "/contexts/c", "\"1\"", json!({})).await,
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    assert_eq!(body["current_version"], Value::Null);
    problem(app.get("/contexts/c").await, StatusCode::NOT_FOUND).await;
}

async fn a_delete_with_a_stale_if_match_answers_412_and_deletes_nothing(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    app.put_data("c", json!({"a": 2})).await;
    let response = app
        .http
        .delete(app.url("/contexts/c"))
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::PRECONDITION_FAILED).await;
    assert_eq!(app.get("/contexts/c").await.status(), StatusCode::OK);
}

const WRITERS: usize = 8;
const WRITES_EACH: usize = 10;

/// Every version number from 1 to `last`, exactly once, in the history.
async fn assert_history_is_1_to(app: &TestApp, id: &str, last: i64) {
    let page: Value = app
        .get(&format!("/contexts/{id}/versions?limit=1000"))
        .await
        .json()
        .await
        .unwrap();
    let versions: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["version"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=last).rev().collect();
    assert_eq!(versions, expected);
}

async fn eight_concurrent_read_modify_write_loops_lose_no_update(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("shared", json!({})).await;

    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (http, url) = (
            app.http.clone(),
            app.url("/contexts/shared?on_conflict=merge"),
        );
        let get_url = app.url("/contexts/shared");
        writers.spawn(async move {
            for i in 1..=WRITES_EACH {
                let current: Value = http
                    .get(&get_url)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let mut data = current["data"].as_object().unwrap().clone();
                data.insert(format!("w{w}"), json!(i));
                let response = http
                    .put(&url)
                    .header("If-Match", format!("\"{}\"", current["version"]))
                    .json(&json!({"data": data, "source": "mcp"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    response.status(),
                    StatusCode::OK,
                    "{}",
                    response.text().await.unwrap()
                );
            }
        });
    }
    while let Some(result) = writers.join_next().await {
        result.unwrap();
    }

    let last = (1 + WRITERS * WRITES_EACH) as i64;
    let current: Value = app.get("/contexts/shared").await.json().await.unwrap();
    assert_eq!(current["version"], last);
    for w in 0..WRITERS {
        assert_eq!(current["data"][format!("w{w}")], WRITES_EACH, "{current}");
    }
    assert_history_is_1_to(&app, "shared", last).await;
}

async fn eight_concurrent_blind_writers_each_make_a_version_and_none_is_duplicated(store: Setup) {
    let app = TestApp::spawn(store).await;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (http, url) = (app.http.clone(), app.url("/contexts/hot"));
        writers.spawn(async move {
            for i in 0..WRITES_EACH {
                let response = http
                    .put(&url)
                    .json(&json!({"data": {"writer": w, "i": i}, "source": "mcp"}))
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{}", response.status());
            }
        });
    }
    while let Some(result) = writers.join_next().await {
        result.unwrap();
    }
    let last = (WRITERS * WRITES_EACH) as i64;
    let current: Value = app.get("/contexts/hot").await.json().await.unwrap();
    assert_eq!(current["version"], last);
    assert_history_is_1_to(&app, "hot", last).await;

    let outbox = app
        .db
        .scalar("SELECT count(DISTINCT version) FROM factory_sync_outbox WHERE context_id = 'hot'")
        .await;
    assert_eq!(outbox, last);
}

async fn concurrent_creates_of_one_id_make_exactly_one_context(store: Setup) {
    let app = TestApp::spawn(store).await;
    let mut creators = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (http, url) = (app.http.clone(), app.url("/contexts"));
        creators.spawn(async move {
            http.post(&url)
                .json(&json!({"context_id": "once", "data": {"w": w}, "source": "mcp"}))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = creators.join_next().await {
        statuses.push(status.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        WRITERS - 1
    );
    assert_history_is_1_to(&app, "once", 1).await;
}

crate::on_both_stores!(
    a_matching_if_match_writes,
    a_stale_if_match_is_rejected_with_412_and_the_current_version,
    overwrite_writes_over_a_stale_if_match,
    merge_keeps_changes_to_different_keys_from_both_sides,
    merge_with_a_key_changed_on_both_sides_answers_409_listing_it,
    if_none_match_star_creates_only,
    if_match_on_a_missing_context_answers_412,
    a_delete_with_a_stale_if_match_answers_412_and_deletes_nothing,
    eight_concurrent_read_modify_write_loops_lose_no_update,
    eight_concurrent_blind_writers_each_make_a_version_and_none_is_duplicated,
    concurrent_creates_of_one_id_make_exactly_one_context,
);
