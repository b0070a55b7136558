//! `contextd reindex`: makes the stored embeddings fit `vector.dimensions` again, makes every
//! server embedding again with the current embedder, then rebuilds the vector index from the
//! store, so that the next start is clean.
//!
//! An embedding of another length (stored under other `vector.dimensions`) cannot be searched
//! and is left out of the index (`/readyz` says the vector check is `degraded`). What becomes
//! of each depends on where it came from: a client's cannot be made again by the server, so it
//! is dropped ([`Store::other_length_embeddings`] lists only those); the server's is removed and
//! made again (here when an embedder is configured, else by the server's embedding worker once
//! one is).
//!
//! Dropping is a repair of stored data, not a write: the current version's embedding becomes
//! null, with no new version and no change in the feed or the webhook (see
//! [`Store::drop_embeddings`]); the cache entries that hold the embedding are removed (L3 in
//! the same transaction, L2 in Redis when configured). Making server embeddings again is the
//! same kind of repair.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::l2::RedisL2;
use crate::domain::ContextId;
use crate::embed::{EmbedError, Embedder};
use crate::store::{ServerEmbedding, Store};
use crate::sync::{Indexer, IndexerState, embedding_text, text_sha256};
use crate::vector::VectorIndex;

/// Embeddings looked at per page.
const PAGE: usize = 500;

/// What a reindex did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReindexSummary {
    /// Client embeddings of another length dropped from the store.
    pub dropped: usize,
    /// Server embeddings of another length removed (made again when `remade` counts them).
    pub dropped_server: u64,
    /// Server embeddings made (again) with the current embedder; `None`: none is configured.
    pub remade: Option<usize>,
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
            "reindex: {} embedding{} of another length dropped (client-supplied), ",
            self.dropped,
            plural(self.dropped),
        )?;
        match self.remade {
            Some(remade) => write!(
                f,
                "{remade} server embedding{} made with the current embedder, ",
                plural(remade)
            )?,
            None if self.dropped_server > 0 => write!(
                f,
                "{} server embedding{} of another length removed (made again once an embedder \
                 is configured), ",
                self.dropped_server,
                plural(self.dropped_server as usize)
            )?,
            None => {}
        }
        write!(
            f,
            "{} context{} indexed",
            self.indexed,
            plural(self.indexed)
        )
    }
}

/// How `reindex` makes server embeddings: the embedder, and the JSON pointers that select each
/// context's text (`embedder.text`).
pub struct Remaker {
    pub embedder: Arc<dyn Embedder>,
    pub pointers: Vec<String>,
}

/// Drops the clients' embeddings of another length than `index.dimensions()`, removes the
/// server's of another length, makes every server embedding again with `remaker`'s embedder when there is one (and those
/// of contexts still without an embedding), forgets what changed in Redis, and rebuilds
/// `index` from the store (`persistent`: it keeps its data across restarts, Weaviate). Safe to
/// run again: a second run drops nothing.
pub async fn reindex(
    store: Arc<dyn Store>,
    index: Arc<dyn VectorIndex>,
    persistent: bool,
    redis: Option<Arc<RedisL2>>,
    remaker: Option<Remaker>,
) -> anyhow::Result<ReindexSummary> {
    let dimensions = index.dimensions();
    let mut dropped: Vec<ContextId> = Vec::new();
    if dimensions > 0 {
        let mut after: Option<String> = None;
        loop {
            let page = store
                .other_length_embeddings(dimensions, after.as_deref(), PAGE)
                .await?;
            // Clients' embeddings only: the server's are dealt with below.
            let to_drop: Vec<ContextId> = page.iter().map(|(id, _)| id.clone()).collect();
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
    let dropped_server = if dimensions > 0 {
        store.drop_server_embeddings(dimensions).await?
    } else {
        0
    };
    let remade = match remaker {
        Some(remaker) => Some(remake(&store, &remaker, redis.as_deref()).await?),
        None => None,
    };
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
        dropped_server,
        remade,
        indexed: rebuilt.loaded,
        backend: index.backend(),
    })
}

/// Makes the server embedding of every current context without a client embedding, with
/// `remaker`'s embedder, whatever was made before; how many.
async fn remake(
    store: &Arc<dyn Store>,
    remaker: &Remaker,
    redis: Option<&RedisL2>,
) -> anyhow::Result<usize> {
    let embedder = &remaker.embedder;
    let mut made = 0usize;
    let mut after: Option<String> = None;
    loop {
        let page = store
            .current_contexts(after.as_deref(), PAGE, false)
            .await?;
        let wanted: Vec<(ContextId, i64, String)> = page
            .iter()
            .filter(|context| context.content.embedding.is_none())
            .filter_map(|context| {
                let text = embedding_text(context, &remaker.pointers)?;
                Some((context.id.clone(), context.version, text))
            })
            .collect();
        for chunk in wanted.chunks(embedder.batch_size().max(1)) {
            let texts: Vec<String> = chunk.iter().map(|(_, _, text)| text.clone()).collect();
            let vectors = embed_waiting(embedder.as_ref(), &texts).await?;
            let embeddings: Vec<ServerEmbedding> = chunk
                .iter()
                .zip(vectors)
                .map(|((id, version, text), vector)| ServerEmbedding {
                    id: id.clone(),
                    version: *version,
                    model: embedder.model().to_owned(),
                    text_sha256: text_sha256(text),
                    vector,
                })
                .collect();
            let stored = store.put_server_embeddings(&embeddings).await?;
            if let Some(redis) = redis {
                for id in &stored {
                    redis.forget(id).await;
                }
            }
            made += stored.len();
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.id.as_str().to_owned()),
            _ => break,
        }
    }
    Ok(made)
}

/// How long `reindex` waits for an unavailable embedder (a model still loading, a server
/// answering 503) before giving up.
const EMBED_PATIENCE: Duration = Duration::from_secs(120);

/// `embedder.embed`, tried again while the embedder is unavailable, up to [`EMBED_PATIENCE`].
async fn embed_waiting(embedder: &dyn Embedder, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
    let deadline = tokio::time::Instant::now() + EMBED_PATIENCE;
    let mut delay = Duration::from_millis(100);
    loop {
        match embedder.embed(texts).await {
            Ok(vectors) => return Ok(vectors),
            Err(EmbedError::Unavailable(e)) if tokio::time::Instant::now() + delay < deadline => {
                tracing::debug!(
                    error = format!("{e:#}"),
                    "the embedder is unavailable; waiting"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("making server embeddings")),
        }
    }
}
