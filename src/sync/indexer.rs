//! The indexers: each applies committed changes to one index derived from the store (the
//! vector index, the keyword index), from the outbox, with retries, so a write never waits for
//! (or fails because of) an index, and nothing is lost while one is down.
//!
//! An indexer does not replay versions: for each changed context it reads the current state
//! from the store and makes the index match it (the embedding or the text of the current
//! version, or nothing). So the index converges on the store whatever the order or repetition
//! of the changes, and a late update can never bring back an old vector, an old text or a
//! deleted context.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::domain::{Context, ContextId, Principal, Visible, context_text_up_to};
use crate::keyword::{KeywordEntry, KeywordIndex, MAX_TEXT_BYTES};
use crate::store::Store;
use crate::vector::{MISMATCH_REMEDY, Mismatched, VectorEntry, VectorIndex};

use super::embedding::EmbeddingLink;

/// The next contexts the embedding worker embedded; never, without a worker.
async fn next_embedded(
    embedded: &mut Option<tokio::sync::mpsc::Receiver<Vec<ContextId>>>,
) -> Option<Vec<ContextId>> {
    match embedded {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Changes read from the outbox per round.
const PAGE: usize = 500;

/// Contexts read per page while rebuilding.
const REBUILD_PAGE: usize = 1000;

/// The first retry delay after a failure; doubles up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// What `/readyz` says of the indexer.
#[derive(Debug, Default)]
pub struct IndexerState {
    /// The last attempt to apply changes (or to prepare the backend) succeeded.
    healthy: AtomicBool,
    /// Changes committed but not applied yet.
    backlog: AtomicI64,
    /// Stored embeddings left out of the index for their length.
    mismatched: Mismatched,
    /// The start-up warning about them was logged.
    warned: AtomicBool,
}

impl IndexerState {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn backlog(&self) -> i64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// The stored embeddings of another length than the index's, left out of it.
    pub fn mismatched(&self) -> &Mismatched {
        &self.mismatched
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// The outbox position to go on from.
    pub from: i64,
    /// Embeddings loaded into the index.
    pub loaded: usize,
    /// Embeddings of another length, left out.
    pub skipped: usize,
}

/// The entry of a context's current version (its client's embedding, else the server's);
/// `None` when it has no embedding.
pub fn entry_of(context: &Context) -> Option<VectorEntry> {
    Some(VectorEntry {
        id: context.id.clone(),
        version: context.version,
        vector: context.embedding()?.to_vec(),
        source: context.content.source,
        parent_id: context.content.parent_id.clone(),
        data: context.content.data.clone(),
        metadata: context.content.metadata.clone(),
        updated_at: context.updated_at,
    })
}

/// The keyword entry of a context's current version: its text as `pointers` select it.
pub fn keyword_entry_of(context: &Context, pointers: &[String]) -> KeywordEntry {
    let text = context_text_up_to(&context.content.data, pointers, MAX_TEXT_BYTES);
    KeywordEntry {
        id: context.id.clone(),
        version: context.version,
        text,
        source: context.content.source,
        parent_id: context.content.parent_id.clone(),
    }
}

/// The keyword index an indexer keeps, and what a context's text is.
struct KeywordTarget {
    index: Arc<dyn KeywordIndex>,
    /// `embedder.text`.
    pointers: Vec<String>,
}

pub struct Indexer {
    store: Arc<dyn Store>,
    index: Arc<dyn VectorIndex>,
    /// Set: the indexer keeps this keyword index as well (in memory: loaded at each start).
    keyword: Option<KeywordTarget>,
    /// Set: an embedder is configured; contexts changed without an embedding go to its
    /// worker, which says which it embedded.
    embedding: Option<EmbeddingLink>,
    state: Arc<IndexerState>,
    poll: Duration,
    /// Whether the index keeps what it holds across restarts (Weaviate) or starts empty
    /// (embedded, rebuilt from the store at each start).
    persistent: bool,
}

impl Indexer {
    pub fn new(
        store: Arc<dyn Store>,
        index: Arc<dyn VectorIndex>,
        state: Arc<IndexerState>,
        poll: Duration,
        persistent: bool,
    ) -> Self {
        Self {
            store,
            index,
            keyword: None,
            embedding: None,
            state,
            poll,
            persistent,
        }
    }

    /// The indexer keeps `index`, a keyword index, as well: every current context's text as
    /// `pointers` select it, loaded from the store at each start (it keeps nothing across
    /// restarts) and then kept from the outbox with the vector index, each change read once.
    pub fn with_keywords(mut self, index: Arc<dyn KeywordIndex>, pointers: Vec<String>) -> Self {
        self.keyword = Some(KeywordTarget { index, pointers });
        self
    }

    /// The indexer offers every changed context that has no embedding to the embedding worker
    /// behind `link` (which embeds its text and stores the result as the server's), and
    /// indexes what the worker says it embedded. Every change to the indexes is made here, in
    /// order, from what the store holds: an embedding stored just as a change without one was
    /// being applied cannot be deleted by it.
    pub fn with_embedding(mut self, link: EmbeddingLink) -> Self {
        self.embedding = Some(link);
        self
    }

    /// The cursor's name in `contextd_indexer_state`.
    fn name(&self) -> String {
        self.index.cursor_name()
    }

    /// Whether the index takes this entry's vector: of its length (or it checks none).
    fn fits(&self, entry: &VectorEntry) -> bool {
        let dimensions = self.index.dimensions();
        dimensions == 0 || entry.vector.len() == dimensions
    }

    /// Loads every current embedding of the index's length into the index, leaving the others
    /// out (counted, and warned about once), and every current context's text into the keyword
    /// index when there is one; returns the outbox position to go on from. The position is
    /// read first, so changes committed during the scan are applied again (harmless: applying
    /// is idempotent).
    pub async fn rebuild(&self) -> anyhow::Result<i64> {
        Ok(self.rebuild_counted().await?.from)
    }

    /// [`Indexer::rebuild`], saying how many embeddings it loaded and left out.
    pub async fn rebuild_counted(&self) -> anyhow::Result<Rebuilt> {
        self.load(true).await
    }

    /// One scan of the store's current contexts: their embeddings into the vector index when
    /// `vectors`, their texts into the keyword index when there is one.
    async fn load(&self, vectors: bool) -> anyhow::Result<Rebuilt> {
        let from = self.store.latest_seq().await?;
        let mut after: Option<String> = None;
        let (mut loaded, mut skipped, mut texts) = (0usize, 0usize, 0usize);
        loop {
            let page = self
                .store
                .current_contexts(after.as_deref(), REBUILD_PAGE, self.keyword.is_none())
                .await?;
            if let Some(keyword) = &self.keyword {
                let entries: Vec<KeywordEntry> = page
                    .iter()
                    .map(|context| keyword_entry_of(context, &keyword.pointers))
                    .collect();
                texts += entries.len();
                if !entries.is_empty() {
                    keyword.index.upsert(entries).await?;
                }
            }
            if vectors {
                let mut entries = Vec::with_capacity(page.len());
                for entry in page.iter().filter_map(entry_of) {
                    let fits = self.fits(&entry);
                    self.state.mismatched.note(&entry.id, !fits);
                    if fits {
                        entries.push(entry);
                    } else {
                        skipped += 1;
                    }
                }
                loaded += entries.len();
                if !entries.is_empty() {
                    self.index.upsert(entries).await?;
                }
            }
            match page.last() {
                Some(last) if page.len() == REBUILD_PAGE => {
                    after = Some(last.id.as_str().to_owned());
                }
                _ => break,
            }
        }
        if vectors {
            tracing::info!(
                backend = self.index.backend(),
                loaded,
                "vector index rebuilt from the store"
            );
            self.warn_at_start(skipped);
        }
        if self.keyword.is_some() {
            tracing::info!(contexts = texts, "keyword index loaded from the store");
        }
        Ok(Rebuilt {
            from,
            loaded,
            skipped,
        })
    }

    /// What `contextd reindex` does to the index once the store is repaired, with no server
    /// running: a persistent index (Weaviate) gets every current embedding upserted again and
    /// its cursor moved to where that scan began, so the next start resumes from there; the
    /// embedded one, rebuilt from the store at every start, only has its embeddings counted.
    pub async fn rebuild_offline(&self) -> anyhow::Result<Rebuilt> {
        if self.persistent {
            self.index.prepare().await?;
            let rebuilt = self.rebuild_counted().await?;
            self.store
                .set_indexer_cursor(&self.name(), rebuilt.from)
                .await?;
            return Ok(rebuilt);
        }
        let from = self.store.latest_seq().await?;
        let mut after: Option<String> = None;
        let (mut loaded, mut skipped) = (0usize, 0usize);
        loop {
            let page = self
                .store
                .current_contexts(after.as_deref(), REBUILD_PAGE, true)
                .await?;
            for entry in page.iter().filter_map(entry_of) {
                if self.fits(&entry) {
                    loaded += 1;
                } else {
                    skipped += 1;
                }
            }
            match page.last() {
                Some(last) if page.len() == REBUILD_PAGE => {
                    after = Some(last.id.as_str().to_owned());
                }
                _ => break,
            }
        }
        Ok(Rebuilt {
            from,
            loaded,
            skipped,
        })
    }

    /// Finds the stored embeddings of another length without loading anything (a persistent
    /// index resuming from its cursor never saw them: it would have refused them).
    async fn survey(&self) -> anyhow::Result<()> {
        let dimensions = self.index.dimensions();
        if dimensions == 0 {
            return Ok(());
        }
        let mut after: Option<String> = None;
        let mut found = 0usize;
        loop {
            let page = self
                .store
                .other_length_embeddings(dimensions, after.as_deref(), REBUILD_PAGE)
                .await?;
            found += page.len();
            for (id, _) in &page {
                self.state.mismatched.note(id, true);
            }
            match page.last() {
                Some((last, _)) if page.len() == REBUILD_PAGE => {
                    after = Some(last.as_str().to_owned());
                }
                _ => break,
            }
        }
        self.warn_at_start(found);
        Ok(())
    }

    /// One warning line for every embedding of another length found at start, naming the
    /// remedy; logged once per process however often the start is retried.
    fn warn_at_start(&self, found: usize) {
        if found > 0 && !self.state.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                embeddings = found,
                dimensions = self.index.dimensions(),
                "{found} stored embedding{} of another length than vector.dimensions ({}) {} left \
                 out of vector search; run `{MISMATCH_REMEDY}` to drop {}",
                if found == 1 { "" } else { "s" },
                self.index.dimensions(),
                if found == 1 { "is" } else { "are" },
                if found == 1 { "it" } else { "them" },
            );
        }
    }

    /// Runs until `stop` turns true, from the outbox position `start` (what `rebuild` returned),
    /// or, when `None`, preparing the backend and finding its position first.
    pub fn spawn(mut self, start: Option<i64>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        // Started from a rebuild: the index is as current as the store was.
        if start.is_some() {
            self.state.healthy.store(true, Ordering::Relaxed);
        }
        let mut embedded = self
            .embedding
            .as_mut()
            .and_then(|link| link.embedded.take());
        tokio::spawn(async move {
            let mut commits = self.store.commits();
            let mut cursor = start;
            let mut retry = FIRST_RETRY;
            // Contexts the embedding worker embedded, still to be indexed.
            let mut redo: BTreeSet<ContextId> = BTreeSet::new();
            loop {
                let mut outcome = self.round(&mut cursor).await;
                if outcome.is_ok() && !redo.is_empty() {
                    outcome = self.apply(std::mem::take(&mut redo)).await;
                }
                let deadline = match outcome {
                    Ok(()) => {
                        self.state.healthy.store(true, Ordering::Relaxed);
                        retry = FIRST_RETRY;
                        None
                    }
                    Err(e) => {
                        if self.state.healthy.swap(false, Ordering::Relaxed) {
                            tracing::warn!(
                                error = format!("{e:#}"),
                                "the indexer failed; retrying"
                            );
                        }
                        let at = Instant::now() + retry;
                        retry = (retry * 2).min(MAX_RETRY);
                        Some(at)
                    }
                };
                if let Ok(latest) = self.store.latest_seq().await {
                    let applied = cursor.unwrap_or(0);
                    self.state
                        .backlog
                        .store((latest - applied).max(0), Ordering::Relaxed);
                }
                let stopping = tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => true,
                    _ = commits.recv(), if deadline.is_none() => false,
                    Some(ids) = next_embedded(&mut embedded), if deadline.is_none() => {
                        redo.extend(ids);
                        false
                    }
                    _ = tokio::time::sleep_until(deadline.unwrap_or(Instant::now() + self.poll)) => false,
                };
                if stopping {
                    break;
                }
                while !matches!(
                    commits.try_recv(),
                    Err(broadcast::error::TryRecvError::Empty)
                ) {}
            }
        })
    }

    /// Starts (prepare, rebuild or resume) if not started yet, then applies every change
    /// committed since the cursor.
    async fn round(&self, cursor: &mut Option<i64>) -> anyhow::Result<()> {
        let mut at = match *cursor {
            Some(at) => at,
            None => {
                self.index.prepare().await?;
                let at = if self.persistent {
                    match self.store.indexer_cursor(&self.name()).await? {
                        // Never applied anything: everything that exists goes in first.
                        0 => self.rebuild().await?,
                        at => {
                            self.survey().await?;
                            // The keyword index starts empty whatever Weaviate holds; loaded
                            // after `at`, it applies from there again, which is harmless.
                            if self.keyword.is_some() {
                                self.load(false).await?;
                            }
                            at
                        }
                    }
                } else {
                    self.rebuild().await?
                };
                *cursor = Some(at);
                at
            }
        };
        loop {
            self.store.sequence_outbox().await?;
            let changes = self
                .store
                .changes(at, PAGE, &Visible::to(&Principal::system()))
                .await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                return Ok(());
            };
            let ids: BTreeSet<ContextId> = changes.into_iter().map(|c| c.id).collect();
            self.apply(ids).await?;
            at = last;
            *cursor = Some(at);
            if self.persistent {
                self.store.set_indexer_cursor(&self.name(), at).await?;
            }
        }
    }

    /// Makes the index match the store for these contexts. An embedding of another length
    /// (written by an instance configured otherwise) is left out and counted, never an error.
    async fn apply(&self, ids: BTreeSet<ContextId>) -> anyhow::Result<()> {
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        let (mut texts, mut untexts) = (Vec::new(), Vec::new());
        let mut met = 0usize;
        for id in ids {
            let context = self.store.get(&id).await?;
            if let (Some(link), Some(context)) = (&self.embedding, &context)
                && context.embedding().is_none()
            {
                link.queue.offer(id.clone());
            }
            if let Some(keyword) = &self.keyword {
                match &context {
                    Some(context) => texts.push(keyword_entry_of(context, &keyword.pointers)),
                    None => untexts.push(id.clone()),
                }
            }
            match context.as_ref().and_then(entry_of) {
                Some(entry) if self.fits(&entry) => {
                    self.state.mismatched.note(&id, false);
                    upserts.push(entry);
                }
                Some(_) => {
                    if self.state.mismatched.note(&id, true) {
                        met += 1;
                    }
                    // Whatever the index held for it is of an older version.
                    deletes.push(id);
                }
                None => {
                    self.state.mismatched.note(&id, false);
                    deletes.push(id);
                }
            }
        }
        if met > 0 {
            tracing::warn!(
                embeddings = met,
                stored = self.state.mismatched.count(),
                "{met} new embedding{} of another length than vector.dimensions ({}) left out of \
                 vector search; run `{MISMATCH_REMEDY}` to drop {}",
                if met == 1 { "" } else { "s" },
                self.index.dimensions(),
                if met == 1 { "it" } else { "them" },
            );
        }
        if let Some(keyword) = &self.keyword {
            if !texts.is_empty() {
                keyword.index.upsert(texts).await?;
            }
            if !untexts.is_empty() {
                keyword.index.delete(untexts).await?;
            }
        }
        if !upserts.is_empty() {
            self.index.upsert(upserts).await?;
        }
        if !deletes.is_empty() {
            self.index.delete(deletes).await?;
        }
        Ok(())
    }
}
