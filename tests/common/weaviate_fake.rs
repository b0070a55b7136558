//! A fake Weaviate 1.39 for tests: an axum server on `127.0.0.1:0` that answers the endpoints
//! contextd uses the way `shared/weaviate/CONTRACT.md` documents them (status codes, the four
//! error shapes, per-item batch results, GraphQL errors with HTTP 200), and that checks every
//! request body against Weaviate's own Swagger spec (`shared/weaviate/openapi-schema.json`).
//!
//! Include it from a test crate with
//! `#[path = "../common/weaviate_fake.rs"] mod weaviate_fake;` (or `"common/weaviate_fake.rs"`
//! from a top-level test file). It is self-contained: it uses only axum, tokio, serde_json,
//! uuid and chrono.
//!
//! What it models, and where it is simpler than the real server:
//! - Schema: `GET/POST /v1/schema`, `GET/DELETE /v1/schema/{class}`, with the server's
//!   defaults filled in on creation (vectorizer `none`: the fake has no modules).
//! - Objects: batch upsert, `POST /v1/objects`, `GET/HEAD/PUT/DELETE /v1/objects/{class}/{id}`,
//!   batch delete by filter. Auto-schema is on: writing to an unknown class or property creates
//!   it with guessed types, as the real server does by default. The first vector written to a
//!   class fixes its dimension.
//! - Search: `POST /v1/graphql` with `Get { Class(nearVector: {...}, where: {...}, limit, offset)
//!   { props _additional { id certainty distance vector creationTimeUnix lastUpdateTimeUnix } } }`
//!   answered by an EXACT scan (cosine, dot or l2-squared), nearest first, certainty and distance
//!   rounded to float32 as the server does. Only `Get` is implemented.
//! - Filters: `And`, `Or`, `Not`, `Equal`, `NotEqual`, `Like`, the four comparisons,
//!   `ContainsAny/All/None`, `IsNull`, on top-level properties and `id`, honouring each text
//!   property's tokenization (`field` compares whole values, `word` compares words).
//! - `set_down(true)`: new connections are accepted and closed at once, so the client sees a
//!   connection error; a request that still arrives on a connection opened before answers 503
//!   with an empty body and `Connection: close` (what a server that is going away does).
//!
//! Every body that does not validate against the spec gets 422 in the framework shape
//! (`{"code":601,"message":...}`) and is recorded: `violations()` lists them, so tests can assert
//! there were none. The fake also records as violations a request to a path that is not in the
//! spec, or one that the fake does not implement.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

/// Weaviate's spec, read once per test binary.
const SPEC_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/common/weaviate/openapi-schema.json"
);

/// `QUERY_MAXIMUM_RESULTS`' default: the most one batch delete removes, and `limit + offset`'s cap.
const QUERY_MAXIMUM_RESULTS: usize = 10_000;

/// `QUERY_DEFAULTS_LIMIT`: a `Get` without `limit`.
const QUERY_DEFAULT_LIMIT: usize = 10;

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(SPEC_PATH)
            .unwrap_or_else(|e| panic!("reading Weaviate's spec at {SPEC_PATH}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {SPEC_PATH}: {e}"))
    })
}

/// A running fake; the server stops when this is dropped.
pub struct FakeWeaviate {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWeaviate {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A method, a path (with its query string, if any), and the body (`Null` when empty; a string
/// when it is not JSON).
pub type RecordedRequest = (String, String, Value);

impl FakeWeaviate {
    /// Starts a fake with no classes and no objects, open to anonymous requests.
    pub async fn start() -> FakeWeaviate {
        spec(); // fail here, clearly, if the spec is missing
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake Weaviate");
        let addr = listener.local_addr().expect("the fake's address");
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = GatedListener {
            inner: listener,
            down: shared.down.clone(),
        };
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeWeaviate {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, without `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Down: new connections are closed at once; requests on older ones answer 503, empty.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// The next `n` requests (whatever their path) answer `status`: 5xx with an `ErrorResponse`,
    /// 429 with a `UsageLimitExceededResponse`, 401 in the framework shape, 404 empty, other
    /// codes with an `ErrorResponse`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.lock().fail_next = (n, status);
    }

    /// The next `n` objects written by `POST /v1/batch/objects` fail with `message` in their
    /// `result` (HTTP 200 all the same), and are not stored.
    pub fn fail_next_items(&self, n: usize, message: &str) {
        self.shared.lock().fail_items = (n, message.to_owned());
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Forgets the requests recorded so far (not the violations).
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// How many objects are stored, over all classes.
    pub fn objects(&self) -> usize {
        self.shared.lock().objects.values().map(BTreeMap::len).sum()
    }

    /// The stored object with this id, as `GET /v1/objects/{class}/{id}?include=vector` shows it.
    pub fn stored_object(&self, id: &str) -> Option<Value> {
        let state = self.shared.lock();
        let id = id.to_ascii_lowercase();
        state
            .objects
            .iter()
            .find_map(|(class, objects)| objects.get(&id).map(|o| o.to_json(class, &id, true)))
    }

    /// The class as `GET /v1/schema/{class}` returns it.
    pub fn class(&self, name: &str) -> Option<Value> {
        self.shared.lock().class(name).cloned()
    }

    /// With a key, every request but ready/live needs `Authorization: Bearer <key>`, else 401.
    pub fn require_api_key(&self, key: Option<String>) {
        self.shared.lock().api_key = key;
    }

    /// The next `n` `GET /v1/schema/{class}` requests each wait until all `n` have arrived, so
    /// that `n` clients starting together all see the class absent and race to create it.
    pub fn sync_schema_reads(&self, n: usize) {
        *self.shared.barrier.lock().unwrap() =
            (n > 0).then(|| (Arc::new(tokio::sync::Barrier::new(n)), n));
    }

    /// Requests that broke Weaviate's spec, or that the fake cannot answer, with the reason.
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }
}

/// A listener that, while the fake is down, closes each connection as soon as it is accepted.
struct GatedListener {
    inner: tokio::net::TcpListener,
    down: Arc<AtomicBool>,
}

impl axum::serve::Listener for GatedListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, _)) if self.down.load(Ordering::SeqCst) => drop(stream),
                Ok(accepted) => return accepted,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

type Barrier = Option<(Arc<tokio::sync::Barrier>, usize)>;

#[derive(Default)]
struct Shared {
    down: Arc<AtomicBool>,
    state: Mutex<FakeState>,
    barrier: Mutex<Barrier>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding it must not hide the other failures.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_barrier(&self) -> Option<Arc<tokio::sync::Barrier>> {
        let mut slot = self.barrier.lock().unwrap();
        let (barrier, left) = slot.as_mut()?;
        let barrier = barrier.clone();
        *left -= 1;
        if *left == 0 {
            *slot = None;
        }
        Some(barrier)
    }
}

#[derive(Default)]
struct FakeState {
    requests: Vec<RecordedRequest>,
    violations: Vec<String>,
    fail_next: (usize, u16),
    fail_items: (usize, String),
    api_key: Option<String>,
    /// Classes as `GET /v1/schema/{class}` shows them, in creation order.
    classes: Vec<Value>,
    /// Class name -> lowercase uuid -> object.
    objects: BTreeMap<String, BTreeMap<String, Stored>>,
    /// The vector length fixed by a class's first vector.
    dimensions: HashMap<String, usize>,
}

#[derive(Debug, Clone)]
struct Stored {
    properties: Map<String, Value>,
    vector: Option<Vec<f64>>,
    created: i64,
    updated: i64,
}

impl Stored {
    fn to_json(&self, class: &str, id: &str, with_vector: bool) -> Value {
        let mut object = json!({
            "class": class,
            "id": id,
            "properties": self.properties,
            "creationTimeUnix": self.created,
            "lastUpdateTimeUnix": self.updated,
        });
        if with_vector {
            object["vector"] = json!(self.vector.clone().unwrap_or_default());
        }
        object
    }
}

// ---------------------------------------------------------------------------------------------
// Responses in Weaviate's shapes (CONTRACT §0)

fn empty(status: u16) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(status).expect("a status");
    response
}

fn json_response(status: u16, body: Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).expect("a status");
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Shape 1, `ErrorResponse`.
fn error_response(status: u16, message: &str) -> Response {
    json_response(status, json!({"error": [{"message": message}]}))
}

/// Shape 2, go-openapi's: the HTTP status is `code` below 600, else 422.
fn framework_error(code: u16, message: &str) -> Response {
    let status = if code < 600 { code } else { 422 };
    json_response(status, json!({"code": code, "message": message}))
}

fn down_response() -> Response {
    let mut response = empty(503);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn injected_failure(status: u16) -> Response {
    match status {
        429 => json_response(
            429,
            json!({"errorCode": "USAGE_LIMIT_EXCEEDED", "limit": "objects", "value": 1000,
                   "message": "usage limit exceeded: the fake refuses this request"}),
        ),
        401 => framework_error(401, "unauthorized: invalid api key"),
        404 => empty(404),
        _ => error_response(status, &format!("fake: injected failure {status}")),
    }
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
    let path = uri.path().to_owned();
    let query = uri.query().map(str::to_owned);
    let target = match &query {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let recorded = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    shared
        .lock()
        .requests
        .push((method.to_string(), target.clone(), recorded));

    if shared.down.load(Ordering::SeqCst) {
        return down_response();
    }
    let injected = shared.lock().take_failure();
    if let Some(status) = injected {
        return injected_failure(status);
    }
    // Ready and live are answered before authentication, on the exact URL only (§1).
    let open = method == Method::GET
        && matches!(
            path.as_str(),
            "/v1/.well-known/ready" | "/v1/.well-known/live"
        )
        && query.is_none();
    if !open {
        let refused = shared.lock().check_auth(&headers);
        if let Some(refused) = refused {
            return refused;
        }
    }
    if method == Method::GET && path.starts_with("/v1/schema/") {
        let barrier = shared.take_barrier();
        if let Some(barrier) = barrier {
            barrier.wait().await;
        }
    }
    let mut state = shared.lock();
    state.route(&method, &path, query.as_deref(), &headers, &body, &target)
}

impl FakeState {
    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    fn take_failure(&mut self) -> Option<u16> {
        let (left, status) = &mut self.fail_next;
        if *left == 0 {
            return None;
        }
        *left -= 1;
        Some(*status)
    }

    fn check_auth(&self, headers: &HeaderMap) -> Option<Response> {
        let key = self.api_key.as_ref()?;
        match headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            None => Some(framework_error(
                401,
                "anonymous access not enabled. Please authenticate through one of the available methods: [api-key]",
            )),
            Some(value) if value == format!("Bearer {key}") => None,
            Some(_) => Some(framework_error(401, "unauthorized: invalid api key")),
        }
    }

    fn route(
        &mut self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
        target: &str,
    ) -> Response {
        let Some(rest) = path.strip_prefix("/v1") else {
            self.violation(format!("{method} {target}: outside basePath /v1"));
            return empty(404);
        };
        let Some((template, params)) = match_template(rest) else {
            self.violation(format!(
                "{method} {target}: no such path in Weaviate's spec"
            ));
            return empty(404);
        };
        let lower = method.as_str().to_ascii_lowercase();
        let Some(operation) = spec()["paths"][template.as_str()].get(&lower) else {
            let allowed: Vec<String> = spec()["paths"][template.as_str()]
                .as_object()
                .map(|ops| ops.keys().map(|m| m.to_ascii_uppercase()).collect())
                .unwrap_or_default();
            self.violation(format!(
                "{method} {target}: the spec has no {method} on {template}"
            ));
            return framework_error(
                405,
                &format!(
                    "method {method} is not allowed, but [{}] are",
                    allowed.join(",")
                ),
            );
        };
        let query = parse_query(query);
        if let Some(level) = query.get("consistency_level")
            && !matches!(level.as_str(), "ONE" | "QUORUM" | "ALL")
        {
            return error_response(
                400,
                &format!(
                    "unrecognized consistency level '{level}', try one of the following: ['ONE', 'QUORUM', 'ALL']"
                ),
            );
        }
        let body = match self.checked_body(operation, method, target, headers, body) {
            Ok(body) => body,
            Err(refused) => return *refused,
        };
        let param = |i: usize| params.get(i).cloned().unwrap_or_default();
        match (method.as_str(), template.as_str()) {
            ("GET", "/.well-known/ready" | "/.well-known/live") => empty(200),
            ("GET", "/meta") => json_response(
                200,
                json!({"hostname": "http://[::]:8080", "modules": {}, "version": "1.39.0",
                       "grpcMaxMessageSize": 104_858_000}),
            ),
            ("GET", "/schema") => json_response(200, json!({"classes": self.classes})),
            ("POST", "/schema") => self.create_class(&body),
            ("GET", "/schema/{className}") => match self.class(&param(0)) {
                Some(class) => json_response(200, class.clone()),
                None => empty(404),
            },
            ("DELETE", "/schema/{className}") => {
                let name = param(0);
                self.classes.retain(|c| c["class"] != name.as_str());
                self.objects.remove(&name);
                self.dimensions.remove(&name);
                empty(200)
            }
            ("POST", "/batch/objects") => self.batch_objects(&body),
            ("DELETE", "/batch/objects") => self.batch_delete(&body),
            ("POST", "/objects") => self.create_object(&body),
            (_, "/objects/{className}/{id}") => {
                self.object_by_id(method, &param(0), &param(1), &query, &body)
            }
            ("POST", "/graphql") => self.graphql(&body),
            _ => {
                self.violation(format!(
                    "{method} {target}: in the spec, but the fake does not implement it"
                ));
                framework_error(501, "not implemented by the fake Weaviate")
            }
        }
    }

    /// The body, parsed and checked against the operation's body schema in the spec.
    fn checked_body(
        &mut self,
        operation: &Value,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Value, Box<Response>> {
        let parameter = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(resolve_parameter)
            .find(|p| p["in"] == "body");
        let Some(parameter) = parameter else {
            if !body.is_empty() {
                self.violation(format!(
                    "{method} {target}: a body was sent to an operation that takes none"
                ));
            }
            return Ok(Value::Null);
        };
        let name = parameter["name"].as_str().unwrap_or("body");
        if body.is_empty() {
            if parameter["required"] == true {
                self.violation(format!("{method} {target}: the required body is missing"));
                return Err(Box::new(framework_error(
                    602,
                    &format!("{name} in body is required"),
                )));
            }
            return Ok(Value::Null);
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        if media != "application/json" {
            self.violation(format!(
                "{method} {target}: Content-Type {content_type:?} is not application/json"
            ));
            return Err(Box::new(framework_error(
                415,
                &format!(
                    "unsupported media type {content_type:?}, only [application/json application/yaml] are allowed"
                ),
            )));
        }
        let value: Value = match serde_json::from_slice(body) {
            Ok(value) => value,
            Err(e) => {
                self.violation(format!("{method} {target}: the body is not JSON: {e}"));
                return Err(Box::new(framework_error(
                    400,
                    &format!("parsing {name} body from \"\" failed, because {e}"),
                )));
            }
        };
        let mut errors = Vec::new();
        SpecValidator::new(spec()).check(&parameter["schema"], &value, name, &mut errors);
        if !errors.is_empty() {
            self.violation(format!(
                "{method} {target}: the body breaks the spec: {}",
                errors.join("; ")
            ));
            return Err(Box::new(framework_error(601, &errors.join("\n"))));
        }
        Ok(value)
    }

    fn class(&self, name: &str) -> Option<&Value> {
        self.classes.iter().find(|c| c["class"] == name)
    }

    fn class_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.classes.iter_mut().find(|c| c["class"] == name)
    }
}

fn resolve_parameter(parameter: &Value) -> &Value {
    parameter["$ref"]
        .as_str()
        .and_then(|r| SpecValidator::new(spec()).resolve(r))
        .unwrap_or(parameter)
}

/// The spec path template that `path` (after `/v1`) matches, preferring literal segments
/// (`/schema/cluster-status` over `/schema/{className}`), with the placeholders' values.
fn match_template(path: &str) -> Option<(String, Vec<String>)> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, String, Vec<String>)> = None;
    for template in spec()["paths"].as_object()?.keys() {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut literals = 0;
        let mut params = Vec::new();
        let matched = parts.iter().zip(&segments).all(|(part, segment)| {
            if part.starts_with('{') && part.ends_with('}') {
                params.push(percent_decode(segment));
                !segment.is_empty()
            } else {
                literals += 1;
                part == segment
            }
        });
        if matched && best.as_ref().is_none_or(|(score, _, _)| literals > *score) {
            best = Some((literals, template.clone(), params));
        }
    }
    best.map(|(_, template, params)| (template, params))
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The spec validator: the subset of JSON Schema that Swagger 2.0 definitions use

/// Checks a value against a Swagger 2.0 schema: `$ref` (`#/...`), `allOf`, `type`,
/// `x-nullable`, `properties`, `required`, `additionalProperties`, `items`, `enum`, `format`
/// (`uuid` and `date-time`, loosely), `minimum`/`maximum`, `minLength`/`maxLength`.
///
/// Stricter than the server in one way, on purpose: `null` is accepted only where the spec says
/// `x-nullable` (Go would quietly read it as a zero value, hiding a client bug).
pub struct SpecValidator<'a> {
    spec: &'a Value,
}

impl<'a> SpecValidator<'a> {
    pub fn new(spec: &'a Value) -> Self {
        Self { spec }
    }

    /// `#/definitions/Class` -> that schema.
    pub fn resolve(&self, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        self.spec.pointer(pointer)
    }

    /// Appends one message per problem, each naming where (`body.objects.0.id`).
    pub fn check(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        self.check_at(schema, value, at, errors, 0);
    }

    fn check_at(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        errors: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 64 {
            errors.push(format!("{at}: schema nesting too deep (a $ref cycle?)"));
            return;
        }
        if value.is_null() && schema["x-nullable"] == true {
            return;
        }
        if let Some(reference) = schema["$ref"].as_str() {
            // Swagger 2.0: siblings of a $ref are ignored.
            match self.resolve(reference) {
                Some(target) => self.check_at(target, value, at, errors, depth + 1),
                None => errors.push(format!(
                    "{at}: the spec's $ref {reference} does not resolve"
                )),
            }
            return;
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            self.check_at(part, value, at, errors, depth + 1);
        }
        let expected = schema["type"]
            .as_str()
            .or_else(|| schema.get("properties").map(|_| "object"));
        if value.is_null() {
            if let Some(expected) = expected {
                errors.push(format!(
                    "{at} must be of type {expected}, found null (not x-nullable)"
                ));
            }
            return;
        }
        if let Some(expected) = expected {
            let fits = match expected {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "number" => value.is_number(),
                "integer" => value.is_i64() || value.is_u64(),
                "boolean" => value.is_boolean(),
                _ => true,
            };
            if !fits {
                errors.push(format!(
                    "{at} must be of type {expected}, found {}",
                    kind(value)
                ));
                return;
            }
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            errors.push(format!(
                "{at} should be one of {}, found {value}",
                Value::Array(allowed.clone())
            ));
        }
        if let Some(text) = value.as_str() {
            self.check_string(schema, text, at, errors);
        }
        if let Some(number) = value.as_f64() {
            if schema["minimum"].as_f64().is_some_and(|min| number < min) {
                errors.push(format!(
                    "{at} should be >= {}, found {number}",
                    schema["minimum"]
                ));
            }
            if schema["maximum"].as_f64().is_some_and(|max| number > max) {
                errors.push(format!(
                    "{at} should be <= {}, found {number}",
                    schema["maximum"]
                ));
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema["properties"].as_object();
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap_or_default();
                if !object.contains_key(name) {
                    errors.push(format!("{at}.{name} in body is required"));
                }
            }
            for (key, item) in object {
                let inner = format!("{at}.{key}");
                match properties.and_then(|p| p.get(key)) {
                    Some(property) => self.check_at(property, item, &inner, errors, depth + 1),
                    None => match &schema["additionalProperties"] {
                        Value::Bool(false) => errors.push(format!(
                            "{inner} is not allowed (additionalProperties is false)"
                        )),
                        extra @ Value::Object(_) => {
                            self.check_at(extra, item, &inner, errors, depth + 1)
                        }
                        _ => {}
                    },
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                self.check_at(items, item, &format!("{at}.{i}"), errors, depth + 1);
            }
        }
    }

    fn check_string(&self, schema: &Value, text: &str, at: &str, errors: &mut Vec<String>) {
        match schema["format"].as_str() {
            Some("uuid") if uuid::Uuid::parse_str(text).is_err() => {
                errors.push(format!("{at} in body must be of type uuid: {text:?}"));
            }
            Some("date-time") if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
                errors.push(format!("{at} in body must be of type date-time: {text:?}"));
            }
            _ => {}
        }
        let length = text.chars().count() as f64;
        if schema["maxLength"].as_f64().is_some_and(|max| length > max) {
            errors.push(format!(
                "{at} should be at most {} chars long",
                schema["maxLength"]
            ));
        }
        if schema["minLength"].as_f64().is_some_and(|min| length < min) {
            errors.push(format!(
                "{at} should be at least {} chars long",
                schema["minLength"]
            ));
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

// ---------------------------------------------------------------------------------------------
// Schema (CONTRACT §2)

const DATA_TYPES: [&str; 17] = [
    "text",
    "text[]",
    "int",
    "int[]",
    "number",
    "number[]",
    "boolean",
    "boolean[]",
    "date",
    "date[]",
    "uuid",
    "uuid[]",
    "geoCoordinates",
    "phoneNumber",
    "blob",
    "object",
    "object[]",
];

fn capitalize(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn lowercase_first(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

fn is_graphql_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Merges `defaults` under `target`: keys `target` already has win.
fn fill(target: &mut Value, defaults: Value) {
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().expect("an object");
    for (key, value) in defaults.as_object().expect("defaults are an object") {
        object.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

/// The class as the server stores it: validated, defaults filled in (as in the §2.3 echo).
fn complete_class(name: &str, mut class: Value) -> Result<Value, String> {
    class["class"] = json!(name);
    if class.get("vectorizer").is_none_or(Value::is_null) {
        class["vectorizer"] = json!("none");
    }
    let vectorizer = class["vectorizer"].as_str().unwrap_or_default().to_owned();
    if vectorizer != "none" {
        return Err(format!(
            "vectorizer: no module with name {vectorizer:?} present"
        ));
    }
    if class.get("vectorIndexType").is_none_or(Value::is_null) {
        class["vectorIndexType"] = json!("hnsw");
    }
    let index_type = class["vectorIndexType"].as_str().unwrap_or_default();
    if !matches!(index_type, "hnsw" | "flat" | "dynamic") {
        return Err(format!(
            "unrecognized or unsupported vectorIndexType {index_type:?}"
        ));
    }
    fill(
        &mut class["vectorIndexConfig"],
        json!({"distance": "cosine", "ef": -1, "efConstruction": 128, "maxConnections": 32,
               "cleanupIntervalSeconds": 300, "dynamicEfMin": 100, "dynamicEfMax": 500,
               "dynamicEfFactor": 8, "flatSearchCutoff": 40000, "skip": false,
               "vectorCacheMaxObjects": 1_000_000_000_000_i64}),
    );
    let distance = class["vectorIndexConfig"]["distance"]
        .as_str()
        .unwrap_or_default();
    if !matches!(
        distance,
        "cosine" | "dot" | "l2-squared" | "manhattan" | "hamming"
    ) {
        return Err(format!(
            "unrecognized or unsupported distance metric {distance:?}"
        ));
    }
    fill(
        &mut class["multiTenancyConfig"],
        json!({"enabled": false, "autoTenantCreation": false, "autoTenantActivation": false}),
    );
    if class["multiTenancyConfig"]["enabled"] == true {
        return Err("fake: multi-tenancy is not implemented".to_owned());
    }
    fill(
        &mut class["replicationConfig"],
        json!({"factor": 1, "deletionStrategy": "TimeBasedResolution"}),
    );
    fill(
        &mut class["invertedIndexConfig"],
        json!({"bm25": {"b": 0.75, "k1": 1.2}, "cleanupIntervalSeconds": 60,
               "stopwords": {"additions": null, "preset": "en", "removals": null},
               "usingBlockMaxWAND": true}),
    );
    fill(
        &mut class["shardingConfig"],
        json!({"desiredCount": 1, "actualCount": 1, "function": "murmur3", "key": "_id",
               "strategy": "hash", "virtualPerPhysical": 128}),
    );
    let given = class["properties"].as_array().cloned().unwrap_or_default();
    let mut properties: Vec<Value> = Vec::with_capacity(given.len());
    for property in given {
        let property = complete_property(name, property, &properties)?;
        properties.push(property);
    }
    class["properties"] = Value::Array(properties);
    Ok(class)
}

fn complete_property(
    class: &str,
    mut property: Value,
    existing: &[Value],
) -> Result<Value, String> {
    let name = lowercase_first(property["name"].as_str().unwrap_or_default());
    if name.is_empty() {
        return Err("property name cannot be empty".to_owned());
    }
    if matches!(name.as_str(), "id" | "_id" | "_additional") {
        return Err(format!("'{name}' is a reserved property name"));
    }
    if !is_graphql_name(&name) {
        return Err(format!("'{name}' is not a valid property name"));
    }
    if existing.iter().any(|p| {
        p["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(&name))
    }) {
        return Err(format!(
            "class \"{class}\": conflict for property \"{name}\": already in use or provided multiple times"
        ));
    }
    property["name"] = json!(name);
    let data_type = match property["dataType"].as_array().map(Vec::as_slice) {
        Some([Value::String(one)]) => one.clone(),
        Some([]) | None => {
            return Err(format!(
                "property '{name}': invalid dataType: dataType cannot be empty"
            ));
        }
        Some(_) => {
            return Err(format!(
                "property '{name}': fake: only one dataType per property is implemented"
            ));
        }
    };
    let cross_reference = data_type
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase());
    if !DATA_TYPES.contains(&data_type.as_str()) && !cross_reference {
        return Err(format!(
            "property '{name}': invalid dataType: data type not found: {data_type}"
        ));
    }
    if data_type.starts_with("object")
        && property["nestedProperties"]
            .as_array()
            .is_none_or(Vec::is_empty)
    {
        return Err(format!(
            "property '{name}': At least one nested property is required for data type object/object[]"
        ));
    }
    let text = data_type == "text" || data_type == "text[]";
    match property.get("tokenization").and_then(Value::as_str) {
        Some(_) if !text => {
            return Err(format!(
                "tokenization is not allowed for data type '{data_type}'"
            ));
        }
        None if text => property["tokenization"] = json!("word"),
        _ => {}
    }
    if property.get("indexSearchable").is_some_and(|v| v == true) && !text {
        return Err(format!(
            "`indexSearchable` is not allowed for data type '{data_type}'"
        ));
    }
    fill(
        &mut property,
        json!({"indexFilterable": true, "indexSearchable": text, "indexRangeFilters": false}),
    );
    Ok(property)
}

impl FakeState {
    fn create_class(&mut self, body: &Value) -> Response {
        let name = capitalize(body["class"].as_str().unwrap_or_default());
        if name.is_empty() || !is_graphql_name(&name) {
            return error_response(422, &format!("'{name}' is not a valid class name"));
        }
        if self.class(&name).is_some() {
            return error_response(422, &format!("class name {name} already exists"));
        }
        if let Some(similar) = self
            .classes
            .iter()
            .filter_map(|c| c["class"].as_str())
            .find(|c| c.eq_ignore_ascii_case(&name))
        {
            return error_response(
                422,
                &format!("class already exists: found similar class {similar:?}"),
            );
        }
        match complete_class(&name, body.clone()) {
            Ok(class) => {
                self.classes.push(class.clone());
                json_response(200, class)
            }
            Err(message) => error_response(422, &message),
        }
    }

    /// The class of an object write, created by auto-schema when absent.
    fn ensure_class(&mut self, name: &str) -> Result<(), WriteError> {
        if self.class(name).is_none() {
            let class = complete_class(name, json!({"properties": []}))
                .map_err(WriteError::unprocessable)?;
            self.classes.push(class);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Objects (CONTRACT §4, §5, §6)

struct WriteError {
    status: u16,
    message: String,
}

impl WriteError {
    fn unprocessable(message: String) -> Self {
        Self {
            status: 422,
            message,
        }
    }

    fn into_response(self) -> Response {
        if self.message.is_empty() {
            empty(self.status)
        } else {
            error_response(self.status, &self.message)
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum WriteMode {
    /// Batch: overwrite or create.
    Upsert,
    /// `POST /v1/objects`: the id must be new.
    Create,
    /// `PUT`: the id must exist.
    Replace,
}

/// What auto-schema guesses for a value it has not seen.
fn guess_data_type(value: &Value) -> Option<&'static str> {
    Some(match value {
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => "date",
        Value::String(_) => "text",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Array(items) => match items.first() {
            Some(Value::String(_)) => "text[]",
            Some(Value::Number(_)) => "number[]",
            Some(Value::Bool(_)) => "boolean[]",
            _ => return None,
        },
        _ => return None,
    })
}

/// `Err(message)` when `value` does not fit `data_type`, in the server's wording where known.
fn check_value(class: &str, property: &str, data_type: &str, value: &Value) -> Result<(), String> {
    let fits = |v: &Value, t: &str| match t {
        "text" | "uuid" | "blob" => v.is_string(),
        "int" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "date" => v
            .as_str()
            .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
        _ => true,
    };
    if value.is_null() {
        return Ok(());
    }
    if let Some(element) = data_type.strip_suffix("[]") {
        let Some(items) = value.as_array() else {
            return Err(format!(
                "invalid {data_type} property '{property}' on class '{class}': not an array, but {}",
                kind(value)
            ));
        };
        return match items.iter().find(|v| !fits(v, element)) {
            None => Ok(()),
            Some(bad) => Err(format!(
                "invalid {data_type} property '{property}' on class '{class}': element {bad} is not a {element}"
            )),
        };
    }
    if fits(value, data_type) {
        return Ok(());
    }
    Err(match data_type {
        "date" => format!(
            "invalid date property '{property}' on class '{class}': requires a string with a RFC3339 formatted date, but the given value is '{}'",
            value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned)
        ),
        "text" => format!(
            "invalid text property '{property}' on class '{class}': not a string, but {}",
            kind(value)
        ),
        _ => format!(
            "invalid {data_type} property '{property}' on class '{class}': the given value is '{value}'"
        ),
    })
}

impl FakeState {
    /// Writes one object; fills in `class`, `id` and the times of `object` as the echo shows them.
    fn write_object(
        &mut self,
        object: &mut Map<String, Value>,
        mode: WriteMode,
    ) -> Result<(), WriteError> {
        let class = capitalize(
            object
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        );
        if class.is_empty() {
            return Err(WriteError::unprocessable(
                "the object has no class".to_owned(),
            ));
        }
        object.insert("class".into(), json!(class));
        let id = match object.get("id").and_then(Value::as_str) {
            Some(raw) => uuid::Uuid::parse_str(raw)
                .map_err(|_| WriteError::unprocessable(format!("invalid id {raw:?}")))?,
            None => uuid::Uuid::new_v4(),
        }
        .to_string();
        object.insert("id".into(), json!(id));
        let exists = self
            .objects
            .get(&class)
            .is_some_and(|o| o.contains_key(&id));
        match mode {
            WriteMode::Create if exists => {
                return Err(WriteError::unprocessable(format!(
                    "id '{id}' already exists"
                )));
            }
            WriteMode::Replace if !exists => {
                return Err(WriteError {
                    status: 404,
                    message: String::new(),
                });
            }
            _ => {}
        }
        self.ensure_class(&class)?;
        let properties = object
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (name, value) in &properties {
            let known = self.class(&class).and_then(|c| {
                c["properties"]
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == name.as_str())
                    .and_then(|p| p["dataType"][0].as_str().map(str::to_owned))
            });
            let data_type = match known {
                Some(data_type) => data_type,
                None => {
                    // Auto-schema: an unknown property is added with a guessed type.
                    let Some(guess) = guess_data_type(value) else {
                        if value.is_null() {
                            continue;
                        }
                        return Err(WriteError::unprocessable(format!(
                            "fake: auto-schema cannot guess a type for property '{name}'"
                        )));
                    };
                    let class_value = self.class_mut(&class).expect("ensured above");
                    let existing = class_value["properties"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let added = complete_property(
                        &class,
                        json!({"name": name, "dataType": [guess]}),
                        &existing,
                    )
                    .map_err(WriteError::unprocessable)?;
                    class_value["properties"]
                        .as_array_mut()
                        .expect("properties")
                        .push(added);
                    guess.to_owned()
                }
            };
            check_value(&class, name, &data_type, value).map_err(WriteError::unprocessable)?;
        }
        let vector: Option<Vec<f64>> = object
            .get("vector")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_f64).collect::<Vec<f64>>())
            .filter(|v| !v.is_empty());
        if let Some(vector) = &vector {
            match self.dimensions.get(&class) {
                Some(&fixed) if fixed != vector.len() => {
                    return Err(WriteError {
                        status: 500,
                        message: format!(
                            "put object: import into index {}: shard: put object batch: insert to vector index: \
                             new node has a vector with length {}. Existing nodes have vectors with length {fixed}",
                            class.to_ascii_lowercase(),
                            vector.len()
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    self.dimensions.insert(class.clone(), vector.len());
                }
            }
        }
        let now = now_millis();
        let objects = self.objects.entry(class).or_default();
        let created = objects.get(&id).map_or(now, |o| o.created);
        objects.insert(
            id,
            Stored {
                properties: properties
                    .into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .collect(),
                vector,
                created,
                updated: now,
            },
        );
        object.insert("creationTimeUnix".into(), json!(created));
        object.insert("lastUpdateTimeUnix".into(), json!(now));
        Ok(())
    }

    fn batch_objects(&mut self, body: &Value) -> Response {
        let objects = body["objects"].as_array().cloned().unwrap_or_default();
        if objects.is_empty() {
            return error_response(
                422,
                "invalid param 'objects': cannot be empty, need at least one object for batching",
            );
        }
        let mut answer = Vec::with_capacity(objects.len());
        for object in objects {
            let mut echo = object.as_object().cloned().unwrap_or_default();
            let outcome = if self.fail_items.0 > 0 {
                self.fail_items.0 -= 1;
                Err(self.fail_items.1.clone())
            } else {
                self.write_object(&mut echo, WriteMode::Upsert)
                    .map_err(|e| e.message)
            };
            let now = now_millis();
            echo.entry("creationTimeUnix").or_insert(json!(now));
            echo.entry("lastUpdateTimeUnix").or_insert(json!(now));
            echo.insert("deprecations".into(), Value::Null);
            let result = match outcome {
                Ok(()) => json!({"status": "SUCCESS"}),
                Err(message) => {
                    json!({"status": "FAILED", "errors": {"error": [{"message": message}]}})
                }
            };
            echo.insert("result".into(), result);
            answer.push(Value::Object(echo));
        }
        json_response(200, Value::Array(answer))
    }

    fn create_object(&mut self, body: &Value) -> Response {
        let mut object = body.as_object().cloned().unwrap_or_default();
        match self.write_object(&mut object, WriteMode::Create) {
            Ok(()) => json_response(200, Value::Object(object)),
            Err(e) => e.into_response(),
        }
    }

    fn object_by_id(
        &mut self,
        method: &Method,
        class: &str,
        id: &str,
        query: &HashMap<String, String>,
        body: &Value,
    ) -> Response {
        let Ok(uuid) = uuid::Uuid::parse_str(id) else {
            return framework_error(601, &format!("id in path must be of type uuid: {id:?}"));
        };
        let id = uuid.to_string();
        let stored = self.objects.get(class).and_then(|o| o.get(&id)).cloned();
        match method.as_str() {
            "GET" => match stored {
                Some(o) => json_response(
                    200,
                    o.to_json(
                        class,
                        &id,
                        query.get("include").is_some_and(|i| i.contains("vector")),
                    ),
                ),
                None => empty(404),
            },
            "HEAD" => empty(if stored.is_some() { 204 } else { 404 }),
            "DELETE" => {
                if self.class(class).is_none() {
                    return empty(404);
                }
                // A missing id still answers 204 on a single node (§6).
                if let Some(objects) = self.objects.get_mut(class) {
                    objects.remove(&id);
                }
                empty(204)
            }
            "PUT" => {
                let mut object = body.as_object().cloned().unwrap_or_default();
                if object
                    .get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|given| given.to_ascii_lowercase() != id)
                {
                    return error_response(422, "invalid update: field 'id' is immutable");
                }
                object.insert("id".into(), json!(id));
                if capitalize(
                    object
                        .get("class")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                ) != class
                {
                    return error_response(
                        422,
                        &format!("invalid update: field 'class' must be {class:?}"),
                    );
                }
                match self.write_object(&mut object, WriteMode::Replace) {
                    Ok(()) => json_response(200, Value::Object(object)),
                    Err(e) => e.into_response(),
                }
            }
            _ => {
                self.violation(format!(
                    "{method} /v1/objects/{class}/{id}: not implemented by the fake"
                ));
                framework_error(501, "not implemented by the fake Weaviate")
            }
        }
    }

    fn batch_delete(&mut self, body: &Value) -> Response {
        let class = capitalize(body["match"]["class"].as_str().unwrap_or_default());
        let Some(class_value) = self.class(&class).cloned() else {
            return error_response(422, &format!("validate: class: {class:?} doesn't exist"));
        };
        let Some(filter_json) = body["match"].get("where").filter(|w| !w.is_null()) else {
            return error_response(422, "validate: filter: where clause must not be empty");
        };
        let output = body["output"].as_str().unwrap_or("minimal").to_owned();
        if output != "minimal" && output != "verbose" {
            return error_response(
                422,
                &format!(
                    "invalid output: {output:?}, possible values are: \"minimal\", \"verbose\""
                ),
            );
        }
        let dry_run = body["dryRun"].as_bool().unwrap_or(false);
        let filter = match Filter::compile(&class_value, filter_json) {
            Ok(filter) => filter,
            Err(message) => return error_response(422, &message),
        };
        let matched: Vec<String> = self
            .objects
            .get(&class)
            .into_iter()
            .flat_map(|o| o.iter())
            .filter(|(id, o)| filter.matches(id, o))
            .map(|(id, _)| id.clone())
            .take(QUERY_MAXIMUM_RESULTS)
            .collect();
        if !dry_run && let Some(objects) = self.objects.get_mut(&class) {
            for id in &matched {
                objects.remove(id);
            }
        }
        let status = if dry_run { "DRYRUN" } else { "SUCCESS" };
        let objects = (output == "verbose").then(|| {
            matched
                .iter()
                .map(|id| json!({"id": id, "status": status}))
                .collect::<Vec<_>>()
        });
        let mut where_echo = filter_json.clone();
        if let Some(w) = where_echo.as_object_mut() {
            w.entry("operands").or_insert(Value::Null);
        }
        json_response(
            200,
            json!({
                "match": {"class": class, "where": where_echo},
                "deletionTimeUnixMilli": body["deletionTimeUnixMilli"].as_i64().unwrap_or_else(now_millis),
                "dryRun": dry_run,
                "output": output,
                "results": {"matches": matched.len(), "limit": QUERY_MAXIMUM_RESULTS,
                            "successful": matched.len(), "failed": 0, "objects": objects},
            }),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Filters (`where`, in JSON for batch delete and in GraphQL for search)

const OPERATORS: [&str; 15] = [
    "And",
    "Or",
    "Not",
    "Equal",
    "NotEqual",
    "Like",
    "GreaterThan",
    "GreaterThanEqual",
    "LessThan",
    "LessThanEqual",
    "WithinGeoRange",
    "IsNull",
    "ContainsAny",
    "ContainsAll",
    "ContainsNone",
];

const VALUE_KEYS: [&str; 13] = [
    "valueInt",
    "valueNumber",
    "valueBoolean",
    "valueString",
    "valueText",
    "valueDate",
    "valueIntArray",
    "valueNumberArray",
    "valueBooleanArray",
    "valueStringArray",
    "valueTextArray",
    "valueDateArray",
    "valueGeoRange",
];

#[derive(Debug)]
enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Compare {
        /// `None`: the object's id.
        property: Option<String>,
        data_type: String,
        tokenization: String,
        operator: String,
        values: Vec<Value>,
    },
}

impl Filter {
    /// A `WhereFilter` (JSON) against a class, with the server's refusals for unknown or
    /// unfilterable properties and mismatched value types.
    fn compile(class: &Value, filter: &Value) -> Result<Filter, String> {
        let class_name = class["class"].as_str().unwrap_or_default();
        let operator = filter["operator"]
            .as_str()
            .ok_or("invalid 'where' filter: operator is required")?;
        if !OPERATORS.contains(&operator) {
            return Err(format!(
                "invalid 'where' filter: unrecognized operator {operator:?}"
            ));
        }
        let operands = || -> Result<Vec<Filter>, String> {
            let list = filter["operands"]
                .as_array()
                .filter(|o| !o.is_empty())
                .ok_or_else(|| {
                    format!("invalid 'where' filter: operator {operator} needs operands")
                })?;
            list.iter().map(|o| Filter::compile(class, o)).collect()
        };
        match operator {
            "And" => return Ok(Filter::And(operands()?)),
            "Or" => return Ok(Filter::Or(operands()?)),
            "Not" => {
                let mut inner = operands()?;
                if inner.len() != 1 {
                    return Err("invalid 'where' filter: Not takes exactly one operand".to_owned());
                }
                return Ok(Filter::Not(Box::new(inner.remove(0))));
            }
            "WithinGeoRange" => return Err("fake: WithinGeoRange is not implemented".to_owned()),
            _ => {}
        }
        let path: Vec<&str> = filter["path"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let name = match path.as_slice() {
            [one] => *one,
            [] => return Err("invalid 'where' filter: path is required".to_owned()),
            _ => {
                return Err("fake: filters on cross-reference paths are not implemented".to_owned());
            }
        };
        let given: Vec<&str> = VALUE_KEYS
            .iter()
            .copied()
            .filter(|k| filter.get(*k).is_some_and(|v| !v.is_null()))
            .collect();
        let value_key = match given.as_slice() {
            [one] => *one,
            [] => {
                return Err(format!(
                    "invalid 'where' filter: got operator {operator:?}, but no value"
                ));
            }
            _ => return Err("invalid 'where' filter: more than one value".to_owned()),
        };
        let (property, data_type, tokenization) = if name == "id" || name == "_id" {
            (None, "uuid".to_owned(), "field".to_owned())
        } else {
            let Some(found) = class["properties"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name)
            else {
                return Err(format!(
                    "invalid 'where' filter: no such prop with name '{name}' found in class '{class_name}' in the schema. \
                     Check your schema files for which properties in this class are available"
                ));
            };
            if found["indexFilterable"] == false && operator != "IsNull" {
                return Err(format!(
                    "Filtering by property '{name}' requires inverted index. Is `indexFilterable` option of property \
                     '{name}' enabled? Set it to `true` or leave empty"
                ));
            }
            (
                Some(name.to_owned()),
                found["dataType"][0].as_str().unwrap_or("text").to_owned(),
                found["tokenization"].as_str().unwrap_or("field").to_owned(),
            )
        };
        let element = data_type.trim_end_matches("[]");
        let wanted = match element {
            _ if operator == "IsNull" => "valueBoolean",
            "text" | "uuid" => "valueText",
            "int" => "valueInt",
            "number" => "valueNumber",
            "boolean" => "valueBoolean",
            "date" => "valueDate",
            other => {
                return Err(format!(
                    "fake: filters on {other} properties are not implemented"
                ));
            }
        };
        let base = value_key.trim_end_matches("Array");
        let compatible = base == wanted
            || (wanted == "valueText" && base == "valueString")
            || (wanted == "valueNumber" && base == "valueInt");
        if !compatible {
            return Err(format!(
                "invalid 'where' filter: data type filter cannot use {value_key:?} on type {data_type:?}, use {wanted:?} instead"
            ));
        }
        let values = match &filter[value_key] {
            Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        Ok(Filter::Compare {
            property,
            data_type,
            tokenization,
            operator: operator.to_owned(),
            values,
        })
    }

    fn matches(&self, id: &str, object: &Stored) -> bool {
        match self {
            Filter::And(all) => all.iter().all(|f| f.matches(id, object)),
            Filter::Or(any) => any.iter().any(|f| f.matches(id, object)),
            Filter::Not(inner) => !inner.matches(id, object),
            Filter::Compare {
                property,
                data_type,
                tokenization,
                operator,
                values,
            } => {
                let stored = match property {
                    None => Some(json!(id)),
                    Some(name) => object
                        .properties
                        .get(name)
                        .filter(|v| !v.is_null())
                        .cloned(),
                };
                if operator == "IsNull" {
                    return values.first().and_then(Value::as_bool).unwrap_or(true)
                        == stored.is_none();
                }
                let Some(stored) = stored else {
                    return operator == "NotEqual" || operator == "ContainsNone";
                };
                let stored_items = match stored {
                    Value::Array(items) => items,
                    one => vec![one],
                };
                let text = data_type.starts_with("text");
                let equal = |wanted: &Value| -> bool {
                    if text {
                        let have: Vec<String> = stored_items
                            .iter()
                            .flat_map(|s| tokens(s.as_str().unwrap_or_default(), tokenization))
                            .collect();
                        let want = tokens(wanted.as_str().unwrap_or_default(), tokenization);
                        !want.is_empty() && want.iter().all(|t| have.contains(t))
                    } else {
                        stored_items.iter().any(|s| {
                            compare(s, wanted, data_type) == Some(std::cmp::Ordering::Equal)
                        })
                    }
                };
                let first = values.first().cloned().unwrap_or(Value::Null);
                let ordered = |accept: fn(std::cmp::Ordering) -> bool| {
                    stored_items
                        .iter()
                        .any(|s| compare(s, &first, data_type).is_some_and(accept))
                };
                match operator.as_str() {
                    "Equal" => equal(&first),
                    "NotEqual" => !equal(&first),
                    "ContainsAny" => values.iter().any(equal),
                    "ContainsAll" => values.iter().all(equal),
                    "ContainsNone" => !values.iter().any(equal),
                    "Like" => {
                        let pattern = first.as_str().unwrap_or_default();
                        stored_items
                            .iter()
                            .flat_map(|s| tokens(s.as_str().unwrap_or_default(), tokenization))
                            .any(|t| like(pattern, &t))
                    }
                    "GreaterThan" => ordered(|o| o.is_gt()),
                    "GreaterThanEqual" => ordered(|o| o.is_ge()),
                    "LessThan" => ordered(|o| o.is_lt()),
                    "LessThanEqual" => ordered(|o| o.is_le()),
                    _ => false,
                }
            }
        }
    }
}

/// How a text property's value is split for filtering (§2.1: `word` splits `ctx_123`).
fn tokens(text: &str, tokenization: &str) -> Vec<String> {
    match tokenization {
        "field" => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                vec![]
            } else {
                vec![trimmed.to_owned()]
            }
        }
        "whitespace" => text.split_whitespace().map(str::to_owned).collect(),
        "lowercase" => text.split_whitespace().map(str::to_lowercase).collect(),
        _ => text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase)
            .collect(),
    }
}

fn compare(stored: &Value, wanted: &Value, data_type: &str) -> Option<std::cmp::Ordering> {
    match data_type.trim_end_matches("[]") {
        "date" => {
            let a = chrono::DateTime::parse_from_rfc3339(stored.as_str()?).ok()?;
            let b = chrono::DateTime::parse_from_rfc3339(wanted.as_str()?).ok()?;
            Some(a.cmp(&b))
        }
        "int" | "number" => stored.as_f64()?.partial_cmp(&wanted.as_f64()?),
        "boolean" => Some(stored.as_bool()?.cmp(&wanted.as_bool()?)),
        "uuid" => Some(
            stored
                .as_str()?
                .to_ascii_lowercase()
                .cmp(&wanted.as_str()?.to_ascii_lowercase()),
        ),
        _ => Some(stored.as_str()?.cmp(wanted.as_str()?)),
    }
}

/// `*` any run, `?` one character.
fn like(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

// ---------------------------------------------------------------------------------------------
// GraphQL (CONTRACT §7)

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Punct(char),
    Name(String),
    Int(String),
    Float(String),
    Str(String),
    Variable(String),
    End,
}

#[derive(Debug, Clone, PartialEq)]
enum GValue {
    Int(f64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
    Enum(String),
    List(Vec<GValue>),
    Object(Vec<(String, GValue)>),
    Variable(String),
}

impl GValue {
    /// As JSON, enums as strings: the shape a `WhereFilter` has in REST.
    fn to_json(&self) -> Value {
        match self {
            GValue::Int(n) | GValue::Float(n) => json!(n),
            GValue::Str(s) | GValue::Enum(s) => json!(s),
            GValue::Bool(b) => json!(b),
            GValue::Null | GValue::Variable(_) => Value::Null,
            GValue::List(items) => Value::Array(items.iter().map(GValue::to_json).collect()),
            GValue::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The GraphQL text, for error messages.
    fn show(&self) -> String {
        match self {
            GValue::Int(n) | GValue::Float(n) => n.to_string(),
            GValue::Str(s) => format!("{s:?}"),
            GValue::Enum(s) => s.clone(),
            GValue::Bool(b) => b.to_string(),
            GValue::Null => "null".to_owned(),
            GValue::Variable(v) => format!("${v}"),
            GValue::List(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(GValue::show)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            GValue::Object(fields) => format!(
                "{{{}}}",
                fields
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.show()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            GValue::Int(n) | GValue::Float(n) => Some(*n),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Field {
    name: String,
    alias: Option<String>,
    arguments: Vec<(String, GValue)>,
    selection: Vec<Field>,
    line: usize,
    column: usize,
}

impl Field {
    fn key(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }

    fn argument(&self, name: &str) -> Option<&GValue> {
        self.arguments
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

struct GraphqlError {
    message: String,
    line: usize,
    column: usize,
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
    line: usize,
    column: usize,
}

impl Lexer {
    fn new(text: &str) -> Self {
        Self {
            chars: text.chars().collect(),
            at: 0,
            line: 1,
            column: 1,
        }
    }

    fn bump(&mut self) -> Option<char> {
        let c = *self.chars.get(self.at)?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn error(&self, line: usize, column: usize, detail: String) -> GraphqlError {
        GraphqlError {
            message: format!("Syntax Error GraphQL request ({line}:{column}) {detail}"),
            line,
            column,
        }
    }

    /// All tokens with their positions; commas are insignificant in GraphQL, like whitespace.
    fn tokens(mut self) -> Result<Vec<(Token, usize, usize)>, GraphqlError> {
        let mut out = Vec::new();
        loop {
            while let Some(c) = self.peek() {
                if c.is_whitespace() || c == ',' || c == '\u{feff}' {
                    self.bump();
                } else if c == '#' {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                } else {
                    break;
                }
            }
            let (line, column) = (self.line, self.column);
            let Some(c) = self.peek() else {
                out.push((Token::End, line, column));
                return Ok(out);
            };
            let token = match c {
                '{' | '}' | '(' | ')' | '[' | ']' | ':' | '!' | '=' | '@' | '|' => {
                    self.bump();
                    Token::Punct(c)
                }
                '$' => {
                    self.bump();
                    Token::Variable(self.name())
                }
                '"' => Token::Str(self.string(line, column)?),
                c if c == '-' || c.is_ascii_digit() => self.number(line, column)?,
                c if c == '_' || c.is_ascii_alphabetic() => Token::Name(self.name()),
                other => {
                    return Err(self.error(
                        line,
                        column,
                        format!("Unexpected character {other:?}."),
                    ));
                }
            };
            out.push((token, line, column));
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self
            .peek()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            name.push(c);
            self.bump();
        }
        name
    }

    fn digits(&mut self, into: &mut String) -> usize {
        let mut n = 0;
        while let Some(c) = self.peek().filter(char::is_ascii_digit) {
            into.push(c);
            self.bump();
            n += 1;
        }
        n
    }

    fn number(&mut self, line: usize, column: usize) -> Result<Token, GraphqlError> {
        let mut text = String::new();
        if self.peek() == Some('-') {
            text.push('-');
            self.bump();
        }
        let integer_start = text.len();
        if self.digits(&mut text) == 0 {
            return Err(self.error(line, column, "Invalid number, expected digit.".to_owned()));
        }
        if text[integer_start..].len() > 1 && text[integer_start..].starts_with('0') {
            return Err(self.error(
                line,
                column,
                format!("Invalid number, unexpected digit after 0: {text:?}."),
            ));
        }
        let mut float = false;
        if self.peek() == Some('.') {
            float = true;
            text.push('.');
            self.bump();
            if self.digits(&mut text) == 0 {
                return Err(self.error(
                    line,
                    column,
                    format!("Invalid number, expected digit but got: {text:?}."),
                ));
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            float = true;
            text.push('e');
            self.bump();
            if let Some(sign) = self.peek().filter(|c| *c == '+' || *c == '-') {
                text.push(sign);
                self.bump();
            }
            if self.digits(&mut text) == 0 {
                return Err(self.error(
                    line,
                    column,
                    format!("Invalid number, expected digit but got: {text:?}."),
                ));
            }
        }
        if self
            .peek()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '.')
        {
            return Err(self.error(
                line,
                column,
                format!("Invalid number {text:?} followed by a name character."),
            ));
        }
        Ok(if float {
            Token::Float(text)
        } else {
            Token::Int(text)
        })
    }

    fn string(&mut self, line: usize, column: usize) -> Result<String, GraphqlError> {
        self.bump(); // the opening quote
        if self.peek() == Some('"') && self.chars.get(self.at + 1) == Some(&'"') {
            return Err(self.error(
                line,
                column,
                "fake: block strings are not implemented".to_owned(),
            ));
        }
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') | Some('\r') => {
                    return Err(self.error(line, column, "Unterminated string.".to_owned()));
                }
                Some('"') => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('/') => out.push('/'),
                    Some('b') => out.push('\u{8}'),
                    Some('f') => out.push('\u{c}'),
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some('u') => {
                        let hex: String = (0..4).filter_map(|_| self.bump()).collect();
                        let code = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                        match code {
                            Some(c) => out.push(c),
                            None => {
                                return Err(self.error(
                                    line,
                                    column,
                                    format!("Invalid character escape sequence: \\u{hex}."),
                                ));
                            }
                        }
                    }
                    other => {
                        return Err(self.error(
                            line,
                            column,
                            format!(
                                "Invalid character escape sequence: \\{}.",
                                other.map(String::from).unwrap_or_default()
                            ),
                        ));
                    }
                },
                Some(c) if (c as u32) < 0x20 && c != '\t' => {
                    return Err(self.error(
                        line,
                        column,
                        format!("Invalid character within String: {c:?}."),
                    ));
                }
                Some(c) => out.push(c),
            }
        }
    }
}

struct Parser {
    tokens: Vec<(Token, usize, usize)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.at.min(self.tokens.len() - 1)].0
    }

    fn position(&self) -> (usize, usize) {
        let (_, line, column) = &self.tokens[self.at.min(self.tokens.len() - 1)];
        (*line, *column)
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        token
    }

    fn fail<T>(&self, expected: &str) -> Result<T, GraphqlError> {
        let (line, column) = self.position();
        let found = match self.peek() {
            Token::End => "EOF".to_owned(),
            Token::Punct(c) => format!("\"{c}\""),
            Token::Name(n) => format!("Name \"{n}\""),
            Token::Int(n) => format!("Int \"{n}\""),
            Token::Float(n) => format!("Float \"{n}\""),
            Token::Str(s) => format!("String {s:?}"),
            Token::Variable(v) => format!("\"${v}\""),
        };
        Err(GraphqlError {
            message: format!(
                "Syntax Error GraphQL request ({line}:{column}) Expected {expected}, found {found}"
            ),
            line,
            column,
        })
    }

    fn expect(&mut self, c: char) -> Result<(), GraphqlError> {
        if *self.peek() == Token::Punct(c) {
            self.next();
            Ok(())
        } else {
            self.fail(&format!("\"{c}\""))
        }
    }

    /// `{ ... }` or `query Name($v: T) { ... }`: one operation.
    fn document(&mut self) -> Result<Vec<Field>, GraphqlError> {
        if let Token::Name(keyword) = self.peek().clone() {
            if keyword != "query" {
                return self.fail("\"{\" or \"query\" (the fake answers queries only)");
            }
            self.next();
            if matches!(self.peek(), Token::Name(_)) {
                self.next();
            }
            if *self.peek() == Token::Punct('(') {
                // Variable definitions: skipped, as the values are never read (a nearVector
                // vector cannot come from a variable, §7).
                let mut depth = 0;
                loop {
                    match self.next() {
                        Token::Punct('(') => depth += 1,
                        Token::Punct(')') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        Token::End => return self.fail("\")\""),
                        _ => {}
                    }
                }
            }
        }
        let fields = self.selection_set()?;
        if *self.peek() != Token::End {
            return self.fail("EOF (the fake takes one operation)");
        }
        Ok(fields)
    }

    fn selection_set(&mut self) -> Result<Vec<Field>, GraphqlError> {
        self.expect('{')?;
        let mut fields = Vec::new();
        while *self.peek() != Token::Punct('}') {
            fields.push(self.field()?);
        }
        self.next();
        if fields.is_empty() {
            return self.fail("Name");
        }
        Ok(fields)
    }

    fn field(&mut self) -> Result<Field, GraphqlError> {
        let (line, column) = self.position();
        let Token::Name(first) = self.peek().clone() else {
            return self.fail("Name");
        };
        self.next();
        let (alias, name) = if *self.peek() == Token::Punct(':') {
            self.next();
            let Token::Name(name) = self.peek().clone() else {
                return self.fail("Name");
            };
            self.next();
            (Some(first), name)
        } else {
            (None, first)
        };
        let mut arguments = Vec::new();
        if *self.peek() == Token::Punct('(') {
            self.next();
            while *self.peek() != Token::Punct(')') {
                let Token::Name(argument) = self.peek().clone() else {
                    return self.fail("Name");
                };
                self.next();
                self.expect(':')?;
                arguments.push((argument, self.value()?));
            }
            self.next();
        }
        let selection = if *self.peek() == Token::Punct('{') {
            self.selection_set()?
        } else {
            Vec::new()
        };
        Ok(Field {
            name,
            alias,
            arguments,
            selection,
            line,
            column,
        })
    }

    fn value(&mut self) -> Result<GValue, GraphqlError> {
        Ok(match self.peek().clone() {
            Token::Int(n) => {
                self.next();
                GValue::Int(n.parse().unwrap_or(f64::NAN))
            }
            Token::Float(n) => {
                self.next();
                GValue::Float(n.parse().unwrap_or(f64::NAN))
            }
            Token::Str(s) => {
                self.next();
                GValue::Str(s)
            }
            Token::Variable(v) => {
                self.next();
                GValue::Variable(v)
            }
            Token::Name(n) => {
                self.next();
                match n.as_str() {
                    "true" => GValue::Bool(true),
                    "false" => GValue::Bool(false),
                    "null" => GValue::Null,
                    _ => GValue::Enum(n),
                }
            }
            Token::Punct('[') => {
                self.next();
                let mut items = Vec::new();
                while *self.peek() != Token::Punct(']') {
                    if *self.peek() == Token::End {
                        return self.fail("\"]\"");
                    }
                    items.push(self.value()?);
                }
                self.next();
                GValue::List(items)
            }
            Token::Punct('{') => {
                self.next();
                let mut fields = Vec::new();
                while *self.peek() != Token::Punct('}') {
                    let Token::Name(key) = self.peek().clone() else {
                        return self.fail("Name");
                    };
                    self.next();
                    self.expect(':')?;
                    fields.push((key, self.value()?));
                }
                self.next();
                GValue::Object(fields)
            }
            _ => return self.fail("a value"),
        })
    }
}

const ADDITIONAL: [&str; 6] = [
    "id",
    "certainty",
    "distance",
    "vector",
    "creationTimeUnix",
    "lastUpdateTimeUnix",
];

/// Known `Get` arguments the fake does not implement (the rest are unknown to Weaviate too).
const UNIMPLEMENTED_ARGUMENTS: [&str; 8] = [
    "bm25",
    "hybrid",
    "nearObject",
    "sort",
    "after",
    "autocut",
    "groupBy",
    "group",
];

fn invalid_argument(argument: &str, value: &GValue, detail: &str) -> String {
    format!(
        "Argument \"{argument}\" has invalid value {}.\n{detail}",
        value.show()
    )
}

/// Static checks of a `where` literal, as GraphQL's validation does them (types, not schema).
fn validate_where(value: &GValue) -> Result<(), String> {
    let GValue::Object(fields) = value else {
        return Err(format!(
            "Expected \"GetObjectsFactoryContextWhereInpObj\", found {}.",
            value.show()
        ));
    };
    let mut has_operator = false;
    for (key, item) in fields {
        match key.as_str() {
            "operator" => {
                has_operator = true;
                match item {
                    GValue::Enum(op) if OPERATORS.contains(&op.as_str()) => {}
                    other => {
                        return Err(format!(
                            "In field \"operator\": Expected type \"WhereOperatorEnum\", found {}.",
                            other.show()
                        ));
                    }
                }
            }
            "path" => {
                let ok = match item {
                    GValue::List(items) => items.iter().all(|i| matches!(i, GValue::Str(_))),
                    GValue::Str(_) => true,
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "In field \"path\": Expected type \"[String]\", found {}.",
                        item.show()
                    ));
                }
            }
            "operands" => {
                let GValue::List(items) = item else {
                    return Err(format!(
                        "In field \"operands\": Expected a list, found {}.",
                        item.show()
                    ));
                };
                for operand in items {
                    validate_where(operand).map_err(|e| format!("In field \"operands\": {e}"))?;
                }
            }
            k if VALUE_KEYS.contains(&k) => {
                let scalar_ok = |v: &GValue| match k.trim_end_matches("Array") {
                    "valueInt" => matches!(v, GValue::Int(_)),
                    "valueNumber" => matches!(v, GValue::Int(_) | GValue::Float(_)),
                    "valueBoolean" => matches!(v, GValue::Bool(_)),
                    "valueGeoRange" => matches!(v, GValue::Object(_)),
                    _ => matches!(v, GValue::Str(_)),
                };
                let ok = match item {
                    GValue::List(items) if k.ends_with("Array") => items.iter().all(scalar_ok),
                    one => scalar_ok(one),
                };
                if !ok {
                    return Err(format!(
                        "In field \"{k}\": Expected a {k} value, found {}.",
                        item.show()
                    ));
                }
            }
            other => return Err(format!("In field \"{other}\": Unknown field.")),
        }
    }
    if !has_operator {
        return Err(
            "In field \"operator\": Expected \"WhereOperatorEnum!\", found null.".to_owned(),
        );
    }
    Ok(())
}

impl FakeState {
    fn graphql(&mut self, body: &Value) -> Response {
        let query = body["query"].as_str().unwrap_or_default();
        if query.trim().is_empty() {
            return error_response(422, "query cannot be empty");
        }
        if self.classes.is_empty() {
            return error_response(
                422,
                "no graphql provider present, this is most likely because no schema is present. Import a schema first!",
            );
        }
        let parsed = Lexer::new(query)
            .tokens()
            .and_then(|tokens| Parser { tokens, at: 0 }.document());
        let fields = match parsed {
            Ok(fields) => fields,
            Err(e) => return validation_errors(vec![e]),
        };
        // Validation first: any error there answers without `data` (§7.4).
        let mut invalid = Vec::new();
        for root in &fields {
            if root.name != "Get" {
                invalid.push(GraphqlError {
                    message: format!("fake: only Get is implemented, not {:?}", root.name),
                    line: root.line,
                    column: root.column,
                });
                continue;
            }
            if root.selection.is_empty() {
                invalid.push(GraphqlError {
                    message: "Field \"Get\" of type \"GetObjectsObj\" must have a sub selection."
                        .to_owned(),
                    line: root.line,
                    column: root.column,
                });
            }
            for class_field in &root.selection {
                if let Err(message) = self.validate_class_field(class_field) {
                    invalid.push(GraphqlError {
                        message,
                        line: class_field.line,
                        column: class_field.column,
                    });
                }
            }
        }
        if !invalid.is_empty() {
            return validation_errors(invalid);
        }
        let mut data = Map::new();
        let mut errors = Vec::new();
        for root in &fields {
            let mut get = Map::new();
            for class_field in &root.selection {
                match self.run_class_field(class_field) {
                    Ok(objects) => {
                        get.insert(class_field.key().to_owned(), Value::Array(objects));
                    }
                    Err(message) => {
                        get.insert(class_field.key().to_owned(), Value::Null);
                        errors.push(json!({
                            "locations": [{"column": class_field.column, "line": class_field.line}],
                            "message": message,
                            "path": [root.key(), class_field.key()],
                        }));
                    }
                }
            }
            data.insert(root.key().to_owned(), Value::Object(get));
        }
        let mut answer = json!({"data": data});
        if !errors.is_empty() {
            answer["errors"] = Value::Array(errors);
        }
        json_response(200, answer)
    }

    fn validate_class_field(&self, field: &Field) -> Result<(), String> {
        let Some(class) = self.class(&field.name) else {
            return Err(format!(
                "Cannot query field \"{}\" on type \"GetObjectsObj\".",
                field.name
            ));
        };
        for (argument, value) in &field.arguments {
            match argument.as_str() {
                "nearVector" => {
                    let GValue::Object(members) = value else {
                        return Err(invalid_argument(argument, value, "Expected an object."));
                    };
                    for (member, item) in members {
                        let ok = match member.as_str() {
                            "vector" => match item {
                                GValue::List(items) => items.iter().all(|i| i.number().is_some()),
                                GValue::Variable(_) => true,
                                _ => false,
                            },
                            "certainty" | "distance" => item.number().is_some(),
                            _ => {
                                return Err(invalid_argument(
                                    argument,
                                    value,
                                    &format!("In field \"{member}\": Unknown field."),
                                ));
                            }
                        };
                        if !ok {
                            return Err(invalid_argument(
                                argument,
                                value,
                                &format!(
                                    "In field \"{member}\": Expected a number or a list of numbers, found {}.",
                                    item.show()
                                ),
                            ));
                        }
                    }
                }
                "where" => {
                    validate_where(value).map_err(|e| invalid_argument(argument, value, &e))?
                }
                "limit" | "offset" => {
                    if !matches!(value, GValue::Int(n) if *n >= 0.0) {
                        return Err(invalid_argument(argument, value, "Expected type \"Int\"."));
                    }
                }
                a if UNIMPLEMENTED_ARGUMENTS.contains(&a) => {
                    return Err(format!("fake: the argument {a:?} is not implemented"));
                }
                other => {
                    return Err(format!(
                        "Unknown argument \"{other}\" on field \"{}\" of type \"GetObjectsObj\".",
                        field.name
                    ));
                }
            }
        }
        if field.selection.is_empty() {
            return Err(format!(
                "Field \"{0}\" of type \"[{0}]\" must have a sub selection.",
                field.name
            ));
        }
        for selected in &field.selection {
            if selected.name == "_additional" {
                if selected.selection.is_empty() {
                    return Err(format!(
                        "Field \"_additional\" of type \"{}Additional\" must have a sub selection.",
                        field.name
                    ));
                }
                for extra in &selected.selection {
                    if !ADDITIONAL.contains(&extra.name.as_str()) {
                        return Err(format!(
                            "Cannot query field \"{}\" on type \"{}Additional\".",
                            extra.name, field.name
                        ));
                    }
                }
                continue;
            }
            let known = class["properties"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == selected.name.as_str());
            if !known {
                return Err(format!(
                    "Cannot query field \"{}\" on type \"{}\".",
                    selected.name, field.name
                ));
            }
            if !selected.selection.is_empty() {
                return Err(format!(
                    "Field \"{}\" must not have a selection since its type has no subfields.",
                    selected.name
                ));
            }
        }
        Ok(())
    }

    /// One `Get { Class(...) { ... } }`: an exact scan, nearest first.
    fn run_class_field(&self, field: &Field) -> Result<Vec<Value>, String> {
        let class = self.class(&field.name).expect("validated");
        let metric = class["vectorIndexConfig"]["distance"]
            .as_str()
            .unwrap_or("cosine")
            .to_owned();
        let limit = field
            .argument("limit")
            .and_then(GValue::number)
            .map_or(QUERY_DEFAULT_LIMIT, |n| n as usize);
        let offset = field
            .argument("offset")
            .and_then(GValue::number)
            .map_or(0, |n| n as usize);
        if limit + offset > QUERY_MAXIMUM_RESULTS {
            return Err(format!(
                "explorer: list class: search: invalid pagination params: query maximum results exceeded: {} > {QUERY_MAXIMUM_RESULTS}",
                limit + offset
            ));
        }
        let wants_certainty = field
            .selection
            .iter()
            .filter(|s| s.name == "_additional")
            .flat_map(|s| &s.selection)
            .any(|s| s.name == "certainty");
        let filter = match field.argument("where") {
            Some(w) => Some(
                Filter::compile(class, &w.to_json())
                    .map_err(|e| format!("explorer: get class: {e}"))?,
            ),
            None => None,
        };
        let objects = self.objects.get(&field.name);
        let candidates = objects
            .into_iter()
            .flat_map(|o| o.iter())
            .filter(|(id, o)| filter.as_ref().is_none_or(|f| f.matches(id, o)));

        let near = match field.argument("nearVector") {
            Some(GValue::Object(members)) => Some(members),
            _ => None,
        };
        let mut scored: Vec<(&String, &Stored, Option<f64>)> = match near {
            None => candidates.map(|(id, o)| (id, o, None)).collect(),
            Some(members) => {
                let member = |name: &str| members.iter().find(|(n, _)| n == name).map(|(_, v)| v);
                let certainty = member("certainty").and_then(GValue::number);
                let max_distance = member("distance").and_then(GValue::number);
                if certainty.is_some() && max_distance.is_some() {
                    return Err("failed to extract nearVector params: cannot provide distance and certainty".to_owned());
                }
                let query: Vec<f64> = match member("vector") {
                    Some(GValue::List(items)) => items.iter().filter_map(GValue::number).collect(),
                    Some(GValue::Variable(_)) => {
                        return Err("failed to extract nearVector params: vector is null (a GraphQL variable cannot carry it)".to_owned());
                    }
                    _ => {
                        return Err(
                            "failed to extract nearVector params: vector is required".to_owned()
                        );
                    }
                };
                if (certainty.is_some() || wants_certainty) && metric != "cosine" {
                    return Err(format!(
                        "explorer: get class: can't compute and return certainty when vector index is configured with {metric} distance"
                    ));
                }
                if !matches!(metric.as_str(), "cosine" | "dot" | "l2-squared") {
                    return Err(format!("fake: the {metric} distance is not implemented"));
                }
                if let Some(&fixed) = self.dimensions.get(&field.name)
                    && fixed != query.len()
                {
                    return Err(format!(
                        "explorer: get class: vector search: object vector search at index {}: vector lengths don't match: {} vs {fixed}",
                        field.name.to_ascii_lowercase(),
                        query.len()
                    ));
                }
                let threshold = certainty.map(|c| (1.0 - c) * 2.0).or(max_distance);
                let mut scored: Vec<_> = candidates
                    .filter_map(|(id, o)| {
                        let vector = o.vector.as_ref()?;
                        let d = distance(&metric, &query, vector);
                        Some((id, o, Some(d)))
                    })
                    .filter(|(_, _, d)| threshold.is_none_or(|t| d.unwrap_or(0.0) <= t))
                    .collect();
                // Nearest first; equal distances by id, so answers are stable.
                scored.sort_by(|a, b| {
                    a.2.partial_cmp(&b.2)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then_with(|| a.0.cmp(b.0))
                });
                scored
            }
        };
        let scored: Vec<_> = scored.drain(..).skip(offset).take(limit).collect();
        Ok(scored
            .into_iter()
            .map(|(id, object, d)| render(field, &metric, id, object, d))
            .collect())
    }
}

/// Weaviate's distances (`entities/additional/distance.go`): cosine `1 - cos` in 0..=2, dot
/// `-a·b`, l2-squared `Σ(a-b)²`.
fn distance(metric: &str, a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    match metric {
        "dot" => -dot,
        "l2-squared" => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
        _ => {
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let (na, nb) = (norm(a), norm(b));
            let cos = if na == 0.0 || nb == 0.0 {
                0.0
            } else {
                dot / (na * nb)
            };
            (1.0 - cos.clamp(-1.0, 1.0)).clamp(0.0, 2.0)
        }
    }
}

/// A float32 as the server prints it: `0.9642383`, and `1` rather than `1.0`.
fn float32(x: f64) -> Value {
    let rounded: f64 = format!("{}", x as f32).parse().unwrap_or(x);
    if rounded.fract() == 0.0 && rounded.abs() < 1e15 {
        json!(rounded as i64)
    } else {
        json!(rounded)
    }
}

fn render(field: &Field, metric: &str, id: &str, object: &Stored, distance: Option<f64>) -> Value {
    let mut out = Map::new();
    for selected in &field.selection {
        if selected.name == "_additional" {
            let mut additional = Map::new();
            for extra in &selected.selection {
                let value = match extra.name.as_str() {
                    "id" => json!(id),
                    "distance" => distance.map_or(Value::Null, float32),
                    "certainty" if metric == "cosine" => {
                        distance.map_or(Value::Null, |d| float32(1.0 - d / 2.0))
                    }
                    "vector" => json!(object.vector.clone().unwrap_or_default()),
                    "creationTimeUnix" => json!(object.created.to_string()),
                    "lastUpdateTimeUnix" => json!(object.updated.to_string()),
                    _ => Value::Null,
                };
                additional.insert(extra.key().to_owned(), value);
            }
            out.insert(selected.key().to_owned(), Value::Object(additional));
        } else {
            out.insert(
                selected.key().to_owned(),
                object
                    .properties
                    .get(&selected.name)
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
    }
    Value::Object(out)
}

/// GraphQL validation errors: HTTP 200, no `data`, `path` null (§7.4).
fn validation_errors(errors: Vec<GraphqlError>) -> Response {
    let errors: Vec<Value> = errors
        .into_iter()
        .map(|e| json!({"locations": [{"column": e.column, "line": e.line}], "message": e.message, "path": null}))
        .collect();
    json_response(200, json!({"errors": errors}))
}
