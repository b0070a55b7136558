//! A fake OpenAI embeddings API for tests: an axum server on `127.0.0.1:0` that answers
//! `POST {prefix}/v1/embeddings` the way OpenAI's API reference documents it, and records every
//! request it sees.
//!
//! Include it from a test crate with `#[path = "common/openai_fake.rs"] mod openai_fake;` (or
//! `"../common/openai_fake.rs"` from a test directory). It is self-contained: it uses only axum,
//! tokio, serde_json and base64.
//!
//! What it models:
//! - The request: a JSON object with `model` (required, a string; another model than the one
//!   served is 404 `model_not_found`), `input` (required: a string, an array of strings, an
//!   array of token ids, or an array of token-id arrays; no empty string, no empty array, no
//!   array of more than 2048 items), and optionally `encoding_format` (`float`, the default, or
//!   `base64`), `dimensions` (a positive integer, at most the model's) and `user`. Any other key
//!   is refused, as OpenAI refuses an unrecognised argument.
//! - Limits: an input of more than `max_input_tokens` tokens (8192 by default) and a request of
//!   more than 300,000 tokens in all are refused. Tokens are counted as words (runs of
//!   non-whitespace), or as the ids of a token array: an approximation of OpenAI's tokenizer.
//! - Auth: with a key set, `Authorization: Bearer <key>` is required; a missing key and a wrong
//!   one are 401 in OpenAI's words (the wrong one quoted masked, as OpenAI does).
//! - The answer: `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
//!   "model", "usage": {"prompt_tokens", "total_tokens"}}`, each vector a hashed bag of the
//!   text's lowercase words, L2-normalised ([`FakeOpenAi::embedding`] computes it), of the
//!   configured dimension.
//! - Every error in OpenAI's body, `{"error": {"message", "type", "param", "code"}}`; an unknown
//!   path or method is 404 `Invalid URL (METHOD /path)`.
//!
//! What it can be told: answer another vector length, list `data` out of order, and fail the
//! next requests (429 with `Retry-After` or `retry-after-ms`, any 4xx/5xx, or a stall before
//! answering), queued in order.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Map, Value, json};

/// The model served unless told otherwise.
pub const MODEL: &str = "text-embedding-3-small";

/// The most items of any array in `input`.
pub const MAX_INPUTS: usize = 2048;

/// The most tokens of one request, all inputs together.
pub const MAX_REQUEST_TOKENS: usize = 300_000;

/// OpenAI's message for a malformed `input` (an empty string, a wrong type).
pub const INVALID_INPUT: &str = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.";

/// A running fake; the server stops when this is dropped.
pub struct FakeOpenAi {
    addr: SocketAddr,
    prefix: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// The path with its query string, if any.
    pub target: String,
    pub headers: HeaderMap,
    /// The body as JSON; `Null` when empty, a string when it is not JSON.
    pub body: Value,
    /// How many inputs the body held (1 for a string), when it had a readable `input`.
    pub inputs: Option<usize>,
    /// The status answered; 0 while the answer is pending (a stall).
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl SeenRequest {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The texts of `input`, for a string or an array of strings.
    pub fn texts(&self) -> Vec<String> {
        match &self.body["input"] {
            Value::String(text) => vec![text.clone()],
            Value::Array(items) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The wait a failure asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// No header.
    Nothing,
    /// `Retry-After: N` (seconds).
    Seconds(u64),
    /// `retry-after-ms: N` (what OpenAI and Azure send beside or instead of `Retry-After`).
    Millis(u64),
}

#[derive(Debug, Clone, Copy)]
enum Injection {
    Fail(u16, RetryAfter),
    Stall(Duration),
}

impl FakeOpenAi {
    /// A fake at `/v1/embeddings`, answering vectors of `dimensions` floats, open to anonymous
    /// requests.
    pub async fn start(dimensions: usize) -> FakeOpenAi {
        Self::start_at("", dimensions).await
    }

    /// A fake whose endpoint is `{prefix}/v1/embeddings` (a gateway's path, `/openai`).
    pub async fn start_at(prefix: &str, dimensions: usize) -> FakeOpenAi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake OpenAI");
        let addr = listener.local_addr().expect("the fake's address");
        let prefix = prefix.trim_end_matches('/').to_owned();
        let shared = Arc::new(Shared {
            endpoint: format!("{prefix}/v1/embeddings"),
            state: Mutex::new(FakeState {
                dimensions,
                model: MODEL.to_owned(),
                max_input_tokens: 8192,
                ..FakeState::default()
            }),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOpenAi {
            addr,
            prefix,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT{prefix}`, what `embedder.openai.url` is set to.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.prefix)
    }

    /// With a key, every request needs `Authorization: Bearer <key>`, else 401.
    pub fn require_api_key(&self, key: Option<&str>) {
        self.shared.lock().api_key = key.map(str::to_owned);
    }

    /// The model served (others are 404 `model_not_found`).
    pub fn serve_model(&self, model: &str) {
        self.shared.lock().model = model.to_owned();
    }

    /// The length of the vectors answered from now on.
    pub fn set_dimensions(&self, dimensions: usize) {
        self.shared.lock().dimensions = dimensions;
    }

    /// The most tokens (words) one input may have.
    pub fn set_max_input_tokens(&self, tokens: usize) {
        self.shared.lock().max_input_tokens = tokens;
    }

    /// List `data` last index first (the indexes stay right).
    pub fn answer_out_of_order(&self, reversed: bool) {
        self.shared.lock().reversed = reversed;
    }

    /// The next `n` requests answer `status` in OpenAI's words: 429 a rate limit, 500 a server
    /// error, 503 an overload, any other code a plain error of that status.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.fail_next_asking(n, status, RetryAfter::Nothing);
    }

    /// As [`Self::fail_next`], with a header asking for a wait.
    pub fn fail_next_asking(&self, n: usize, status: u16, retry_after: RetryAfter) {
        let mut state = self.shared.lock();
        state
            .injections
            .extend(std::iter::repeat_n(Injection::Fail(status, retry_after), n));
    }

    /// Forgets the failures and stalls not served yet: the next request is answered normally.
    pub fn heal(&self) {
        self.shared.lock().injections.clear();
    }

    /// The next `n` requests wait `delay` before they are answered (as they would be).
    pub fn stall_next(&self, n: usize, delay: Duration) {
        let mut state = self.shared.lock();
        state
            .injections
            .extend(std::iter::repeat_n(Injection::Stall(delay), n));
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many inputs each request so far held.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.requests()
            .iter()
            .map(|r| r.inputs.unwrap_or(0))
            .collect()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// The vector the fake answers for `text`: each lowercase word (a run of letters and
    /// digits) adds ±1 at a place picked by its hash, then the whole is scaled to length 1. A
    /// text without words gets the first unit vector.
    pub fn embedding(text: &str, dimensions: usize) -> Vec<f32> {
        let words = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty())
            .map(str::to_lowercase);
        bag_of_words(words, dimensions)
    }
}

fn bag_of_words(words: impl Iterator<Item = String>, dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0.0f32; dimensions];
    if dimensions == 0 {
        return vector;
    }
    for word in words {
        let hash = fnv1a(word.as_bytes());
        let place = (hash % dimensions as u64) as usize;
        vector[place] += if hash >> 63 == 0 { 1.0 } else { -1.0 };
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        vector[0] = 1.0;
    } else {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Shared {
    /// `{prefix}/v1/embeddings`.
    endpoint: String,
    state: Mutex<FakeState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding it must not hide the other failures.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct FakeState {
    requests: Vec<SeenRequest>,
    injections: VecDeque<Injection>,
    api_key: Option<String>,
    model: String,
    dimensions: usize,
    max_input_tokens: usize,
    reversed: bool,
    answered: u64,
}

// ---------------------------------------------------------------------------------------------
// Responses in OpenAI's shapes

fn json_response(status: u16, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).expect("a status");
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `{"error": {"message", "type", "param", "code"}}`.
fn openai_error(
    status: u16,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

fn invalid_request(message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    openai_error(400, message, "invalid_request_error", param, code)
}

fn invalid_input() -> Response {
    invalid_request(INVALID_INPUT, None, None)
}

/// How OpenAI quotes a wrong key: its first three and last four characters.
fn masked(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

fn injected_failure(status: u16, retry_after: RetryAfter, model: &str) -> Response {
    let mut response = match status {
        429 => openai_error(
            429,
            &format!(
                "Rate limit reached for {model} in organization org-fake on requests per min \
                 (RPM): Limit 3000, Used 3000, Requested 1. Please try again in 20ms. Visit \
                 https://platform.openai.com/account/rate-limits to learn more."
            ),
            "requests",
            None,
            Some("rate_limit_exceeded"),
        ),
        500 => openai_error(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        503 => openai_error(
            503,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            None,
        ),
        400..=499 => invalid_request(&format!("fake: injected failure {status}"), None, None),
        _ => openai_error(
            status,
            &format!("fake: injected failure {status}"),
            "server_error",
            None,
            None,
        ),
    };
    let header = match retry_after {
        RetryAfter::Nothing => None,
        RetryAfter::Seconds(s) => Some((header::RETRY_AFTER.as_str(), s.to_string())),
        RetryAfter::Millis(ms) => Some(("retry-after-ms", ms.to_string())),
    };
    if let Some((name, value)) = header {
        response.headers_mut().insert(
            axum::http::HeaderName::from_static(name),
            HeaderValue::from_str(&value).expect("a header value"),
        );
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Dispatch

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let recorded = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let inputs = match &recorded["input"] {
        Value::String(_) => Some(1),
        Value::Array(items) if items.first().is_some_and(Value::is_number) => Some(1),
        Value::Array(items) => Some(items.len()),
        _ => None,
    };
    let slot = {
        let mut state = shared.lock();
        state.requests.push(SeenRequest {
            method: method.to_string(),
            target,
            headers: headers.clone(),
            body: recorded.clone(),
            inputs,
            status: 0,
            at: Instant::now(),
        });
        state.requests.len() - 1
    };
    let response = answer(&shared, &method, uri.path(), &headers, &body, &recorded).await;
    if let Some(seen) = shared.lock().requests.get_mut(slot) {
        seen.status = response.status().as_u16();
    }
    response
}

async fn answer(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    raw: &[u8],
    body: &Value,
) -> Response {
    let (refused, injection) = {
        let mut state = shared.lock();
        match state.check_auth(headers) {
            Some(refused) => (Some(refused), None),
            None => (None, state.injections.pop_front()),
        }
    };
    if let Some(refused) = refused {
        return refused;
    }
    match injection {
        Some(Injection::Fail(status, retry_after)) => {
            let model = shared.lock().model.clone();
            return injected_failure(status, retry_after, &model);
        }
        Some(Injection::Stall(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    if *method != Method::POST || path != shared.endpoint {
        return openai_error(
            404,
            &format!("Invalid URL ({method} {path})"),
            "invalid_request_error",
            None,
            None,
        );
    }
    if serde_json::from_slice::<Value>(raw).is_err() {
        return invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON.)",
            None,
            None,
        );
    }
    shared.lock().embeddings(body)
}

/// `input`, read.
enum Input {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u64>>),
}

impl Input {
    /// The refusal is boxed: a `Response` is large next to an `Input`.
    fn parse(value: &Value) -> Result<Input, Box<Response>> {
        let items = match value {
            Value::String(text) if !text.is_empty() => return Ok(Input::Texts(vec![text.clone()])),
            Value::Array(items) if !items.is_empty() => items,
            _ => return Err(Box::new(invalid_input())),
        };
        if items.len() > MAX_INPUTS {
            return Err(Box::new(invalid_request(
                &format!(
                    "Invalid 'input': array too long. Expected an array with maximum length \
                     {MAX_INPUTS}, but got an array with length {} instead.",
                    items.len()
                ),
                Some("input"),
                Some("array_above_max_length"),
            )));
        }
        if items.iter().all(Value::is_string) {
            let texts: Vec<String> = items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect();
            if texts.iter().any(String::is_empty) {
                return Err(Box::new(invalid_input()));
            }
            return Ok(Input::Texts(texts));
        }
        if let Some(tokens) = token_ids(items) {
            return Ok(Input::Tokens(vec![tokens]));
        }
        let mut arrays = Vec::with_capacity(items.len());
        for item in items {
            match item.as_array().and_then(|ids| token_ids(ids)) {
                Some(ids) if ids.len() <= MAX_INPUTS => arrays.push(ids),
                _ => return Err(Box::new(invalid_input())),
            }
        }
        Ok(Input::Tokens(arrays))
    }

    fn tokens(&self) -> Vec<usize> {
        match self {
            Input::Texts(texts) => texts
                .iter()
                .map(|text| text.split_whitespace().count().max(1))
                .collect(),
            Input::Tokens(arrays) => arrays.iter().map(Vec::len).collect(),
        }
    }

    fn vectors(&self, dimensions: usize) -> Vec<Vec<f32>> {
        match self {
            Input::Texts(texts) => texts
                .iter()
                .map(|text| FakeOpenAi::embedding(text, dimensions))
                .collect(),
            Input::Tokens(arrays) => arrays
                .iter()
                .map(|ids| bag_of_words(ids.iter().map(u64::to_string), dimensions))
                .collect(),
        }
    }
}

/// A non-empty array of non-negative integers.
fn token_ids(items: &[Value]) -> Option<Vec<u64>> {
    let ids: Option<Vec<u64>> = items.iter().map(Value::as_u64).collect();
    ids.filter(|ids| !ids.is_empty())
}

impl FakeState {
    fn check_auth(&self, headers: &HeaderMap) -> Option<Response> {
        let key = self.api_key.as_ref()?;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|v| !v.is_empty());
        match given {
            None => Some(openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). \
                 You can obtain an API key from https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                None,
                None,
            )),
            Some(given) if given == key => None,
            Some(given) => Some(openai_error(
                401,
                &format!(
                    "Incorrect API key provided: {}. You can find your API key at \
                     https://platform.openai.com/account/api-keys.",
                    masked(given)
                ),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            )),
        }
    }

    fn embeddings(&mut self, body: &Value) -> Response {
        let Some(body) = body.as_object() else {
            return invalid_request(
                "'$' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                None,
                None,
            );
        };
        if let Some(unknown) = body.keys().find(|key| {
            !matches!(
                key.as_str(),
                "input" | "model" | "encoding_format" | "dimensions" | "user"
            )
        }) {
            return invalid_request(
                &format!("Unrecognized request argument supplied: {unknown}"),
                None,
                None,
            );
        }
        let model = match body.get("model") {
            None | Some(Value::Null) => {
                return invalid_request("you must provide a model parameter", None, None);
            }
            Some(Value::String(model)) => model.clone(),
            Some(_) => {
                return invalid_request(
                    "'$.model' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                    None,
                    None,
                );
            }
        };
        if model != self.model {
            return openai_error(
                404,
                &format!("The model `{model}` does not exist or you do not have access to it."),
                "invalid_request_error",
                None,
                Some("model_not_found"),
            );
        }
        let input = match Input::parse(body.get("input").unwrap_or(&Value::Null)) {
            Ok(input) => input,
            Err(refused) => return *refused,
        };
        let base64 = match body.get("encoding_format") {
            None | Some(Value::Null) => false,
            Some(Value::String(format)) if format == "float" => false,
            Some(Value::String(format)) if format == "base64" => true,
            Some(other) => {
                return invalid_request(
                    &format!(
                        "Invalid value for 'encoding_format': {other}. Supported values are: \
                         'float' and 'base64'."
                    ),
                    Some("encoding_format"),
                    Some("invalid_value"),
                );
            }
        };
        let dimensions = match body.get("dimensions") {
            None | Some(Value::Null) => self.dimensions,
            Some(value) => match value.as_u64() {
                Some(n) if n >= 1 && n as usize <= self.dimensions => n as usize,
                _ => {
                    return invalid_request(
                        &format!(
                            "Invalid value for 'dimensions' = {value}. Must be between 1 and {}.",
                            self.dimensions
                        ),
                        Some("dimensions"),
                        Some("invalid_value"),
                    );
                }
            },
        };
        if let Some(user) = body.get("user")
            && !user.is_string()
        {
            return invalid_request(
                "'$.user' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                None,
                None,
            );
        }
        let tokens = input.tokens();
        if tokens.iter().any(|&n| n > self.max_input_tokens) {
            return invalid_request(
                &format!(
                    "Invalid 'input': maximum context length is {} tokens.",
                    self.max_input_tokens
                ),
                None,
                None,
            );
        }
        let total: usize = tokens.iter().sum();
        if total > MAX_REQUEST_TOKENS {
            return invalid_request(
                &format!("Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request"),
                None,
                Some("max_tokens_per_request"),
            );
        }
        let mut data: Vec<Value> = input
            .vectors(self.dimensions)
            .into_iter()
            .map(|vector| shorten(vector, dimensions))
            .enumerate()
            .map(|(index, vector)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        if self.reversed {
            data.reverse();
        }
        self.answered += 1;
        let mut answer = Map::new();
        answer.insert("object".into(), json!("list"));
        answer.insert("data".into(), Value::Array(data));
        answer.insert("model".into(), json!(model));
        answer.insert(
            "usage".into(),
            json!({"prompt_tokens": total, "total_tokens": total}),
        );
        let mut response = json_response(200, &Value::Object(answer));
        let headers = response.headers_mut();
        headers.insert(
            "x-request-id",
            HeaderValue::from_str(&format!("req_fake{}", self.answered)).expect("a header"),
        );
        headers.insert(
            "openai-model",
            HeaderValue::from_str(&model).unwrap_or_else(|_| HeaderValue::from_static("model")),
        );
        response
    }
}

/// What `dimensions` does on text-embedding-3: the first `n` values, scaled to length 1 again.
fn shorten(mut vector: Vec<f32>, n: usize) -> Vec<f32> {
    if n >= vector.len() {
        return vector;
    }
    vector.truncate(n);
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        vector[0] = 1.0;
    } else {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}
