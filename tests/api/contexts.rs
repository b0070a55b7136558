//! The context resource: create, read, update, delete, list.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Setup, TestApp, problem};

async fn a_first_put_creates_version_1_with_201_location_and_etag(store: Setup) {
    let app = TestApp::spawn(store).await;
    let response = app
        .put(
            "ctx_123",
            json!({"data": {"user": "john"}, "source": "factory"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["etag"], "\"1\"");
    assert_eq!(response.headers()["location"], "/contexts/ctx_123");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["context_id"], "ctx_123");
    assert_eq!(body["version"], 1);
    assert_eq!(body["source"], "factory");
    assert_eq!(body["parent_id"], Value::Null);
    assert_eq!(body["data"], json!({"user": "john"}));
    assert_eq!(body["metadata"], json!({}));
    assert_eq!(body["size_bytes"], 17);
    assert_eq!(body["has_embedding"], false);
    assert_eq!(body["created_at"], body["updated_at"]);
    assert!(body.get("embedding").is_none());
}

async fn a_changed_put_makes_the_next_version_with_200(store: Setup) {
    let app = TestApp::spawn(store).await;
    let first = app.put_data("c", json!({"n": 1})).await;
    let response = app
        .put("c", json!({"data": {"n": 2}, "source": "mcp"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(body["data"], json!({"n": 2}));
    assert_eq!(body["created_at"], first["created_at"]);
    assert_ne!(body["updated_at"], first["updated_at"]);
}

async fn an_unchanged_put_answers_200_with_the_current_version_and_makes_none(store: Setup) {
    let app = TestApp::spawn(store).await;
    let body = json!({"data": {"a": 1}, "source": "mcp", "metadata": {"m": true}});
    assert_eq!(
        app.put("c", body.clone()).await.status(),
        StatusCode::CREATED
    );
    let again = app.put("c", body).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap()["version"], 1);
    let history: Value = app.get("/contexts/c/versions").await.json().await.unwrap();
    assert_eq!(history["items"].as_array().unwrap().len(), 1);
}

async fn a_put_changing_only_metadata_or_source_or_parent_is_a_change(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("p", json!({})).await;
    app.put_data("c", json!({"a": 1})).await;
    let changes = [
        json!({"data": {"a": 1}, "source": "mcp", "metadata": {"k": 1}}),
        json!({"data": {"a": 1}, "source": "factory", "metadata": {"k": 1}}),
        json!({"data": {"a": 1}, "source": "factory", "metadata": {"k": 1}, "parent_id": "p"}),
    ];
    for (i, body) in changes.into_iter().enumerate() {
        let response: Value = app.put("c", body).await.json().await.unwrap();
        assert_eq!(response["version"], i as i64 + 2, "{response}");
    }
}

async fn get_returns_the_current_version_with_etag_and_names_the_cache_layer(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    let app = app.restart().await;

    // A new process has an empty L1: the write left the context in L2 (Redis) and L3 (the
    // Postgres cache table) where there are such layers.
    let cold = app.get("/contexts/c").await;
    assert_eq!(cold.status(), StatusCode::OK);
    assert_eq!(cold.headers()["etag"], "\"1\"");
    let expected = match store {
        Setup::POSTGRES => "contextd; hit; detail=l2",
        Setup::POSTGRES_L2_OFF => "contextd; hit; detail=l3",
        _ => "contextd; fwd=miss",
    };
    assert_eq!(cold.headers()["cache-status"], expected);
    assert_eq!(cold.json::<Value>().await.unwrap()["data"], json!({"a": 1}));

    let warm = app.get("/contexts/c").await;
    assert_eq!(warm.headers()["cache-status"], "contextd; hit; detail=l1");
}

async fn a_write_is_visible_to_the_next_read_even_when_cached(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    app.get("/contexts/c").await;
    app.put_data("c", json!({"a": 2})).await;
    let body: Value = app.get("/contexts/c").await.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(body["data"], json!({"a": 2}));
}

async fn get_with_a_version_returns_that_version(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    app.put_data("c", json!({"a": 2})).await;
    let response = app.get("/contexts/c?version=1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 1);
    assert_eq!(body["data"], json!({"a": 1}));

    problem(
        app.get("/contexts/c?version=3").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get("/contexts/c?version=x").await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
}

async fn an_unknown_context_answers_404(store: Setup) {
    let app = TestApp::spawn(store).await;
    let body = problem(app.get("/contexts/nope").await, StatusCode::NOT_FOUND).await;
    assert!(body["detail"].as_str().unwrap().contains("nope"));
}

async fn if_none_match_with_the_current_etag_answers_304(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    let fresh = app
        .http
        .get(app.url("/contexts/c"))
        .header("If-None-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(fresh.headers()["etag"], "\"1\"");
    assert!(fresh.bytes().await.unwrap().is_empty());

    app.put_data("c", json!({"a": 2})).await;
    let stale = app
        .http
        .get(app.url("/contexts/c"))
        .header("If-None-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
}

async fn post_without_an_id_generates_ctx_uuid_and_answers_201_with_location(store: Setup) {
    let app = TestApp::spawn(store).await;
    let response = app
        .post("/contexts", json!({"data": {"a": 1}, "source": "mcp"}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["context_id"].as_str().unwrap();
    assert!(id.starts_with("ctx_") && id.len() == 40, "{id}");
    assert_eq!(location, format!("/contexts/{id}"));
    assert_eq!(app.get(&location).await.status(), StatusCode::OK);
}

async fn post_with_an_existing_id_answers_409_and_changes_nothing(store: Setup) {
    let app = TestApp::spawn(store).await;
    let body = json!({"context_id": "taken", "data": {"a": 1}, "source": "mcp"});
    assert_eq!(
        app.post("/contexts", body).await.status(),
        StatusCode::CREATED
    );
    let again = json!({"context_id": "taken", "data": {"a": 2}, "source": "mcp"});
    problem(app.post("/contexts", again).await, StatusCode::CONFLICT).await;
    let current: Value = app.get("/contexts/taken").await.json().await.unwrap();
    assert_eq!(current["data"], json!({"a": 1}));
}

async fn delete_removes_the_context_and_its_history(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    app.put_data("c", json!({"a": 2})).await;
    app.get("/contexts/c").await;
    assert_eq!(
        app.delete("/contexts/c").await.status(),
        StatusCode::NO_CONTENT
    );
    problem(app.get("/contexts/c").await, StatusCode::NOT_FOUND).await;
    problem(app.get("/contexts/c/versions").await, StatusCode::NOT_FOUND).await;
    problem(
        app.get("/contexts/c/versions/1").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(app.delete("/contexts/c").await, StatusCode::NOT_FOUND).await;

    let left = app
        .db
        .scalar(
            "SELECT (SELECT count(*) FROM factory_context_versions WHERE context_id = 'c')
                  + (SELECT count(*) FROM factory_cache_records WHERE context_id = 'c')",
        )
        .await;
    assert_eq!(left, 0);
}

async fn a_deleted_context_can_be_created_again_from_version_1(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    app.put_data("c", json!({"a": 2})).await;
    app.delete("/contexts/c").await;
    let again = app
        .put("c", json!({"data": {"b": 1}, "source": "mcp"}))
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let body: Value = app.get("/contexts/c").await.json().await.unwrap();
    assert_eq!(body["version"], 1);
    assert_eq!(body["data"], json!({"b": 1}));
}

async fn every_write_appends_its_change_to_the_outbox_and_a_delete_a_tombstone(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"a": 1})).await;
    app.put_data("c", json!({"a": 1})).await; // unchanged: no change, no outbox row
    app.put_data("c", json!({"a": 2})).await;
    app.delete("/contexts/c").await;

    let rows = app
        .db
        .query("SELECT context_id, version, op, change_type FROM factory_sync_outbox ORDER BY id")
        .await;
    assert_eq!(
        rows,
        vec![
            vec![json!("c"), json!(1), json!("upsert"), json!("create")],
            vec![json!("c"), json!(2), json!("upsert"), json!("update")],
            vec![json!("c"), json!(2), json!("delete"), Value::Null],
        ]
    );
}

async fn an_embedding_is_stored_and_returned_only_when_asked_for(store: Setup) {
    let app = TestApp::spawn(store).await;
    let created: Value = app
        .put(
            "c",
            json!({"data": {}, "source": "mcp", "embedding": [0.5, -1.0, 0.25, 2.0]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created["has_embedding"], true);
    assert!(created.get("embedding").is_none());

    let with: Value = app
        .get("/contexts/c?include=embedding")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(with["embedding"], json!([0.5, -1.0, 0.25, 2.0]));

    // The embedding is part of the content: a new one is a new version.
    let changed: Value = app
        .put(
            "c",
            json!({"data": {}, "source": "mcp", "embedding": [1.0, 0.0, 0.0, 0.0]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(changed["version"], 2);
}

async fn list_pages_by_cursor_in_id_order_without_data_and_without_repeats(store: Setup) {
    let app = TestApp::spawn(store).await;
    for i in 0..7 {
        app.put_data(&format!("c{i}"), json!({"i": i})).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/contexts?limit=3&cursor={c}"),
            None => "/contexts?limit=3".to_owned(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            assert!(item.get("data").is_none(), "{item}");
            assert!(item["version"].is_i64());
            seen.push(item["context_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
    assert_eq!(seen, expected);
}

async fn list_filters_by_source_and_parent(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put("root", json!({"data": {}, "source": "factory"}))
        .await;
    app.put(
        "a",
        json!({"data": {}, "source": "mcp", "parent_id": "root"}),
    )
    .await;
    app.put(
        "b",
        json!({"data": {}, "source": "factory", "parent_id": "root"}),
    )
    .await;
    app.put("c", json!({"data": {}, "source": "mcp"})).await;

    let ids = |page: Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["context_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let by_source: Value = app.get("/contexts?source=mcp").await.json().await.unwrap();
    assert_eq!(ids(by_source), vec!["a", "c"]);
    let by_parent: Value = app
        .get("/contexts?parent_id=root")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(by_parent), vec!["a", "b"]);
    let both: Value = app
        .get("/contexts?parent_id=root&source=factory")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(both), vec!["b"]);
}

async fn a_cursor_not_issued_by_the_server_answers_400(store: Setup) {
    let app = TestApp::spawn(store).await;
    problem(
        app.get("/contexts?cursor=garbage!").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.get("/contexts/c/versions?cursor=aTpj").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

async fn extreme_numbers_round_trip_exactly_and_an_identical_rewrite_is_unchanged(store: Setup) {
    let app = TestApp::spawn(store).await;
    let data = json!({
        "max": f64::MAX,
        "tiny": 5e-324,
        "neg": -1.7976931348623157e308,
        "u64": u64::MAX,
        "i64": i64::MIN,
        "frac": 0.1,
        "int_float": 5.0,
        "nested": [{"x": 1e300}],
    });
    app.put_data("n", data.clone()).await;
    let app = app.restart().await;
    let read: Value = app.get("/contexts/n").await.json().await.unwrap();
    assert_eq!(read["data"], data);
    let again: Value = app.put_data("n", data).await;
    assert_eq!(again["version"], 1);
}

crate::on_both_stores!(
    a_first_put_creates_version_1_with_201_location_and_etag,
    a_changed_put_makes_the_next_version_with_200,
    an_unchanged_put_answers_200_with_the_current_version_and_makes_none,
    a_put_changing_only_metadata_or_source_or_parent_is_a_change,
    get_returns_the_current_version_with_etag_and_names_the_cache_layer,
    a_write_is_visible_to_the_next_read_even_when_cached,
    get_with_a_version_returns_that_version,
    an_unknown_context_answers_404,
    if_none_match_with_the_current_etag_answers_304,
    post_without_an_id_generates_ctx_uuid_and_answers_201_with_location,
    post_with_an_existing_id_answers_409_and_changes_nothing,
    delete_removes_the_context_and_its_history,
    a_deleted_context_can_be_created_again_from_version_1,
    every_write_appends_its_change_to_the_outbox_and_a_delete_a_tombstone,
    an_embedding_is_stored_and_returned_only_when_asked_for,
    list_pages_by_cursor_in_id_order_without_data_and_without_repeats,
    list_filters_by_source_and_parent,
    a_cursor_not_issued_by_the_server_answers_400,
    extreme_numbers_round_trip_exactly_and_an_identical_rewrite_is_unchanged,
);
