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
#[macro_export]
macro_rules! on_both_vector_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::search::Vectors;

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
pub async fn app_on(vectors: Vectors) -> (TestApp, Option<FakeWeaviate>) {
    app_on_with(vectors, |_| {}).await
}

/// [`app_on`] with settings changed by `configure`.
pub async fn app_on_with(
    vectors: Vectors,
    configure: impl FnOnce(&mut contextd::config::Settings) + Send + 'static,
) -> (TestApp, Option<FakeWeaviate>) {
    match vectors {
        Vectors::EmbeddedPostgres => (TestApp::spawn_with(Setup::POSTGRES, configure).await, None),
        Vectors::EmbeddedSqlite => (TestApp::spawn_with(Setup::SQLITE, configure).await, None),
        Vectors::Weaviate => {
            let fake = FakeWeaviate::start().await;
            let url = fake.url();
            let app = TestApp::spawn_with(Setup::POSTGRES, move |s| {
                s.vector.backend = contextd::config::VectorBackend::Weaviate;
                s.vector.weaviate.url = Some(url);
                configure(s);
            })
            .await;
            (app, Some(fake))
        }
    }
}

/// Writes `id` with `data` (source `mcp`), and the members of `extra` over that body.
pub async fn put_text(app: &TestApp, id: &str, data: Value, extra: Value) {
    let mut body = json!({"data": data, "source": "mcp"});
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

async fn put_vector(app: &TestApp, id: &str, vector: [f64; 4], extra: Value) {
    let mut extra = extra;
    extra["embedding"] = json!(vector);
    put_text(app, id, json!({"id": id}), extra).await;
}

/// A search that must answer 200; its body.
pub async fn search(app: &TestApp, body: Value) -> Value {
    let response = app.post("/contexts/search", body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The ids of a search's results, in order.
pub fn ids(results: &Value) -> Vec<String> {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["context_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Searches until `check` holds: the index follows the store a moment behind.
pub async fn eventually(app: &TestApp, body: Value, check: impl Fn(&Value) -> bool) -> Value {
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

fn scores(results: &Value) -> Vec<f64> {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect()
}

async fn a_text_query_ranks_by_bm25_over_the_best_result(vectors: Vectors) {
    let (app, fake) = app_on(vectors).await;
    put_text(
        &app,
        "twice",
        json!({"title": "pump pressure", "note": "the pump alarm rang"}),
        json!({}),
    )
    .await;
    put_text(
        &app,
        "once",
        json!({"title": "pump overheated and stopped for the night"}),
        json!({}),
    )
    .await;
    put_text(
        &app,
        "other",
        json!({"title": "motor overheat alarm"}),
        json!({}),
    )
    .await;
    // Keys and numbers are not text: only string values are.
    put_text(&app, "keys", json!({"pump": 3, "n": [1, 2]}), json!({})).await;
    // Every context in the index before anything is looked at ("alarm" is in two, "stopped"
    // in another, "pump" in two).
    eventually(&app, json!({"query": "alarm stopped"}), |r| {
        ids(r).len() == 3
    })
    .await;
    let pump = json!({"query": "Pump"});
    let results = eventually(&app, pump.clone(), |r| ids(r).len() == 2).await;
    assert_eq!(ids(&results), ["twice", "once"]);
    let first = &results["results"][0];
    assert_eq!(first["score"], 1.0, "{results}");
    assert_eq!(first["distance"], Value::Null);
    assert_eq!(first["matched"], json!(["keyword"]));
    assert_eq!(first["version"], 1);
    let second = scores(&results)[1];
    assert!(second > 0.0 && second < 1.0, "{results}");
    // No default threshold in keyword mode; an explicit one holds.
    let strict = search(
        &app,
        json!({"query": "pump", "threshold": (second + 1.0) / 2.0}),
    )
    .await;
    assert_eq!(ids(&strict), ["twice"]);
    // Any word of the query finds; the mode may be named.
    let any = search(
        &app,
        json!({"query": "alarm stopped", "mode": "keyword", "include_data": true}),
    )
    .await;
    assert_eq!(ids(&any).len(), 3, "{any}");
    assert!(any["results"][0]["data"].is_object());
    assert!(ids(&search(&app, json!({"query": "zeppelin"})).await).is_empty());
    assert_eq!(
        ids(&search(&app, json!({"query": "pump", "limit": 1})).await),
        ["twice"]
    );
    assert_no_violations(&fake);
}

async fn keyword_search_follows_writes_deletes_and_filters(vectors: Vectors) {
    let (app, fake) = app_on(vectors).await;
    put_text(&app, "root", json!({"t": "the root of it"}), json!({})).await;
    put_text(
        &app,
        "a",
        json!({"t": "valve leak"}),
        json!({"source": "factory", "parent_id": "root"}),
    )
    .await;
    put_text(
        &app,
        "b",
        json!({"t": "valve leak"}),
        json!({"parent_id": "root"}),
    )
    .await;
    put_text(
        &app,
        "c",
        json!({"t": "valve leak"}),
        json!({"source": "factory"}),
    )
    .await;
    let valve = |filter: Value| json!({"query": "valve", "filter": filter});
    // Equal scores: by id.
    let all = eventually(&app, valve(json!({})), |r| ids(r).len() == 3).await;
    assert_eq!(ids(&all), ["a", "b", "c"]);
    assert_eq!(scores(&all), [1.0, 1.0, 1.0]);
    assert_eq!(
        ids(&search(&app, valve(json!({"source": "factory"}))).await),
        ["a", "c"]
    );
    assert_eq!(
        ids(&search(&app, valve(json!({"parent_id": "root"}))).await),
        ["a", "b"]
    );
    // A new version's text replaces the old one's; a deleted context is never found.
    put_text(
        &app,
        "a",
        json!({"t": "gasket replaced"}),
        json!({"source": "factory", "parent_id": "root"}),
    )
    .await;
    app.delete("/contexts/b").await;
    assert!(!ids(&search(&app, valve(json!({}))).await).contains(&"b".to_owned()));
    eventually(&app, valve(json!({})), |r| ids(r) == ["c"]).await;
    let gasket = eventually(&app, json!({"query": "gasket"}), |r| ids(r) == ["a"]).await;
    assert_eq!(gasket["results"][0]["version"], 2);
    assert_no_violations(&fake);
}

async fn hybrid_fuses_both_sides_and_keeps_keyword_only_hits(vectors: Vectors) {
    let (app, fake) = app_on(vectors).await;
    // "both": the nearest vector and the best keyword score (its text is the word alone);
    // "near": only near; "word": only the word (and no embedding at all); "far": the farthest
    // vector and the worst keyword score (the word in a long text).
    put_text(
        &app,
        "both",
        json!({"t": "compressor"}),
        json!({"embedding": [1.0, 0.0, 0.0, 0.0]}),
    )
    .await;
    put_text(
        &app,
        "near",
        json!({"t": "engine noise"}),
        json!({"embedding": [0.9, 0.1, 0.0, 0.0]}),
    )
    .await;
    put_text(&app, "word", json!({"t": "compressor fault"}), json!({})).await;
    put_text(
        &app,
        "far",
        json!({"t": "lunch menu and a compressor that is loud"}),
        json!({"embedding": [-1.0, 0.0, 0.0, 0.0]}),
    )
    .await;
    let hybrid = |alpha: f64| json!({"query": "compressor", "vector": [1.0, 0.0, 0.0, 0.0], "mode": "hybrid", "alpha": alpha});
    // Both indexes follow the store a moment behind: wait for each side to see all it will.
    eventually(&app, json!({"query": "compressor"}), |r| ids(r).len() == 3).await;
    eventually(
        &app,
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "threshold": 0.0}),
        |r| ids(r).len() == 3,
    )
    .await;
    let results = search(&app, hybrid(0.5)).await;
    let by_id = |id: &str| {
        results["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["context_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(ids(&results)[0], "both", "{results}");
    assert_eq!(by_id("both")["matched"], json!(["vector", "keyword"]));
    assert_eq!(by_id("far")["matched"], json!(["vector", "keyword"]));
    assert_eq!(by_id("near")["matched"], json!(["vector"]));
    assert_eq!(by_id("word")["matched"], json!(["keyword"]));
    assert_eq!(by_id("word")["distance"], Value::Null);
    assert!(by_id("near")["distance"].as_f64().unwrap() > 0.0);
    // The best of both sides scores both weights; the worst of both, nothing; one side's
    // middle scores part of its weight.
    let score = |id: &str| by_id(id)["score"].as_f64().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    assert!(close(score("both"), 1.0), "{results}");
    assert!(close(score("far"), 0.0), "{results}");
    assert!(score("word") > 0.0 && score("word") < 0.5, "{results}");
    assert!(score("near") > 0.0 && score("near") < 0.5, "{results}");
    // No default threshold in hybrid mode: the one scoring 0 is still there; an explicit one
    // holds.
    assert_eq!(ids(&results)[3], "far");
    let strict = search(&app, json!({"query": "compressor", "vector": [1.0, 0.0, 0.0, 0.0], "mode": "hybrid", "threshold": 0.9})).await;
    assert_eq!(ids(&strict), ["both"]);
    // alpha 0: the keyword side alone decides the order; 1: the vector side.
    let keyword_first = search(&app, hybrid(0.0)).await;
    assert_eq!(
        ids(&keyword_first)[..2],
        ["both", "word"],
        "{keyword_first}"
    );
    let vector_first = search(&app, hybrid(1.0)).await;
    assert_eq!(ids(&vector_first)[..2], ["both", "near"], "{vector_first}");
    assert_no_violations(&fake);
}

async fn text_search_requests_are_checked(vectors: Vectors) {
    let (app, fake) = app_on(vectors).await;
    let long = "w".repeat(4097);
    for (body, says) in [
        (json!({}), "query"),
        (json!({"limit": 5}), "query"),
        (json!({"query": ""}), "query"),
        (json!({"query": long}), "4096"),
        (json!({"query": "x", "mode": "vector"}), "embedder"),
        (json!({"query": "x", "mode": "hybrid"}), "embedder"),
        (
            json!({"vector": [1.0, 0.0, 0.0, 0.0], "mode": "keyword"}),
            "query",
        ),
        (
            json!({"vector": [1.0, 0.0, 0.0, 0.0], "mode": "hybrid"}),
            "query",
        ),
        (json!({"query": "x", "alpha": 1.5}), "alpha"),
        (json!({"query": "x", "alpha": -0.5}), "alpha"),
        (json!({"query": "x", "mode": "fuzzy"}), "mode"),
        (json!({"query": 7}), "query"),
    ] {
        let body = problem(
            app.post("/contexts/search", body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{body}: should say {says:?}");
    }
    assert_no_violations(&fake);
}

on_both_vector_backends!(
    a_text_query_ranks_by_bm25_over_the_best_result,
    keyword_search_follows_writes_deletes_and_filters,
    hybrid_fuses_both_sides_and_keeps_keyword_only_hits,
    text_search_requests_are_checked,
);

#[tokio::test]
async fn the_keyword_index_is_rebuilt_from_the_store_at_start() {
    for setup in [Setup::SQLITE, Setup::POSTGRES] {
        let app = TestApp::spawn(setup).await;
        put_text(&app, "kept", json!({"t": "sediment filter"}), json!({})).await;
        put_text(&app, "gone", json!({"t": "sediment trap"}), json!({})).await;
        app.delete("/contexts/gone").await;
        let q = json!({"query": "sediment"});
        eventually(&app, q.clone(), |r| ids(r) == ["kept"]).await;
        let app = app.restart().await;
        eventually(&app, q, |r| ids(r) == ["kept"]).await;
    }
}

/// `hybrid` with the vector index down answers its keyword side alone, saying so in each
/// result's `matched`, where `vector` mode answers 503.
#[tokio::test]
async fn hybrid_with_the_vector_index_down_answers_its_keyword_side() {
    let (app, fake) = app_on(Vectors::Weaviate).await;
    let fake = fake.unwrap();
    put_text(
        &app,
        "v",
        json!({"t": "boiler"}),
        json!({"embedding": [1.0, 0.0, 0.0, 0.0]}),
    )
    .await;
    let hybrid = json!({"query": "boiler", "vector": [1.0, 0.0, 0.0, 0.0], "mode": "hybrid"});
    eventually(&app, hybrid.clone(), |r| {
        r["results"][0]["matched"] == json!(["vector", "keyword"])
    })
    .await;
    fake.set_down(true);
    let alone = search(&app, hybrid).await;
    assert_eq!(ids(&alone), ["v"]);
    assert_eq!(alone["results"][0]["matched"], json!(["keyword"]));
    assert_eq!(alone["results"][0]["distance"], Value::Null);
    problem(
        app.post("/contexts/search", json!({"vector": [1.0, 0.0, 0.0, 0.0]}))
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    fake.set_down(false);
}

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
