//! The `openai` backend of [`Embedder`]: a client for any OpenAI-compatible
//! `POST {url}/v1/embeddings` (OpenAI itself, Azure-style gateways, Ollama, vLLM,
//! text-embeddings-inference, LM Studio) over one `reqwest::Client`.
//!
//! This layer turns texts into vectors and checks what comes back: one vector per text, put in
//! the texts' order by `index`, each of `vector.dimensions` finite floats. It decides nothing
//! about when or what to embed.
//!
//! What is sent, and why:
//! - `{"model", "input": [texts], "encoding_format": "float"}` and nothing else: not
//!   `dimensions`, which many compatible servers refuse; the length is checked on the answer.
//! - A text that is empty or only whitespace is sent as one space. OpenAI refuses an empty
//!   string in `input` (400 `'$.input' is invalid`), and a blank text has no meaning to lose:
//!   every blank text gets the vector of `" "`.
//! - Texts are cut to [`MAX_INPUT_BYTES`] (at a character boundary). When the server still
//!   refuses an input as too long for its model (OpenAI's and vLLM's "maximum context length",
//!   TEI's 413), the longest texts of the batch are halved and it is sent again, and the cut
//!   that worked is kept for later calls: the trait promises that text beyond the model's limit
//!   is cut off, never an error.
//! - A call is split into requests of at most `embedder.openai.batch_size` texts and
//!   [`MAX_REQUEST_BYTES`] of text, sent one after the other.
//!
//! Failures are split the way callers need them: 429, 408, 5xx, timeouts and connection errors
//! are retried with backoff ([`RetryPolicy`]) and end as [`EmbedError::Unavailable`]; any other
//! 4xx, and an answer of the wrong shape, is [`EmbedError::Rejected`] with the API's own
//! `error.message`, not retried. The API key goes out only in the `Authorization` header, marked
//! sensitive, and is scrubbed from whatever the server says back (OpenAI's 401 quotes the key,
//! masked), so it reaches no log and no error.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{EmbedError, Embedder};
use crate::config::{OpenAiEmbedderSettings, Secret, redact_url};
use crate::domain::embedding::{self, EmbeddingError};

/// The most bytes of one text sent: about OpenAI's 8192-token input limit in English
/// (roughly four bytes a token). Text beyond it is cut off.
pub const MAX_INPUT_BYTES: usize = 32 * 1024;

/// The most bytes of text in one request, whatever `batch_size` says: keeps a request well under
/// OpenAI's 300,000 tokens summed over the inputs, and its body a few hundred KB.
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;

/// The most texts in one request: OpenAI's limit on the `input` array.
pub const MAX_BATCH: usize = 2048;

/// Texts are never cut shorter than this while looking for the model's input limit; a server
/// that refuses even this as too long is misconfigured, and its refusal is returned.
const MIN_INPUT_BYTES: usize = 256;

/// Rounds of "halve the longest texts and send again" (32 KiB down to 512 bytes).
const SHRINK_ROUNDS: u32 = 6;

/// What [`OpenAiEmbedder::probe`] embeds.
const PROBE_TEXT: &str = "contextd embedder probe";

/// How requests are retried on 429, 408, 5xx, timeouts and connection errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per request, the first one included (at least 1).
    pub attempts: u32,
    /// The delay before the second try; it doubles per try, jittered into its upper half.
    pub initial_backoff: Duration,
    /// The longest delay of the backoff itself.
    pub max_backoff: Duration,
    /// The longest `Retry-After` / `retry-after-ms` honoured. A server that asks for more is not
    /// retried at all: the caller ([`EmbedError::Unavailable`]) retries on its own schedule, and
    /// a shorter wait would only earn another 429.
    pub max_retry_after: Duration,
    /// The most time slept between the tries of one request, all retries together.
    pub max_total_wait: Duration,
}

impl Default for RetryPolicy {
    /// Enough to ride out a rate-limit window or a restart while a search caller waits: four
    /// tries, 250 ms doubling up to 2 s, a server's `Retry-After` honoured up to 5 s, and at most
    /// 10 s of sleep in all (plus the tries themselves, each bounded by `timeout_ms`).
    fn default() -> Self {
        Self {
            attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(5),
            max_total_wait: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The sleep before retry number `retry` (1-based), given what the server asked for and what
    /// was slept already; `None` when the request should not be tried again. `jitter` is in
    /// `[0, 1)`.
    fn delay(
        &self,
        retry: u32,
        asked: Option<Duration>,
        waited: Duration,
        jitter: f64,
    ) -> Option<Duration> {
        let exponent = retry.saturating_sub(1).min(20);
        let capped = self
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff);
        // The upper half, so that instances retrying together spread out.
        let backoff = capped.mul_f64(0.5 + jitter.clamp(0.0, 1.0) * 0.5);
        let delay = match asked {
            Some(asked) if asked > self.max_retry_after => return None,
            Some(asked) => asked.max(backoff),
            None => backoff,
        };
        (waited.saturating_add(delay) <= self.max_total_wait).then_some(delay)
    }
}

/// The OpenAI-compatible embedder. Cheap to share behind an `Arc`; the client pools connections.
pub struct OpenAiEmbedder {
    http: reqwest::Client,
    /// `{url}/v1/embeddings`, with the URL's query string (a gateway's `api-version`) kept.
    endpoint: Url,
    /// The endpoint without its query, for messages.
    shown: String,
    /// `embedder.openai.model`.
    model_name: String,
    /// `openai:<model>`.
    identity: String,
    dimensions: usize,
    batch_size: usize,
    /// `Bearer <key>`, marked sensitive so that reqwest's `Debug` hides it.
    bearer: Option<HeaderValue>,
    /// The key itself, only to scrub it from what the server says.
    key: Option<Secret<String>>,
    retry: RetryPolicy,
    /// The longest text sent, in bytes: [`MAX_INPUT_BYTES`], or less once the server refused a
    /// text as too long for its model.
    input_cap: AtomicUsize,
}

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // By hand, so the key never shows up even if someone logs the embedder.
        f.debug_struct("OpenAiEmbedder")
            .field("endpoint", &self.shown)
            .field("model", &self.model_name)
            .field("dimensions", &self.dimensions)
            .field("batch_size", &self.batch_size)
            .field("api_key", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl OpenAiEmbedder {
    /// A client for `settings.url` making vectors of `dimensions` (the configured
    /// `vector.dimensions`) floats. Nothing is sent until the first call; [`Self::probe`] asks
    /// the server what length it makes.
    pub fn new(settings: &OpenAiEmbedderSettings, dimensions: usize) -> anyhow::Result<Self> {
        let url = settings
            .url
            .as_deref()
            .context("embedder.openai.url must be set to use the openai embedder")?;
        let endpoint = endpoint_url(url)?;
        anyhow::ensure!(dimensions > 0, "vector.dimensions must be at least 1");
        anyhow::ensure!(
            !settings.model.trim().is_empty(),
            "embedder.openai.model must be set to use the openai embedder"
        );
        // A blank key (an empty environment variable) is no key: local servers take none.
        let key = settings
            .api_key
            .clone()
            .filter(|key| !key.expose().trim().is_empty());
        let bearer = key
            .as_ref()
            .map(|key| key.bearer_header("embedder.openai.api_key"))
            .transpose()?;
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("contextd/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the embedder's HTTP client")?;
        let mut shown = endpoint.clone();
        shown.set_query(None);
        Ok(Self {
            http,
            endpoint,
            shown: shown.to_string(),
            model_name: settings.model.clone(),
            identity: format!("openai:{}", settings.model),
            dimensions,
            batch_size: settings.batch_size.clamp(1, MAX_BATCH),
            bearer,
            key,
            retry: RetryPolicy::default(),
            input_cap: AtomicUsize::new(MAX_INPUT_BYTES),
        })
    }

    /// The same embedder with another retry policy (tests use a faster one). `attempts: 0` is
    /// taken as 1.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// `{url}/v1/embeddings`, where every request goes.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// The length of the vectors the server makes, from one short text, whatever
    /// `vector.dimensions` says: start-up compares the two and names both keys.
    pub async fn probe(&self) -> Result<usize, EmbedError> {
        let vectors = self.embed_batch(&[PROBE_TEXT.to_owned()]).await?;
        Ok(vectors.first().map_or(0, Vec::len))
    }

    /// One request's texts (at most a batch): cut, sent with retries, decoded; a refusal as too
    /// long makes the longest texts shorter and sends them again. The vectors are not checked
    /// against `vector.dimensions` here.
    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut cap = self.input_cap.load(Ordering::Relaxed);
        let mut longest = 0;
        for round in 0..=SHRINK_ROUNDS {
            let inputs: Vec<&str> = texts.iter().map(|text| prepare(text, cap)).collect();
            let body = serde_json::to_vec(&RequestOut {
                model: &self.model_name,
                input: &inputs,
                encoding_format: "float",
            })
            .map(Bytes::from)
            .map_err(|e| EmbedError::Rejected(format!("serialising the request: {e}")))?;
            let reply = self.send(body).await?;
            if reply.status.is_success() {
                let vectors = decode(&reply.body, inputs.len())
                    .map_err(|e| EmbedError::Rejected(self.answer_problem(&reply, &e)))?;
                if round > 0 && self.input_cap.fetch_min(cap, Ordering::Relaxed) > cap {
                    tracing::warn!(
                        cap_bytes = cap,
                        "the embedder refused a text as too long for its model; texts are cut at \
                         this many bytes from now on"
                    );
                }
                return Ok(vectors);
            }
            let message = self.scrub(&api_message(&reply.body));
            longest = inputs.iter().map(|input| input.len()).max().unwrap_or(0);
            if !is_too_long(reply.status, &message) || longest <= MIN_INPUT_BYTES {
                return Err(EmbedError::Rejected(self.refusal(reply.status, &message)));
            }
            cap = (longest / 2).max(MIN_INPUT_BYTES);
            tracing::debug!(round, cap_bytes = cap, %message, "an input is too long for the embedder's model; cutting it");
        }
        Err(EmbedError::Rejected(format!(
            "POST {} still refused the texts as too long after cutting them to {longest} bytes",
            self.shown
        )))
    }

    /// One request, retried on 429, 408, 5xx and transport errors within the [`RetryPolicy`];
    /// any other answer is returned for the caller to read. The body is shared by the retries.
    async fn send(&self, body: Bytes) -> Result<Reply, EmbedError> {
        let attempts = self.retry.attempts.max(1);
        let mut waited = Duration::ZERO;
        let mut attempt = 1;
        loop {
            let (error, asked) = match self.try_once(body.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(failed) => failed,
            };
            if attempt >= attempts {
                return Err(EmbedError::Unavailable(error.context(format!(
                    "the embedder did not answer after {attempts} attempt(s)"
                ))));
            }
            let Some(delay) = self.retry.delay(attempt, asked, waited, fastrand::f64()) else {
                let why = match asked {
                    Some(asked) if asked > self.retry.max_retry_after => format!(
                        "the embedder asked to wait {asked:?} before trying again, more than the \
                         {:?} contextd waits",
                        self.retry.max_retry_after
                    ),
                    _ => format!(
                        "the embedder did not answer within {attempt} attempt(s) and {:?} of \
                         backoff",
                        self.retry.max_total_wait
                    ),
                };
                return Err(EmbedError::Unavailable(error.context(why)));
            };
            tracing::warn!(attempt, retry_in = ?delay, error = %format_args!("{error:#}"), "retrying an embeddings request");
            tokio::time::sleep(delay).await;
            waited += delay;
            attempt += 1;
        }
    }

    /// One try: an answer to return, or what went wrong with the wait the server asked for.
    async fn try_once(&self, body: Bytes) -> Result<Reply, (anyhow::Error, Option<Duration>)> {
        let mut request = self
            .http
            .post(self.endpoint.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(bearer) = &self.bearer {
            request = request.header(header::AUTHORIZATION, bearer.clone());
        }
        let response = request.send().await.map_err(|e| {
            let error = anyhow!(e.without_url()).context(format!("POST {}", self.shown));
            (error, None)
        })?;
        let status = response.status();
        let asked = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| retry_after(response.headers(), chrono::Utc::now()))
        .flatten();
        let body = response.bytes().await.map_err(|e| {
            let error = anyhow!(e.without_url())
                .context(format!("POST {}: reading the answer", self.shown));
            (error, asked)
        })?;
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            let message = self.scrub(&api_message(&body));
            return Err((
                anyhow!("POST {} answered {status}: {message}", self.shown),
                asked,
            ));
        }
        tracing::debug!(%status, "the embedder answered");
        Ok(Reply { status, body })
    }

    /// A 4xx in words: the status, a hint at the setting to check, and the API's message.
    fn refusal(&self, status: StatusCode, message: &str) -> String {
        let hint = match status {
            StatusCode::UNAUTHORIZED => " (check embedder.openai.api_key)",
            StatusCode::FORBIDDEN => " (the API key may not use this model or endpoint)",
            StatusCode::NOT_FOUND => " (check embedder.openai.url and embedder.openai.model)",
            _ => "",
        };
        format!(
            "POST {} answered {status}{hint}: {message} (model {:?})",
            self.shown, self.model_name
        )
    }

    /// A 2xx that is not the answer expected, in words.
    fn answer_problem(&self, reply: &Reply, problem: &str) -> String {
        format!(
            "POST {} answered {} but {problem}: {}",
            self.shown,
            reply.status,
            self.scrub(&truncate(String::from_utf8_lossy(&reply.body).trim(), 200))
        )
    }

    /// `message` without the API key, whole or masked the way OpenAI quotes it
    /// (`sk-ab****wxyz`): the masked form still holds the key's ends.
    fn scrub(&self, message: &str) -> String {
        let mut message = message.to_owned();
        if let Some(key) = &self.key {
            message = message.replace(key.expose().trim(), "[redacted]");
        }
        scrub_masked(&message)
    }

    fn wrong_length(&self, got: usize) -> String {
        format!(
            "the embedder makes vectors of {got} floats but vector.dimensions is {}: set \
             vector.dimensions to {got}, or embedder.openai.model (now {:?}) to a model that \
             makes {}-float vectors",
            self.dimensions, self.model_name, self.dimensions
        )
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn backend(&self) -> &'static str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.identity
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// More than [`Embedder::batch_size`] texts are taken too, as several requests.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let cap = self.input_cap.load(Ordering::Relaxed);
        let sizes = texts.iter().map(|text| prepare(text, cap).len());
        let mut vectors = Vec::with_capacity(texts.len());
        for range in batch_ranges(sizes, self.batch_size, MAX_REQUEST_BYTES) {
            let first = range.start;
            for (i, vector) in self
                .embed_batch(&texts[range])
                .await?
                .into_iter()
                .enumerate()
            {
                match embedding::check(&vector, self.dimensions) {
                    Ok(()) => vectors.push(vector),
                    Err(EmbeddingError::Length { actual, .. }) => {
                        return Err(EmbedError::Rejected(self.wrong_length(actual)));
                    }
                    Err(e) => {
                        let what = format!("the embedder's vector for text {}", first + i);
                        return Err(EmbedError::Rejected(e.describe(&what)));
                    }
                }
            }
        }
        Ok(vectors)
    }
}

/// What goes out: nothing but these three (no `dimensions`, see the module's comment).
#[derive(Serialize)]
struct RequestOut<'a> {
    model: &'a str,
    input: &'a [&'a str],
    encoding_format: &'static str,
}

/// OpenAI's answer, as much of it as is used (`object`, `model` and `usage` are ignored).
#[derive(Deserialize)]
struct EmbeddingsIn {
    data: Vec<ItemIn>,
}

#[derive(Deserialize)]
struct ItemIn {
    /// Every server seen sends it; without it on every item, the items' order is taken.
    index: Option<usize>,
    embedding: VectorIn,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum VectorIn {
    Floats(Vec<f64>),
    /// Little-endian f32s, what `encoding_format: base64` answers (a server that ignores
    /// `float` may send it).
    Base64(String),
}

/// An answer that is neither 5xx, 429 nor 408.
struct Reply {
    status: StatusCode,
    body: Bytes,
}

/// `{url}/v1/embeddings`. `url` may have a path prefix and a trailing slash; a trailing `/v1` or
/// `/v1/embeddings` (what OpenAI's own SDKs call the base URL) is taken as given once, not twice.
fn endpoint_url(url: &str) -> anyhow::Result<Url> {
    let mut parsed = Url::parse(url.trim())
        .map_err(|e| anyhow!("embedder.openai.url {} is not a URL: {e}", redact_url(url)))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "embedder.openai.url {} must start with http:// or https://",
        redact_url(url)
    );
    anyhow::ensure!(
        parsed.username().is_empty() && parsed.password().is_none(),
        "embedder.openai.url {} must not carry credentials: put the key in embedder.openai.api_key",
        redact_url(url)
    );
    let path = parsed.path().trim_end_matches('/');
    let prefix = path
        .strip_suffix("/v1/embeddings")
        .or_else(|| path.strip_suffix("/v1"))
        .unwrap_or(path)
        .to_owned();
    parsed.set_path(&format!("{prefix}/v1/embeddings"));
    parsed.set_fragment(None);
    Ok(parsed)
}

/// The wait a 429 or 503 asks for: `retry-after-ms` (OpenAI's and Azure's, milliseconds) first,
/// then `Retry-After` in seconds or as an HTTP date. Nothing for what does not parse.
fn retry_after(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = value("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms.min(1e12) / 1000.0));
    }
    let raw = value(header::RETRY_AFTER.as_str())?;
    if let Ok(seconds) = raw.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(1e9)));
    }
    let date = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
    let ahead = date.with_timezone(&chrono::Utc) - now;
    Some(ahead.to_std().unwrap_or(Duration::ZERO))
}

/// The text as sent: blank becomes one space (OpenAI refuses `""`), and anything beyond `cap`
/// bytes is cut at the character boundary before it.
fn prepare(text: &str, cap: usize) -> &str {
    if text.trim().is_empty() {
        return " ";
    }
    if text.len() <= cap {
        return text;
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Consecutive ranges of at most `max_count` items and `max_bytes` bytes (an item larger than
/// `max_bytes` alone gets a range of its own).
fn batch_ranges(
    sizes: impl Iterator<Item = usize>,
    max_count: usize,
    max_bytes: usize,
) -> Vec<Range<usize>> {
    let max_count = max_count.max(1);
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    let mut end = 0;
    for size in sizes {
        if end > start && (end - start == max_count || bytes + size > max_bytes) {
            ranges.push(start..end);
            (start, bytes) = (end, 0);
        }
        bytes += size;
        end += 1;
    }
    if end > start {
        ranges.push(start..end);
    }
    ranges
}

/// The vectors of a 2xx answer in input order, each finite f32s, all of one length.
fn decode(body: &[u8], inputs: usize) -> Result<Vec<Vec<f32>>, String> {
    let answer: EmbeddingsIn =
        serde_json::from_slice(body).map_err(|e| format!("not as an embeddings list ({e})"))?;
    if answer.data.len() != inputs {
        return Err(format!(
            "with {} embeddings for {inputs} inputs",
            answer.data.len()
        ));
    }
    let positional = answer.data.iter().all(|item| item.index.is_none());
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for (position, item) in answer.data.into_iter().enumerate() {
        let index = match item.index {
            Some(index) => index,
            None if positional => position,
            None => return Err(format!("with an embedding without index at {position}")),
        };
        let slot = slots
            .get_mut(index)
            .ok_or_else(|| format!("with index {index} for {inputs} inputs"))?;
        if slot.is_some() {
            return Err(format!("with index {index} twice"));
        }
        let vector = match item.embedding {
            VectorIn::Floats(values) => {
                embedding::narrow(&values).map_err(|e| e.describe(&format!("embedding {index}")))?
            }
            VectorIn::Base64(text) => decode_base64(&text)
                .map_err(|e| format!("with embedding {index} not as floats: {e}"))?,
        };
        if vector.is_empty() {
            return Err(format!("with embedding {index} empty"));
        }
        *slot = Some(vector);
    }
    let vectors: Vec<Vec<f32>> = slots.into_iter().flatten().collect();
    if let Some(other) = vectors.iter().find(|v| v.len() != vectors[0].len()) {
        return Err(format!(
            "with embeddings of {} and {} floats in one answer",
            vectors[0].len(),
            other.len()
        ));
    }
    Ok(vectors)
}

fn decode_base64(text: &str) -> Result<Vec<f32>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("not base64 ({e})"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{} bytes are not whole 32-bit floats", bytes.len()));
    }
    let vector: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if vector.iter().any(|x| !x.is_finite()) {
        return Err("NaN or infinite values".to_owned());
    }
    Ok(vector)
}

/// The API's own words from an error body: OpenAI's `{"error": {"message", "type", "param",
/// "code"}}` (with its `code`, when it has one), or the shapes of compatible servers
/// (`{"error": "..."}` of TEI and Ollama, `{"message": ...}` of older vLLM, FastAPI's
/// `{"detail": ...}`), else the body itself, cut short.
fn api_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return if text.is_empty() {
            "(empty body)".to_owned()
        } else {
            truncate(text, 300)
        };
    };
    let error = &value["error"];
    let message = error["message"]
        .as_str()
        .or_else(|| error.as_str())
        .or_else(|| value["message"].as_str())
        .or_else(|| value["detail"].as_str());
    match (message, error["code"].as_str()) {
        (Some(message), Some(code)) => truncate(&format!("{message} ({code})"), 500),
        (Some(message), None) => truncate(message, 500),
        (None, _) => truncate(text, 300),
    }
}

/// Whether a refusal says an input is longer than the model takes: OpenAI's "maximum context
/// length is 8192 tokens" (or "Requested ... tokens, max 300000 tokens per request"), vLLM's,
/// TEI's 413 "must have less than 512 tokens".
fn is_too_long(status: StatusCode, message: &str) -> bool {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return true;
    }
    if !matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
    ) {
        return false;
    }
    let message = message.to_lowercase();
    message.contains("context_length_exceeded")
        || (message.contains("token")
            && [
                "context length",
                "maximum",
                "max ",
                "too long",
                "less than",
                "exceed",
            ]
            .iter()
            .any(|words| message.contains(words)))
}

/// Words holding a run of `**`, the way a masked key is quoted, replaced by `[redacted]`.
fn scrub_masked(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            if word.contains("**") {
                let tail = word.len() - word.trim_end_matches(['.', ',', ';', ')']).len();
                format!("[redacted]{}", &word[word.len() - tail..])
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> OpenAiEmbedderSettings {
        OpenAiEmbedderSettings {
            url: Some(url.to_owned()),
            ..OpenAiEmbedderSettings::default()
        }
    }

    fn endpoint(url: &str) -> String {
        endpoint_url(url).unwrap().to_string()
    }

    #[test]
    fn the_endpoint_is_url_v1_embeddings_with_or_without_prefix_and_trailing_slash() {
        for (url, expected) in [
            (
                "http://127.0.0.1:11434",
                "http://127.0.0.1:11434/v1/embeddings",
            ),
            (
                "http://127.0.0.1:11434/",
                "http://127.0.0.1:11434/v1/embeddings",
            ),
            (
                "https://api.openai.com",
                "https://api.openai.com/v1/embeddings",
            ),
            (
                "https://gw.example.com/openai",
                "https://gw.example.com/openai/v1/embeddings",
            ),
            (
                "https://gw.example.com/a/b//",
                "https://gw.example.com/a/b/v1/embeddings",
            ),
        ] {
            assert_eq!(endpoint(url), expected, "{url}");
        }
    }

    #[test]
    fn a_url_already_ending_in_v1_or_the_endpoint_is_not_doubled() {
        assert_eq!(
            endpoint("https://api.openai.com/v1/"),
            "https://api.openai.com/v1/embeddings"
        );
        assert_eq!(
            endpoint("https://gw.example.com/openai/v1/embeddings"),
            "https://gw.example.com/openai/v1/embeddings"
        );
    }

    #[test]
    fn a_gateways_query_string_is_kept_and_a_fragment_dropped() {
        assert_eq!(
            endpoint("https://gw.example.com/openai?api-version=2024-10-21#x"),
            "https://gw.example.com/openai/v1/embeddings?api-version=2024-10-21"
        );
    }

    #[test]
    fn a_url_that_is_missing_not_http_or_carries_credentials_is_refused_without_the_password() {
        let mut missing = settings("http://x");
        missing.url = None;
        let error = OpenAiEmbedder::new(&missing, 4).unwrap_err().to_string();
        assert!(error.contains("embedder.openai.url"), "{error}");
        assert!(endpoint_url("ftp://host").is_err());
        assert!(endpoint_url("not a url").is_err());
        let error = endpoint_url("https://user:hunter2@host/")
            .unwrap_err()
            .to_string();
        assert!(error.contains("embedder.openai.api_key"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn settings_need_dimensions_and_a_model() {
        assert!(OpenAiEmbedder::new(&settings("http://h"), 0).is_err());
        let mut no_model = settings("http://h");
        no_model.model = " ".into();
        assert!(OpenAiEmbedder::new(&no_model, 4).is_err());
        let embedder = OpenAiEmbedder::new(&settings("http://h"), 4).unwrap();
        assert_eq!(embedder.backend(), "openai");
        assert_eq!(embedder.dimensions(), 4);
        assert_eq!(embedder.batch_size(), 64);
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let mut with_key = settings("http://127.0.0.1:1");
        with_key.api_key = Some(Secret::new("sk-s3cret-key".into()));
        let shown = format!("{:?}", OpenAiEmbedder::new(&with_key, 4).unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn the_key_is_scrubbed_whole_and_masked_from_what_the_server_says() {
        let mut with_key = settings("http://127.0.0.1:1");
        with_key.api_key = Some(Secret::new("sk-abcdefghijklmnop".into()));
        let embedder = OpenAiEmbedder::new(&with_key, 4).unwrap();
        assert_eq!(
            embedder.scrub(
                "Incorrect API key provided: sk-abc************mnop. You can find your API key \
                 at https://platform.openai.com/account/api-keys."
            ),
            "Incorrect API key provided: [redacted]. You can find your API key at \
             https://platform.openai.com/account/api-keys."
        );
        assert_eq!(
            embedder.scrub("key sk-abcdefghijklmnop is bad"),
            "key [redacted] is bad"
        );
    }

    const POLICY: RetryPolicy = RetryPolicy {
        attempts: 4,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(300),
        max_retry_after: Duration::from_secs(5),
        max_total_wait: Duration::from_secs(6),
    };

    #[test]
    fn backoff_doubles_up_to_its_cap_jittered_into_the_upper_half() {
        let ms = |d: Option<Duration>| d.unwrap().as_millis();
        assert_eq!(ms(POLICY.delay(1, None, Duration::ZERO, 0.0)), 50);
        assert_eq!(ms(POLICY.delay(1, None, Duration::ZERO, 0.999_999)), 99);
        assert_eq!(ms(POLICY.delay(2, None, Duration::ZERO, 0.0)), 100);
        assert_eq!(ms(POLICY.delay(3, None, Duration::ZERO, 0.0)), 150);
        assert_eq!(ms(POLICY.delay(30, None, Duration::ZERO, 0.0)), 150);
        for _ in 0..100 {
            let delay = POLICY
                .delay(2, None, Duration::ZERO, fastrand::f64())
                .unwrap();
            assert!(delay >= Duration::from_millis(100) && delay <= Duration::from_millis(200));
        }
    }

    #[test]
    fn a_retry_after_is_waited_in_full_up_to_its_cap_and_beyond_it_not_at_all() {
        let asked = |d| POLICY.delay(1, Some(d), Duration::ZERO, 0.0);
        assert_eq!(asked(Duration::from_secs(3)), Some(Duration::from_secs(3)));
        assert_eq!(
            asked(Duration::from_millis(1)),
            Some(Duration::from_millis(50))
        );
        assert_eq!(asked(Duration::from_secs(5)), Some(Duration::from_secs(5)));
        assert_eq!(asked(Duration::from_secs(6)), None);
    }

    #[test]
    fn no_retry_once_the_total_wait_would_pass_its_bound() {
        assert_eq!(
            POLICY.delay(1, Some(Duration::from_secs(4)), Duration::from_secs(2), 0.0),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            POLICY.delay(
                1,
                Some(Duration::from_secs(4)),
                Duration::from_millis(2001),
                0.0
            ),
            None
        );
        assert_eq!(POLICY.delay(3, None, Duration::from_secs(6), 0.0), None);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after_seconds() {
        let now = chrono::Utc::now();
        let both = headers(&[("retry-after-ms", "1500"), ("retry-after", "20")]);
        assert_eq!(retry_after(&both, now), Some(Duration::from_millis(1500)));
        let fraction = headers(&[("retry-after-ms", "12.5")]);
        assert_eq!(
            retry_after(&fraction, now),
            Some(Duration::from_micros(12_500))
        );
        let seconds = headers(&[("retry-after", " 7 ")]);
        assert_eq!(retry_after(&seconds, now), Some(Duration::from_secs(7)));
        let bad_ms = headers(&[("retry-after-ms", "soon"), ("retry-after", "2")]);
        assert_eq!(retry_after(&bad_ms, now), Some(Duration::from_secs(2)));
    }

    #[test]
    fn retry_after_as_an_http_date_is_the_time_until_it_and_nonsense_is_nothing() {
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let later = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:03 GMT")]);
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(3)));
        let past = headers(&[("retry-after", "Wed, 21 Oct 2015 07:27:00 GMT")]);
        assert_eq!(retry_after(&past, now), Some(Duration::ZERO));
        for nonsense in ["-1", "soon", "NaN", ""] {
            assert_eq!(
                retry_after(&headers(&[("retry-after", nonsense)]), now),
                None
            );
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn blank_texts_become_one_space_and_long_ones_are_cut_at_a_character_boundary() {
        assert_eq!(prepare("", 10), " ");
        assert_eq!(prepare(" \n\t", 10), " ");
        assert_eq!(prepare("hello", 10), "hello");
        assert_eq!(prepare("hello world", 5), "hello");
        // "é" is two bytes: a cut in its middle moves before it.
        assert_eq!(prepare("aé", 2), "a");
    }

    #[test]
    fn batches_hold_at_most_the_count_and_the_bytes() {
        let ranges =
            |sizes: &[usize], count, bytes| batch_ranges(sizes.iter().copied(), count, bytes);
        assert_eq!(ranges(&[1; 8], 3, 100), vec![0..3, 3..6, 6..8]);
        assert_eq!(ranges(&[40, 40, 40, 10], 10, 100), vec![0..2, 2..4]);
        assert_eq!(ranges(&[500, 1], 10, 100), vec![0..1, 1..2]);
        assert_eq!(ranges(&[], 3, 100), Vec::<Range<usize>>::new());
        assert_eq!(ranges(&[1, 1], 0, 100), vec![0..1, 1..2]);
    }

    #[test]
    fn an_answer_is_put_in_input_order_by_index() {
        let body = br#"{"object":"list","data":[
            {"object":"embedding","index":1,"embedding":[0.0,1.0]},
            {"object":"embedding","index":0,"embedding":[1.0,0.0]}
        ],"model":"m","usage":{"prompt_tokens":2,"total_tokens":2}}"#;
        assert_eq!(
            decode(body, 2).unwrap(),
            vec![vec![1.0, 0.0], vec![0.0, 1.0]]
        );
        let positional = br#"{"data":[{"embedding":[1.0]},{"embedding":[2.0]}]}"#;
        assert_eq!(decode(positional, 2).unwrap(), vec![vec![1.0], vec![2.0]]);
    }

    #[test]
    fn an_answer_with_missing_twice_given_or_mixed_indexes_is_refused() {
        let twice = br#"{"data":[{"index":0,"embedding":[1.0]},{"index":0,"embedding":[2.0]}]}"#;
        assert!(decode(twice, 2).unwrap_err().contains("twice"));
        let beyond = br#"{"data":[{"index":0,"embedding":[1.0]},{"index":2,"embedding":[2.0]}]}"#;
        assert!(decode(beyond, 2).unwrap_err().contains("index 2"));
        let mixed = br#"{"data":[{"index":0,"embedding":[1.0]},{"embedding":[2.0]}]}"#;
        assert!(decode(mixed, 2).unwrap_err().contains("without index"));
        let short = br#"{"data":[{"index":0,"embedding":[1.0]}]}"#;
        assert!(
            decode(short, 2)
                .unwrap_err()
                .contains("1 embeddings for 2 inputs")
        );
        assert!(
            decode(b"<html>", 1)
                .unwrap_err()
                .contains("not as an embeddings list")
        );
    }

    #[test]
    fn values_beyond_f32_uneven_lengths_and_empty_vectors_are_refused() {
        let huge = br#"{"data":[{"index":0,"embedding":[1e39]}]}"#;
        assert!(
            decode(huge, 1)
                .unwrap_err()
                .contains("beyond a 32-bit float")
        );
        let uneven =
            br#"{"data":[{"index":0,"embedding":[1.0]},{"index":1,"embedding":[1.0,2.0]}]}"#;
        assert!(decode(uneven, 2).unwrap_err().contains("1 and 2 floats"));
        let empty = br#"{"data":[{"index":0,"embedding":[]}]}"#;
        assert!(decode(empty, 1).unwrap_err().contains("empty"));
    }

    #[test]
    fn a_base64_answer_is_read_as_little_endian_floats() {
        let bytes: Vec<u8> = [0.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        let body = format!(r#"{{"data":[{{"index":0,"embedding":"{text}"}}]}}"#);
        assert_eq!(decode(body.as_bytes(), 1).unwrap(), vec![vec![0.5, -2.0]]);
        let nan = base64::engine::general_purpose::STANDARD.encode(f32::NAN.to_le_bytes());
        let body = format!(r#"{{"data":[{{"index":0,"embedding":"{nan}"}}]}}"#);
        assert!(decode(body.as_bytes(), 1).is_err());
    }

    #[test]
    fn error_messages_are_read_from_openais_shape_and_the_compatible_servers() {
        assert_eq!(
            api_message(
                br#"{"error":{"message":"The model `x` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#
            ),
            "The model `x` does not exist or you do not have access to it. (model_not_found)"
        );
        assert_eq!(
            api_message(br#"{"error":{"message":"'$.input' is invalid.","type":"invalid_request_error","param":null,"code":null}}"#),
            "'$.input' is invalid."
        );
        assert_eq!(
            api_message(br#"{"error":"Input validation error","error_type":"Validation"}"#),
            "Input validation error"
        );
        assert_eq!(
            api_message(
                br#"{"object":"error","message":"too long","type":"BadRequestError","code":400}"#
            ),
            "too long"
        );
        assert_eq!(api_message(br#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(api_message(b" \n"), "(empty body)");
        assert_eq!(
            api_message(b"<html>bad gateway</html>\n"),
            "<html>bad gateway</html>"
        );
    }

    #[test]
    fn refusals_for_inputs_over_the_models_limit_are_recognised() {
        let bad = StatusCode::BAD_REQUEST;
        assert!(is_too_long(
            bad,
            "Invalid 'input': maximum context length is 8192 tokens."
        ));
        assert!(is_too_long(
            bad,
            "This model's maximum context length is 512 tokens. However, you requested 600 \
             tokens in the input for embedding generation. Please reduce the length of the input."
        ));
        assert!(is_too_long(
            bad,
            "Requested 310000 tokens, max 300000 tokens per request"
        ));
        assert!(is_too_long(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Input validation error: `inputs` must have less than 512 tokens. Given: 600"
        ));
        assert!(!is_too_long(
            bad,
            "'$.input' is invalid. Please check the API reference."
        ));
        assert!(!is_too_long(
            StatusCode::UNAUTHORIZED,
            "maximum context length is 8192 tokens"
        ));
    }
}
