//! `OpenAiEmbedder` against the fake OpenAI of `tests/common/openai_fake.rs`, which answers
//! `/v1/embeddings` as OpenAI's API reference documents it and records what it was sent. Each
//! test starts its own fake on port 0, so they run in parallel.

#[path = "common/openai_fake.rs"]
mod openai_fake;

use std::time::{Duration, Instant};

use contextd::config::{OpenAiEmbedderSettings, Secret};
use contextd::embed::openai::{OpenAiEmbedder, RetryPolicy};
use contextd::embed::{EmbedError, Embedder};
use openai_fake::{FakeOpenAi, INVALID_INPUT, MODEL, RetryAfter};
use serde_json::{Value, json};

const DIMS: usize = 16;

/// Fast backoff, so the failure tests take milliseconds; `Retry-After` honoured up to 3 s.
const FAST: RetryPolicy = RetryPolicy {
    attempts: 4,
    initial_backoff: Duration::from_millis(5),
    max_backoff: Duration::from_millis(20),
    max_retry_after: Duration::from_secs(3),
    max_total_wait: Duration::from_secs(5),
};

fn settings(url: &str, key: Option<&str>) -> OpenAiEmbedderSettings {
    OpenAiEmbedderSettings {
        url: Some(url.to_owned()),
        model: MODEL.to_owned(),
        api_key: key.map(|k| Secret::new(k.to_owned())),
        batch_size: 64,
        timeout_ms: 2_000,
    }
}

fn embedder_with(settings: &OpenAiEmbedderSettings) -> OpenAiEmbedder {
    OpenAiEmbedder::new(settings, DIMS)
        .unwrap()
        .with_retry_policy(FAST)
}

fn embedder(fake: &FakeOpenAi) -> OpenAiEmbedder {
    embedder_with(&settings(&fake.url(), None))
}

fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|t| (*t).to_owned()).collect()
}

fn expected(items: &[&str]) -> Vec<Vec<f32>> {
    items
        .iter()
        .map(|t| FakeOpenAi::embedding(t, DIMS))
        .collect()
}

fn rejected<T: std::fmt::Debug>(result: Result<T, EmbedError>) -> String {
    match result {
        Err(EmbedError::Rejected(message)) => message,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// The whole cause chain.
fn unavailable<T: std::fmt::Debug>(result: Result<T, EmbedError>) -> String {
    match result {
        Err(EmbedError::Unavailable(error)) => format!("{error:#}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

fn statuses(fake: &FakeOpenAi) -> Vec<u16> {
    fake.requests().iter().map(|r| r.status).collect()
}

#[tokio::test]
async fn a_request_carries_the_model_the_texts_and_float_encoding_and_nothing_else() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.require_api_key(Some("sk-test-right-key-0001"));
    let embedder = embedder_with(&settings(&fake.url(), Some("sk-test-right-key-0001")));

    let vectors = embedder
        .embed(&texts(&["alpha beta", "gamma"]))
        .await
        .unwrap();

    assert_eq!(vectors, expected(&["alpha beta", "gamma"]));
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/v1/embeddings");
    // Exactly these keys: no `dimensions`, which many compatible servers refuse.
    assert_eq!(
        request.body,
        json!({"model": MODEL, "input": ["alpha beta", "gamma"], "encoding_format": "float"})
    );
    assert_eq!(
        request.header("authorization"),
        Some("Bearer sk-test-right-key-0001")
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn without_a_key_no_authorization_header_is_sent() {
    let fake = FakeOpenAi::start(DIMS).await;
    embedder(&fake).embed(&texts(&["x"])).await.unwrap();
    assert_eq!(fake.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn a_url_with_a_path_prefix_and_a_trailing_slash_reaches_the_prefixed_endpoint() {
    let fake = FakeOpenAi::start_at("/gateway/openai", DIMS).await;
    let embedder = embedder_with(&settings(&format!("{}/", fake.url()), None));

    embedder.embed(&texts(&["hello"])).await.unwrap();

    assert_eq!(fake.requests()[0].target, "/gateway/openai/v1/embeddings");
    assert_eq!(statuses(&fake), vec![200]);
}

#[tokio::test]
async fn no_texts_make_no_request() {
    let fake = FakeOpenAi::start(DIMS).await;
    assert!(embedder(&fake).embed(&[]).await.unwrap().is_empty());
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn an_answer_listed_out_of_order_is_put_back_in_input_order_by_index() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.answer_out_of_order(true);
    let items = ["one fish", "two fish", "red fish", "blue fish"];

    let vectors = embedder(&fake).embed(&texts(&items)).await.unwrap();

    assert_eq!(vectors, expected(&items));
}

#[tokio::test]
async fn a_call_of_more_than_batch_size_texts_is_split_into_batch_size_requests() {
    let fake = FakeOpenAi::start(DIMS).await;
    let mut small = settings(&fake.url(), None);
    small.batch_size = 3;
    let embedder = embedder_with(&small);
    let items: Vec<String> = (0..8).map(|i| format!("text number {i}")).collect();
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();

    let vectors = embedder.embed(&items).await.unwrap();

    assert_eq!(embedder.batch_size(), 3);
    assert_eq!(fake.batch_sizes(), vec![3, 3, 2]);
    assert_eq!(vectors, expected(&refs));
}

#[tokio::test]
async fn empty_and_blank_texts_are_sent_as_one_space_and_get_a_vector() {
    let fake = FakeOpenAi::start(DIMS).await;

    let vectors = embedder(&fake)
        .embed(&texts(&["", "word", " \n "]))
        .await
        .unwrap();

    assert_eq!(fake.requests()[0].texts(), vec![" ", "word", " "]);
    assert_eq!(vectors.len(), 3);
    assert_eq!(vectors[0], vectors[2]);
    assert_eq!(vectors[1], FakeOpenAi::embedding("word", DIMS));
}

#[tokio::test]
async fn a_429_with_retry_after_seconds_is_retried_after_that_long_then_succeeds() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.fail_next_asking(1, 429, RetryAfter::Seconds(1));

    let vectors = embedder(&fake).embed(&texts(&["x"])).await.unwrap();

    assert_eq!(vectors, expected(&["x"]));
    let requests = fake.requests();
    assert_eq!(statuses(&fake), vec![429, 200]);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
}

#[tokio::test]
async fn a_429_with_retry_after_ms_is_retried_after_that_long() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.fail_next_asking(1, 429, RetryAfter::Millis(300));

    embedder(&fake).embed(&texts(&["x"])).await.unwrap();

    let requests = fake.requests();
    assert_eq!(statuses(&fake), vec![429, 200]);
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(300),
        "waited only {waited:?}"
    );
}

#[tokio::test]
async fn a_503_asking_for_more_than_the_cap_is_not_retried_and_is_unavailable() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.fail_next_asking(1, 503, RetryAfter::Seconds(60));
    let started = Instant::now();

    let error = unavailable(embedder(&fake).embed(&texts(&["x"])).await);

    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(statuses(&fake), vec![503]);
    assert!(error.contains("asked to wait 60s"), "{error}");
    assert!(error.contains("overloaded"), "{error}");
}

#[tokio::test]
async fn server_errors_are_retried_until_the_server_answers() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.fail_next(2, 500);
    fake.fail_next(1, 503);

    let vectors = embedder(&fake).embed(&texts(&["x"])).await.unwrap();

    assert_eq!(vectors, expected(&["x"]));
    assert_eq!(statuses(&fake), vec![500, 500, 503, 200]);
}

#[tokio::test]
async fn server_errors_past_the_attempts_end_as_unavailable() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.fail_next(10, 500);

    let error = unavailable(embedder(&fake).embed(&texts(&["x"])).await);

    assert_eq!(statuses(&fake), vec![500; 4]);
    assert!(error.contains("after 4 attempt(s)"), "{error}");
    assert!(error.contains("The server had an error"), "{error}");
}

#[tokio::test]
async fn a_400_is_rejected_with_the_apis_message_and_not_retried() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.fail_next(1, 400);

    let message = rejected(embedder(&fake).embed(&texts(&["x"])).await);

    assert_eq!(statuses(&fake), vec![400]);
    assert!(message.contains("400 Bad Request"), "{message}");
    assert!(message.contains("fake: injected failure 400"), "{message}");
}

#[tokio::test]
async fn an_unknown_model_is_rejected_with_openais_message_naming_the_setting() {
    let fake = FakeOpenAi::start(DIMS).await;
    let mut other = settings(&fake.url(), None);
    other.model = "text-embedding-9-huge".to_owned();

    let message = rejected(embedder_with(&other).embed(&texts(&["x"])).await);

    assert_eq!(statuses(&fake), vec![404]);
    assert!(
        message.contains("The model `text-embedding-9-huge` does not exist"),
        "{message}"
    );
    assert!(message.contains("embedder.openai.model"), "{message}");
}

#[tokio::test]
async fn a_wrong_key_is_rejected_in_the_apis_words_without_the_key() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.require_api_key(Some("sk-right-key-0000000000"));
    let key = "sk-wrong-key-abcdef987654";
    let embedder = embedder_with(&settings(&fake.url(), Some(key)));

    let result = embedder.embed(&texts(&["x"])).await;
    let shown = format!("{result:?}");
    let message = rejected(result);

    assert_eq!(statuses(&fake), vec![401]);
    assert!(
        message.contains("Incorrect API key provided: [redacted]."),
        "{message}"
    );
    assert!(message.contains("embedder.openai.api_key"), "{message}");
    // Neither the key nor OpenAI's masked quote of it (its first and last characters).
    for leaked in [key, "7654", "**"] {
        assert!(!message.contains(leaked), "{leaked} in {message}");
        assert!(!shown.contains(leaked), "{leaked} in {shown}");
    }
}

#[tokio::test]
async fn a_missing_key_is_rejected_with_openais_401_message() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.require_api_key(Some("sk-right-key-0000000000"));

    let message = rejected(embedder(&fake).embed(&texts(&["x"])).await);

    assert_eq!(statuses(&fake), vec![401]);
    assert!(
        message.contains("You didn't provide an API key"),
        "{message}"
    );
}

#[tokio::test]
async fn a_stalled_server_is_unavailable_within_the_timeout_and_retry_bound() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.stall_next(10, Duration::from_secs(30));
    let mut quick = settings(&fake.url(), None);
    quick.timeout_ms = 200;
    let policy = RetryPolicy {
        attempts: 3,
        ..FAST
    };
    let embedder = OpenAiEmbedder::new(&quick, DIMS)
        .unwrap()
        .with_retry_policy(policy);
    let started = Instant::now();

    let error = unavailable(embedder.embed(&texts(&["x"])).await);

    let elapsed = started.elapsed();
    // Three tries of 200 ms, and at most 2 × 20 ms of backoff between them.
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1_500), "{elapsed:?}");
    assert_eq!(fake.requests().len(), 3);
    assert!(error.contains("after 3 attempt(s)"), "{error}");
}

#[tokio::test]
async fn a_server_that_refuses_connections_is_unavailable() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);

    let error = unavailable(
        embedder_with(&settings(&url, None))
            .embed(&texts(&["x"]))
            .await,
    );

    assert!(error.contains("after 4 attempt(s)"), "{error}");
}

#[tokio::test]
async fn vectors_of_another_length_are_rejected_naming_vector_dimensions_and_the_model() {
    let fake = FakeOpenAi::start(8).await;

    let message = rejected(embedder(&fake).embed(&texts(&["x"])).await);

    assert!(
        message.contains("vectors of 8 floats but vector.dimensions is 16"),
        "{message}"
    );
    assert!(message.contains("embedder.openai.model"), "{message}");
    assert!(message.contains(MODEL), "{message}");
}

#[tokio::test]
async fn probe_returns_the_length_the_server_makes_whatever_vector_dimensions_says() {
    let fake = FakeOpenAi::start(24).await;

    let length = embedder(&fake).probe().await.unwrap();

    assert_eq!(length, 24);
    assert_eq!(fake.batch_sizes(), vec![1]);
}

#[tokio::test]
async fn a_text_over_the_models_input_limit_is_cut_until_the_server_takes_it_and_the_cut_is_kept() {
    let fake = FakeOpenAi::start(DIMS).await;
    fake.set_max_input_tokens(120);
    let embedder = embedder(&fake);
    // 400 words of 5 bytes each: 2000 bytes, far over 120 tokens.
    let long: String = (0..400).map(|i| format!("w{i:03} ")).collect();

    let vectors = embedder
        .embed(&[long.clone(), "short text".to_owned()])
        .await
        .unwrap();

    let requests = fake.requests();
    let last = requests.last().unwrap();
    assert_eq!(last.status, 200);
    assert!(
        requests[..requests.len() - 1]
            .iter()
            .all(|r| r.status == 400)
    );
    let sent = last.texts();
    assert!(long.starts_with(&sent[0]) && sent[0].len() < long.len());
    assert_eq!(sent[1], "short text", "a text within the limit is not cut");
    assert_eq!(vectors[0], FakeOpenAi::embedding(&sent[0], DIMS));

    // The next long text is cut at once.
    fake.clear_requests();
    let other: String = (0..400).map(|i| format!("v{i:03} ")).collect();
    embedder.embed(&[other]).await.unwrap();
    assert_eq!(statuses(&fake), vec![200]);
    assert!(fake.requests()[0].texts()[0].len() <= sent[0].len());
}

// ---------------------------------------------------------------------------------------------
// The fake itself answers as OpenAI does.

async fn post(fake: &FakeOpenAi, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", fake.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn the_fake_refuses_empty_strings_empty_arrays_and_arrays_over_2048_items() {
    let fake = FakeOpenAi::start(DIMS).await;
    for input in [json!(""), json!([]), json!(["a", ""]), json!([[1, 2], []])] {
        let (status, body) = post(&fake, json!({"model": MODEL, "input": input})).await;
        assert_eq!(status, 400, "{input}");
        assert_eq!(body["error"]["message"], INVALID_INPUT, "{input}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let many = vec!["a"; 2049];
    let (status, body) = post(&fake, json!({"model": MODEL, "input": many})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "array_above_max_length");
}

#[tokio::test]
async fn the_fake_takes_a_string_strings_and_token_arrays() {
    let fake = FakeOpenAi::start(DIMS).await;
    for (input, count) in [
        (json!("one"), 1),
        (json!(["one", "two"]), 2),
        (json!([1, 2, 3]), 1),
        (json!([[1, 2], [3]]), 2),
    ] {
        let (status, body) = post(&fake, json!({"model": MODEL, "input": input})).await;
        assert_eq!(status, 200, "{input}: {body}");
        assert_eq!(body["object"], "list");
        assert_eq!(body["data"].as_array().unwrap().len(), count, "{input}");
        assert_eq!(body["data"][0]["object"], "embedding");
        assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), DIMS);
    }
    let (_, body) = post(
        &fake,
        json!({"model": MODEL, "input": "x", "encoding_format": "base64"}),
    )
    .await;
    assert!(body["data"][0]["embedding"].is_string());
}

#[tokio::test]
async fn the_fake_refuses_a_missing_model_an_unknown_argument_and_an_unknown_path() {
    let fake = FakeOpenAi::start(DIMS).await;
    let (status, body) = post(&fake, json!({"input": "x"})).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (400, Some("you must provide a model parameter"))
    );
    let (status, body) = post(
        &fake,
        json!({"model": MODEL, "input": "x", "truncate": true}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "Unrecognized request argument supplied: truncate"
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/embedding", fake.url()))
        .json(&json!({"model": MODEL, "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
}
