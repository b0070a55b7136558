//! Retrieval quality, with the real local model (all-MiniLM-L6-v2, fetched by
//! scripts/fetch-model.sh into target/models): a small corpus of agent-memory notes on distinct
//! topics (tests/fixtures/retrieval_corpus.json), queries that paraphrase a note without sharing
//! a word with it, and queries that only an exact rare word (a part number, a name) can find.
//! Each search mode's mean reciprocal rank is printed; the assertions hold what users of hybrid
//! search ask for: hybrid finds most paraphrases first, and never loses a hit that keyword
//! search finds.
//!
//! Half the contexts carry their embeddings as a client would send them, made by the same model
//! in the test; the server embeds the other half after their writes (and must make the same
//! vectors), and every query.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use contextd::embed::local::LocalEmbedder;
use serde_json::{Value, json};

use crate::model::model_dir;
use crate::search::{Vectors, app_on_with};

/// Words as keyword search sees them: runs of letters and digits, lowercased.
fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

struct Query {
    text: String,
    expect: String,
}

fn queries(corpus: &Value, set: &str) -> Vec<Query> {
    corpus[set]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| Query {
            text: q["query"].as_str().unwrap().to_owned(),
            expect: q["expect"].as_str().unwrap().to_owned(),
        })
        .collect()
}

async fn retrieval_quality(vectors: Vectors) {
    let corpus: Value = serde_json::from_str(include_str!("../fixtures/retrieval_corpus.json"))
        .expect("the corpus is JSON");
    let contexts: Vec<(String, String)> = corpus["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let text_of = |id: &str| &contexts.iter().find(|(i, _)| i == id).unwrap().1;
    let paraphrases = queries(&corpus, "paraphrases");
    let rare = queries(&corpus, "rare_words");
    // The corpus keeps its promises: a paraphrase shares no word with what it means; a rare
    // word is in one note only.
    for q in &paraphrases {
        let shared: Vec<_> = words(&q.text)
            .intersection(&words(text_of(&q.expect)))
            .cloned()
            .collect();
        assert!(shared.is_empty(), "{:?} shares {shared:?}", q.text);
    }
    for q in &rare {
        let holders: Vec<_> = contexts
            .iter()
            .filter(|(_, text)| words(&q.text).is_subset(&words(text)))
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(holders, [q.expect.as_str()], "{:?}", q.text);
    }

    let dir = model_dir();
    let model = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || LocalEmbedder::load(&dir))
            .await
            .unwrap()
            .expect("the model loads")
    };
    let texts: Vec<String> = contexts.iter().map(|(_, text)| text.clone()).collect();
    let embeddings = model.embed_blocking(&texts).expect("the corpus embeds");
    let (app, _fake) = app_on_with(vectors, move |s| {
        s.vector.dimensions = 384;
        s.embedder.backend = contextd::config::EmbedderBackend::Local;
        s.embedder.local.model_dir = Some(dir);
    })
    .await;
    for (n, ((id, text), embedding)) in contexts.iter().zip(&embeddings).enumerate() {
        let body = if n % 2 == 0 {
            json!({"data": {"text": text}, "source": "mcp", "embedding": embedding})
        } else {
            json!({"data": {"text": text}, "source": "mcp"})
        };
        let response = app.put(id, body).await;
        assert!(response.status().is_success(), "{id}");
    }
    // The model loads in the background; the indexes follow the store a moment behind.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ready: Value = app.get("/readyz").await.json().await.unwrap();
        let keyword: Value = app
            .post(
                "/contexts/search",
                json!({"query": contexts.last().unwrap().1, "mode": "keyword"}),
            )
            .await
            .json()
            .await
            .unwrap();
        let vector: Value = app
            .post(
                "/contexts/search",
                json!({"vector": embeddings[0], "threshold": 0.0, "limit": 100}),
            )
            .await
            .json()
            .await
            .unwrap();
        let loaded = keyword["results"][0]["context_id"] == contexts.last().unwrap().0.as_str()
            && vector["results"].as_array().map(Vec::len) == Some(contexts.len());
        if ready["checks"]["embedder"] == "ok" && loaded {
            break;
        }
        assert!(
            Instant::now() < until,
            "not ready: {ready} {keyword} {}",
            vector["results"].as_array().map_or(0, Vec::len)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the server made of a text is what the model makes of it in the test.
    for (n, ((id, _), embedding)) in contexts.iter().zip(&embeddings).enumerate() {
        let body: Value = app
            .get(&format!("/contexts/{id}?include=embedding"))
            .await
            .json()
            .await
            .unwrap();
        let source = if n % 2 == 0 { "client" } else { "server" };
        assert_eq!(body["embedding_source"], source, "{id}");
        let made: Vec<f32> = serde_json::from_value(body["embedding"].clone()).unwrap();
        let cosine: f32 = made.iter().zip(embedding).map(|(a, b)| a * b).sum();
        assert!(cosine > 0.99999, "{id}: cosine {cosine}");
    }

    let rank = |results: &Value, expect: &str| {
        results["results"]
            .as_array()
            .unwrap()
            .iter()
            .position(|r| r["context_id"] == expect)
            .map(|i| i + 1)
    };
    let mut report = Vec::new();
    let mut first = std::collections::HashMap::new();
    let mut found_by_keyword = Vec::new();
    // Hybrid at the contract's default alpha (0.5), and at Weaviate's own default (0.75) for
    // comparison.
    for (mode, alpha) in [
        ("keyword", None),
        ("vector", None),
        ("hybrid", None),
        ("hybrid", Some(0.75)),
    ] {
        for (set, qs) in [("paraphrase", &paraphrases), ("rare word", &rare)] {
            let mut reciprocal = 0.0;
            let mut top = 0;
            for q in qs.iter() {
                let mut body =
                    json!({"query": q.text, "mode": mode, "limit": 10, "threshold": 0.0});
                if let Some(alpha) = alpha {
                    body["alpha"] = json!(alpha);
                }
                let response = app.post("/contexts/search", body).await;
                let status = response.status();
                let results: Value = response.json().await.unwrap();
                assert_eq!(status, 200, "{mode} {:?}: {results}", q.text);
                let at = rank(&results, &q.expect);
                reciprocal += at.map_or(0.0, |r| 1.0 / r as f64);
                top += usize::from(at == Some(1));
                if mode == "keyword" && at.is_some() {
                    found_by_keyword.push(q.text.clone());
                }
                if mode == "hybrid" && alpha.is_none() {
                    first.insert(q.text.clone(), at);
                }
            }
            let mode = match alpha {
                Some(alpha) => format!("{mode} {alpha}"),
                None => mode.to_owned(),
            };
            report.push(format!(
                "{mode:11} {set:10} MRR {:.3}, first {top}/{}",
                reciprocal / qs.len() as f64,
                qs.len()
            ));
        }
    }
    eprintln!(
        "retrieval quality ({vectors:?}):\n  {}",
        report.join("\n  ")
    );
    // Hybrid never loses what keyword search finds...
    for text in &found_by_keyword {
        assert!(
            first[text].is_some(),
            "hybrid lost {text:?}, which keyword search finds; {report:#?}"
        );
    }
    // ... finds every rare word first ...
    for q in &rare {
        assert_eq!(first[&q.text], Some(1), "{:?}; {report:#?}", q.text);
    }
    // ... and puts the right context first for most queries, paraphrases (which keyword
    // search cannot find at all) included.
    let all = paraphrases.len() + rare.len();
    let right_first = first.values().filter(|at| **at == Some(1)).count();
    assert!(
        right_first * 3 >= all * 2,
        "hybrid put only {right_first} of {all} first; {report:#?}"
    );
    let paraphrased = paraphrases
        .iter()
        .filter(|q| first[&q.text].is_some())
        .count();
    assert_eq!(paraphrased, paraphrases.len(), "{report:#?}");
}

crate::on_both_vector_backends!(retrieval_quality);
