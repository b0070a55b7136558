//! Vector: semantic search over context embeddings, behind one trait with two backends: an
//! embedded index (the default: no service needed) and Weaviate (REST + GraphQL over reqwest).
//!
//! The store is the source of truth for embeddings; an index is derived from it (rebuilt at
//! start for the embedded one, fed from the outbox by the indexer in `crate::sync`). This layer
//! stores and searches vectors; it decides nothing about contexts.

pub mod embedded;
pub mod weaviate;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{ContextId, JsonObject, Source, Visible};

/// What an index keeps of one context: its current embedding, and what filters and results need.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorEntry {
    pub id: ContextId,
    /// The context's version this embedding belongs to.
    pub version: i64,
    pub vector: Vec<f32>,
    pub source: Source,
    pub parent_id: Option<ContextId>,
    pub data: JsonObject,
    pub metadata: JsonObject,
    pub updated_at: DateTime<Utc>,
}

/// A nearest-neighbour query by cosine similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// Finite, not all zeros, of the index's dimensions.
    pub vector: Vec<f32>,
    /// How many hits at most.
    pub limit: usize,
    /// Weaviate's certainty for cosine, `(1 + cos) / 2`: hits below it are left out.
    pub min_certainty: f64,
    /// Only contexts from this source.
    pub source: Option<Source>,
    /// Only children of this context.
    pub parent_id: Option<ContextId>,
    /// Only the contexts the caller may see.
    pub visible: Visible,
}

/// One search result, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: ContextId,
    /// `(1 + cos) / 2`, in 0..=1.
    pub certainty: f64,
    /// `1 - cos`, in 0..=2.
    pub distance: f64,
}

impl Hit {
    /// A hit from a cosine similarity.
    pub fn from_cosine(id: ContextId, cos: f64) -> Self {
        let cos = cos.clamp(-1.0, 1.0);
        Self {
            id,
            certainty: (1.0 + cos) / 2.0,
            distance: 1.0 - cos,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// The backend cannot be reached or answers 5xx/429: worth a retry.
    #[error("the vector backend is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// The backend refused the request for good (a 4xx): a bug or a misconfiguration.
    #[error("the vector backend refused the request: {0}")]
    Rejected(String),
}

#[async_trait]
pub trait VectorIndex: Send + Sync + 'static {
    /// `embedded` or `weaviate`.
    fn backend(&self) -> &'static str;

    /// What a persistent index's position in the outbox is kept under: another name (a new
    /// Weaviate class) starts from nothing and is filled from the store.
    fn cursor_name(&self) -> String {
        format!("vector:{}", self.backend())
    }

    /// The length of the vectors it holds (`vector.dimensions`; 0: not checked).
    fn dimensions(&self) -> usize;

    /// Makes the backend ready to use (Weaviate: the class exists, with the right settings).
    /// Idempotent, and safe when several instances do it at once.
    async fn prepare(&self) -> Result<(), VectorError>;

    /// Stores these entries, replacing what is stored under their ids.
    async fn upsert(&self, entries: Vec<VectorEntry>) -> Result<(), VectorError>;

    /// Removes these contexts; an id that is not there is not an error.
    async fn delete(&self, ids: Vec<ContextId>) -> Result<(), VectorError>;

    /// The nearest entries to `query.vector` by cosine, best first, at or above
    /// `query.min_certainty`, matching the filters, at most `query.limit`.
    async fn search(&self, query: &SearchQuery) -> Result<Vec<Hit>, VectorError>;

    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), VectorError>;
}

/// Stored embeddings the index leaves out because their length is not the index's (written
/// under other `vector.dimensions`, or by an instance configured otherwise). They are not
/// searchable, and `/readyz` says the vector check is `degraded` for as long as any is stored;
/// `contextd reindex` drops them. Kept by the indexer, which sees every change to the store.
#[derive(Debug, Default)]
pub struct Mismatched {
    ids: std::sync::Mutex<std::collections::HashSet<ContextId>>,
}

impl Mismatched {
    /// Notes whether the current embedding of `id` has another length (`true`) or not (a right
    /// length, none, or the context is gone). Whether `id` was newly counted.
    pub fn note(&self, id: &ContextId, mismatched: bool) -> bool {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if mismatched {
            ids.insert(id.clone())
        } else {
            ids.remove(id);
            false
        }
    }

    /// How many such embeddings are stored, as far as the indexer has seen.
    pub fn count(&self) -> usize {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// The remedy the warning about embeddings of another length names.
pub const MISMATCH_REMEDY: &str = "contextd reindex";

/// Cosine similarity of two vectors of one length; 0 when either is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certainty_and_distance_follow_weaviates_cosine_arithmetic() {
        // Weaviate's own fixture: [0.7,0.3] against [1,1] gives distance 0.0715, certainty 0.96.
        let cos = cosine(&[0.7, 0.3], &[1.0, 1.0]);
        let hit = Hit::from_cosine(ContextId::parse("c").unwrap(), cos);
        assert!((hit.distance - 0.071_523_3).abs() < 1e-6, "{hit:?}");
        assert!((hit.certainty - 0.964_238_3).abs() < 1e-6, "{hit:?}");
        let opposite = Hit::from_cosine(
            ContextId::parse("c").unwrap(),
            cosine(&[0.7, 0.3], &[-0.7, -0.3]),
        );
        assert!((opposite.distance - 2.0).abs() < 1e-9 && opposite.certainty.abs() < 1e-9);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
