//! Store: where contexts live. One trait, one implementation per database.
//!
//! A backend does storage and transactions only. The rules (version numbers, retention,
//! preconditions, merges) live in `service/`: a write hands the backend a [`Decide`] closure,
//! which the backend runs inside its transaction, with the context locked, on what it read.
//! So the rules are written once, whatever the database.

mod migrate;
pub mod postgres;
pub mod sqlite;
mod tally;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

use crate::domain::{
    ChangeType, Content, Context, ContextHistory, ContextId, ContextSummary, JsonObject, Refusal,
    Role, Source, VersionInfo, VersionRecord, Visible,
};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use tally::Tally;

/// A failure of the database itself, never of the request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (refused, timed out, connection lost): worth a retry.
    #[error("the store is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// The database refuses to write anything now: its disk is full, or it is read-only.
    /// Reads go on; writes answer 503 and readiness says `degraded` until one succeeds.
    #[error("the store refuses writes")]
    Refusing(#[source] anyhow::Error),
    /// The database refused a value of the request (Postgres's data exceptions): the request's
    /// fault, though the rules should have caught it first.
    #[error("the store refused a value")]
    Rejected(#[source] anyhow::Error),
    /// Anything else: a bug, a broken invariant, data that does not map back.
    #[error("the store failed")]
    Internal(#[source] anyhow::Error),
}

/// What a write sees, inside its transaction, with the context locked.
pub struct WriteView<'a> {
    /// The current version, if the context exists.
    pub current: Option<&'a Context>,
    /// The version asked for with `load_version`, if it is still kept.
    pub loaded: Option<&'a VersionRecord>,
    /// Factory's own timestamp of the current version, when it came from Factory sync.
    pub synced_at: Option<DateTime<Utc>>,
}

/// A new version to store; every field was decided by the rules.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub version: i64,
    pub content: Content,
    pub change_type: ChangeType,
    pub changed_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Versions below this one are pruned in the same transaction.
    pub keep_from: i64,
    /// The L3 entry to write in the same transaction, when the store keeps L3.
    pub cache_entry: Option<CacheEntry>,
    /// Factory's own timestamp of this version, when it comes from Factory sync.
    pub synced_at: Option<DateTime<Utc>>,
}

impl NewVersion {
    /// The context as it is once this version is stored.
    pub fn into_context(self, id: &ContextId) -> Context {
        Context {
            id: id.clone(),
            version: self.version,
            size_bytes: self.content.size_bytes() as i64,
            content: self.content,
            created_at: self.created_at,
            updated_at: self.updated_at,
            // A new version's text is embedded after commit.
            server_embedding: None,
        }
    }
}

/// An L3 entry (`factory_cache_records`): the current version's cache record, compressed,
/// written by the write itself so it is never stale.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub value: Vec<u8>,
    pub expires_at: DateTime<Utc>,
}

/// What the rules decided about a write.
pub enum Decision {
    Write(NewVersion),
    Unchanged,
    Refuse(Refusal),
}

/// What a decision leaves a backend to do: answer at once (refused, or unchanged), or store
/// a new version and answer [`WriteOutcome::Written`].
pub enum Resolved {
    Done(WriteOutcome),
    Store(NewVersion),
}

impl Decision {
    /// Turns the rules' decision into the backend's next step, the same way on every backend
    /// and in every write path; `current` gives the current version for an unchanged answer
    /// (called only then, so nothing is cloned for a write).
    pub fn resolve(
        self,
        current: impl FnOnce() -> Option<Context>,
    ) -> Result<Resolved, StoreError> {
        match self {
            Decision::Refuse(refusal) => Ok(Resolved::Done(WriteOutcome::Refused(refusal))),
            Decision::Unchanged => current()
                .map(|context| Resolved::Done(WriteOutcome::Unchanged(context)))
                .ok_or_else(|| {
                    StoreError::Internal(anyhow::anyhow!(
                        "the rules called a missing context unchanged"
                    ))
                }),
            Decision::Write(new) => Ok(Resolved::Store(new)),
        }
    }
}

/// The rules of one write, run by the backend inside its transaction.
pub type Decide = Box<dyn FnOnce(WriteView<'_>) -> Decision + Send>;

/// The rules of one delete: `Err` refuses it.
pub type DecideDelete = Box<dyn FnOnce(&Context) -> Result<(), Refusal> + Send>;

/// How a write ended.
#[derive(Debug)]
pub enum WriteOutcome {
    Written { context: Context, created: bool },
    Unchanged(Context),
    Refused(Refusal),
}

/// How a delete ended.
#[derive(Debug)]
pub enum DeleteOutcome {
    /// Gone; `created_at` names the incarnation that ended, for the cache's tombstone.
    Deleted {
        version: i64,
        created_at: DateTime<Utc>,
    },
    Refused(Refusal),
}

/// Filters of `GET /contexts`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub source: Option<Source>,
    pub parent_id: Option<ContextId>,
}

/// Which filters one page of `list` has, as each backend's `list_statement` takes them: their
/// parameters come in this order (the prefix as two, its key range), then the limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListShape {
    pub source: bool,
    pub parent: bool,
    /// Only the ids under a key's prefix.
    pub prefix: bool,
    /// The page's cursor: ids after it.
    pub after: bool,
}

impl ListShape {
    /// The shape's `WHERE` clause over the heads `m` (empty without filters) and the number of
    /// the limit's parameter, with parameters written `{mark}1`, `{mark}2`, ... (`$` for
    /// Postgres, `?` for SQLite). The prefix is a key range ([`Visible::id_range`]), which
    /// the key's index bounds.
    pub fn filter(self, mark: char) -> (String, usize) {
        let mut conditions = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("{mark}{n}")
        };
        if self.source {
            conditions.push(format!("m.source = {}", next()));
        }
        if self.parent {
            conditions.push(format!("m.parent_id = {}", next()));
        }
        if self.prefix {
            let (from, until) = (next(), next());
            conditions.push(format!("m.context_id >= {from} AND m.context_id < {until}"));
        }
        if self.after {
            conditions.push(format!("m.context_id > {}", next()));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        (filter, n + 1)
    }
}

/// A version looked up by number, with what is needed to tell "pruned" from "never was".
#[derive(Debug)]
pub struct VersionLookup {
    /// The context's current version; `None` when the context does not exist.
    pub current_version: Option<i64>,
    /// When the context was created; `None` when it does not exist.
    pub created_at: Option<DateTime<Utc>>,
    pub record: Option<VersionRecord>,
}

/// Contexts per page of [`ContextStore::histories`].
pub const HISTORY_PAGE: usize = 500;

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Contexts written (new, or replaced by a different history).
    pub imported: usize,
    /// Contexts whose stored history was already the imported one.
    pub unchanged: usize,
}

impl std::ops::AddAssign for ImportSummary {
    fn add_assign(&mut self, other: Self) {
        self.imported += other.imported;
        self.unchanged += other.unchanged;
    }
}

/// What the commit signal says: a change to one context was committed (by this instance or,
/// on Postgres, any other), or the signal was interrupted and anything may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitNotice {
    /// A change to `id`, and, when the signal carries it, what it committed.
    Changed(ContextId, Option<Committed>),
    /// An API key was revoked (or re-enabled): verified keys cached in process are stale.
    KeysChanged,
    Unknown,
}

/// An embedding contextd's embedder made of the text of version `version` of `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEmbedding {
    pub id: ContextId,
    pub version: i64,
    /// The embedder that made it ([`crate::embed::Embedder::model`]).
    pub model: String,
    /// SHA-256 of the text embedded.
    pub text_sha256: [u8; 32],
    pub vector: Vec<f32>,
}

/// What a commit did to a context: its incarnation (`created_at`) and the version it now has,
/// `i64::MAX` for a delete, and whether that version's server embedding is in. Other instances
/// compare it with what their cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub created_at: DateTime<Utc>,
    pub version: i64,
    pub server_embedded: bool,
}

impl Committed {
    /// The version a delete commits.
    pub const DELETED: i64 = i64::MAX;

    /// A write's commit of `version` (or [`Committed::DELETED`]).
    pub fn write(created_at: DateTime<Utc>, version: i64) -> Self {
        Self {
            created_at,
            version,
            server_embedded: false,
        }
    }

    /// The commit signal's payload: `<id> <created_at in µs> <version>`, then ` e` when the
    /// server's embedding of that version came in.
    pub fn payload(&self, id: &ContextId) -> String {
        format!(
            "{id} {} {}{}",
            self.created_at.timestamp_micros(),
            self.version,
            if self.server_embedded { " e" } else { "" }
        )
    }

    /// Reads a payload back; an id alone (an older instance's) carries no commit.
    pub fn parse(payload: &str) -> Option<(ContextId, Option<Committed>)> {
        let mut parts = payload.split(' ');
        let id = ContextId::parse(parts.next()?).ok()?;
        let committed = match (parts.next(), parts.next()) {
            (Some(micros), Some(version)) => Some(Committed {
                created_at: chrono::TimeZone::timestamp_micros(&Utc, micros.parse().ok()?)
                    .single()?,
                version: version.parse().ok()?,
                server_embedded: match parts.next() {
                    None => false,
                    Some("e") => true,
                    Some(_) => return None,
                },
            }),
            _ => None,
        };
        Some((id, committed))
    }
}

/// A stored API key: everything but the key itself, of which only the SHA-256 is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub prefix: Option<String>,
    /// SHA-256 of the key.
    pub key_hash: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("prefix", &self.prefix)
            .field("key_hash", &"***")
            .field("created_at", &self.created_at)
            .field("last_used_at", &self.last_used_at)
            .field("revoked_at", &self.revoked_at)
            .finish()
    }
}

/// Capacity of the commit signal's channel; a receiver that lags is told `Lagged` and treats it
/// as `CommitNotice::Unknown`.
pub const COMMIT_SIGNAL_CAPACITY: usize = 4096;

/// An outbox operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Upsert,
    Delete,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Upsert => "upsert",
            ChangeOp::Delete => "delete",
        }
    }
}

/// A committed change, as the change feed and the webhook carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Commit order.
    pub seq: i64,
    pub id: ContextId,
    pub version: i64,
    pub op: ChangeOp,
    /// When the change was written (its transaction's last statement).
    pub committed_at: DateTime<Utc>,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// The version's content: for an upsert whose version is still kept.
    pub content: Option<ChangedContent>,
}

/// The content of the version a change wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedContent {
    pub data: JsonObject,
    pub metadata: JsonObject,
    /// When that version was written.
    pub changed_at: DateTime<Utc>,
}

/// What one webhook delivery came to.
#[derive(Debug, Clone)]
pub enum Delivery {
    Delivered,
    /// Try these changes again at `retry_at`; nothing after them goes first.
    Failed {
        retry_at: DateTime<Utc>,
        error: String,
    },
}

/// Delivers one batch of changes, in order; run by the store while it holds the batch.
pub type Deliver = Box<dyn FnOnce(Vec<Change>) -> BoxFuture<'static, Delivery> + Send>;

/// How a delivery round ended.
#[derive(Debug)]
pub enum DeliverOutcome {
    /// Nothing is waiting.
    Idle,
    /// Another instance is pushing; its changes are not ours to push now.
    Busy,
    /// The oldest waiting change is not due before this time (a retry's backoff).
    NotBefore(DateTime<Utc>),
    Delivered(Vec<Change>),
    Failed,
}

impl DeliverOutcome {
    /// The retry rule of every backend: while the oldest pending change's next attempt is
    /// still ahead, the round waits for it (`NotBefore`), pushing nothing.
    pub fn waiting_for(next_attempt_at: Option<DateTime<Utc>>) -> Option<Self> {
        next_attempt_at
            .filter(|at| *at > Utc::now())
            .map(DeliverOutcome::NotBefore)
    }
}

/// Sizes for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub contexts: i64,
    pub versions: i64,
}

/// Whether the store refuses writes: set by a write that failed with a refusal (disk full,
/// read-only), cleared by the next write that succeeds.
#[derive(Debug, Default)]
pub struct WriteGate {
    refusing: std::sync::atomic::AtomicBool,
}

impl WriteGate {
    /// Notes how a write ended.
    pub fn observe<T>(&self, result: &Result<T, StoreError>) {
        use std::sync::atomic::Ordering;
        match result {
            Ok(_) => self.refusing.store(false, Ordering::Relaxed),
            Err(StoreError::Refusing(_)) => self.refusing.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
    }

    pub fn refusing(&self) -> bool {
        self.refusing.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A connection pool's state: `open` connections of at most `max_size`, `idle` of them ready,
/// `waiting` callers queued for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub max_size: usize,
    pub open: usize,
    pub idle: usize,
    pub waiting: usize,
}

/// The store as an operator sees it: which backend, whether it answers, whether it takes
/// writes, its pool.
#[async_trait]
pub trait StoreHealth: Send + Sync + 'static {
    /// The backend's name, as `/readyz` reports it.
    fn backend(&self) -> &'static str;

    /// Whether the last write failed because the store refuses writes (disk full, read-only).
    fn refusing_writes(&self) -> bool;

    /// The connection pool's state now, for `/metrics`; `None` when the backend has none to
    /// speak of (SQLite: one writer connection and its readers, always open).
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    /// Cheap round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Contexts and their history: reads, the locked write transaction that runs the rules,
/// deletes, lists, and the whole histories export and import move.
#[async_trait]
pub trait ContextStore: Send + Sync + 'static {
    /// The current version of a context.
    async fn get(&self, id: &ContextId) -> Result<Option<Context>, StoreError>;

    /// One version of a context's history.
    async fn get_version(&self, id: &ContextId, version: i64) -> Result<VersionLookup, StoreError>;

    /// Runs `decide` in one transaction with the context locked against every other writer,
    /// having read its current version and, when asked, version `load_version`; then stores
    /// what it decided, prunes, and appends the change to the outbox before committing.
    async fn write(
        &self,
        id: &ContextId,
        load_version: Option<i64>,
        decide: Decide,
    ) -> Result<WriteOutcome, StoreError>;

    /// Runs the rules of several writes in ONE transaction (a sync batch): every context is
    /// locked first (in id order, so two batches never deadlock), each `decide` sees what the
    /// ones before it in the batch wrote, and everything is stored at once or not at all.
    async fn write_batch(
        &self,
        items: Vec<(ContextId, Decide)>,
    ) -> Result<Vec<WriteOutcome>, StoreError>;

    /// Deletes a context with its history, after `decide` agreed, and appends a tombstone to
    /// the outbox, in one transaction.
    async fn delete(
        &self,
        id: &ContextId,
        decide: DecideDelete,
    ) -> Result<DeleteOutcome, StoreError>;

    /// Contexts in id order, after `after`, at most `limit`.
    async fn list(
        &self,
        filter: &ListFilter,
        visible: &Visible,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ContextSummary>, StoreError>;

    /// A context's history, newest first, below `before`, at most `limit`; `None` when the
    /// context does not exist.
    async fn versions(
        &self,
        id: &ContextId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Option<Vec<VersionInfo>>, StoreError>;

    /// How many contexts and versions are stored.
    async fn counts(&self) -> Result<Counts, StoreError>;

    /// The next [`HISTORY_PAGE`] contexts in id order after `after`, each with its whole kept
    /// history, read in one snapshot: what export pages through, two statements a page
    /// whatever the store's size.
    async fn histories(&self, after: Option<&str>) -> Result<Vec<ContextHistory>, StoreError>;

    /// Stores each history as given (ids, versions, times kept), in one transaction: a context
    /// whose stored history differs is replaced, one whose history is the same is left alone,
    /// so importing twice changes nothing. Each replaced context appends its change to the
    /// outbox.
    async fn import(&self, histories: Vec<ContextHistory>) -> Result<ImportSummary, StoreError>;
}

/// The L3 cache table (Postgres only; the defaults say there is none).
#[async_trait]
pub trait CacheTable: Send + Sync + 'static {
    /// Whether this store keeps the L3 cache table. Postgres does; on SQLite it would sit in
    /// the same file as the data it caches, so it is skipped there.
    fn has_cache_table(&self) -> bool {
        false
    }

    /// The unexpired L3 entry of a context's current version.
    async fn cache_get(&self, _id: &ContextId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }

    /// Adds read counts to L3 entries, in one statement for a whole batch.
    async fn cache_touch(&self, _counts: Vec<(ContextId, i64)>) -> Result<(), StoreError> {
        Ok(())
    }

    /// Deletes expired L3 entries; how many.
    async fn cache_cleanup(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// The unexpired L3 entries read most, most first.
    async fn cache_hottest(&self, _limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(Vec::new())
    }
}

/// The outbox every write appends to, read in commit order: the commit signal, the change
/// feed, delivery to the webhook, and pruning.
#[async_trait]
pub trait ChangeLog: Send + Sync + 'static {
    /// The commit signal: every committed change, as it commits.
    fn commits(&self) -> broadcast::Receiver<CommitNotice>;

    /// Whether the commit signal carries what other processes commit (Postgres `NOTIFY`), or
    /// only this process's own (SQLite: a CLI run beside the server is not heard).
    fn signal_spans_processes(&self) -> bool;

    /// Numbers committed changes in commit order (Postgres gives numbers after commit; SQLite,
    /// with one writer, in the write itself).
    async fn sequence_outbox(&self) -> Result<(), StoreError>;

    /// Numbered changes after `since`, in order, at most `limit`.
    async fn changes(
        &self,
        since: i64,
        limit: usize,
        visible: &Visible,
    ) -> Result<Vec<Change>, StoreError>;

    /// Hands the oldest undelivered changes (at most `limit`) to `deliver` and records what it
    /// came to. One instance at a time: the rows are claimed with `FOR UPDATE SKIP LOCKED`
    /// under a lock only one pusher holds, so a change is pushed once per attempt and in order.
    async fn deliver_pending(
        &self,
        limit: usize,
        deliver: Deliver,
    ) -> Result<DeliverOutcome, StoreError>;

    /// The highest change number given so far (0 before any).
    async fn latest_seq(&self) -> Result<i64, StoreError>;

    /// Changes not delivered yet.
    async fn pending_changes(&self) -> Result<i64, StoreError>;

    /// Deletes outbox rows written before `before`: delivered ones, or all when `all`.
    async fn prune_outbox(&self, before: DateTime<Utc>, all: bool) -> Result<u64, StoreError>;
}

/// What the indexer reads and keeps: current contexts (all, or those with an embedding),
/// embeddings of another length, and how far each indexer has applied the outbox.
#[async_trait]
pub trait EmbeddingStore: Send + Sync + 'static {
    /// Current contexts in id order after `after`, at most `limit`; with `embedded_only`, only
    /// those whose current version has an embedding. What the indexes are rebuilt from.
    async fn current_contexts(
        &self,
        after: Option<&str>,
        limit: usize,
        embedded_only: bool,
    ) -> Result<Vec<Context>, StoreError>;

    /// Contexts whose current version has a client's embedding whose length is not
    /// `dimensions`, in id order after `after`, at most `limit`, each with the length found:
    /// what `contextd reindex` drops. (Server embeddings of another length: see
    /// [`EmbeddingStore::unembedded`] and [`EmbeddingStore::drop_server_embeddings`].)
    async fn other_length_embeddings(
        &self,
        dimensions: usize,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(ContextId, usize)>, StoreError>;

    /// Drops, in one transaction with the contexts locked, the embedding of the current
    /// version of each of `ids` whose length is (still) not `dimensions`: the version's
    /// embedding column becomes null and `has_embedding` false. It is a repair of stored data,
    /// not a write: no new version, no outbox row (the change feed and the webhook do not see
    /// it), no commit signal; the L3 entries of those contexts are deleted. The ids dropped.
    async fn drop_embeddings(
        &self,
        ids: &[ContextId],
        dimensions: usize,
    ) -> Result<Vec<ContextId>, StoreError>;

    /// Contexts the server should embed: the current version has no client embedding and no
    /// server embedding made for it by `model` with `dimensions` floats; ids in order after
    /// `after`, at most `limit`. What the embedding worker catches up on at start and after its
    /// queue overflowed.
    async fn unembedded(
        &self,
        model: &str,
        dimensions: usize,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ContextId>, StoreError>;

    /// The server embeddings held for `ids`, whatever version each was made for (an older one
    /// is taken over when its text did not change).
    async fn server_embeddings(
        &self,
        ids: &[ContextId],
    ) -> Result<Vec<ServerEmbedding>, StoreError>;

    /// Stores server embeddings, in one transaction, each only if the version it was made for
    /// is still current and has no client embedding; drops their L3 entries and signals each
    /// commit (`server_embedded`). Like a dropped embedding, not a write: no new version, no
    /// outbox row. The ids stored.
    async fn put_server_embeddings(
        &self,
        embeddings: &[ServerEmbedding],
    ) -> Result<Vec<ContextId>, StoreError>;

    /// Deletes the server embeddings whose length is not `dimensions` (`contextd reindex`:
    /// they are made again by the embedder); how many.
    async fn drop_server_embeddings(&self, dimensions: usize) -> Result<u64, StoreError>;

    /// How far the indexer `name` has applied the outbox (0 before it ever did).
    async fn indexer_cursor(&self, name: &str) -> Result<i64, StoreError>;

    /// Records that the indexer `name` has applied the outbox up to `seq` (never moving back).
    async fn set_indexer_cursor(&self, name: &str, seq: i64) -> Result<(), StoreError>;
}

/// API keys: made, made sure of (the bootstrap key), listed, revoked, and their last use.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new API key.
    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// Makes sure a key with `key.key_hash` exists as `key` says, active: inserted, or its
    /// role and prefix set and any revocation lifted (the bootstrap key). Signals
    /// `KeysChanged` when it changed one.
    async fn ensure_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// Every key, revoked ones included, oldest first.
    async fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Revokes the key `id` (if not yet) and signals `KeysChanged` to every instance. `None`
    /// when there is no such key.
    async fn revoke_key(
        &self,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Records when keys were last used (batched by the caller, off the request path).
    async fn touch_keys(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError>;
}

/// Everything a backend is: each concern above, implemented by `PostgresStore` and
/// `SqliteStore`. A part of contextd that needs one concern only takes that trait.
pub trait Store:
    StoreHealth + ContextStore + CacheTable + ChangeLog + EmbeddingStore + KeyStore
{
}

impl<T> Store for T where
    T: StoreHealth + ContextStore + CacheTable + ChangeLog + EmbeddingStore + KeyStore
{
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_notice_round_trips_and_an_older_ones_still_parses() {
        let id = ContextId::parse("ctx_1").unwrap();
        let at = chrono::TimeZone::timestamp_micros(&Utc, 1_700_000_000_123_456).unwrap();
        let write = Committed::write(at, 3);
        let embedded = Committed {
            server_embedded: true,
            ..write
        };
        for committed in [write, embedded] {
            assert_eq!(
                Committed::parse(&committed.payload(&id)),
                Some((id.clone(), Some(committed)))
            );
        }
        assert_eq!(embedded.payload(&id), "ctx_1 1700000000123456 3 e");
        // An id alone, as releases before stamps sent it; and garbage.
        assert_eq!(Committed::parse("ctx_1"), Some((id.clone(), None)));
        // What this release cannot read is "unknown": the caches drop everything.
        assert_eq!(Committed::parse("ctx_1 1700000000123456 3 x"), None);
        assert_eq!(Committed::parse("not an id!"), None);
    }
}
