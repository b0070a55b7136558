//! Embeddings made by the server: a context written without an `embedding` gets the
//! embedder's embedding of its text after commit (`embedding_source: server`), with no new
//! version; a client's embedding is never replaced; the write never waits for (or fails
//! because of) the embedder; contexts written before there was an embedder are embedded at
//! start; a change of model has them made again. Through the OpenAI-compatible fake, which
//! answers each text with a hashed bag of its words (so the vector of a text is known).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::embedder::app_with_embedder;
use crate::harness::{Setup, TestApp};
use crate::openai_fake::{FakeOpenAi, MODEL};
use crate::search::ids;

/// GETs `path` until `done` holds of the body (at most 15 s), and returns that body.
async fn get_until(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = app.get(path).await;
        let body: Value = response.json().await.unwrap();
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never came to it: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn server_made(body: &Value) -> bool {
    body["embedding_source"] == "server"
}

/// How many texts the fake was asked to embed that equal `text`.
fn asked_for(fake: &FakeOpenAi, text: &str) -> usize {
    fake.requests()
        .iter()
        .flat_map(|r| r.texts())
        .filter(|t| t == text)
        .count()
}

fn assert_close(got: &Value, want: &[f32]) {
    let got: Vec<f64> = got
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {got}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - f64::from(*w)).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

async fn a_context_written_without_an_embedding_gets_the_servers(setup: Setup) {
    let (app, fake) = app_with_embedder(setup).await;
    let response = app
        .put(
            "pump",
            json!({"data": {"t": "pump pressure"}, "source": "mcp"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    // The write did not wait for the model.
    assert_eq!(created["embedding_source"], Value::Null, "{created}");
    assert_eq!(created["has_embedding"], false, "{created}");

    let embedded = get_until(&app, "/contexts/pump?include=embedding", server_made).await;
    assert_eq!(embedded["version"], 1, "no new version: {embedded}");
    assert_eq!(embedded["has_embedding"], true);
    assert_close(
        &embedded["embedding"],
        &FakeOpenAi::embedding("pump pressure", 4),
    );
    let listed: Value = app.get("/contexts").await.json().await.unwrap();
    assert_eq!(listed["items"][0]["embedding_source"], "server", "{listed}");
    assert_eq!(listed["items"][0]["has_embedding"], true, "{listed}");
    // Found by its meaning, with the vector the server made.
    let found = crate::search::eventually(
        &app,
        json!({"vector": FakeOpenAi::embedding("pump pressure", 4), "mode": "vector"}),
        |r| ids(r) == ["pump"],
    )
    .await;
    assert_eq!(found["results"][0]["matched"], json!(["vector"]));

    // The same write again is no change: the server's embedding is not the client's to match.
    let again = app
        .put(
            "pump",
            json!({"data": {"t": "pump pressure"}, "source": "mcp"}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["version"], 1, "{again}");
    assert_eq!(again["embedding_source"], "server", "{again}");

    // Metadata alone changed: the text is the same, and so is its embedding (not asked again).
    let asked = asked_for(&fake, "pump pressure");
    assert_eq!(asked, 1);
    let response = app
        .put(
            "pump",
            json!({"data": {"t": "pump pressure"}, "source": "mcp", "metadata": {"team": "ops"}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let v2 = get_until(&app, "/contexts/pump", server_made).await;
    assert_eq!(v2["version"], 2, "{v2}");
    assert_eq!(asked_for(&fake, "pump pressure"), asked);

    // New text: a new embedding.
    app.put(
        "pump",
        json!({"data": {"t": "valve leak"}, "source": "mcp"}),
    )
    .await;
    let v3 = get_until(&app, "/contexts/pump?include=embedding", |b| {
        b["version"] == 3 && server_made(b)
    })
    .await;
    assert_close(&v3["embedding"], &FakeOpenAi::embedding("valve leak", 4));

    // A client's embedding is kept as sent, and never replaced by the server's.
    let mine = [0.5f32, 0.5, 0.5, 0.5];
    let response = app
        .put(
            "pump",
            json!({"data": {"t": "lunch menu"}, "source": "mcp", "embedding": mine}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let client: Value = response.json().await.unwrap();
    assert_eq!(client["embedding_source"], "client", "{client}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later: Value = app
        .get("/contexts/pump?include=embedding")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(later["embedding_source"], "client", "{later}");
    assert_close(&later["embedding"], &mine);
    assert_eq!(asked_for(&fake, "lunch menu"), 0);
    // A context with no text has nothing to embed.
    app.put("empty", json!({"data": {"n": 1}, "source": "mcp"}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let empty: Value = app.get("/contexts/empty").await.json().await.unwrap();
    assert_eq!(empty["embedding_source"], Value::Null, "{empty}");
}

async fn writes_go_on_while_the_embedder_is_down_and_are_embedded_once_it_is_back(setup: Setup) {
    let (app, fake) = app_with_embedder(setup).await;
    fake.fail_next(1000, 503);
    for (id, text) in [("a", "pump pressure"), ("b", "valve leak")] {
        let response = app
            .put(id, json!({"data": {"t": text}, "source": "factory"}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let ready = get_until(&app, "/readyz", |r| r["checks"]["embedder"] == "degraded").await;
    assert_eq!(ready["status"], "ok", "{ready}");
    let a: Value = app.get("/contexts/a").await.json().await.unwrap();
    assert_eq!(a["embedding_source"], Value::Null, "{a}");
    fake.heal();
    for id in ["a", "b"] {
        get_until(&app, &format!("/contexts/{id}"), server_made).await;
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let queued = crate::harness::metric(&metrics, "contextd_embedding_queue");
    assert!(queued.is_some(), "the queue's gauge is exported");
}

async fn contexts_written_before_there_was_an_embedder_are_embedded_at_start(setup: Setup) {
    let mut app = TestApp::spawn(setup).await;
    for n in 0..5 {
        app.put(
            &format!("c{n}"),
            json!({"data": {"t": format!("note number {n}")}, "source": "mcp"}),
        )
        .await;
    }
    let before: Value = app.get("/contexts/c0").await.json().await.unwrap();
    assert_eq!(before["embedding_source"], Value::Null);
    app.stop().await;
    let fake = FakeOpenAi::start(4).await;
    let mut settings = app.settings.clone();
    settings.embedder.backend = contextd::config::EmbedderBackend::Openai;
    settings.embedder.openai.url = Some(fake.url());
    settings.embedder.openai.model = MODEL.to_owned();
    let app = TestApp::start(app.db.clone(), settings).await;
    for n in 0..5 {
        let body = get_until(&app, &format!("/contexts/c{n}"), server_made).await;
        assert_eq!(body["version"], 1, "{body}");
    }
    // The index follows the store a moment behind.
    crate::search::eventually(
        &app,
        json!({"query": "note number 3", "mode": "vector"}),
        |r| ids(r).contains(&"c3".to_owned()),
    )
    .await;
}

async fn a_change_of_model_has_the_server_embeddings_made_again(setup: Setup) {
    let (mut app, fake) = app_with_embedder(setup).await;
    app.put(
        "a",
        json!({"data": {"t": "pump pressure"}, "source": "mcp"}),
    )
    .await;
    get_until(&app, "/contexts/a", server_made).await;
    assert_eq!(asked_for(&fake, "pump pressure"), 1);
    app.stop().await;

    // `contextd reindex` with another model makes it again, at once.
    let mut settings = app.settings.clone();
    settings.embedder.openai.model = "another-model".to_owned();
    fake.serve_model("another-model");
    let summary = contextd::startup::reindex(&settings).await.unwrap();
    assert_eq!(summary.remade, Some(1), "{summary}");
    assert!(
        summary
            .to_string()
            .contains("1 server embedding made with the current embedder"),
        "{summary}"
    );
    assert_eq!(asked_for(&fake, "pump pressure"), 2);

    // Serving with yet another model makes it again by itself, in the background.
    settings.embedder.openai.model = "a-third-model".to_owned();
    fake.serve_model("a-third-model");
    let app = TestApp::start(app.db.clone(), settings).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while asked_for(&fake, "pump pressure") < 3 {
        assert!(
            Instant::now() < deadline,
            "never embedded with the new model"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = get_until(&app, "/contexts/a", server_made).await;
    assert_eq!(body["version"], 1);
}

crate::on_both_stores!(
    a_context_written_without_an_embedding_gets_the_servers,
    writes_go_on_while_the_embedder_is_down_and_are_embedded_once_it_is_back,
    contexts_written_before_there_was_an_embedder_are_embedded_at_start,
    a_change_of_model_has_the_server_embeddings_made_again,
);

/// Two instances on one Postgres: the one that did not embed a context drops what its cache
/// held of it (through Redis and through Postgres's commit signal), and serves the embedding.
#[tokio::test]
async fn another_instance_sees_the_servers_embedding() {
    let (app, _fake) = app_with_embedder(Setup::POSTGRES).await;
    let mut other_settings = app.settings.clone();
    other_settings.embedder.backend = contextd::config::EmbedderBackend::None;
    let other = TestApp::start(app.db.clone(), other_settings).await;
    app.put(
        "a",
        json!({"data": {"t": "pump pressure"}, "source": "mcp"}),
    )
    .await;
    // The other instance reads it first, before it is embedded, and caches what it read.
    let first: Value = other.get("/contexts/a").await.json().await.unwrap();
    assert_eq!(first["version"], 1);
    get_until(&app, "/contexts/a", server_made).await;
    let seen = get_until(&other, "/contexts/a?include=embedding", server_made).await;
    assert_close(
        &seen["embedding"],
        &FakeOpenAi::embedding("pump pressure", 4),
    );
}

/// On every vector backend (the embedded index on both stores, and Weaviate's test server), a
/// context the server embedded is found by the meaning of a text query, with no vector sent
/// by anyone.
async fn a_server_embedded_context_is_found_by_meaning(vectors: crate::search::Vectors) {
    let fake = FakeOpenAi::start(4).await;
    let url = fake.url();
    let (app, _weaviate) = crate::search::app_on_with(vectors, move |s| {
        s.embedder.backend = contextd::config::EmbedderBackend::Openai;
        s.embedder.openai.url = Some(url);
        s.embedder.openai.model = MODEL.to_owned();
    })
    .await;
    for (id, text) in [("pump", "pump pressure"), ("lunch", "lunch menu")] {
        let response = app
            .put(id, json!({"data": {"t": text}, "source": "factory"}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let found = crate::search::eventually(
        &app,
        json!({"query": "pump pressure", "mode": "vector", "threshold": 0.9}),
        |r| ids(r) == ["pump"],
    )
    .await;
    assert_eq!(found["results"][0]["matched"], json!(["vector"]));
    let hybrid = crate::search::eventually(&app, json!({"query": "lunch menu"}), |r| {
        r["results"][0]["matched"] == json!(["vector", "keyword"])
    })
    .await;
    assert_eq!(ids(&hybrid)[0], "lunch");
}

crate::on_both_vector_backends!(a_server_embedded_context_is_found_by_meaning);
