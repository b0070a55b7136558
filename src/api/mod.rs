//! API: the HTTP face of contextd (axum). Handlers parse, call one service method, and map
//! the result; no SQL or cache code lives here.
//!
//! Every route is mounted through utoipa-axum's `routes!`, so mounting and documenting are
//! one line and `/openapi.json` cannot drift from the router.

pub mod body;
mod cache;
pub(crate) mod contexts;
pub mod extract;
pub mod hosts;
mod keys;
pub(crate) mod merge;
mod ops;
pub(crate) mod search;
pub mod starting;
mod sync;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::{Config as SwaggerConfig, SwaggerUi};

use crate::auth::{Authenticator, authenticate};
use crate::config::Settings;
use crate::error::{AppError, Problem};
use crate::metrics::{Metrics, UNMATCHED_ROUTE};
use crate::service::{ContextService, KeyService, Ops, SearchService};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub contexts: Arc<ContextService>,
    /// The budget of request-body bytes in flight (`limits.max_inflight_body_bytes`).
    pub bodies: Arc<body::BodyBudget>,
    pub search: Arc<SearchService>,
    pub ops: Arc<Ops>,
    pub keys: Arc<KeyService>,
    pub metrics: Arc<Metrics>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "contextd",
        description = "Versioned JSON contexts for AI agent platforms: history, retention, \
                       optimistic concurrency, merging, sync with Factory AI, a three-layer \
                       cache, and the operations endpoints.\n\n\
                       Limits (defaults; the server's configuration may set others): a \
                       context's compact `data` + `metadata` at most 10485760 bytes \
                       (`limits.max_context_bytes`, 413 with `limit` and `actual`); a request \
                       body at most 1000000 JSON values (`limits.max_json_nodes`, 413 with \
                       `limit` and `actual`) and about twice the context limit in bytes (413); \
                       bodies in flight at most 67108864 bytes together \
                       (`limits.max_inflight_body_bytes`: 503 with `Retry-After` beyond it); a \
                       request head within 10 s (`server.header_timeout_seconds`); at most \
                       10000 connections (`server.max_connections`, then 503); request line \
                       and headers within hyper's limits (414 or 431). Every error is \
                       `application/problem+json`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "contexts", description = "Contexts: versioned JSON documents"),
        (name = "versions", description = "A context's history"),
        (name = "sync", description = "Sync with Factory AI: ingest, Factory-format read, change feed"),
        (name = "cache", description = "The three-layer cache"),
        (name = "operations", description = "Health, readiness, metrics"),
        (name = "admin", description = "API keys (admin keys only)"),
    ),
    components(schemas(Problem))
)]
struct ApiDoc;

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(merge::router())
        .merge(search::router())
        .merge(contexts::router())
        .merge(sync::router())
        .merge(cache::router())
        .merge(ops::router())
        .merge(keys::router())
}

/// The OpenAPI document of everything the router serves.
pub fn openapi() -> OpenApiDoc {
    let mut doc = api_router().split_for_parts().1;
    declare_bearer_auth(&mut doc);
    doc
}

/// The name of the bearer scheme in the document.
const BEARER: &str = "bearer";

/// Declares the bearer scheme, and on each operation whether it needs it (every one but the
/// open routes; `/metrics` takes a key but, with `auth.open_metrics`, needs none), with the
/// 401 and 403 answers that come with it. Swagger UI's "Authorize" button reads this.
fn declare_bearer_auth(doc: &mut OpenApiDoc) {
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

    doc.components.get_or_insert_default().add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("ctxd_<43 base62 characters>")
                .description(Some(
                    "An API key (`POST /admin/keys`, `contextd keys create`). Needed when \
                     auth is on: `auth.mode` `on`, or `auto` with a non-loopback bind.",
                ))
                .build(),
        ),
    );
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    crate::error::PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if crate::auth::OPEN_PATHS.contains(&path.as_str()) {
            continue;
        }
        let optional = path == "/metrics";
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let mut requirements = vec![SecurityRequirement::new(BEARER, Vec::<String>::new())];
            if optional {
                requirements.insert(0, SecurityRequirement::default());
            }
            operation.security = Some(requirements);
            let responses = &mut operation.responses.responses;
            responses.insert(
                "401".to_owned(),
                problem("No key, or not a valid one (`WWW-Authenticate: Bearer`)"),
            );
            if !optional {
                responses.insert("403".to_owned(), problem("The key's role is too low"));
            }
        }
    }
}

/// The OpenAPI document as served at `/openapi.json` and committed in `openapi/openapi.json`.
///
/// Its search example carries a vector of the default `vector.dimensions` (a unit vector along
/// the first axis), too long to write in the derive, so that Swagger UI's "Try it out" sends a
/// request that succeeds as it stands on a server with the default configuration.
pub fn openapi_json() -> String {
    use utoipa::openapi::{RefOr, Schema};
    let mut document = openapi();
    let schemas = &mut document
        .components
        .as_mut()
        .expect("the document has components")
        .schemas;
    let Some(RefOr::T(Schema::Object(search))) = schemas.get_mut("SearchIn") else {
        unreachable!("SearchIn is an object schema of the document")
    };
    let mut vector = vec![serde_json::Value::from(0.0); crate::config::DEFAULT_DIMENSIONS];
    vector[0] = 1.0.into();
    #[allow(deprecated)] // `example` is what Swagger UI pre-fills, as for the derived schemas
    {
        search.example = Some(serde_json::json!({
            "vector": vector,
            "limit": 5,
            "threshold": 0.5,
            "include_data": true
        }));
    }
    let mut json = document.to_pretty_json().expect("the document serializes");
    json.push('\n');
    json
}

/// The whole application: routes, docs, the MCP endpoint at `/mcp` when given, and the layers
/// every request passes.
pub fn router(
    state: AppState,
    settings: &Settings,
    mcp: Option<Router>,
    auth: Arc<Authenticator>,
) -> Router {
    let (router, _) = api_router().split_for_parts();
    let spec = openapi_json();
    let body_limit = settings.max_body_bytes();
    let timeout = Duration::from_secs(settings.server.request_timeout_seconds);

    let router = match mcp {
        Some(mcp) => router.nest_service("/mcp", mcp),
        None => router,
    };
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move {
                ([(header::CONTENT_TYPE, "application/json")], spec.clone())
            }),
        )
        .merge(SwaggerUi::new("/swagger-ui").config(SwaggerConfig::from("/openapi.json")))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.bodies.clone(),
            body::limit_bodies,
        ))
        .layer(middleware::from_fn_with_state(auth, authenticate))
        .layer(middleware::from_fn_with_state(
            Arc::new(hosts::AllowedHosts::new(settings)),
            hosts::check_host,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(middleware::from_fn_with_state(timeout, time_out_reads))
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(make_span))
        .with_state(state)
}

/// Answers 503 for a read still running after `server.request_timeout_seconds`. Writes are
/// never cut off: a write abandoned half way may still commit, and a 503 for a stored write
/// would be a lie. A write is bounded by the body budget's wait, the CPU pool and the store's
/// own statement timeout instead, each of which answers 503 only for what did not happen.
async fn time_out_reads(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let read_only = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) || (request.method() == Method::POST
        && request.uri().path() == "/contexts/search");
    if !read_only {
        return next.run(request).await;
    }
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => AppError::Unavailable("the request took too long; retry shortly".to_owned())
            .into_response(),
    }
}

async fn no_route(method: Method, uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("no route for {method} {}", uri.path()))
}

/// Counts every request by method, route template and status.
async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.observe_http(
        method.as_str(),
        route.as_deref().unwrap_or(UNMATCHED_ROUTE),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Gives problem+json bodies to errors that axum or tower produce bare, without a body (405
/// from the router, 503 from the timeout), keeping their headers (`Allow`).
async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    let has_body = response.headers().contains_key(header::CONTENT_TYPE);
    if !(status.is_client_error() || status.is_server_error()) || has_body {
        return response;
    }
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("{method} is not allowed on {path}; the Allow header lists what is")
        }
        StatusCode::SERVICE_UNAVAILABLE => "the request took too long; retry shortly".to_owned(),
        other => other.canonical_reason().unwrap_or("error").to_owned(),
    };
    let (mut parts, _) = response.into_parts();
    let fresh = Problem::new(status, detail).into_response_with(status);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .extend(fresh.headers().iter().map(|(k, v)| (k.clone(), v.clone())));
    let (_, body) = fresh.into_parts();
    Response::from_parts(parts, body)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    tracing::error!("a handler panicked");
    let mut response = Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        .into_response_with(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn make_span(request: &Request<Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, |p| p.as_str());
    tracing::info_span!("request", method = %request.method(), route, uri = %request.uri())
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.into_response_with(status)
    }
}
