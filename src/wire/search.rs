//! A search on the wire: the request and its results.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::contexts::parse_id;
use crate::domain::{JsonObject, Source};
use crate::error::AppError;
use crate::service::{MAX_SEARCH_LIMIT, SearchHit, SearchMode as Mode, SearchRequest};

/// Default number of results.
const DEFAULT_LIMIT: i64 = 10;

/// How a search finds contexts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// The nearest embeddings to `vector` (or to `query`, embedded by the server).
    Vector,
    /// BM25 over each context's text.
    Keyword,
    /// Both, fused by relative score fusion.
    Hybrid,
}

impl From<SearchMode> for Mode {
    fn from(mode: SearchMode) -> Self {
        match mode {
            SearchMode::Vector => Mode::Vector,
            SearchMode::Keyword => Mode::Keyword,
            SearchMode::Hybrid => Mode::Hybrid,
        }
    }
}

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

/// A search by meaning (`vector`), by words (`query`), or both. At least one of `query` and
/// `vector` is required.
#[derive(Debug, Deserialize, ToSchema, schemars::JsonSchema)]
pub struct SearchIn {
    /// Text, 1..=4096 characters: the words a keyword search looks for, and (with an embedder)
    /// what the server embeds for the vector side.
    #[schema(min_length = 1, max_length = 4096, example = "pump pressure alarm")]
    pub query: Option<String>,
    /// `vector.dimensions` numbers, not all zero.
    #[schema(min_items = 1)]
    pub vector: Option<Vec<f64>>,
    /// Default: `vector` with only `vector`; with `query`, `hybrid` when an embedder is
    /// configured, else `keyword`.
    pub mode: Option<SearchMode>,
    /// `hybrid` only: the vector side's weight, 0 (all keyword) to 1 (all vector); default 0.5.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub alpha: Option<f64>,
    /// 1..=100 (default 10).
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Minimum score, 0..=1. Default 0.7 in `vector` mode (Weaviate's certainty for cosine,
    /// `(1 + cos) / 2`); in `keyword` and `hybrid` mode none unless given.
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
    /// 0..=1, highest first. `vector`: `(1 + cos) / 2`; `keyword`: BM25 over the best
    /// result's; `hybrid`: the fused score.
    pub score: f64,
    /// `1 - cos`, 0..=2; null when only the keyword side found the context.
    pub distance: Option<f64>,
    /// Which sides found the context: `vector`, `keyword`, or both.
    #[schema(example = json!(["keyword"]))]
    pub matched: Vec<&'static str>,
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
            query: self.query,
            vector: self.vector,
            mode: self.mode.map(Mode::from),
            alpha: self.alpha,
            limit: limit as usize,
            threshold: self.threshold,
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
                    matched: [
                        hit.matched.vector.then_some("vector"),
                        hit.matched.keyword.then_some("keyword"),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                    metadata: hit.context.content.metadata.clone(),
                    data: include_data.then(|| hit.context.content.data.clone()),
                })
                .collect(),
        }
    }
}
