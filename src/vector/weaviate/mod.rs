//! The Weaviate backend of [`VectorIndex`]: REST for the schema, writes and deletes, GraphQL
//! `nearVector` for search, over one `reqwest::Client` (server 1.39; what is used and why is in
//! `shared/weaviate/CONTRACT.md`, whose section numbers the comments below cite).
//!
//! This layer stores and searches vectors: one Weaviate object per context, its id the UUIDv5 of
//! the context id (§3), the vector supplied by contextd (`vectorizer: none`). It decides nothing
//! about contexts, and it never deletes or alters the class: a class with the wrong settings is
//! reported, for an operator to fix.
//!
//! Failures are split the way callers need them: 5xx, 429 and connection errors are retried with
//! a short backoff and end as [`VectorError::Unavailable`]; any other 4xx (and a per-object
//! refusal that a retry cannot fix) is [`VectorError::Rejected`]. The API key goes out only in the
//! `Authorization` header, marked sensitive, and is never logged.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::SecondsFormat;
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Hit, SearchQuery, VectorEntry, VectorError, VectorIndex};
use crate::config::WeaviateSettings;
use crate::domain::ContextId;

mod graphql;
mod schema;
mod wire;

use self::graphql::*;
pub use self::schema::class_definition;
use self::schema::*;
pub use self::wire::object_id;
use self::wire::*;

/// Objects per `POST /v1/batch/objects`: large enough to amortise the round trip, small enough
/// that one request stays well inside the timeout with 1536-dimension vectors (~20 KB each).
const UPSERT_CHUNK: usize = 100;

/// Context ids per batch delete: the `ContainsAny` list goes into the request body.
const DELETE_CHUNK: usize = 100;

/// Rounds of "send the objects that failed again" (the first send included).
const ITEM_ATTEMPTS: u32 = 3;

/// Rounds of `GET` / `POST` in the class bootstrap; more than two means someone keeps deleting it.
const PREPARE_ROUNDS: u32 = 3;

/// The ready path is answered before authentication and matched on the exact URL (§1).
const READY_PATH: &str = "/.well-known/ready";

/// How requests are retried on 5xx, 429 and connection errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per request, the first one included (at least 1).
    pub attempts: u32,
    /// The delay before the second try; it doubles per try.
    pub initial_backoff: Duration,
    /// The longest delay, also the cap on a server's `Retry-After`.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Short on purpose: the indexer retries on its own schedule and a search caller is waiting,
    /// so this only rides out a blip (a restart, a leader election), about a second in all.
    fn default() -> Self {
        Self {
            attempts: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// The Weaviate-backed vector index. Cheap to share behind an `Arc`; the client pools connections.
pub struct WeaviateIndex {
    http: reqwest::Client,
    /// `{url}/v1`, no trailing slash.
    base_url: String,
    class: String,
    dimensions: usize,
    /// `Bearer <key>`, marked sensitive so that reqwest's `Debug` hides it.
    bearer: Option<HeaderValue>,
    retry: RetryPolicy,
    /// `embedder.text`: what of `data` goes in the `content` property.
    text: Vec<String>,
}

impl std::fmt::Debug for WeaviateIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // By hand, so the bearer never shows up even if someone logs the index.
        f.debug_struct("WeaviateIndex")
            .field("base_url", &self.base_url)
            .field("class", &self.class)
            .field("dimensions", &self.dimensions)
            .field("api_key", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl WeaviateIndex {
    /// A client for the server at `settings.url` (`http://HOST:PORT`; a trailing `/v1` is
    /// tolerated), storing vectors of `dimensions` (0: not checked here) in `settings.class_name`.
    /// Nothing is sent until the first call; [`VectorIndex::prepare`] creates the class.
    pub fn new(settings: &WeaviateSettings, dimensions: usize) -> anyhow::Result<Self> {
        let url = settings
            .url
            .as_deref()
            .context("vector.weaviate.url must be set to use the Weaviate backend")?;
        let parsed = reqwest::Url::parse(url)
            .with_context(|| format!("vector.weaviate.url {url:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "vector.weaviate.url {url:?} must start with http:// or https://"
        );
        let root = url.trim_end_matches('/');
        let root = root.strip_suffix("/v1").unwrap_or(root);
        check_class_name(&settings.class_name)?;

        let bearer = settings
            .api_key
            .as_ref()
            .map(|key| key.bearer_header("vector.weaviate.api_key"))
            .transpose()?;
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .context("building the Weaviate HTTP client")?;
        Ok(Self {
            http,
            base_url: format!("{root}/v1"),
            class: settings.class_name.clone(),
            dimensions,
            bearer,
            retry: RetryPolicy::default(),
            text: Vec::new(),
        })
    }

    /// The same index writing as each object's `content` the strings of `data` that
    /// `pointers` select (`embedder.text`; none: every string), as keyword search reads a
    /// context's text.
    pub fn with_text(mut self, pointers: Vec<String>) -> Self {
        self.text = pointers;
        self
    }

    /// The same index with another retry policy (tests use a faster one). `attempts: 0` is
    /// taken as 1.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The class the contexts are stored in.
    pub fn class_name(&self) -> &str {
        &self.class
    }

    /// `{url}/v1`, what every path is appended to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The server's version string from `GET /v1/meta` (§1), for logs and compatibility checks.
    pub async fn server_version(&self) -> Result<String, VectorError> {
        let reply = self.send(Method::GET, "/meta", None, Retry::Yes).await?;
        if reply.status != StatusCode::OK {
            return Err(reply.rejected("reading the server's meta"));
        }
        let meta = reply.json("reading the server's meta")?;
        meta.get("version")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| VectorError::Rejected("GET /v1/meta answered without a version".into()))
    }

    fn check_vector(&self, vector: &[f32], what: &str) -> Result<(), VectorError> {
        if self.dimensions > 0 && vector.len() != self.dimensions {
            return Err(VectorError::Rejected(format!(
                "{what}: the vector has {} dimensions, the index {}",
                vector.len(),
                self.dimensions
            )));
        }
        check_finite(vector).map_err(|e| VectorError::Rejected(format!("{what}: {e}")))
    }

    /// One request, retried on 5xx, 429 and transport errors; any other answer is returned for
    /// the caller to read. The body is serialised once (see [`json_body`]) and shared by the
    /// retries.
    async fn send(
        &self,
        method: Method,
        path: &str,
        payload: Option<Bytes>,
        retry: Retry,
    ) -> Result<Reply, VectorError> {
        let url = format!("{}{path}", self.base_url);
        let attempts = match retry {
            Retry::Yes => self.retry.attempts.max(1),
            Retry::No => 1,
        };
        let mut last_error = anyhow!("no attempt made");
        let mut retry_after = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                let delay = self.backoff(attempt - 1, retry_after.take());
                tracing::warn!(%method, path, attempt, retry_in = ?delay, error = %last_error, "retrying a Weaviate request");
                tokio::time::sleep(delay).await;
            }
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header(header::ACCEPT, "application/json");
            // Ready is answered before authentication (§1): it needs no key, so it gets none.
            if let Some(bearer) = self.bearer.as_ref().filter(|_| path != READY_PATH) {
                request = request.header(header::AUTHORIZATION, bearer.clone());
            }
            if let Some(payload) = &payload {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(payload.clone());
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    last_error = anyhow!(e.without_url()).context(format!("{method} /v1{path}"));
                    continue;
                }
            };
            let status = response.status();
            retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = match response.bytes().await {
                Ok(body) => body,
                Err(e) => {
                    last_error = anyhow!(e.without_url())
                        .context(format!("{method} /v1{path}: reading the answer"));
                    continue;
                }
            };
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                last_error = anyhow!(
                    "{method} /v1{path} answered {status}: {}",
                    error_message(&body)
                );
                continue;
            }
            tracing::debug!(%method, path, %status, "Weaviate answered");
            return Ok(Reply {
                method,
                path: path.to_owned(),
                status,
                body,
            });
        }
        Err(VectorError::Unavailable(last_error.context(format!(
            "Weaviate did not answer after {attempts} attempt(s)"
        ))))
    }

    /// The delay before retry number `retry` (1-based): doubled per retry, capped, jittered into
    /// its upper half so instances retrying together spread out; a server's `Retry-After` is
    /// honoured up to the cap.
    fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let RetryPolicy {
            initial_backoff,
            max_backoff,
            ..
        } = self.retry;
        let exponent = retry.saturating_sub(1).min(20);
        let capped = initial_backoff
            .saturating_mul(1 << exponent)
            .min(max_backoff);
        let jittered = capped.mul_f64(0.5 + fastrand::f64() * 0.5);
        retry_after.map_or(jittered, |after| after.min(max_backoff).max(jittered))
    }

    /// One chunk of the upsert: sent, then only the objects that failed are sent again.
    async fn upsert_chunk(&self, chunk: &[Prepared]) -> Result<(), VectorError> {
        let mut pending: Vec<&Prepared> = chunk.iter().collect();
        let mut refused: Vec<String> = Vec::new();
        let mut transient: Vec<String> = Vec::new();
        for round in 1..=ITEM_ATTEMPTS {
            if round > 1 {
                tokio::time::sleep(self.backoff(round - 1, None)).await;
            }
            let objects: Vec<&ObjectOut> = pending.iter().map(|p| &p.object).collect();
            let body = json_body(&BatchOut { objects });
            let reply = self
                .send(Method::POST, "/batch/objects", Some(body), Retry::Yes)
                .await?;
            if !reply.status.is_success() {
                return Err(reply.rejected("writing a batch of objects"));
            }
            let results = reply.json("writing a batch of objects")?;
            let failures = batch_failures(&results, &pending)
                .map_err(|e| VectorError::Rejected(format!("writing a batch of objects: {e}")))?;
            transient.clear();
            let mut again = Vec::new();
            for (item, message) in failures {
                let line = format!("{} (object {}): {message}", item.id, item.uuid);
                if is_permanent_item_error(&message) {
                    refused.push(line);
                } else {
                    transient.push(line);
                    again.push(item);
                }
            }
            if again.is_empty() {
                break;
            }
            tracing::warn!(
                failed = again.len(),
                round,
                first = %transient[0],
                "Weaviate failed some objects of a batch; sending them again"
            );
            pending = again;
        }
        if !refused.is_empty() {
            return Err(VectorError::Rejected(format!(
                "Weaviate refused {} object(s): {}",
                refused.len(),
                refused.join("; ")
            )));
        }
        if !transient.is_empty() {
            return Err(VectorError::Unavailable(anyhow!(
                "{} object(s) still failed after {ITEM_ATTEMPTS} rounds: {}",
                transient.len(),
                transient.join("; ")
            )));
        }
        Ok(())
    }

    /// `DELETE /v1/objects/{class}/{uuid}`: one round trip for the common case of one context.
    async fn delete_one(&self, id: &ContextId) -> Result<(), VectorError> {
        let path = format!("/objects/{}/{}", self.class, object_id(id));
        let reply = self.send(Method::DELETE, &path, None, Retry::Yes).await?;
        match reply.status {
            // 404 is "gone" too: on one node a missing id answers 204, on others 404 (§6).
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            _ => Err(reply.rejected(&format!("deleting context {id}"))),
        }
    }

    /// `DELETE /v1/batch/objects` with `contextId ContainsAny [...]` (§6). Repeated while
    /// something failed or the server's per-call cap was reached: the filter is idempotent.
    async fn delete_by_filter(&self, ids: &[ContextId]) -> Result<(), VectorError> {
        let body = json_body(&batch_delete_body(&self.class, ids));
        let mut last_failure = String::new();
        for round in 1..=ITEM_ATTEMPTS {
            if round > 1 {
                tokio::time::sleep(self.backoff(round - 1, None)).await;
            }
            let reply = self
                .send(
                    Method::DELETE,
                    "/batch/objects",
                    Some(body.clone()),
                    Retry::Yes,
                )
                .await?;
            if !reply.status.is_success() {
                return Err(reply.rejected("deleting a batch of contexts"));
            }
            let answer = reply.json("deleting a batch of contexts")?;
            let results = &answer["results"];
            let count = |key: &str| results[key].as_f64().unwrap_or(0.0);
            let (matches, limit, failed) = (count("matches"), count("limit"), count("failed"));
            let capped = limit > 0.0 && matches >= limit;
            if failed == 0.0 && !capped {
                return Ok(());
            }
            last_failure = if failed > 0.0 {
                let first = results["objects"]
                    .as_array()
                    .and_then(|objects| {
                        objects
                            .iter()
                            .find_map(|o| first_error(&o["errors"]).map(|m| (o["id"].clone(), m)))
                    })
                    .map(|(id, m)| format!(" (first: object {id}: {m})"))
                    .unwrap_or_default();
                format!("{failed} object(s) failed to delete{first}")
            } else {
                format!("the server deleted its maximum of {limit} objects in one call")
            };
            tracing::warn!(round, problem = %last_failure, "a batch delete is not finished; repeating it");
        }
        Err(VectorError::Unavailable(anyhow!(
            "deleting a batch of contexts: still not done after {ITEM_ATTEMPTS} rounds: {last_failure}"
        )))
    }

    /// Checks an existing class against what contextd needs (§2.3).
    fn verify(&self, class: &Value) -> Result<(), VectorError> {
        let problems = class_mismatches(class);
        if problems.is_empty() {
            for name in ["contextId", "source", "parentId"] {
                let tokenization =
                    find_property(class, name).and_then(|p| p["tokenization"].as_str());
                if tokenization.is_some_and(|t| t != "field") {
                    // Usable, but an Equal filter on it also matches look-alike ids (§2.1).
                    tracing::warn!(class = %self.class, property = name, ?tokenization, "a filter property is not tokenized as `field`: filters on it may match too much");
                }
            }
            return Ok(());
        }
        Err(VectorError::Rejected(format!(
            "the Weaviate class {} exists but cannot hold contextd's vectors: {}. contextd never \
             alters or deletes a class: fix or remove it by hand, or set vector.weaviate.class_name \
             to another class",
            self.class,
            problems.join("; ")
        )))
    }
}

#[async_trait]
impl VectorIndex for WeaviateIndex {
    fn backend(&self) -> &'static str {
        "weaviate"
    }

    /// Per class: a new `vector.weaviate.class_name` is filled from the store. The `:text`
    /// suffix came with `content` holding each context's text rather than its JSON: the first
    /// start of that release fills the class once more, replacing every object's `content`.
    fn cursor_name(&self) -> String {
        if self.class == crate::config::WeaviateSettings::default().class_name {
            "vector:weaviate:text".to_owned()
        } else {
            format!("vector:weaviate:{}:text", self.class)
        }
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The class bootstrap of §2.4: read; create when absent; when another instance created it
    /// in the meantime (422 `already exists`), read again. Whatever is found is verified.
    async fn prepare(&self) -> Result<(), VectorError> {
        let path = format!("/schema/{}", self.class);
        for _ in 0..PREPARE_ROUNDS {
            let reply = self.send(Method::GET, &path, None, Retry::Yes).await?;
            match reply.status {
                StatusCode::OK => return self.verify(&reply.json("reading the class")?),
                StatusCode::NOT_FOUND => {}
                _ => return Err(reply.rejected("reading the class")),
            }
            let definition = json_body(&class_definition(&self.class));
            let created = self
                .send(Method::POST, "/schema", Some(definition), Retry::Yes)
                .await?;
            if created.status.is_success() {
                tracing::info!(class = %self.class, "created the Weaviate class");
                return self.verify(&created.json("creating the class")?);
            }
            let message = error_message(&created.body);
            if created.status == StatusCode::UNPROCESSABLE_ENTITY
                && message.contains("already exists")
            {
                if message.contains("found similar class") {
                    return Err(VectorError::Rejected(format!(
                        "cannot create the Weaviate class {}: a class whose name differs only in \
                         case exists ({message}); set vector.weaviate.class_name to that name or \
                         another one",
                        self.class
                    )));
                }
                // Another instance won the race: read what it created.
                tracing::info!(class = %self.class, "the Weaviate class was created concurrently; reading it");
                continue;
            }
            return Err(created.rejected("creating the class"));
        }
        Err(VectorError::Unavailable(anyhow!(
            "the Weaviate class {} is reported as existing but cannot be read",
            self.class
        )))
    }

    async fn upsert(&self, entries: Vec<VectorEntry>) -> Result<(), VectorError> {
        // One object per id, the last entry winning as it would in sequence: a batch that holds
        // an id twice leaves the outcome to the server's parallel shards.
        let mut seen = HashSet::new();
        let mut latest: Vec<VectorEntry> = entries
            .into_iter()
            .rev()
            .filter(|e| seen.insert(e.id.clone()))
            .collect();
        latest.reverse();
        let mut prepared = Vec::with_capacity(latest.len());
        for entry in &latest {
            self.check_vector(&entry.vector, &format!("context {}", entry.id))?;
            prepared.push(Prepared {
                id: entry.id.clone(),
                uuid: object_id(&entry.id),
                object: object_body(&self.class, entry, &self.text),
            });
        }
        // An empty batch is a 422 (§5): nothing to send is simply nothing to do.
        for chunk in prepared.chunks(UPSERT_CHUNK) {
            self.upsert_chunk(chunk).await?;
        }
        Ok(())
    }

    async fn delete(&self, ids: Vec<ContextId>) -> Result<(), VectorError> {
        let mut seen = HashSet::new();
        let ids: Vec<ContextId> = ids
            .into_iter()
            .filter(|id| seen.insert(id.clone()))
            .collect();
        match ids.as_slice() {
            [] => Ok(()),
            [one] => self.delete_one(one).await,
            many => {
                for chunk in many.chunks(DELETE_CHUNK) {
                    self.delete_by_filter(chunk).await?;
                }
                Ok(())
            }
        }
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<Hit>, VectorError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        self.check_vector(&query.vector, "the search vector")?;
        let text = search_query(&self.class, query).map_err(VectorError::Rejected)?;
        let reply = self
            .send(
                Method::POST,
                "/graphql",
                Some(json_body(&json!({ "query": text }))),
                Retry::Yes,
            )
            .await?;
        if reply.status != StatusCode::OK {
            return Err(reply.rejected("searching"));
        }
        let mut hits = parse_search_response(&self.class, &reply.json("searching")?)?;
        hits.truncate(query.limit);
        Ok(hits)
    }

    async fn ping(&self) -> Result<(), VectorError> {
        // No retry: /readyz wants the state now, and a retry loop would only slow it down.
        let reply = self.send(Method::GET, READY_PATH, None, Retry::No).await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(reply.rejected("checking readiness"))
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Retry {
    Yes,
    No,
}

/// An answer that is neither 5xx nor 429.
struct Reply {
    method: Method,
    path: String,
    status: StatusCode,
    body: Bytes,
}

impl Reply {
    fn json(&self, doing: &str) -> Result<Value, VectorError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            // A 2xx that is not JSON is not Weaviate (a proxy page, a wrong URL): configuration.
            VectorError::Rejected(format!(
                "{doing}: {} /v1{} answered {} with a body that is not JSON ({e}): {}",
                self.method,
                self.path,
                self.status,
                truncate(&String::from_utf8_lossy(&self.body), 200)
            ))
        })
    }

    fn rejected(&self, doing: &str) -> VectorError {
        let hint = match self.status {
            StatusCode::UNAUTHORIZED => " (check vector.weaviate.api_key)",
            StatusCode::FORBIDDEN => " (the API key lacks a permission)",
            _ => "",
        };
        VectorError::Rejected(format!(
            "{doing}: {} /v1{} answered {}{hint}: {}",
            self.method,
            self.path,
            self.status,
            error_message(&self.body)
        ))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::domain::{JsonObject, Source};

    fn id(raw: &str) -> ContextId {
        ContextId::parse(raw).unwrap()
    }

    fn query(vector: Vec<f32>) -> SearchQuery {
        SearchQuery {
            vector,
            limit: 5,
            min_certainty: 0.0,
            source: None,
            parent_id: None,
            visible: crate::domain::Visible::to(&crate::domain::Principal::system()),
        }
    }

    #[test]
    fn object_ids_are_the_uuid5_test_vectors_of_the_contract() {
        assert_eq!(
            object_id(&id("ctx_123")).to_string(),
            "65f31481-1306-5c03-9aaf-fd7694153e8f"
        );
        assert_eq!(
            object_id(&id("ctx_456")).to_string(),
            "b5ba7548-25a2-5874-a14b-fdc9641c659d"
        );
    }

    #[test]
    fn a_query_without_threshold_or_filters_has_only_the_vector_and_limit() {
        assert_eq!(
            search_query("FactoryContext", &query(vec![0.7, 0.3])).unwrap(),
            "{ Get { FactoryContext(nearVector: {vector: [0.7, 0.3]}, limit: 5) \
             { contextId _additional { certainty distance } } } }"
        );
    }

    #[test]
    fn a_certainty_threshold_goes_into_near_vector() {
        let mut q = query(vec![1.0, -2.0, 0.25]);
        q.min_certainty = 0.8;
        q.limit = 10;
        assert_eq!(
            search_query("FactoryContext", &q).unwrap(),
            "{ Get { FactoryContext(nearVector: {vector: [1, -2, 0.25], certainty: 0.8}, limit: 10) \
             { contextId _additional { certainty distance } } } }"
        );
    }

    #[test]
    fn one_filter_is_a_single_equal_and_two_are_joined_by_and() {
        let mut q = query(vec![0.7, 0.3]);
        q.source = Some(Source::Mcp);
        assert!(search_query("C", &q).unwrap().contains(
            ", where: {path: [\"source\"], operator: Equal, valueText: \"mcp\"}, limit: 5)"
        ));
        q.source = Some(Source::Factory);
        q.parent_id = Some(id("ctx_1"));
        assert!(search_query("C", &q).unwrap().contains(
            ", where: {operator: And, operands: [\
             {path: [\"source\"], operator: Equal, valueText: \"factory\"}, \
             {path: [\"parentId\"], operator: Equal, valueText: \"ctx_1\"}]}, limit: 5)"
        ));
    }

    #[test]
    fn graphql_strings_escape_quotes_backslashes_and_control_characters() {
        assert_eq!(graphql_string("plain"), "\"plain\"");
        assert_eq!(
            graphql_string("a\"b\\c\nd\te\u{1}"),
            "\"a\\\"b\\\\c\\nd\\te\\u0001\""
        );
        // The query then goes into JSON through serde_json, which escapes it once more.
        let body = json!({"query": graphql_string("x\"y")}).to_string();
        assert_eq!(body, r#"{"query":"\"x\\\"y\""}"#);
    }

    #[test]
    fn vectors_are_written_as_plain_decimal_literals() {
        let mut out = String::new();
        write_vector(&mut out, &[1.0, 0.1, -3.5, 1e-7, 123_456_790.0]);
        assert_eq!(out, "[1, 0.1, -3.5, 0.0000001, 123456790]");
    }

    #[test]
    fn a_vector_with_nan_or_infinity_is_refused_before_any_request() {
        assert!(search_query("C", &query(vec![0.1, f32::NAN])).is_err());
        assert!(search_query("C", &query(vec![f32::INFINITY])).is_err());
        let mut q = query(vec![0.1]);
        q.min_certainty = f64::NAN;
        assert!(search_query("C", &q).is_err());
    }

    #[test]
    fn error_bodies_are_decoded_in_all_four_shapes() {
        assert_eq!(
            error_message(br#"{"error":[{"message":"class name FactoryContext already exists"}]}"#),
            "class name FactoryContext already exists"
        );
        assert_eq!(
            error_message(br#"{"code":401,"message":"unauthorized: invalid api key"}"#),
            "unauthorized: invalid api key"
        );
        assert_eq!(error_message(b""), "(empty body)");
        assert_eq!(
            error_message(
                br#"{"errorCode":"USAGE_LIMIT_EXCEEDED","limit":"objects","value":5,"message":"too many"}"#
            ),
            "USAGE_LIMIT_EXCEEDED: too many"
        );
        assert_eq!(
            error_message(b"<html>bad gateway</html>\n"),
            "<html>bad gateway</html>"
        );
        assert_eq!(
            error_message(br#"{"error":[{"message":"a"},{"message":"b"}]}"#),
            "a; b"
        );
    }

    #[test]
    fn the_contracts_class_echo_passes_verification_and_extra_keys_are_ignored() {
        let mut echo = class_definition("FactoryContext");
        echo["vectorIndexConfig"] = json!({"distance":"cosine","ef":-1,"efConstruction":128});
        echo["replicationConfig"] = json!({"factor": 1});
        echo["properties"][0]["indexRangeFilters"] = json!(false);
        assert!(class_mismatches(&echo).is_empty());
    }

    #[test]
    fn a_class_with_another_distance_vectorizer_or_property_type_is_a_mismatch() {
        let mut class = class_definition("FactoryContext");
        class["vectorizer"] = json!("text2vec-openai");
        class["vectorIndexConfig"]["distance"] = json!("dot");
        class["properties"][3]["dataType"] = json!(["text"]);
        class["properties"].as_array_mut().unwrap().remove(5);
        let problems = class_mismatches(&class);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("vectorizer"));
        assert!(problems[1].contains("\"dot\""));
        assert!(problems[2].contains("timestamp"));
        assert!(problems[3].contains("parentId"));
    }

    #[test]
    fn a_content_property_keyword_search_cannot_read_is_a_mismatch() {
        // A class made before `content` said how it is indexed: Weaviate's defaults (§10.3).
        let mut class = class_definition("FactoryContext");
        class["properties"][1] = json!({"name": "content", "dataType": ["text"]});
        assert!(class_mismatches(&class).is_empty());
        class["properties"][1]["tokenization"] = json!("field");
        class["properties"][1]["indexSearchable"] = json!(false);
        let problems = class_mismatches(&class);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("indexSearchable"));
        assert!(problems[1].contains("tokenization"));
    }

    #[test]
    fn search_errors_are_read_before_data_and_null_data_means_no_hits() {
        let failed = json!({
            "data": {"Get": {"FactoryContext": null}},
            "errors": [{"message": "failed to extract nearVector params: cannot provide distance and certainty", "path": ["Get","FactoryContext"]}]
        });
        match parse_search_response("FactoryContext", &failed) {
            Err(VectorError::Rejected(m)) => assert!(m.contains("cannot provide distance")),
            other => panic!("{other:?}"),
        }
        let slow = json!({"errors": [{"message": "context deadline exceeded"}]});
        assert!(matches!(
            parse_search_response("FactoryContext", &slow),
            Err(VectorError::Unavailable(_))
        ));
        for empty in [
            json!({"data": {"Get": {"FactoryContext": null}}}),
            json!({"data": null}),
            json!({}),
        ] {
            assert!(
                parse_search_response("FactoryContext", &empty)
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn search_results_become_hits_in_the_servers_order() {
        let answer = json!({"data":{"Get":{"FactoryContext":[
            {"_additional":{"certainty":1,"distance":0},"contextId":"ctx_123"},
            {"_additional":{"certainty":0.9642383,"distance":0.07152331},"contextId":"ctx_456"},
            {"_additional":{"certainty":0.5,"distance":1},"contextId":"not an id"}
        ]}}});
        let hits = parse_search_response("FactoryContext", &answer).unwrap();
        assert_eq!(
            hits,
            vec![
                Hit {
                    id: id("ctx_123"),
                    certainty: 1.0,
                    distance: 0.0
                },
                Hit {
                    id: id("ctx_456"),
                    certainty: 0.9642383,
                    distance: 0.07152331
                },
            ]
        );
    }

    #[test]
    fn an_object_body_carries_the_contexts_text_and_an_rfc3339_timestamp() {
        let data = JsonObject::from_value(&json!({"user": "john"})).unwrap();
        let entry = VectorEntry {
            id: id("ctx_123"),
            version: 3,
            vector: vec![0.7, 0.3],
            source: Source::Factory,
            parent_id: None,
            data,
            metadata: JsonObject::empty(),
            updated_at: Utc.with_ymd_and_hms(2026, 8, 20, 10, 0, 0).unwrap(),
        };
        let body = serde_json::to_string(&object_body("FactoryContext", &entry, &[])).unwrap();
        // The object of the contract's §4, with `content` the context's text (§10.3): its
        // strings, not its JSON, whose punctuation and keys would be searched as words.
        assert_eq!(
            body,
            r#"{"class":"FactoryContext","id":"65f31481-1306-5c03-9aaf-fd7694153e8f","properties":{"contextId":"ctx_123","content":"john","metadata":"{}","timestamp":"2026-08-20T10:00:00Z","source":"factory","parentId":""},"vector":[0.7,0.3]}"#
        );
        let data = JsonObject::from_value(&json!({"title": "pump", "notes": {"a": "b"}})).unwrap();
        let picked = VectorEntry { data, ..entry };
        let body = object_body("FactoryContext", &picked, &["/notes".to_owned()]);
        assert_eq!(body.properties.content, "b");
    }

    #[test]
    fn batch_failures_are_matched_by_id_and_missing_items_count_as_failed() {
        let items: Vec<Prepared> = ["a", "b", "c"]
            .iter()
            .map(|raw| Prepared {
                id: id(raw),
                uuid: object_id(&id(raw)),
                object: ObjectOut {
                    class: "C".into(),
                    id: object_id(&id(raw)).to_string(),
                    properties: PropertiesOut {
                        context_id: (*raw).into(),
                        content: "{}".into(),
                        metadata: "{}".into(),
                        timestamp: "2026-08-20T10:00:00Z".into(),
                        source: "mcp",
                        parent_id: String::new(),
                    },
                    vector: vec![1.0],
                },
            })
            .collect();
        let pending: Vec<&Prepared> = items.iter().collect();
        let answer = json!([
            {"id": items[1].uuid.to_string(), "result": {"status": "FAILED", "errors": {"error": [{"message": "boom"}]}}},
            {"id": items[0].uuid.to_string(), "result": {"status": "SUCCESS"}},
        ]);
        let failures = batch_failures(&answer, &pending).unwrap();
        let summary: Vec<(&str, &str)> = failures
            .iter()
            .map(|(p, m)| (p.id.as_str(), m.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("b", "boom"),
                ("c", "the answer has no result for this object")
            ]
        );
    }

    #[test]
    fn wrong_values_are_permanent_item_errors_and_replica_trouble_is_not() {
        assert!(is_permanent_item_error(
            "invalid date property 'timestamp' on class 'FactoryContext': requires a string with a RFC3339 formatted date, but the given value is 'yesterday'"
        ));
        assert!(is_permanent_item_error(
            "new node has a vector with length 3. Existing nodes have vectors with length 2"
        ));
        assert!(!is_permanent_item_error("cannot reach enough replicas"));
        assert!(!is_permanent_item_error("context deadline exceeded"));
    }

    #[test]
    fn settings_need_a_url_and_a_class_name_the_server_keeps() {
        let mut settings = WeaviateSettings::default();
        assert!(WeaviateIndex::new(&settings, 2).is_err());
        settings.url = Some("http://127.0.0.1:8080/v1/".into());
        let index = WeaviateIndex::new(&settings, 2).unwrap();
        assert_eq!(index.base_url(), "http://127.0.0.1:8080/v1");
        settings.class_name = "factoryContext".into();
        assert!(WeaviateIndex::new(&settings, 2).is_err());
        settings.class_name = "Factory Context".into();
        assert!(WeaviateIndex::new(&settings, 2).is_err());
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let settings = WeaviateSettings {
            url: Some("http://127.0.0.1:8080".into()),
            api_key: Some(crate::config::Secret::new("s3cret-key".into())),
            ..WeaviateSettings::default()
        };
        let index = WeaviateIndex::new(&settings, 2).unwrap();
        let shown = format!("{index:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn backoff_doubles_and_honours_retry_after_up_to_the_cap() {
        let settings = WeaviateSettings {
            url: Some("http://127.0.0.1:8080".into()),
            ..WeaviateSettings::default()
        };
        let index = WeaviateIndex::new(&settings, 2).unwrap();
        for _ in 0..50 {
            let first = index.backoff(1, None);
            assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(50));
            let third = index.backoff(3, None);
            assert!(third >= Duration::from_millis(100) && third <= Duration::from_millis(200));
            assert_eq!(
                index.backoff(1, Some(Duration::from_secs(30))),
                Duration::from_secs(1)
            );
        }
    }
}
