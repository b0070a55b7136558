//! A search on the wire: the request and its results.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::contexts::parse_id;
use crate::domain::{JsonObject, Source};
use crate::error::AppError;
use crate::service::{MAX_SEARCH_LIMIT, SearchHit, SearchRequest};

/// Default number of results.
const DEFAULT_LIMIT: i64 = 10;

/// Default minimum score.
const DEFAULT_THRESHOLD: f64 = 0.7;

/// Which contexts to search among.
#[derive(Debug, Default, Deserialize, ToSchema, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFilter {
    /// Only contexts from this source.
    pub source: Option<Source>,
    /// Only children of this context.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,255}$")]
    pub parent_id: Option<String>,
}

/// A semantic search.
#[derive(Debug, Deserialize, ToSchema, schemars::JsonSchema)]
pub struct SearchIn {
    /// `vector.dimensions` numbers, not all zero.
    #[schema(min_items = 1)]
    pub vector: Vec<f64>,
    /// 1..=100 (default 10).
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Minimum score, 0..=1 (default 0.7): Weaviate's certainty for cosine, `(1 + cos) / 2`.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub threshold: Option<f64>,
    pub filter: Option<SearchFilter>,
    /// Add each context's `data` to its result.
    pub include_data: Option<bool>,
}

/// One result.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResultOut {
    pub context_id: String,
    /// The current version.
    pub version: i64,
    pub source: Source,
    /// `(1 + cos) / 2`, 0..=1.
    pub score: f64,
    /// `1 - cos`, 0..=2.
    pub distance: f64,
    #[schema(value_type = Object)]
    pub metadata: JsonObject,
    /// Only with `include_data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<JsonObject>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchOut {
    /// Highest score first.
    pub results: Vec<SearchResultOut>,
}

impl SearchIn {
    /// The search to run, and whether results carry `data`.
    pub fn into_request(self) -> Result<(SearchRequest, bool), AppError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_SEARCH_LIMIT as i64).contains(&limit) {
            return Err(AppError::Unprocessable(format!(
                "limit must be an integer from 1 to {MAX_SEARCH_LIMIT}"
            )));
        }
        let filter = self.filter.unwrap_or_default();
        let parent_id = filter.parent_id.as_deref().map(parse_id).transpose()?;
        let request = SearchRequest {
            vector: self.vector,
            limit: limit as usize,
            threshold: self.threshold.unwrap_or(DEFAULT_THRESHOLD),
            source: filter.source,
            parent_id,
        };
        Ok((request, self.include_data.unwrap_or(false)))
    }
}

impl SearchOut {
    pub fn new(hits: Vec<SearchHit>, include_data: bool) -> Self {
        SearchOut {
            results: hits
                .into_iter()
                .map(|hit| SearchResultOut {
                    context_id: hit.context.id.as_str().to_owned(),
                    version: hit.context.version,
                    source: hit.context.content.source,
                    score: hit.score,
                    distance: hit.distance,
                    metadata: hit.context.content.metadata.clone(),
                    data: include_data.then(|| hit.context.content.data.clone()),
                })
                .collect(),
        }
    }
}
