//! `/cache`: loading contexts into the cache ahead of reads.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::Json;
use crate::domain::{ContextId, Principal};
use crate::error::{AppError, Problem};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(warm))
}

/// Most ids one warm request takes.
const MAX_WARM: usize = 1000;

/// Contexts to load into the cache.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"context_ids": ["ctx_123", "ctx_456"]}))]
pub struct WarmIn {
    /// 1..=1000 context ids.
    #[schema(min_items = 1, max_items = 1000)]
    pub context_ids: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WarmOut {
    /// How many contexts were loaded into L1 and L2.
    pub warmed: usize,
    /// The ids that name no context.
    pub missing: Vec<String>,
}

/// Warm the cache
///
/// Loads each context from the store into the in-process cache and Redis.
#[utoipa::path(
    post, path = "/cache/warm", tag = "cache",
    request_body = WarmIn,
    responses(
        (status = 200, description = "Loaded", body = WarmOut),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No ids, too many, or a bad id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn warm(
    State(state): State<AppState>,
    who: Principal,
    Json(body): Json<WarmIn>,
) -> Result<axum::Json<WarmOut>, AppError> {
    if body.context_ids.is_empty() || body.context_ids.len() > MAX_WARM {
        return Err(AppError::Unprocessable(format!(
            "context_ids must hold 1 to {MAX_WARM} ids"
        )));
    }
    let ids = body
        .context_ids
        .iter()
        .map(|raw| {
            ContextId::parse(raw).map_err(|e| AppError::Unprocessable(format!("{raw:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (warmed, missing) = state.contexts.warm(&who, &ids).await?;
    Ok(axum::Json(WarmOut {
        warmed,
        missing: missing.iter().map(|id| id.as_str().to_owned()).collect(),
    }))
}
