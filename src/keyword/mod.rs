//! Keyword: BM25 search over each context's text, behind one trait, as `crate::vector` is for
//! embeddings. The embedded backend ([`embedded::EmbeddedKeywordIndex`]) is tantivy in memory:
//! derived from the store like the embedded vector index (rebuilt at start, fed from the
//! outbox), so it ranks the same on SQLite and Postgres. This layer indexes and searches text;
//! it decides nothing about contexts, and leaves scores raw (the service scales them).

pub mod embedded;

use async_trait::async_trait;

use crate::domain::{ContextId, Source, Visible};

/// The most of a context's text that is indexed, in bytes (the start of it, cut at a character
/// boundary): a 10 MB context would otherwise cost the index several times that in memory.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;

/// What the index keeps of one context: its text and what filters need.
#[derive(Debug, Clone, PartialEq)]
pub struct KeywordEntry {
    pub id: ContextId,
    /// The context's version this text belongs to.
    pub version: i64,
    /// The context's text ([`crate::domain::context_text`]).
    pub text: String,
    pub source: Source,
    pub parent_id: Option<ContextId>,
}

/// A BM25 query: the contexts whose text holds any of the query's words, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct KeywordQuery {
    pub text: String,
    /// How many hits at most.
    pub limit: usize,
    /// Only contexts from this source.
    pub source: Option<Source>,
    /// Only children of this context.
    pub parent_id: Option<ContextId>,
    /// Only the contexts the caller may see.
    pub visible: Visible,
}

/// One result, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct KeywordHit {
    pub id: ContextId,
    /// The raw BM25 score (k1 = 1.2, b = 0.75), above 0.
    pub score: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeywordError {
    /// The index cannot answer now: worth a retry.
    #[error("the keyword index is unavailable")]
    Unavailable(#[source] anyhow::Error),
}

#[async_trait]
pub trait KeywordIndex: Send + Sync + 'static {
    /// `embedded` (or, later, `weaviate`).
    fn backend(&self) -> &'static str;

    /// Stores these entries, replacing what is stored under their ids; searches see them once
    /// it returns.
    async fn upsert(&self, entries: Vec<KeywordEntry>) -> Result<(), KeywordError>;

    /// Removes these contexts; an id that is not there is not an error.
    async fn delete(&self, ids: Vec<ContextId>) -> Result<(), KeywordError>;

    /// The entries whose text holds any word of `query.text`, by BM25, best first (ties by
    /// id), matching the filters, at most `query.limit`.
    async fn search(&self, query: &KeywordQuery) -> Result<Vec<KeywordHit>, KeywordError>;
}
