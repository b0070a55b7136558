//! `POST /contexts/search`: semantic search by embedding vector.

use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::Json;
use crate::domain::Principal;
use crate::error::{AppError, Problem};
pub use crate::wire::search::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(search))
}

/// Search contexts by embedding
///
/// The contexts whose current embedding is nearest `vector` by cosine, highest score first,
/// those below `threshold` left out.
#[utoipa::path(
    post, path = "/contexts/search", tag = "contexts",
    request_body = SearchIn,
    responses(
        (status = 200, description = "Results", body = SearchOut),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong vector length, an all-zero vector, a bad limit, threshold or filter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The vector backend (or the store) is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn search(
    State(state): State<AppState>,
    who: Principal,
    Json(body): Json<SearchIn>,
) -> Result<axum::Json<SearchOut>, AppError> {
    let (request, include_data) = body.into_request()?;
    let hits = state.search.search(&who, request).await?;
    Ok(axum::Json(SearchOut::new(hits, include_data)))
}
