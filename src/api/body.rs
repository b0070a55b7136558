//! Request bodies: the shared in-flight budget, and the JSON extractor that parses within it.
//!
//! Every body being read, parsed and processed holds its bytes against one budget,
//! `limits.max_inflight_body_bytes`, from the moment the request arrives until its response
//! is made. A request that cannot get its share within `limits.inflight_wait_ms` is answered
//! 503 with `Retry-After` before its body is read. Bodies with a declared length take their
//! share up front; streamed ones (chunked, HTTP/2 without a length) take it frame by frame.
//!
//! The extractor then counts the values of the JSON text before any parser allocates (over
//! `limits.max_json_nodes`: 413 with `limit` and `actual`), and parses large bodies on the CPU
//! pool ([`crate::cpu`]), never on a request worker. Since `data` and `metadata` are kept as
//! text ([`crate::domain::JsonObject`]), a request holds about its body size a few times
//! over, never a tree of its values.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

use crate::config::LimitSettings;
use crate::domain::count_values;
use crate::error::AppError;
use crate::metrics::Metrics;

/// The budget is counted in units of this many bytes (a semaphore permit each).
const UNIT: usize = 1024;

/// The shared budget of body bytes in flight.
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    /// Units in the whole budget.
    units: usize,
    wait: Duration,
    max_json_nodes: usize,
    max_body_bytes: usize,
    metrics: Arc<Metrics>,
}

/// What the JSON extractor needs to know of the limits, put on every request.
#[derive(Debug, Clone, Copy)]
struct JsonLimits {
    max_json_nodes: usize,
    max_body_bytes: usize,
}

impl JsonLimits {
    /// For a request that did not pass the budget layer (none does, but for a router built
    /// without it): no limit but the parser's own.
    const NONE: Self = Self {
        max_json_nodes: usize::MAX,
        max_body_bytes: usize::MAX,
    };
}

/// Whether a body error is, somewhere in its chain, the budget's refusal.
fn is_saturated(mut error: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if error.is::<Saturated>() {
            return true;
        }
        match error.source() {
            Some(source) => error = source,
            None => return false,
        }
    }
}

/// A body's share could not be had in time.
#[derive(Debug, thiserror::Error)]
#[error("the server is reading as many request bodies as it holds at once; retry shortly")]
pub struct Saturated;

impl BodyBudget {
    /// The budget of `limits`; JSON bodies are read up to `max_body_bytes`.
    pub fn new(limits: &LimitSettings, max_body_bytes: usize, metrics: Arc<Metrics>) -> Self {
        let units = limits.max_inflight_body_bytes.div_ceil(UNIT).max(1);
        Self {
            permits: Arc::new(Semaphore::new(units)),
            units,
            wait: Duration::from_millis(limits.inflight_wait_ms),
            max_json_nodes: limits.max_json_nodes,
            max_body_bytes,
            metrics,
        }
    }

    /// Bytes of bodies held now.
    pub fn in_flight_bytes(&self) -> usize {
        (self.units - self.permits.available_permits()) * UNIT
    }

    /// Units for `bytes`, capped at the whole budget (a body larger than the budget runs
    /// alone rather than never).
    fn units_for(&self, bytes: usize) -> u32 {
        bytes
            .div_ceil(UNIT)
            .min(self.units)
            .try_into()
            .unwrap_or(u32::MAX)
    }

    async fn acquire(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Saturated> {
        let units = self.units_for(bytes);
        let permits = self.permits.clone().acquire_many_owned(units);
        match tokio::time::timeout(self.wait, permits).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Saturated),
        }
    }
}

/// The budget layer: holds each request's body bytes against the budget until its response.
pub async fn limit_bodies(
    State(budget): State<Arc<BodyBudget>>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(JsonLimits {
        max_json_nodes: budget.max_json_nodes,
        max_body_bytes: budget.max_body_bytes,
    });
    let held = Arc::new(Mutex::new(Vec::new()));
    let hint = request.body().size_hint();
    match hint.exact() {
        Some(0) => {}
        Some(length) => match budget
            .acquire(usize::try_from(length).unwrap_or(usize::MAX))
            .await
        {
            Ok(permit) => held.lock().expect("never poisoned").push(permit),
            Err(saturated) => {
                budget.metrics.observe_overload("body_budget");
                return refuse_unread(request, AppError::Unavailable(saturated.to_string()));
            }
        },
        None if request.body().is_end_stream() => {}
        None => {
            let (parts, body) = request.into_parts();
            let body = Budgeted {
                inner: body,
                permits: PollSemaphore::new(budget.permits.clone()),
                budget: budget.clone(),
                held: held.clone(),
                read: 0,
                taken: 0,
                waiting: None,
                pending: None,
            };
            request = Request::from_parts(parts, Body::new(body));
        }
    }
    let response = next.run(request).await;
    drop(held);
    if hint.exact().unwrap_or(0) >= TRIM_AFTER as u64 {
        give_back_memory();
    }
    response
}

/// Bodies this large or larger leave memory the allocator would otherwise keep.
const TRIM_AFTER: usize = 1 << 20;

/// Asks glibc's allocator to return its free memory to the OS. It keeps the peak of a burst
/// of large requests otherwise (bench/hardening.sh: "RSS after"); trimming costs a few
/// milliseconds, off the request runtime, and at most one runs at a time.
fn give_back_memory() {
    static TRIMMING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TRIMMING.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    tokio::task::spawn_blocking(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free pages of glibc's heaps; it touches no memory
        // in use and is safe to call from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
        TRIMMING.store(false, std::sync::atomic::Ordering::Release);
    });
}

/// How long a refused request's body is read and thrown away behind its answer.
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// Answers a request without having read its body, and closes the connection after. The body
/// is read and thrown away behind the answer (for at most [`DRAIN_FOR`]): closing a socket
/// with unread bytes resets it, and a client still sending would see the reset, not the 503.
fn refuse_unread(request: Request, error: AppError) -> Response {
    let mut body = request.into_body();
    tokio::spawn(async move {
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
    });
    let mut response = error.into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// A streamed body that takes its share of the budget as its frames arrive.
struct Budgeted {
    inner: Body,
    permits: PollSemaphore,
    budget: Arc<BodyBudget>,
    /// Shared with the layer, which releases them once the response is made.
    held: Arc<Mutex<Vec<OwnedSemaphorePermit>>>,
    /// Bytes read so far, and units taken for them.
    read: usize,
    taken: usize,
    /// Runs while a frame waits for its share.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    pending: Option<Frame<Bytes>>,
}

impl HttpBody for Budgeted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.pending.take() {
                let needed = this
                    .budget
                    .units_for(this.read)
                    .saturating_sub(this.taken as u32);
                if needed == 0 {
                    this.waiting = None;
                    return Poll::Ready(Some(Ok(frame)));
                }
                match this.permits.poll_acquire_many(cx, needed) {
                    Poll::Ready(Some(permit)) => {
                        this.taken += needed as usize;
                        this.held.lock().expect("never poisoned").push(permit);
                        this.waiting = None;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Poll::Ready(None) => unreachable!("the budget's semaphore is never closed"),
                    Poll::Pending => {
                        let wait = this.budget.wait;
                        let timer = this
                            .waiting
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                        if timer.as_mut().poll(cx).is_ready() {
                            this.budget.metrics.observe_overload("body_budget");
                            return Poll::Ready(Some(Err(axum::Error::new(Saturated))));
                        }
                        this.pending = Some(frame);
                        return Poll::Pending;
                    }
                }
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        this.read += data.len();
                    }
                    this.pending = Some(frame);
                }
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the request says its body is JSON (`application/json`, or any `+json` type).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype
                .rsplit_once('+')
                .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json")))
}

/// The body's bytes, as a JSON body: sent as JSON (else 415), within the body limit (else
/// 413) and the budget (else 503), with at most `limits.max_json_nodes` values (else 413).
/// For handlers that parse the text themselves.
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = AppError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, AppError> {
        if !is_json(request.headers()) {
            return Err(AppError::UnsupportedMediaType(
                "the body must be JSON, sent with Content-Type: application/json".to_owned(),
            ));
        }
        let limits = request
            .extensions()
            .get::<JsonLimits>()
            .copied()
            .unwrap_or(JsonLimits::NONE);
        let body = http_body_util::Limited::new(request.into_body(), limits.max_body_bytes);
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(AppError::BodyTooLarge(format!(
                    "the body is larger than the {} bytes this server reads",
                    limits.max_body_bytes
                )));
            }
            Err(e) if is_saturated(e.as_ref()) => {
                return Err(AppError::Unavailable(Saturated.to_string()));
            }
            Err(e) => {
                return Err(AppError::BadRequest(format!(
                    "cannot read the request body: {e}"
                )));
            }
        };
        let max = limits.max_json_nodes;
        let actual = crate::cpu::run_sized(bytes.len(), {
            let bytes = bytes.clone();
            move || count_values(&bytes)
        })
        .await;
        if actual > max {
            return Err(AppError::TooManyValues { limit: max, actual });
        }
        Ok(Self(bytes))
    }
}

/// A JSON body parsed into `T` (on the CPU pool when large): 400 when it is not JSON, 422
/// naming the field when it is JSON of the wrong shape, and the refusals of [`JsonBytes`].
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send + 'static> FromRequest<S> for Json<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        let JsonBytes(bytes) = JsonBytes::from_request(request, state).await?;
        let parsed = crate::cpu::run_sized(bytes.len(), move || parse_json::<T>(&bytes)).await?;
        Ok(Self(parsed))
    }
}

/// Parses `bytes` into `T`: 400 for text that is not JSON, 422 (naming where) for JSON of
/// the wrong shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = strip_position(&inner.to_string());
                AppError::Unprocessable(if path == "." {
                    message
                } else {
                    format!("{path}: {message}")
                })
            }
            _ => AppError::BadRequest(format!("malformed JSON: {inner}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| AppError::BadRequest(format!("malformed JSON: {e}")))?;
    Ok(parsed)
}

/// serde_json appends "at line L column C" to a data error, which says less than the path.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Shape {
        n: u32,
        data: crate::domain::JsonObject,
    }

    #[test]
    fn json_content_types_are_told_apart() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/json"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn syntax_is_a_bad_request_and_shape_is_unprocessable_naming_the_field() {
        assert!(matches!(
            parse_json::<Shape>(b"{\"n\": 1,"),
            Err(AppError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<Shape>(b"{\"n\": 1, \"data\": {}} trailing"),
            Err(AppError::BadRequest(_))
        ));
        match parse_json::<Shape>(br#"{"n": 1, "data": [1]}"#) {
            Err(AppError::Unprocessable(message)) => {
                assert_eq!(message, "data: must be a JSON object, not an array");
            }
            other => panic!("{other:?}"),
        }
        match parse_json::<Shape>(br#"{"n": -1, "data": {}}"#) {
            Err(AppError::Unprocessable(message)) => {
                assert!(message.starts_with("n: "), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let shape = parse_json::<Shape>(br#"{"n": 1, "data": {"b": 1, "a": 2}}"#).unwrap();
        assert_eq!(shape.data.as_str(), r#"{"a":2,"b":1}"#);
    }
}
