//! `contextd reindex`: makes the stored embeddings fit `vector.dimensions` again, then
//! rebuilds the vector index from the store, so that the next start is clean.
//!
//! An embedding of another length (stored under other `vector.dimensions`) cannot be searched
//! and is left out of the index (`/readyz` says the vector check is `degraded`). What becomes
//! of each is decided by [`fate`], from where the embedding came from: today every embedding
//! is supplied by the client, and the server cannot make another one, so it is dropped. The
//! seam for embeddings the server makes itself (recomputed instead) is [`Provenance`].
//!
//! Dropping is a repair of stored data, not a write: the current version's embedding becomes
//! null, with no new version and no change in the feed or the webhook (see
//! [`Store::drop_embeddings`]); the cache entries that hold the embedding are removed (L3 in
//! the same transaction, L2 in Redis when configured).

use std::sync::Arc;
use std::time::Duration;

use crate::cache::l2::RedisL2;
use crate::domain::ContextId;
use crate::store::Store;
use crate::sync::{Indexer, IndexerState};
use crate::vector::VectorIndex;

/// Embeddings looked at per page.
const PAGE: usize = 500;

/// Where a stored embedding came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Sent by the client with the context: only the client can make another.
    ClientSupplied,
}

impl Provenance {
    pub fn as_str(self) -> &'static str {
        match self {
            Provenance::ClientSupplied => "client-supplied",
        }
    }
}

/// What `reindex` does with an embedding of another length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Removed from the store: the context stays, without an embedding.
    Drop,
}

/// Where the current embedding of `id` came from. Every embedding is client-supplied today;
/// once the server makes some, this reads what the store records of it.
pub fn provenance(_id: &ContextId) -> Provenance {
    Provenance::ClientSupplied
}

/// What becomes of an embedding of another length, by where it came from.
pub fn fate(provenance: Provenance) -> Fate {
    match provenance {
        Provenance::ClientSupplied => Fate::Drop,
    }
}

/// What a reindex did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReindexSummary {
    /// Embeddings of another length dropped from the store (all client-supplied).
    pub dropped: usize,
    /// Contexts whose embedding is in the index (of the right length).
    pub indexed: usize,
    /// `embedded` or `weaviate`.
    pub backend: &'static str,
}

impl std::fmt::Display for ReindexSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        write!(
            f,
            "reindex: {} embedding{} of another length dropped ({}), {} context{} indexed",
            self.dropped,
            plural(self.dropped),
            Provenance::ClientSupplied.as_str(),
            self.indexed,
            plural(self.indexed),
        )
    }
}

/// Drops the embeddings of another length than `index.dimensions()` (as [`fate`] decides),
/// forgets them in Redis, and rebuilds `index` from the store (`persistent`: it keeps its data
/// across restarts, Weaviate). Safe to run again: a second run drops nothing.
pub async fn reindex(
    store: Arc<dyn Store>,
    index: Arc<dyn VectorIndex>,
    persistent: bool,
    redis: Option<Arc<RedisL2>>,
) -> anyhow::Result<ReindexSummary> {
    let dimensions = index.dimensions();
    let mut dropped: Vec<ContextId> = Vec::new();
    if dimensions > 0 {
        let mut after: Option<String> = None;
        loop {
            let page = store
                .other_length_embeddings(dimensions, after.as_deref(), PAGE)
                .await?;
            let to_drop: Vec<ContextId> = page
                .iter()
                .filter(|(id, _)| fate(provenance(id)) == Fate::Drop)
                .map(|(id, _)| id.clone())
                .collect();
            for (id, length) in &page {
                tracing::debug!(%id, length, dimensions, "dropping an embedding of another length");
            }
            let gone = store.drop_embeddings(&to_drop, dimensions).await?;
            if let Some(redis) = &redis {
                for id in &gone {
                    // The current entry (and any version entry) holds the embedding.
                    redis.forget(id).await;
                }
            }
            dropped.extend(gone);
            match page.last() {
                Some((last, _)) if page.len() == PAGE => after = Some(last.as_str().to_owned()),
                _ => break,
            }
        }
    }
    if persistent && !dropped.is_empty() {
        // Never indexed (the index refuses them), but nothing of them may stay there.
        index.prepare().await?;
        index.delete(dropped.clone()).await?;
    }
    let indexer = Indexer::new(
        store,
        index.clone(),
        Arc::new(IndexerState::default()),
        Duration::from_secs(1),
        persistent,
    );
    let rebuilt = indexer.rebuild_offline().await?;
    Ok(ReindexSummary {
        dropped: dropped.len(),
        indexed: rebuilt.loaded,
        backend: index.backend(),
    })
}
