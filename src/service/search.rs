//! Semantic search: the vector index finds candidates; the store (through the cache) has the
//! last word, so only current versions are returned and a deleted context never comes back.

use std::sync::Arc;

use super::ContextService;
use super::ServiceError;
use super::contexts::admit;
use crate::cache::CachedContext;
use crate::domain::{ContextId, Principal, Refusal, Role, Source, Visible};
use crate::vector::{SearchQuery, VectorError, VectorIndex};

/// Most results one search returns.
pub const MAX_SEARCH_LIMIT: usize = 100;

/// Extra candidates asked of the index, for those the store says are gone or changed.
const SLACK: usize = 10;

/// A search, as parsed at the edge.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub vector: Vec<f64>,
    pub limit: usize,
    /// Minimum score (Weaviate's certainty), 0..=1.
    pub threshold: f64,
    pub source: Option<Source>,
    pub parent_id: Option<ContextId>,
}

/// One result: the current context, and how close it is.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub context: Arc<CachedContext>,
    pub score: f64,
    pub distance: f64,
}

pub struct SearchService {
    contexts: Arc<ContextService>,
    index: Arc<dyn VectorIndex>,
    dimensions: usize,
}

impl SearchService {
    pub fn new(
        contexts: Arc<ContextService>,
        index: Arc<dyn VectorIndex>,
        dimensions: usize,
    ) -> Self {
        Self {
            contexts,
            index,
            dimensions,
        }
    }

    pub fn index(&self) -> &Arc<dyn VectorIndex> {
        &self.index
    }

    /// `POST /contexts/search`.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn search(
        &self,
        who: &Principal,
        request: SearchRequest,
    ) -> Result<Vec<SearchHit>, ServiceError> {
        admit(who, Role::Read, None)?;
        let invalid = ServiceError::Invalid;
        // A value beyond f32 becomes infinite here, and is refused as not finite.
        let vector: Vec<f32> = request.vector.iter().map(|x| *x as f32).collect();
        crate::domain::embedding::check(&vector, self.dimensions)
            .map_err(|e| invalid(e.describe("vector")))?;
        if !(1..=MAX_SEARCH_LIMIT).contains(&request.limit) {
            return Err(invalid(format!(
                "limit must be an integer from 1 to {MAX_SEARCH_LIMIT}"
            )));
        }
        if !(0.0..=1.0).contains(&request.threshold) {
            return Err(invalid("threshold must be between 0 and 1".to_owned()));
        }
        let query = SearchQuery {
            vector,
            limit: request.limit + SLACK,
            min_certainty: request.threshold,
            source: request.source,
            parent_id: request.parent_id.clone(),
            visible: Visible::to(who),
        };
        let hits = self.index.search(&query).await.map_err(|e| match e {
            VectorError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "vector backend unavailable");
                ServiceError::Unavailable(
                    "the vector backend is unavailable; retry shortly".to_owned(),
                )
            }
            VectorError::Rejected(message) => ServiceError::Internal(anyhow::anyhow!(
                "the vector backend refused a search: {message}"
            )),
        })?;
        let mut results = Vec::with_capacity(request.limit);
        for hit in hits {
            if results.len() == request.limit {
                break;
            }
            // The index may lag the store by a moment: the store decides what is current.
            if !who.sees(&hit.id) {
                continue;
            }
            let context = match self.contexts.get_cached(&hit.id).await {
                Ok((context, _)) => context,
                // Deleted (or expired) since the index was told: never found.
                Err(ServiceError::Refused {
                    refusal: Refusal::NotFound,
                    ..
                }) => continue,
                Err(e) => return Err(e),
            };
            let current = &context.content;
            if current.embedding.is_none()
                || request.source.is_some_and(|s| s != current.source)
                || request
                    .parent_id
                    .as_ref()
                    .is_some_and(|p| Some(p) != current.parent_id.as_ref())
            {
                continue;
            }
            results.push(SearchHit {
                context,
                score: hit.certainty,
                distance: hit.distance,
            });
        }
        Ok(results)
    }
}
