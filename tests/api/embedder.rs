//! The server's own embeddings of text queries, through an OpenAI-compatible embedder (the
//! fake in tests/common, which speaks that API as OpenAI's reference documents it and answers
//! each text a hashed bag of its words): text-only searches by meaning, the default mode with
//! an embedder, what happens while it is down, and the start-up check of its length.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Setup, TestApp, problem};
use crate::openai_fake::{FakeOpenAi, MODEL};
use crate::search::{eventually, ids, search};

/// The app on `setup` with the fake as its embedder.
pub async fn app_with_embedder(setup: Setup) -> (TestApp, FakeOpenAi) {
    let fake = FakeOpenAi::start(4).await;
    let url = fake.url();
    let app = TestApp::spawn_with(setup, move |s| {
        s.embedder.backend = contextd::config::EmbedderBackend::Openai;
        s.embedder.openai.url = Some(url);
        s.embedder.openai.model = MODEL.to_owned();
        s.embedder.openai.timeout_ms = 500;
    })
    .await;
    (app, fake)
}

/// A context whose embedding is what the fake makes of its text: found by meaning.
async fn put_embedded(app: &TestApp, id: &str, text: &str) {
    let embedding = FakeOpenAi::embedding(text, 4);
    let response = app
        .put(
            id,
            json!({"data": {"t": text}, "source": "mcp", "embedding": embedding}),
        )
        .await;
    assert!(response.status().is_success());
}

async fn a_text_query_is_embedded_by_the_server(setup: Setup) {
    let (app, fake) = app_with_embedder(setup).await;
    put_embedded(&app, "same", "pump pressure").await;
    put_embedded(&app, "other", "lunch").await;
    // With an embedder, a query alone is hybrid: the vector side from the query's embedding.
    let hybrid = eventually(&app, json!({"query": "pump pressure"}), |r| {
        r["results"][0]["matched"] == json!(["vector", "keyword"])
    })
    .await;
    assert_eq!(ids(&hybrid)[0], "same");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.texts() == ["pump pressure"])
    );
    // `vector` mode with only a query: by meaning alone; the same text is the same vector.
    let by_meaning = search(&app, json!({"query": "pump pressure", "mode": "vector"})).await;
    assert_eq!(ids(&by_meaning)[0], "same");
    assert!((by_meaning["results"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert_eq!(by_meaning["results"][0]["matched"], json!(["vector"]));
    // A vector given as well is used as it is: the embedder is not asked.
    let asked = fake.requests().len();
    let given = eventually(
        &app,
        json!({"query": "pump", "vector": FakeOpenAi::embedding("lunch", 4), "mode": "vector"}),
        |r| !ids(r).is_empty(),
    )
    .await;
    assert_eq!(ids(&given)[0], "other");
    assert_eq!(fake.requests().len(), asked);
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["embedder"], "ok", "{ready}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let embedded = crate::harness::metric(&metrics, "contextd_embedding_duration_seconds_count");
    assert!(embedded.is_some_and(|n| n >= 2.0), "{embedded:?}");
}

async fn with_the_embedder_down_hybrid_answers_by_keyword_and_vector_mode_is_503(setup: Setup) {
    let (app, fake) = app_with_embedder(setup).await;
    put_embedded(&app, "valve", "valve leak").await;
    eventually(&app, json!({"query": "valve", "mode": "keyword"}), |r| {
        ids(r) == ["valve"]
    })
    .await;
    fake.fail_next(1000, 500);
    let alone = search(&app, json!({"query": "valve"})).await;
    assert_eq!(ids(&alone), ["valve"]);
    assert_eq!(alone["results"][0]["matched"], json!(["keyword"]));
    let response = app
        .post(
            "/contexts/search",
            json!({"query": "valve", "mode": "vector"}),
        )
        .await;
    assert!(response.headers().contains_key("retry-after"));
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        body["detail"].as_str().unwrap().contains("embedder"),
        "{body}"
    );
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["embedder"], "degraded", "{ready}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let failures = crate::harness::metric(&metrics, "contextd_embedding_failures_total");
    assert!(failures.is_some_and(|n| n >= 2.0), "{failures:?}");

    assert_eq!(
        ready["status"], "ok",
        "an embedder down does not make it unready"
    );
    fake.heal();
    eventually(&app, json!({"query": "valve"}), |r| {
        r["results"][0]["matched"] == json!(["vector", "keyword"])
    })
    .await;
}

crate::on_both_stores!(
    a_text_query_is_embedded_by_the_server,
    with_the_embedder_down_hybrid_answers_by_keyword_and_vector_mode_is_503,
);

#[tokio::test]
async fn start_up_stops_when_the_embedders_length_is_not_vector_dimensions() {
    let fake = FakeOpenAi::start(8).await;
    let db =
        std::sync::Arc::new(crate::harness::TestDb::new(crate::harness::Backend::Sqlite).await);
    let mut settings = TestApp::settings_for(&db.url());
    settings.embedder.backend = contextd::config::EmbedderBackend::Openai;
    settings.embedder.openai.url = Some(fake.url());
    settings.embedder.openai.model = MODEL.to_owned();
    let error = match contextd::startup::App::build(&settings).await {
        Ok(_) => panic!("started with an embedder of 8 and vector.dimensions 4"),
        Err(e) => format!("{e:#}"),
    };
    for says in ["embedder.openai.model", "vector.dimensions", "8", "4"] {
        assert!(error.contains(says), "{error}: should name {says}");
    }
}
