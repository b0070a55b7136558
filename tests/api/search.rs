//! `POST /contexts/search`, run against both vector backends: the embedded index (on Postgres and
//! on SQLite) and Weaviate (the fake in tests/common, which answers as Weaviate 1.39 does and
//! checks every request against Weaviate's own OpenAPI document).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Setup, TestApp, problem};
use crate::weaviate_fake::FakeWeaviate;

/// The vector backend a search test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Vectors {
    EmbeddedPostgres,
    EmbeddedSqlite,
    Weaviate,
}

/// Makes each listed `async fn name(vectors: Vectors)` three tests.
macro_rules! on_both_vector_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::Vectors;

                #[tokio::test]
                async fn embedded_postgres() {
                    super::$name(Vectors::EmbeddedPostgres).await
                }

                #[tokio::test]
                async fn embedded_sqlite() {
                    super::$name(Vectors::EmbeddedSqlite).await
                }

                #[tokio::test]
                async fn weaviate() {
                    super::$name(Vectors::Weaviate).await
                }
            }
        )*
    };
}

/// The app on `vectors`, and the fake Weaviate when it uses one.
async fn app_on(vectors: Vectors) -> (TestApp, Option<FakeWeaviate>) {
    match vectors {
        Vectors::EmbeddedPostgres => (TestApp::spawn(Setup::POSTGRES).await, None),
        Vectors::EmbeddedSqlite => (TestApp::spawn(Setup::SQLITE).await, None),
        Vectors::Weaviate => {
            let fake = FakeWeaviate::start().await;
            let url = fake.url();
            let app = TestApp::spawn_with(Setup::POSTGRES, move |s| {
                s.vector.backend = contextd::config::VectorBackend::Weaviate;
                s.vector.weaviate.url = Some(url);
            })
            .await;
            (app, Some(fake))
        }
    }
}

async fn put_vector(app: &TestApp, id: &str, vector: [f64; 4], extra: Value) {
    let mut body = json!({"data": {"id": id}, "source": "mcp", "embedding": vector});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let response = app.put(id, body).await;
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

async fn search(app: &TestApp, body: Value) -> Value {
    let response = app.post("/contexts/search", body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn ids(results: &Value) -> Vec<String> {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["context_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Searches until `check` holds: the index follows the store a moment behind.
async fn eventually(app: &TestApp, body: Value, check: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let results = search(app, body.clone()).await;
        if check(&results) {
            return results;
        }
        assert!(
            Instant::now() < until,
            "never got the expected results; last: {results}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_no_violations(fake: &Option<FakeWeaviate>) {
    if let Some(fake) = fake {
        assert_eq!(
            fake.violations(),
            Vec::<String>::new(),
            "requests against Weaviate's spec"
        );
    }
}

async fn scores_follow_weaviates_cosine_arithmetic_highest_first(vectors: Vectors) {
    let (app, fake) = app_on(vectors).await;
    // Weaviate's own fixture (test/acceptance/vector_distances/cosine_test.go), in 4 dimensions.
    put_vector(&app, "same", [0.7, 0.3, 0.0, 0.0], json!({})).await;
    put_vector(&app, "scaled", [1.4, 0.6, 0.0, 0.0], json!({})).await;
    put_vector(&app, "near", [1.0, 1.0, 0.0, 0.0], json!({})).await;
    put_vector(&app, "opposite", [-0.7, -0.3, 0.0, 0.0], json!({})).await;
    let query = |threshold: f64| json!({"vector": [0.7, 0.3, 0.0, 0.0], "threshold": threshold});

    let all = eventually(&app, query(0.0), |r| ids(r).len() == 4).await;
    let results = all["results"].as_array().unwrap();
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    let distances: Vec<f64> = results
        .iter()
        .map(|r| r["distance"].as_f64().unwrap())
        .collect();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-4;
    assert!(close(scores[0], 1.0) && close(scores[1], 1.0), "{scores:?}");
    assert!(
        close(scores[2], 0.964_238) && close(distances[2], 0.071_523),
        "{all}"
    );
    assert!(close(scores[3], 0.0) && close(distances[3], 2.0), "{all}");
    assert_eq!(ids(&all)[2..], ["near", "opposite"]);
    assert_eq!(results[0]["version"], 1);
    assert_eq!(results[0]["source"], "mcp");
    assert_eq!(results[0]["metadata"], json!({}));
    assert!(results[0].get("data").is_none());

    assert_eq!(ids(&search(&app, query(0.95)).await).len(), 3);
    assert_eq!(ids(&search(&app, query(0.97)).await).len(), 2);
    // The default threshold is 0.7.
    let default = search(&app, json!({"vector": [0.7, 0.3, 0.0, 0.0]})).await;
    assert_eq!(ids(&default).len(), 3);
    let one = search(&app, json!({"vector": [0.7, 0.3, 0.0, 0.0], "limit": 1})).await;
    assert_eq!(ids(&one).len(), 1);
    assert_no_violations(&fake);
}

async fn filters_and_include_data_work_as_the_contract_says(vectors: Vectors) {
    let (app, fake) = app_on(vectors).await;
    app.put_data("root", json!({})).await;
    put_vector(
        &app,
        "a",
        [1.0, 0.0, 0.0, 0.0],
        json!({"source": "factory", "parent_id": "root"}),
    )
    .await;
    put_vector(
        &app,
        "b",
        [1.0, 0.1, 0.0, 0.0],
        json!({"source": "mcp", "parent_id": "root"}),
    )
    .await;
    put_vector(
        &app,
        "c",
        [1.0, 0.2, 0.0, 0.0],
        json!({"source": "factory"}),
    )
    .await;
    let q = |filter: Value| json!({"vector": [1.0, 0.0, 0.0, 0.0], "filter": filter, "include_data": true});
    eventually(&app, q(json!({})), |r| ids(r).len() == 3).await;

    assert_eq!(
        ids(&search(&app, q(json!({"source": "factory"}))).await),
        ["a", "c"]
    );
    assert_eq!(
        ids(&search(&app, q(json!({"parent_id": "root"}))).await),
        ["a", "b"]
    );
    let both = search(&app, q(json!({"source": "factory", "parent_id": "root"}))).await;
    assert_eq!(ids(&both), ["a"]);
    assert_eq!(both["results"][0]["data"], json!({"id": "a"}));
    assert_no_violations(&fake);
}

async fn only_current_versions_are_found_and_deleted_contexts_never(vectors: Vectors) {
    let (app, fake) = app_on(vectors).await;
    put_vector(&app, "moving", [1.0, 0.0, 0.0, 0.0], json!({})).await;
    put_vector(&app, "doomed", [1.0, 0.05, 0.0, 0.0], json!({})).await;
    put_vector(&app, "fading", [1.0, 0.1, 0.0, 0.0], json!({})).await;
    let east = json!({"vector": [1.0, 0.0, 0.0, 0.0], "threshold": 0.9});
    eventually(&app, east.clone(), |r| ids(r).len() == 3).await;

    // A deleted context is gone at once, whatever the index still holds.
    app.delete("/contexts/doomed").await;
    assert!(!ids(&search(&app, east.clone()).await).contains(&"doomed".to_owned()));
    // A new embedding moves the context; a version without one leaves the index.
    put_vector(
        &app,
        "moving",
        [0.0, 1.0, 0.0, 0.0],
        json!({"data": {"v": 2}}),
    )
    .await;
    app.put("fading", json!({"data": {"v": 2}, "source": "mcp"}))
        .await;
    eventually(&app, east.clone(), |r| ids(r).is_empty()).await;
    let north = search(&app, json!({"vector": [0.0, 1.0, 0.0, 0.0]})).await;
    assert_eq!(ids(&north), ["moving"]);
    assert_eq!(north["results"][0]["version"], 2);
    assert_no_violations(&fake);
}

async fn bad_searches_answer_422(vectors: Vectors) {
    let (app, fake) = app_on(vectors).await;
    for body in [
        json!({"vector": [1.0, 0.0]}),
        json!({"vector": [0.0, 0.0, 0.0, 0.0]}),
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "limit": 0}),
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "limit": 101}),
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "threshold": 1.5}),
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "threshold": -0.1}),
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "filter": {"colour": "red"}}),
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "filter": {"source": "slack"}}),
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "filter": {"parent_id": "bad id"}}),
        json!({"vector": [1e39, 0.0, 0.0, 0.0]}),
        json!({"vector": "east"}),
    ] {
        problem(
            app.post("/contexts/search", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    assert_no_violations(&fake);
}

on_both_vector_backends!(
    scores_follow_weaviates_cosine_arithmetic_highest_first,
    filters_and_include_data_work_as_the_contract_says,
    only_current_versions_are_found_and_deleted_contexts_never,
    bad_searches_answer_422,
);

#[tokio::test]
async fn the_embedded_index_is_rebuilt_from_the_store_at_start() {
    let app = TestApp::spawn(Setup::SQLITE).await;
    put_vector(&app, "kept", [0.0, 0.0, 1.0, 0.0], json!({})).await;
    let up = json!({"vector": [0.0, 0.0, 1.0, 0.0]});
    eventually(&app, up.clone(), |r| ids(r) == ["kept"]).await;
    let app = app.restart().await;
    // Loaded in the background: found once the index has caught up, and ready says so.
    eventually(&app, up, |r| ids(r) == ["kept"]).await;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ready: Value = app.get("/readyz").await.json().await.unwrap();
        if ready["checks"]["vector"] == "ok" {
            break;
        }
        assert!(Instant::now() < until, "{ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new `vector.weaviate.class_name` (the remedy for a change of dimensions there) starts
/// empty and is filled from the store, though the old class had applied every change.
#[tokio::test]
async fn a_new_weaviate_class_is_filled_from_the_store() {
    let (mut app, fake) = app_on(Vectors::Weaviate).await;
    let fake = fake.unwrap();
    put_vector(&app, "a", [1.0, 0.0, 0.0, 0.0], json!({})).await;
    put_vector(&app, "b", [0.9, 0.1, 0.0, 0.0], json!({})).await;
    let east = json!({"vector": [1.0, 0.0, 0.0, 0.0], "threshold": 0.5});
    eventually(&app, east.clone(), |r| ids(r) == ["a", "b"]).await;
    app.stop().await;
    let mut settings = app.settings.clone();
    settings.vector.weaviate.class_name = "Contexts2".to_owned();
    let app = TestApp::start(app.db.clone(), settings).await;
    eventually(&app, east, |r| ids(r) == ["a", "b"]).await;
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn with_weaviate_down_search_is_503_writes_go_on_and_nothing_is_lost() {
    let (app, fake) = app_on(Vectors::Weaviate).await;
    let fake = fake.unwrap();
    put_vector(&app, "before", [1.0, 0.0, 0.0, 0.0], json!({})).await;
    let east = json!({"vector": [1.0, 0.0, 0.0, 0.0], "threshold": 0.5});
    eventually(&app, east.clone(), |r| ids(r) == ["before"]).await;

    fake.set_down(true);
    let response = app.post("/contexts/search", east.clone()).await;
    assert!(response.headers().contains_key("retry-after"));
    problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    // Writes do not wait for the index.
    let started = Instant::now();
    put_vector(&app, "during", [1.0, 0.1, 0.0, 0.0], json!({})).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["vector"], "down", "{ready}");
    assert_eq!(ready["status"], "degraded");

    fake.set_down(false);
    eventually(&app, east, |r| ids(r) == ["before", "during"]).await;
    assert_eq!(fake.violations(), Vec::<String>::new());
}
