//! What `contextd serve` answers while it starts: it listens at once, so that an orchestrator
//! sees a live process (`/healthz` 200) that is not ready yet (`/readyz` 503, and every other
//! route 503 "starting" with `Retry-After`) while the store is reached and the services are
//! built. Then every request goes to the real router.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;

use super::ops::{Checks, Health, Ready, VectorReady};
use crate::config::{Settings, StoreLocation};
use crate::error::AppError;
use crate::service::Check;

/// A router that sends each request to `ready` once it is set, and answers as starting until.
pub fn switch(settings: &Settings, ready: Arc<OnceLock<Router>>) -> Router {
    let starting = starting(settings);
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let router = ready.get().cloned().unwrap_or_else(|| starting.clone());
        async move { router.oneshot(request).await }
    }))
}

/// The answers of a contextd that is starting.
fn starting(settings: &Settings) -> Router {
    let store = match settings.database.location() {
        Ok(StoreLocation::Postgres(_)) => "postgres",
        _ => "sqlite",
    };
    let redis = if settings.redis.url.is_some() {
        Check::Down
    } else {
        Check::Disabled
    };
    let embedder = if settings.embedder.backend == crate::config::EmbedderBackend::None {
        Check::Disabled
    } else {
        Check::Down
    };
    let vector = match settings.vector.backend {
        crate::config::VectorBackend::Embedded => "embedded",
        crate::config::VectorBackend::Weaviate => "weaviate",
    };
    let document = super::openapi_json();
    Router::new()
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(Health { status: "ok" }) }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || async move {
                let body = Ready {
                    status: Check::Down,
                    store,
                    checks: Checks {
                        store: Check::Down,
                        redis,
                        vector: Check::Down,
                        embedder,
                    },
                    vector: VectorReady {
                        backend: vector,
                        backlog: 0,
                    },
                };
                let mut response =
                    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(crate::error::RETRY_AFTER_SECONDS),
                );
                response
            }),
        )
        .route(
            "/openapi.json",
            axum::routing::get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    document.clone(),
                )
            }),
        )
        .fallback(|| async { starting_refusal() })
}

fn starting_refusal() -> Response {
    AppError::Unavailable(
        "contextd is starting: it is reaching its store (database.startup_timeout_seconds); \
         retry shortly"
            .to_owned(),
    )
    .into_response()
}
