//! Search by meaning, by words, or both: the vector index and the keyword index find
//! candidates; the store (through the cache) has the last word, so only current versions are
//! returned and a deleted context never comes back.
//!
//! The three modes, and how their scores are made:
//! - `vector`: the nearest embeddings by cosine; `score = (1 + cos) / 2`, `distance = 1 - cos`.
//! - `keyword`: BM25 over each context's text; `score` is BM25 over the best of the results.
//! - `hybrid`: both, fused by relative score fusion as Weaviate defines it: each side's raw
//!   scores min-max scaled over its own candidates, weighted by `alpha` (vector) and
//!   `1 - alpha` (keyword), and added.

use std::collections::HashMap;
use std::sync::Arc;

use super::ContextService;
use super::ServiceError;
use super::contexts::admit;
use crate::cache::CachedContext;
use crate::domain::{ContextId, Principal, Refusal, Role, Source, Visible};
use crate::embed::{EmbedError, Embedder};
use crate::keyword::{KeywordError, KeywordHit, KeywordIndex, KeywordQuery};
use crate::vector::{Hit, SearchQuery, VectorError, VectorIndex};

/// Most results one search returns.
pub const MAX_SEARCH_LIMIT: usize = 100;

/// Longest text query, in characters.
pub const MAX_QUERY_CHARS: usize = 4096;

/// Extra candidates asked of an index, for those the store says are gone or changed.
const SLACK: usize = 10;

/// Candidates each side of a hybrid search brings, at least (Weaviate's
/// `QUERY_HYBRID_MAXIMUM_RESULTS`): what its scores are scaled over.
const HYBRID_CANDIDATES: usize = 100;

/// How long a search waits for its query's embedding before answering without it (hybrid) or
/// 503 (vector).
const QUERY_EMBED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The default minimum score of `vector` mode.
pub const DEFAULT_THRESHOLD: f64 = 0.7;

/// The default weight of the vector side in `hybrid` mode.
pub const DEFAULT_ALPHA: f64 = 0.5;

/// How a search finds contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// Nearest embeddings.
    Vector,
    /// BM25 over each context's text.
    Keyword,
    /// Both, fused.
    Hybrid,
}

impl SearchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Vector => "vector",
            SearchMode::Keyword => "keyword",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

/// A search, as parsed at the edge.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Text, for the keyword side (and, embedded, the vector side).
    pub query: Option<String>,
    pub vector: Option<Vec<f64>>,
    /// `None`: chosen from what is given (see [`SearchService::mode_for`]).
    pub mode: Option<SearchMode>,
    /// The vector side's weight in `hybrid` mode, 0..=1.
    pub alpha: Option<f64>,
    pub limit: usize,
    /// Minimum score, 0..=1. `None`: [`DEFAULT_THRESHOLD`] in `vector` mode, none otherwise.
    pub threshold: Option<f64>,
    pub source: Option<Source>,
    pub parent_id: Option<ContextId>,
}

/// Which sides of a search found a context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Matched {
    pub vector: bool,
    pub keyword: bool,
}

/// One result: the current context, its score, and how it was found.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub context: Arc<CachedContext>,
    pub score: f64,
    /// The vector side's `1 - cos`; `None` when only the keyword side found it.
    pub distance: Option<f64>,
    pub matched: Matched,
}

/// A candidate before the store is asked: an id, its score, and the sides behind it.
#[derive(Debug, Clone)]
struct Candidate {
    id: ContextId,
    score: f64,
    /// The raw score of the side that breaks a tie (Weaviate: a leg's raw score).
    raw: f64,
    distance: Option<f64>,
    matched: Matched,
}

pub struct SearchService {
    contexts: Arc<ContextService>,
    index: Arc<dyn VectorIndex>,
    keyword: Option<Arc<dyn KeywordIndex>>,
    embedder: Option<Arc<dyn Embedder>>,
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
            keyword: None,
            embedder: None,
            dimensions,
        }
    }

    /// Searches by words with this index.
    pub fn with_keyword(mut self, index: Arc<dyn KeywordIndex>) -> Self {
        self.keyword = Some(index);
        self
    }

    /// Embeds text queries with this embedder.
    pub fn with_embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = Some(embedder);
        self
    }

    pub fn index(&self) -> &Arc<dyn VectorIndex> {
        &self.index
    }

    /// The mode of a request that names none: `vector` with only a vector; with a query,
    /// `hybrid` when there is an embedder, else `keyword`.
    pub fn mode_for(&self, request: &SearchRequest) -> SearchMode {
        match (&request.mode, &request.query) {
            (Some(mode), _) => *mode,
            (None, None) => SearchMode::Vector,
            (None, Some(_)) if self.embedder.is_some() => SearchMode::Hybrid,
            (None, Some(_)) => SearchMode::Keyword,
        }
    }

    /// `POST /contexts/search`.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn search(
        &self,
        who: &Principal,
        request: SearchRequest,
    ) -> Result<Vec<SearchHit>, ServiceError> {
        admit(who, Role::Read, None)?;
        let checked = self.check(&request)?;
        let mode = self.mode_for(&request);
        let visible = Visible::to(who);
        let candidates = match mode {
            SearchMode::Vector => {
                let vector = match checked.vector {
                    Some(vector) => vector,
                    None => self.embed_query(&checked.query).await?,
                };
                let query = SearchQuery {
                    vector,
                    limit: request.limit + SLACK,
                    min_certainty: request.threshold.unwrap_or(DEFAULT_THRESHOLD),
                    source: request.source,
                    parent_id: request.parent_id.clone(),
                    visible,
                };
                self.vector_side(&query)
                    .await?
                    .into_iter()
                    .map(|hit| Candidate {
                        id: hit.id,
                        score: hit.certainty,
                        raw: hit.certainty,
                        distance: Some(hit.distance),
                        matched: Matched {
                            vector: true,
                            keyword: false,
                        },
                    })
                    .collect()
            }
            SearchMode::Keyword => {
                let query =
                    Self::keyword_query(&request, &checked.query, request.limit + SLACK, visible);
                self.keyword_side(&query)
                    .await?
                    .into_iter()
                    .map(|hit| Candidate {
                        id: hit.id,
                        score: hit.score,
                        raw: hit.score,
                        distance: None,
                        matched: Matched {
                            vector: false,
                            keyword: true,
                        },
                    })
                    .collect()
            }
            SearchMode::Hybrid => {
                let pool = request.limit.max(HYBRID_CANDIDATES);
                let keyword_query =
                    Self::keyword_query(&request, &checked.query, pool, visible.clone());
                let keyword = self.keyword_side(&keyword_query).await?;
                // Either the vector index or the embedder down: the keyword side answers alone.
                let vector = match checked.vector {
                    Some(vector) => Some(vector),
                    None => match self.embed_query(&checked.query).await {
                        Ok(vector) => Some(vector),
                        Err(ServiceError::Unavailable(reason)) => {
                            tracing::debug!(reason, "hybrid search without its vector side");
                            None
                        }
                        Err(e) => return Err(e),
                    },
                };
                let vector_hits = match vector {
                    None => Vec::new(),
                    Some(vector) => {
                        let query = SearchQuery {
                            vector,
                            limit: pool,
                            min_certainty: 0.0,
                            source: request.source,
                            parent_id: request.parent_id.clone(),
                            visible,
                        };
                        match self.vector_side(&query).await {
                            Ok(hits) => hits,
                            Err(ServiceError::Unavailable(reason)) => {
                                tracing::debug!(reason, "hybrid search without its vector side");
                                Vec::new()
                            }
                            Err(e) => return Err(e),
                        }
                    }
                };
                fuse(
                    &vector_hits,
                    &keyword,
                    request.alpha.unwrap_or(DEFAULT_ALPHA),
                )
            }
        };
        let mut results = self.resolve(who, &request, mode, candidates).await?;
        if mode == SearchMode::Keyword
            && let Some(best) = results.first().map(|hit| hit.score)
        {
            for hit in &mut results {
                hit.score /= best;
            }
        }
        // An explicit threshold holds in every mode (vector mode applied it in the index).
        if let Some(threshold) = request.threshold {
            results.retain(|hit| hit.score >= threshold);
        }
        Ok(results)
    }

    /// The request's rules, checked before any index is asked.
    fn check(&self, request: &SearchRequest) -> Result<Checked, ServiceError> {
        let invalid = ServiceError::Invalid;
        let query = match &request.query {
            None => None,
            Some(text) => {
                let chars = text.chars().count();
                if chars == 0 || chars > MAX_QUERY_CHARS {
                    return Err(invalid(format!(
                        "query must be text of 1 to {MAX_QUERY_CHARS} characters"
                    )));
                }
                Some(text.clone())
            }
        };
        let vector = match &request.vector {
            None => None,
            Some(raw) => {
                // A value beyond f32 becomes infinite here, and is refused as not finite.
                let vector: Vec<f32> = raw.iter().map(|x| *x as f32).collect();
                crate::domain::embedding::check(&vector, self.dimensions)
                    .map_err(|e| invalid(e.describe("vector")))?;
                Some(vector)
            }
        };
        if query.is_none() && vector.is_none() {
            return Err(invalid(
                "give query (text), vector, or both: a search needs one of them".to_owned(),
            ));
        }
        if !(1..=MAX_SEARCH_LIMIT).contains(&request.limit) {
            return Err(invalid(format!(
                "limit must be an integer from 1 to {MAX_SEARCH_LIMIT}"
            )));
        }
        if request
            .threshold
            .is_some_and(|threshold| !(0.0..=1.0).contains(&threshold))
        {
            return Err(invalid("threshold must be between 0 and 1".to_owned()));
        }
        if request
            .alpha
            .is_some_and(|alpha| !(0.0..=1.0).contains(&alpha))
        {
            return Err(invalid("alpha must be between 0 and 1".to_owned()));
        }
        let mode = self.mode_for(request);
        let no_embedder = || {
            invalid(format!(
                "mode {} with a query and no vector needs an embedder, and there is none \
                 (embedder.backend is none): send vector, or use mode keyword",
                mode.as_str()
            ))
        };
        match mode {
            SearchMode::Vector if vector.is_none() && self.embedder.is_none() => {
                return Err(no_embedder());
            }
            SearchMode::Hybrid if query.is_none() => {
                return Err(invalid(
                    "mode hybrid needs query (text) for its keyword side".to_owned(),
                ));
            }
            SearchMode::Hybrid if vector.is_none() && self.embedder.is_none() => {
                return Err(no_embedder());
            }
            SearchMode::Keyword if query.is_none() => {
                return Err(invalid("mode keyword needs query (text)".to_owned()));
            }
            _ => {}
        }
        Ok(Checked { query, vector })
    }

    fn keyword_query(
        request: &SearchRequest,
        text: &Option<String>,
        limit: usize,
        visible: Visible,
    ) -> KeywordQuery {
        KeywordQuery {
            text: text.clone().unwrap_or_default(),
            limit,
            source: request.source,
            parent_id: request.parent_id.clone(),
            visible,
        }
    }

    /// The query's embedding, by the embedder.
    async fn embed_query(&self, text: &Option<String>) -> Result<Vec<f32>, ServiceError> {
        let (Some(embedder), Some(text)) = (&self.embedder, text) else {
            return Err(ServiceError::Invalid(
                "a search by meaning needs vector, or query and an embedder".to_owned(),
            ));
        };
        let embedded =
            tokio::time::timeout(QUERY_EMBED_WAIT, embedder.embed(std::slice::from_ref(text)))
                .await
                .unwrap_or_else(|_| {
                    Err(EmbedError::Unavailable(anyhow::anyhow!(
                        "no answer within {QUERY_EMBED_WAIT:?}"
                    )))
                });
        let mut vectors = embedded.map_err(|e| match e {
            EmbedError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "embedder unavailable");
                ServiceError::Unavailable("the embedder is unavailable; retry shortly".to_owned())
            }
            EmbedError::Rejected(message) => {
                ServiceError::Internal(anyhow::anyhow!("the embedder refused a query: {message}"))
            }
        })?;
        let vector = vectors
            .pop()
            .filter(|_| vectors.is_empty())
            .ok_or_else(|| {
                ServiceError::Internal(anyhow::anyhow!("the embedder answered no vector"))
            })?;
        crate::domain::embedding::check(&vector, self.dimensions).map_err(|e| {
            ServiceError::Internal(anyhow::anyhow!(
                "the embedder's vector is unusable: {}",
                e.describe("embedding")
            ))
        })?;
        Ok(vector)
    }

    async fn vector_side(&self, query: &SearchQuery) -> Result<Vec<Hit>, ServiceError> {
        self.index.search(query).await.map_err(|e| match e {
            VectorError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "vector backend unavailable");
                ServiceError::Unavailable(
                    "the vector backend is unavailable; retry shortly".to_owned(),
                )
            }
            VectorError::Rejected(message) => ServiceError::Internal(anyhow::anyhow!(
                "the vector backend refused a search: {message}"
            )),
        })
    }

    async fn keyword_side(&self, query: &KeywordQuery) -> Result<Vec<KeywordHit>, ServiceError> {
        let Some(index) = &self.keyword else {
            return Err(ServiceError::Unavailable(
                "keyword search is not configured on this server".to_owned(),
            ));
        };
        index.search(query).await.map_err(|e| match e {
            KeywordError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "keyword index unavailable");
                ServiceError::Unavailable(
                    "the keyword index is unavailable; retry shortly".to_owned(),
                )
            }
        })
    }

    /// The candidates, best first, that the store says are current, visible and match the
    /// filters, at most `request.limit`.
    async fn resolve(
        &self,
        who: &Principal,
        request: &SearchRequest,
        mode: SearchMode,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<SearchHit>, ServiceError> {
        let mut results = Vec::with_capacity(request.limit);
        for candidate in candidates {
            if results.len() == request.limit {
                break;
            }
            // The indexes may lag the store by a moment: the store decides what is current.
            if !who.sees(&candidate.id) {
                continue;
            }
            let context = match self.contexts.get_cached(&candidate.id).await {
                Ok((context, _)) => context,
                // Deleted (or expired) since the index was told: never found.
                Err(ServiceError::Refused {
                    refusal: Refusal::NotFound,
                    ..
                }) => continue,
                Err(e) => return Err(e),
            };
            let current = &context.content;
            if (mode == SearchMode::Vector && context.embedding().is_none())
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
                score: candidate.score,
                distance: candidate.distance,
                matched: candidate.matched,
            });
        }
        Ok(results)
    }
}

/// What the request holds once checked.
struct Checked {
    query: Option<String>,
    vector: Option<Vec<f32>>,
}

/// Relative score fusion (Weaviate's `relativeScoreFusion`): each side's raw scores (cosine
/// for vectors, BM25 for words) min-max scaled over its own candidates, a side whose
/// candidates all score the same giving each its full weight; weighted by `alpha` (vector) and
/// `1 - alpha` (keyword) and added, a side that did not find a context adding 0. Best first;
/// ties by the raw score of a side, then by id.
fn fuse(vector: &[Hit], keyword: &[KeywordHit], alpha: f64) -> Vec<Candidate> {
    let mut fused: HashMap<ContextId, Candidate> = HashMap::new();
    let cosines: Vec<f64> = vector.iter().map(|hit| 1.0 - hit.distance).collect();
    for (hit, scaled) in vector.iter().zip(scaled(&cosines)) {
        fused.insert(
            hit.id.clone(),
            Candidate {
                id: hit.id.clone(),
                score: alpha * scaled,
                raw: 1.0 - hit.distance,
                distance: Some(hit.distance),
                matched: Matched {
                    vector: true,
                    keyword: false,
                },
            },
        );
    }
    let bm25: Vec<f64> = keyword.iter().map(|hit| hit.score).collect();
    for (hit, scaled) in keyword.iter().zip(scaled(&bm25)) {
        let candidate = fused.entry(hit.id.clone()).or_insert_with(|| Candidate {
            id: hit.id.clone(),
            score: 0.0,
            raw: hit.score,
            distance: None,
            matched: Matched::default(),
        });
        candidate.score += (1.0 - alpha) * scaled;
        candidate.matched.keyword = true;
    }
    let mut candidates: Vec<Candidate> = fused.into_values().collect();
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| b.raw.total_cmp(&a.raw))
            .then_with(|| a.id.cmp(&b.id))
    });
    candidates
}

/// Min-max scaling to 0..=1; all equal (or one): each 1.
fn scaled(scores: &[f64]) -> Vec<f64> {
    let (min, max) = scores
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| {
            (lo.min(*s), hi.max(*s))
        });
    scores
        .iter()
        .map(|s| {
            if max > min {
                (s - min) / (max - min)
            } else {
                1.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: &str) -> ContextId {
        ContextId::parse(raw).unwrap()
    }

    fn vector_hit(raw: &str, cos: f64) -> Hit {
        Hit::from_cosine(id(raw), cos)
    }

    fn keyword_hit(raw: &str, score: f64) -> KeywordHit {
        KeywordHit { id: id(raw), score }
    }

    #[test]
    fn fusion_follows_weaviates_worked_example() {
        // CONTRACT.md 10.2: ctx_123 is the best of both legs; ctx_456, the last of the vector
        // pool and absent from the keyword one, scores exactly 0 and still ranks.
        let fused = fuse(
            &[
                vector_hit("ctx_123", 1.0),
                vector_hit("ctx_456", 0.928_476_7),
            ],
            &[keyword_hit("ctx_123", 0.315_066_9)],
            0.5,
        );
        assert_eq!(fused.len(), 2);
        assert_eq!(fused[0].id.as_str(), "ctx_123");
        assert!((fused[0].score - 1.0).abs() < 1e-12);
        assert_eq!(
            fused[0].matched,
            Matched {
                vector: true,
                keyword: true
            }
        );
        assert_eq!(fused[1].id.as_str(), "ctx_456");
        assert!(fused[1].score.abs() < 1e-12);
        assert!(!fused[1].matched.keyword);
    }

    #[test]
    fn a_side_that_finds_nothing_leaves_the_other_its_weight() {
        let fused = fuse(&[vector_hit("a", 0.9), vector_hit("b", 0.5)], &[], 0.3);
        assert!((fused[0].score - 0.3).abs() < 1e-12, "{fused:?}");
        let keyword_only = fuse(&[], &[keyword_hit("k", 2.0)], 0.3);
        assert!((keyword_only[0].score - 0.7).abs() < 1e-12);
        assert_eq!(keyword_only[0].distance, None);
    }

    #[test]
    fn alpha_weighs_the_sides_and_ties_fall_to_raw_score_then_id() {
        let vector = [vector_hit("v", 0.9), vector_hit("both", 0.1)];
        let keyword = [keyword_hit("k", 3.0), keyword_hit("both", 1.0)];
        // All keyword: the best keyword hit first; vector-only hits score 0.
        let fused = fuse(&vector, &keyword, 0.0);
        assert_eq!(fused[0].id.as_str(), "k");
        // All vector.
        let fused = fuse(&vector, &keyword, 1.0);
        assert_eq!(fused[0].id.as_str(), "v");
        // Equal fused scores (0.5 each): the higher raw score first.
        let fused = fuse(&[vector_hit("x", 0.2)], &[keyword_hit("y", 5.0)], 0.5);
        assert_eq!(
            fused.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["y", "x"]
        );
        // Equal all through: by id.
        let fused = fuse(&[], &[keyword_hit("b", 1.0), keyword_hit("a", 1.0)], 0.5);
        assert_eq!(fused[0].id.as_str(), "a");
    }

    #[test]
    fn scaling_is_min_max_and_all_equal_is_full() {
        assert_eq!(scaled(&[2.0, 4.0, 3.0]), [0.0, 1.0, 0.5]);
        assert_eq!(scaled(&[7.0, 7.0]), [1.0, 1.0]);
        assert!(scaled(&[]).is_empty());
    }
}
