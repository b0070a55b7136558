//! `POST /contexts/search`: search by words, by meaning, or both.

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

/// Search contexts by words, by meaning, or both
///
/// `keyword` mode ranks by BM25 over each context's text (its string values); `vector` mode by
/// cosine to `vector` (or to `query`, embedded by the server's embedder), leaving out those
/// below `threshold`; `hybrid` fuses both (relative score fusion, `alpha` weighing the vector
/// side). Highest score first, ties by id; each result's `matched` says which side found it.
#[utoipa::path(
    post, path = "/contexts/search", tag = "contexts",
    request_body = SearchIn,
    responses(
        (status = 200, description = "Results", body = SearchOut),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither query nor vector, a query too long, a wrong vector length or an all-zero vector, a mode that needs what is missing (an embedder, a query), a bad limit, alpha, threshold or filter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The index the mode needs (vector, keyword), the embedder a text-only vector search needs, or the store is unavailable", body = Problem, content_type = "application/problem+json"),
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
