//! The embedding worker: makes the server's embedding of every context written without one,
//! after its commit, when an embedder is configured (`embedding_source: server`). A write
//! never waits for the model and never fails because of it.
//!
//! The indexer offers it each changed context that has no embedding, through a bounded queue;
//! when the queue is full the offer is dropped and the worker later scans the store for what
//! it missed ([`EmbeddingStore::unembedded`]), as it does once at every start. So nothing is
//! lost however far the model falls behind, and memory stays bounded.
//!
//! For each context it reads the current version, and skips it when the client sent an
//! embedding or the server's is already made (by another instance, say: then it only enters
//! the local index). A text identical to the one an older version's embedding was made of
//! (a change of metadata only, a restore) takes that embedding over without the model. The
//! embedding is stored only if its version is still the current one
//! ([`EmbeddingStore::put_server_embeddings`]); then the caches take the embedded record, and
//! the indexer is told, which indexes the vector as it indexes every change: from the store,
//! in order with the changes (so one applied at the same moment cannot undo it).
//!
//! [`EmbeddingStore::unembedded`]: crate::store::EmbeddingStore::unembedded
//! [`EmbeddingStore::put_server_embeddings`]: crate::store::EmbeddingStore::put_server_embeddings

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cache::{CachedContext, TieredCache};
use crate::domain::{Context, ContextId, context_text_up_to};
use crate::embed::{EmbedError, Embedder};
use crate::metrics::Metrics;
use crate::store::{ServerEmbedding, Store};

/// Contexts waiting for the worker at most; beyond, offers are dropped and found again by a
/// scan of the store.
pub const QUEUE_CAPACITY: usize = 10_000;

/// The most of a context's text given to the embedder, in bytes: far beyond what any model
/// reads (all-MiniLM-L6-v2 reads 256 tokens, about 1.5 KB), so nothing it would read is cut.
pub const MAX_EMBED_TEXT_BYTES: usize = 32 * 1024;

/// The text the embedder is given for `context`: what `pointers` select of its data, up to
/// [`MAX_EMBED_TEXT_BYTES`]; `None` when that is blank (nothing to embed).
pub fn embedding_text(context: &Context, pointers: &[String]) -> Option<String> {
    let text = context_text_up_to(&context.content.data, pointers, MAX_EMBED_TEXT_BYTES);
    (!text.trim().is_empty()).then_some(text)
}

/// What a server embedding records of the text it was made of.
pub fn text_sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Contexts handled per round (and read per page of a scan).
const ROUND: usize = 64;

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Batches of embedded contexts waiting for the indexer at most (the worker waits beyond).
const EMBEDDED_CAPACITY: usize = 64;

/// The indexer's side of the worker: where it offers contexts, and where it hears which
/// were embedded.
pub struct EmbeddingLink {
    pub(super) queue: EmbeddingQueue,
    pub(super) embedded: Option<mpsc::Receiver<Vec<ContextId>>>,
}

/// The indexer's side of the queue.
#[derive(Clone)]
pub struct EmbeddingQueue {
    sender: mpsc::Sender<ContextId>,
    /// An offer was dropped: the worker scans the store once the queue is empty.
    overflowed: Arc<AtomicBool>,
}

impl EmbeddingQueue {
    /// Asks for `id`'s embedding; never waits.
    pub fn offer(&self, id: ContextId) {
        if self.sender.try_send(id).is_err() {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }
}

pub struct EmbeddingWorker {
    store: Arc<dyn Store>,
    embedder: Arc<dyn Embedder>,
    cache: Arc<TieredCache>,
    /// The contexts it embedded (or found embedded), for the indexer to index.
    embedded: mpsc::Sender<Vec<ContextId>>,
    metrics: Arc<Metrics>,
    /// `embedder.text`.
    pointers: Vec<String>,
    receiver: mpsc::Receiver<ContextId>,
    overflowed: Arc<AtomicBool>,
}

/// What one round came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Round {
    /// Embeddings made by the model.
    embedded: usize,
    /// Embeddings taken over from an older version of the same text.
    reused: usize,
}

impl EmbeddingWorker {
    /// The worker and the indexer's link to it ([`super::Indexer::with_embedding`]).
    pub fn new(
        store: Arc<dyn Store>,
        embedder: Arc<dyn Embedder>,
        cache: Arc<TieredCache>,
        metrics: Arc<Metrics>,
        pointers: Vec<String>,
    ) -> (Self, EmbeddingLink) {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let (embedded, told) = mpsc::channel(EMBEDDED_CAPACITY);
        let overflowed = Arc::new(AtomicBool::new(false));
        let link = EmbeddingLink {
            queue: EmbeddingQueue {
                sender,
                overflowed: overflowed.clone(),
            },
            embedded: Some(told),
        };
        let worker = Self {
            store,
            embedder,
            cache,
            embedded,
            metrics,
            pointers,
            receiver,
            overflowed,
        };
        (worker, link)
    }

    /// Runs until `stop` turns true: first a scan of the store for every context still
    /// without an embedding (written while no embedder was configured, or before a crash),
    /// then the queue, scanning again whenever offers were dropped.
    pub fn spawn(mut self, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            // The scan's position: `Some` while a scan is going on.
            let mut scan: Option<String> = Some(String::new());
            let mut retry = FIRST_RETRY;
            let mut ids: Vec<ContextId> = Vec::new();
            loop {
                if ids.is_empty() {
                    while ids.len() < ROUND {
                        match self.receiver.try_recv() {
                            Ok(id) => ids.push(id),
                            Err(_) => break,
                        }
                    }
                }
                if ids.is_empty()
                    && scan.is_none()
                    && self.overflowed.swap(false, Ordering::Relaxed)
                {
                    scan = Some(String::new());
                }
                if ids.is_empty()
                    && let Some(after) = &scan
                {
                    match self
                        .store
                        .unembedded(
                            self.embedder.model(),
                            self.embedder.dimensions(),
                            Some(after),
                            ROUND,
                        )
                        .await
                    {
                        Ok(page) => {
                            scan = match page.last() {
                                Some(last) if page.len() == ROUND => Some(last.as_str().to_owned()),
                                _ => None,
                            };
                            ids = page;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "the embedding scan failed; retrying");
                            if pause(&mut stop, &mut retry).await {
                                break;
                            }
                            continue;
                        }
                    }
                }
                self.metrics
                    .set_embedding_queue((self.receiver.len() + ids.len()) as i64);
                if ids.is_empty() {
                    tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => break,
                        id = self.receiver.recv() => match id {
                            Some(id) => ids.push(id),
                            None => break,
                        },
                    }
                    continue;
                }
                let outcome = tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => break,
                    outcome = self.round(&ids) => outcome,
                };
                match outcome {
                    Ok(round) => {
                        if round.embedded + round.reused > 0 {
                            tracing::debug!(
                                embedded = round.embedded,
                                reused = round.reused,
                                "server embeddings stored"
                            );
                        }
                        retry = FIRST_RETRY;
                        ids.clear();
                    }
                    Err(Failure::Rejected(reason)) => {
                        // Retrying the same request cannot help: these wait for the next
                        // start's scan (or a change), and the failure is counted.
                        tracing::warn!(
                            contexts = ids.len(),
                            reason,
                            "the embedder refused these contexts' texts; leaving them without \
                             a server embedding"
                        );
                        ids.clear();
                    }
                    Err(Failure::Retry(e)) => {
                        tracing::debug!(error = format!("{e:#}"), "embedding failed; retrying");
                        if pause(&mut stop, &mut retry).await {
                            break;
                        }
                    }
                }
            }
        })
    }

    /// Embeds what `ids` still need, stores it, puts it in the caches, and tells the indexer.
    async fn round(&self, ids: &[ContextId]) -> Result<Round, Failure> {
        let dimensions = self.embedder.dimensions();
        let model = self.embedder.model();
        let mut wanted: Vec<(Context, String)> = Vec::new();
        for id in ids {
            let Some(context) = self.store.get(id).await.map_err(retry)? else {
                continue;
            };
            if context.content.embedding.is_some() {
                continue;
            }
            if let Some(text) = embedding_text(&context, &self.pointers) {
                wanted.push((context, text));
            }
        }
        let mut round = Round::default();
        // Contexts whose server embedding is in the store, for the indexer to index.
        let mut done: Vec<ContextId> = Vec::new();
        if wanted.is_empty() {
            return Ok(round);
        }
        let wanted_ids: Vec<ContextId> = wanted.iter().map(|(c, _)| c.id.clone()).collect();
        let held: HashMap<ContextId, ServerEmbedding> = self
            .store
            .server_embeddings(&wanted_ids)
            .await
            .map_err(retry)?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        // The embeddings to store, each with its context; and the texts for the model, each
        // with the position of its entry in `made`.
        let mut made: Vec<(Context, ServerEmbedding)> = Vec::with_capacity(wanted.len());
        let mut texts: Vec<(usize, String)> = Vec::new();
        for (context, text) in wanted {
            let text_sha256 = text_sha256(&text);
            let usable = held.get(&context.id).filter(|e| {
                e.text_sha256 == text_sha256 && e.vector.len() == dimensions && e.model == model
            });
            if usable.is_some_and(|e| e.version == context.version) {
                // Made already (by another instance): only this instance's index lacks it.
                done.push(context.id);
                continue;
            }
            match usable {
                Some(_) => round.reused += 1,
                None => texts.push((made.len(), text)),
            }
            let embedding = ServerEmbedding {
                id: context.id.clone(),
                version: context.version,
                model: model.to_owned(),
                text_sha256,
                // A text embedded before, for an older version: taken over.
                vector: usable.map(|e| e.vector.clone()).unwrap_or_default(),
            };
            made.push((context, embedding));
        }
        for chunk in texts.chunks(self.embedder.batch_size().max(1)) {
            let batch: Vec<String> = chunk.iter().map(|(_, text)| text.clone()).collect();
            let vectors = self
                .embedder
                .embed_background(&batch)
                .await
                .map_err(|e| match e {
                    EmbedError::Unavailable(e) => Failure::Retry(e),
                    EmbedError::Rejected(reason) => Failure::Rejected(reason),
                })?;
            for ((at, _), vector) in chunk.iter().zip(vectors) {
                made[*at].1.vector = vector;
            }
            round.embedded += chunk.len();
        }
        made.retain(|(_, e)| !e.vector.is_empty());
        let embeddings: Vec<ServerEmbedding> = made.iter().map(|(_, e)| e.clone()).collect();
        let stored: std::collections::HashSet<ContextId> = self
            .store
            .put_server_embeddings(&embeddings)
            .await
            .map_err(retry)?
            .into_iter()
            .collect();
        for (mut context, embedding) in made {
            if stored.contains(&context.id) {
                context.server_embedding = Some(embedding.vector);
                done.push(context.id.clone());
                self.cache
                    .written(&Arc::new(CachedContext::new(context)))
                    .await;
            }
        }
        if !done.is_empty() {
            // Waits while the indexer is behind; it never waits for this worker.
            let _ = self.embedded.send(done).await;
        }
        Ok(round)
    }
}

/// Why a round did not finish.
enum Failure {
    /// Worth trying again after a pause: the store or the embedder is unavailable.
    Retry(anyhow::Error),
    /// The embedder refused the texts for good.
    Rejected(String),
}

fn retry(e: crate::store::StoreError) -> Failure {
    Failure::Retry(anyhow::Error::new(e))
}

/// Waits out `retry` (doubling it for the next time) unless `stop` turns true first; whether
/// it did.
async fn pause(stop: &mut watch::Receiver<bool>, retry: &mut Duration) -> bool {
    let wait = *retry;
    *retry = (*retry * 2).min(MAX_RETRY);
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => true,
        _ = tokio::time::sleep(wait) => false,
    }
}
