//! A merge on the wire: which contexts, and how.

use serde::Deserialize;
use utoipa::ToSchema;

use super::contexts::parse_id;
use crate::domain::{MergeStrategy, Principal, Source};
use crate::error::AppError;
use crate::service::{ContextService, Written};

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

impl MergeIn {
    /// Parses the request and merges, as `POST /contexts/merge` and the MCP tool both do.
    pub async fn merge(
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
            .map_err(AppError::from)
    }
}
