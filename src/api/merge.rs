//! `POST /contexts/merge`: several contexts combined into one.

use axum::extract::State;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::contexts::{ContextOut, written_response};
use super::extract::Json;
use crate::domain::Principal;
use crate::error::{AppError, Problem};
pub use crate::wire::merge::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(merge))
}

/// Merge contexts
///
/// Combines the `data` of the contexts by `strategy` (`latest`: the most recently updated;
/// `union`: all keys, later wins; `intersection`: keys in all, first's values; `deep`: union,
/// merging nested objects). The result has `parent_id` = the first id, `metadata.merged_from` =
/// `[{context_id, version}]` and `change_type` `merge`. 201 when it creates the target; 200 for
/// a new version of an existing target.
#[utoipa::path(
    post, path = "/contexts/merge", tag = "contexts",
    request_body = MergeIn,
    responses(
        (status = 201, description = "Merged into a new context", body = ContextOut, headers(("ETag" = String), ("Location" = String))),
        (status = 200, description = "Merged into an existing target as its next version", body = ContextOut, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Some ids name no context (all are named)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The result is over `limits.max_context_bytes`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown strategy, bad id, or not 2..=100 ids", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn merge(
    State(state): State<AppState>,
    who: Principal,
    Json(body): Json<MergeIn>,
) -> Result<Response, AppError> {
    let written = body.merge(&who, &state.contexts).await?;
    Ok(written_response(&written))
}
