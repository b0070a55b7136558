//! TieredCache: L1 (in process) -> L2 (Redis) -> L3 (the Postgres cache table) -> the store.
//!
//! Reads go down the layers and fill the ones above on a hit. Writes go through the store (which
//! writes L3 in the write's own transaction) and then here: the new version into L1 and L2 and an
//! invalidation to the other instances. Every entry carries its stamp, so a fill that raced a
//! write loses in every layer. A failing Redis or L3 counts as a miss and never fails a read;
//! this module decides nothing about contexts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::l2::{L2Lookup, L2Stats, RedisL2, SubscriptionHandle};
use super::shared::{NoL2, SharedLayer};
use super::{CacheOutcome, CachedContext, L1, L1Stats, Stamp, record};
use crate::config::CacheSettings;
use crate::domain::ContextId;
use crate::store::{CacheEntry, CommitNotice, NewVersion, Store};

/// Per-layer counters of one moment, for `/metrics` and `/metrics/summary`.
/// What `/readyz` says of Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisHealth {
    Up,
    /// Reachable, but its commands fail.
    Failing,
    Down,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CacheStats {
    pub l1: L1Stats,
    /// `None` when no Redis is configured or L2 is turned off.
    pub l2: Option<L2Stats>,
    pub l3_enabled: bool,
    pub l3_hits: u64,
    pub l3_misses: u64,
}

impl CacheStats {
    /// Every cacheable read starts at L1.
    pub fn requests(&self) -> u64 {
        self.l1.hits + self.l1.misses
    }

    pub fn hits(&self) -> u64 {
        self.l1.hits + self.l2.map_or(0, |l2| l2.hits) + self.l3_hits
    }
}

pub struct TieredCache {
    l1: Arc<L1>,
    /// L2: Redis, or none.
    l2: Arc<dyn SharedLayer>,
    /// Redis when configured: the invalidation channel and its health, with L2 on or off.
    redis: Option<Arc<RedisL2>>,
    store: Arc<dyn Store>,
    l3_ttl: Option<Duration>,
    l3_hits: AtomicU64,
    l3_misses: AtomicU64,
    /// Reads per context since the last flush to L3's access counts (L3 only).
    reads: Mutex<HashMap<ContextId, i64>>,
    subscription: Option<SubscriptionHandle>,
    /// Drops what other instances replaced, as the store's commit signal tells (Postgres).
    commit_listener: Option<tokio::task::JoinHandle<()>>,
    last_l3_error: Mutex<Option<Instant>>,
}

impl Drop for TieredCache {
    fn drop(&mut self) {
        if let Some(listener) = self.commit_listener.take() {
            listener.abort();
        }
    }
}

/// Drops from `l1` every entry a commit on any instance replaced, as the store's commit
/// signal says (its payload carries the commit's stamp); clears it when the signal was
/// interrupted, since anything may have changed meanwhile.
async fn follow_commits(l1: Arc<L1>, mut commits: tokio::sync::broadcast::Receiver<CommitNotice>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match commits.recv().await {
            Ok(CommitNotice::Changed(id, Some(committed))) => {
                l1.invalidate(
                    &id,
                    Stamp::new(
                        committed.created_at,
                        committed.version,
                        committed.server_embedded,
                    ),
                );
            }
            // An older instance's notice names the id only: drop whatever is held.
            Ok(CommitNotice::Changed(id, None)) => l1.remove(&id),
            Ok(CommitNotice::KeysChanged) => {}
            Ok(CommitNotice::Unknown) | Err(RecvError::Lagged(_)) => l1.clear(),
            Err(RecvError::Closed) => return,
        }
    }
}

/// How often a failing L3 is logged at most.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

impl TieredCache {
    /// Builds the layers the settings and the store allow, and subscribes to invalidations from
    /// other instances when Redis is configured.
    pub fn new(
        settings: &CacheSettings,
        store: Arc<dyn Store>,
        redis: Option<Arc<RedisL2>>,
    ) -> Self {
        let l1 = Arc::new(L1::new(&settings.l1));
        let subscription = redis.as_ref().map(|redis| {
            let (on_message, on_resync) = (l1.clone(), l1.clone());
            redis.subscribe(
                move |id, stamp| on_message.invalidate(&id, stamp),
                move || {
                    tracing::info!("the invalidation channel reconnected; clearing L1");
                    on_resync.clear();
                },
            )
        });
        // Without Redis as well as with it: the store's commit signal reaches every instance on
        // one Postgres, so each drops what another replaced within milliseconds (both paths
        // may run; an invalidation is idempotent). SQLite has one instance: nothing to follow.
        let commit_listener = store
            .signal_spans_processes()
            .then(|| tokio::spawn(follow_commits(l1.clone(), store.commits())));
        let l3_ttl = (settings.l3.enabled && store.has_cache_table())
            .then(|| Duration::from_secs(settings.l3.ttl_seconds));
        let l2: Arc<dyn SharedLayer> = match &redis {
            Some(redis) if settings.l2.enabled => redis.clone(),
            _ => Arc::new(NoL2),
        };
        Self {
            l1,
            l2,
            redis,
            store,
            l3_ttl,
            l3_hits: AtomicU64::new(0),
            l3_misses: AtomicU64::new(0),
            reads: Mutex::new(HashMap::new()),
            subscription,
            commit_listener,
            last_l3_error: Mutex::new(None),
        }
    }

    /// The current version of `id` from the first layer that holds it, filling the layers above.
    pub async fn get(&self, id: &ContextId) -> Option<(Arc<CachedContext>, CacheOutcome)> {
        self.count_read(id);
        if let Some(context) = self.l1.get(id) {
            return Some((context, CacheOutcome::L1Hit));
        }
        if let L2Lookup::Hit(bytes) = self.l2.get(id).await
            && let Some(context) = record::decode(&bytes)
        {
            let context = Arc::new(CachedContext::new(context));
            self.l1.put(context.clone());
            return Some((context, CacheOutcome::L2Hit));
        }
        if self.l3_ttl.is_some() {
            match self.store.cache_get(id).await {
                Ok(Some(packed)) => {
                    if let Some(bytes) = record::decompress(&packed)
                        && let Some(context) = record::decode(&bytes)
                    {
                        self.l3_hits.fetch_add(1, Ordering::Relaxed);
                        let context = Arc::new(CachedContext::new(context));
                        self.fill_l2_later(&context, Bytes::from(bytes));
                        self.l1.put(context.clone());
                        return Some((context, CacheOutcome::L3Hit));
                    }
                    self.l3_misses.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => {
                    self.l3_misses.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.l3_misses.fetch_add(1, Ordering::Relaxed);
                    self.log_l3_error(&e);
                }
            }
        }
        None
    }

    /// What the store returned for a read that missed every layer. A fill older than what a
    /// layer holds is refused there.
    pub fn fill(&self, context: &Arc<CachedContext>) {
        self.l1.put(context.clone());
        if self.l2.holds() {
            self.fill_l2_later(context, Bytes::from(record::encode(context)));
        }
    }

    /// Loads a context read from the store into L1 and L2 now (`POST /cache/warm`).
    pub async fn warm(&self, context: &Arc<CachedContext>) {
        self.l1.put(context.clone());
        if self.l2.holds() {
            self.l2
                .put(
                    &context.id,
                    Stamp::of(context),
                    Bytes::from(record::encode(context)),
                )
                .await;
        }
    }

    /// Puts the L2 entry off the request's path: a read that found its value is not made to
    /// wait for Redis.
    fn fill_l2_later(&self, context: &Arc<CachedContext>, bytes: Bytes) {
        if self.l2.holds() {
            let (l2, id, stamp) = (self.l2.clone(), context.id.clone(), Stamp::of(context));
            tokio::spawn(async move {
                l2.put(&id, stamp, bytes).await;
            });
        }
    }

    /// After a committed write: the new version into L1 and L2, and an invalidation to the
    /// other instances. Waits for Redis (bounded by its timeout and circuit breaker), so that
    /// when the write is acknowledged the other instances have been told.
    pub async fn written(&self, context: &Arc<CachedContext>) {
        self.l1.put(context.clone());
        let stamp = Stamp::of(context);
        if self.l2.holds() {
            self.l2
                .put(&context.id, stamp, Bytes::from(record::encode(context)))
                .await;
        }
        if let Some(redis) = &self.redis {
            redis.publish(&context.id, stamp).await;
        }
    }

    /// After a committed delete: tombstones in L1 and L2, the version entries dropped (a
    /// re-created context reuses their numbers), and an invalidation.
    pub async fn deleted(&self, id: &ContextId, created_at: DateTime<Utc>) {
        let stamp = Stamp::tombstone(created_at);
        self.l1.delete(id, created_at);
        self.l2.delete(id, stamp).await;
        self.l2.forget(id).await;
        if let Some(redis) = &self.redis {
            redis.publish(id, stamp).await;
        }
    }

    /// A version that is not the current one, from L2 when it holds it. Entries are keyed by
    /// the context's incarnation too, so a re-created context never sees its predecessor's.
    pub async fn get_version(
        &self,
        id: &ContextId,
        incarnation: DateTime<Utc>,
        version: i64,
    ) -> Option<Arc<CachedContext>> {
        let L2Lookup::Hit(bytes) = self.l2.get_version(id, incarnation, version).await else {
            return None;
        };
        let context = record::decode(&bytes)?;
        (context.created_at == incarnation && context.version == version)
            .then(|| Arc::new(CachedContext::new(context)))
    }

    /// A past version read from the store, for the next reader. Past versions never change.
    pub fn fill_version(&self, context: &Arc<CachedContext>) {
        if self.l2.holds() {
            let (l2, id, incarnation, version) = (
                self.l2.clone(),
                context.id.clone(),
                context.created_at,
                context.version,
            );
            let bytes = Bytes::from(record::encode(context));
            tokio::spawn(async move {
                l2.put_version(&id, incarnation, version, bytes).await;
            });
        }
    }

    /// The L3 entry a write stores in its own transaction; `None` when L3 is off.
    pub fn l3_entry(
        &self,
        id: &ContextId,
        new: &NewVersion,
        now: DateTime<Utc>,
    ) -> Option<CacheEntry> {
        let ttl = self.l3_ttl?;
        Some(CacheEntry {
            value: record::compress(&record::encode_new(id, new)),
            expires_at: now + ttl,
        })
    }

    fn count_read(&self, id: &ContextId) {
        if self.l3_ttl.is_some() {
            let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
            *reads.entry(id.clone()).or_insert(0) += 1;
        }
    }

    /// Writes the read counts gathered since the last call to L3, in one statement.
    pub async fn flush_reads(&self) {
        let counts: Vec<(ContextId, i64)> = {
            let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
            reads.drain().collect()
        };
        if let Err(e) = self.store.cache_touch(counts).await {
            self.log_l3_error(&e);
        }
    }

    /// Loads the `top_n` most read L3 entries into L1 and L2; how many it loaded.
    pub async fn warm_hottest(&self, top_n: usize) -> usize {
        if self.l3_ttl.is_none() {
            return 0;
        }
        match self.store.cache_hottest(top_n).await {
            Ok(values) => {
                let mut warmed = 0;
                for packed in values {
                    if let Some(bytes) = record::decompress(&packed)
                        && let Some(context) = record::decode(&bytes)
                    {
                        let context = Arc::new(CachedContext::new(context));
                        self.l1.put(context.clone());
                        self.fill_l2_later(&context, Bytes::from(bytes));
                        warmed += 1;
                    }
                }
                warmed
            }
            Err(e) => {
                self.log_l3_error(&e);
                0
            }
        }
    }

    /// Deletes expired L3 entries; how many.
    pub async fn cleanup_l3(&self) -> u64 {
        if self.l3_ttl.is_none() {
            return 0;
        }
        match self.store.cache_cleanup().await {
            Ok(n) => n,
            Err(e) => {
                self.log_l3_error(&e);
                0
            }
        }
    }

    /// Waits (at most `limit`) until the invalidation channel listens, so that an instance
    /// does not start serving before it can hear of other instances' writes. Without Redis,
    /// or if Redis is down, it does not wait longer than `limit`: the L1 TTL is the backstop.
    pub async fn wait_until_subscribed(&self, limit: Duration) -> bool {
        let Some(subscription) = &self.subscription else {
            return true;
        };
        let until = Instant::now() + limit;
        while !subscription.is_listening() {
            if Instant::now() >= until {
                tracing::warn!(
                    ?limit,
                    "not subscribed to invalidations yet; serving anyway (Redis down?)"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Whether Redis answers now (`None`: not configured).
    /// Redis's health for `/readyz`: `None` when none is configured.
    pub async fn redis_ready(&self) -> Option<RedisHealth> {
        let redis = self.redis.as_ref()?;
        Some(if !redis.ping().await {
            RedisHealth::Down
        } else if redis.stats().failing {
            // It answers PING, but its commands fail or failed in the last seconds (a cluster
            // node answering MOVED to a client that does not know it is one, a permission
            // missing): not ok.
            RedisHealth::Failing
        } else {
            RedisHealth::Up
        })
    }

    /// Redis's connection and breaker, when Redis is configured (for L2, invalidation, or both).
    pub fn redis_stats(&self) -> Option<L2Stats> {
        self.redis.as_deref().map(RedisL2::stats)
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            l1: self.l1.stats(),
            l2: self.l2.stats(),
            l3_enabled: self.l3_ttl.is_some(),
            l3_hits: self.l3_hits.load(Ordering::Relaxed),
            l3_misses: self.l3_misses.load(Ordering::Relaxed),
        }
    }

    /// L3 errors count as misses; say so in the log, but not for every request.
    fn log_l3_error(&self, e: &crate::store::StoreError) {
        let mut last = self.last_l3_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| at.elapsed() >= ERROR_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(error = %error_chain(e), "L3 cache failed; counting as a miss");
        }
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
