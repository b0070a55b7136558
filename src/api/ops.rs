//! Operations: health, readiness, metrics.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::service::{Check, Summary};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(metrics_summary))
}

/// The process serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness
///
/// 200 while the process serves; checks nothing else.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Dependencies, each `ok`, `degraded`, `down` or `disabled` (not configured).
#[derive(Debug, Serialize, ToSchema)]
pub struct Checks {
    pub store: Check,
    pub redis: Check,
    pub vector: Check,
    pub embedder: Check,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ok`, `degraded` (Redis or the vector backend down), or `down` (the store is down).
    pub status: Check,
    /// The store backend: `postgres` or `sqlite`.
    #[schema(example = "postgres")]
    pub store: &'static str,
    pub checks: Checks,
    pub vector: VectorReady,
}

/// The vector index behind search.
#[derive(Debug, Serialize, ToSchema)]
pub struct VectorReady {
    /// `embedded` or `weaviate`.
    #[schema(example = "embedded")]
    pub backend: &'static str,
    /// Changes committed but not yet applied to the index (it grows while the backend is down).
    pub backlog: i64,
}

/// Readiness
///
/// 503 when the store is down; Redis or the vector backend down only degrades.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "The store is down", body = Ready),
    ))]
async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.ops.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Ready {
        status: readiness.status(),
        store: readiness.store_backend,
        checks: Checks {
            store: readiness.store,
            redis: readiness.redis,
            vector: readiness.vector,
            embedder: readiness.embedder,
        },
        vector: VectorReady {
            backend: readiness.vector_backend,
            backlog: readiness.vector_backlog,
        },
    };
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::error::RETRY_AFTER_SECONDS),
        );
    }
    response
}

/// Prometheus metrics
///
/// The text exposition format. No scrape runs a query that grows with the data: the counts are
/// kept as writes commit and recounted in the background, and the store's state is that of
/// its last ping, taken in the background.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.set_sync_pending(state.ops.pending_pushes());
    state
        .metrics
        .set_inflight_body_bytes(state.bodies.in_flight_bytes());
    let cache = state.ops.cache_stats();
    let body = state.metrics.render(&crate::metrics::Scrape {
        counts: state.contexts.counted(),
        cache: &cache,
        pool: state.ops.pool_status(),
        redis: state.ops.redis_stats(),
        store_up: state.ops.store_up(),
        vector_backlog: state.ops.vector_backlog(),
    });
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// Metrics summary
///
/// Context counts, per-layer cache hit rates against the target, and the sync state, as JSON.
/// Rates are percentages.
#[utoipa::path(get, path = "/metrics/summary", tag = "operations",
    responses(
        (status = 200, description = "The summary", body = Summary),
    ))]
async fn metrics_summary(State(state): State<AppState>) -> axum::Json<Summary> {
    axum::Json(state.ops.summary())
}
