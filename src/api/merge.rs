//! `POST /contexts/merge`: several contexts combined into one.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::contexts::{ContextOut, parse_id, written_response};
use super::extract::Json;
use crate::domain::{MergeStrategy, Principal, Source};
use crate::error::{AppError, Problem};
use crate::service::{ContextService, Written};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(merge))
}

/// What to merge, and how.
#[derive(Debug, Deserialize, ToSchema, schemars::JsonSchema)]
#[schema(example = json!({
    "context_ids": ["ctx_123", "ctx_456"],
    "strategy": "union",
    "target_id": "ctx_merged"
}))]
pub struct MergeIn {
    /// 2..=100 existing context ids, in the order the strategy reads them.
    #[schema(min_items = 2, max_items = 100, example = json!(["ctx_123", "ctx_456"]))]
    pub context_ids: Vec<String>,
    /// `latest`, `union`, `intersection` or `deep`.
    #[schema(value_type = MergeStrategy)]
    pub strategy: String,
    /// The id of the result; `merged_<8 hex>` when absent.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,255}$")]
    pub target_id: Option<String>,
    /// The result's source; `mcp` when absent.
    pub source: Option<Source>,
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

impl MergeIn {
    /// Parses the request and merges, as `POST /contexts/merge` and the MCP tool both do.
    pub(crate) async fn merge(
        self,
        who: &Principal,
        contexts: &ContextService,
    ) -> Result<Written, AppError> {
        let strategy = MergeStrategy::parse(&self.strategy).ok_or_else(|| {
            AppError::Unprocessable(format!(
                "strategy must be latest, union, intersection or deep, not {:?}",
                self.strategy
            ))
        })?;
        let ids = self
            .context_ids
            .iter()
            .map(|raw| parse_id(raw))
            .collect::<Result<Vec<_>, _>>()?;
        let target = self.target_id.as_deref().map(parse_id).transpose()?;
        contexts
            .merge(
                who,
                &ids,
                strategy,
                target,
                self.source.unwrap_or(Source::Mcp),
            )
            .await
    }
}
