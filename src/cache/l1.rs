//! L1: an in-process LRU (the `lru` crate), sharded so readers rarely wait on each other,
//! bounded by entries, bytes and age.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lru::LruCache;

use super::{CachedContext, Stamp};
use crate::config::L1Settings;
use crate::domain::ContextId;

const SHARDS: usize = 16;

/// Bytes an entry costs beyond its JSON: the struct, the key, the map slot. An estimate.
const ENTRY_OVERHEAD: usize = 256;

struct Entry {
    /// `None` is a tombstone: kept only to refuse late fills of what was deleted.
    context: Option<Arc<CachedContext>>,
    stamp: Stamp,
    stored_at: Instant,
    bytes: usize,
}

struct Shard {
    entries: LruCache<ContextId, Entry>,
    bytes: usize,
    /// This shard's part of `max_bytes`.
    max_bytes: usize,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L1Stats {
    pub entries: usize,
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
}

pub struct L1 {
    shards: Vec<Mutex<Shard>>,
    ttl: Duration,
    hasher: BuildHasherDefault<DefaultHasher>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl L1 {
    /// An L1 bounded as `settings` say; `max_entries: 0` gives one that holds nothing.
    pub fn new(settings: &L1Settings) -> Self {
        // The bounds are split exactly over the shards (fewer shards than entries when the
        // bound is small), so together the shards never hold more than configured.
        let count = SHARDS.min(settings.max_entries);
        let share = |total: usize, i: usize| total / count + usize::from(i < total % count);
        let shards = (0..count)
            .map(|i| {
                let capacity = NonZeroUsize::new(share(settings.max_entries, i))
                    .expect("each shard gets at least one entry");
                Mutex::new(Shard {
                    entries: LruCache::new(capacity),
                    bytes: 0,
                    max_bytes: share(settings.max_bytes, i),
                })
            })
            .collect();
        Self {
            shards,
            ttl: Duration::from_secs(settings.ttl_seconds),
            hasher: BuildHasherDefault::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: &ContextId) -> Option<&Mutex<Shard>> {
        if self.shards.is_empty() {
            return None;
        }
        let index = self.hasher.hash_one(id) as usize % self.shards.len();
        Some(&self.shards[index])
    }

    /// The cached current version of `id`, unless absent, deleted or older than the TTL.
    pub fn get(&self, id: &ContextId) -> Option<Arc<CachedContext>> {
        let found = self.shard(id).and_then(|shard| {
            let mut shard = lock(shard);
            let entry = shard.entries.get(id)?;
            if entry.stored_at.elapsed() > self.ttl {
                let bytes = entry.bytes;
                shard.entries.pop(id);
                shard.bytes -= bytes;
                return None;
            }
            entry.context.clone()
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches `context` unless the entry already holds something newer (a later version, or
    /// the tombstone of a delete). Safe to call with whatever a read returned, however late.
    pub fn put(&self, context: Arc<CachedContext>) {
        // The rendered body, once made, costs about as much again as the JSON it renders.
        let bytes = ENTRY_OVERHEAD
            + 2 * context.size_bytes.max(0) as usize
            + context.embedding().map_or(0, |e| e.len() * 4);
        let stamp = Stamp::of(&context);
        let id = context.id.clone();
        self.insert(id, Some(context), stamp, bytes);
    }

    /// Records that the incarnation created at `created_at` was deleted.
    pub fn delete(&self, id: &ContextId, created_at: DateTime<Utc>) {
        self.insert(
            id.clone(),
            None,
            Stamp::tombstone(created_at),
            ENTRY_OVERHEAD,
        );
    }

    fn insert(
        &self,
        id: ContextId,
        context: Option<Arc<CachedContext>>,
        stamp: Stamp,
        bytes: usize,
    ) {
        let Some(shard) = self.shard(&id) else {
            return;
        };
        let mut shard = lock(shard);
        if bytes > shard.max_bytes {
            return;
        }
        if let Some(existing) = shard.entries.peek(&id)
            && existing.stamp > stamp
        {
            return;
        }
        let entry = Entry {
            context,
            stamp,
            stored_at: Instant::now(),
            bytes,
        };
        shard.bytes += bytes;
        // `push` hands back what it replaced or evicted; either way its bytes are freed.
        if let Some((_, old)) = shard.entries.push(id, entry) {
            shard.bytes -= old.bytes;
        }
        while shard.bytes > shard.max_bytes {
            match shard.entries.pop_lru() {
                Some((_, old)) => shard.bytes -= old.bytes,
                None => break,
            }
        }
    }

    /// Drops the entry of `id` if it is older than `stamp`: another instance wrote (or deleted)
    /// it, and the next read should fetch what it wrote.
    pub fn invalidate(&self, id: &ContextId, stamp: Stamp) {
        let Some(shard) = self.shard(id) else {
            return;
        };
        let mut shard = lock(shard);
        if shard.entries.peek(id).is_some_and(|e| e.stamp < stamp)
            && let Some(old) = shard.entries.pop(id)
        {
            shard.bytes -= old.bytes;
        }
    }

    /// Drops the entry of `id`, whatever it holds.
    pub fn remove(&self, id: &ContextId) {
        let Some(shard) = self.shard(id) else {
            return;
        };
        let mut shard = lock(shard);
        if let Some(old) = shard.entries.pop(id) {
            shard.bytes -= old.bytes;
        }
    }

    /// Drops everything: invalidations may have been missed.
    pub fn clear(&self) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.entries.clear();
            shard.bytes = 0;
        }
    }

    pub fn stats(&self) -> L1Stats {
        let (mut entries, mut bytes) = (0, 0);
        for shard in &self.shards {
            let shard = lock(shard);
            entries += shard.entries.len();
            bytes += shard.bytes;
        }
        L1Stats {
            entries,
            bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

/// A poisoned shard only means a panic elsewhere mid-update of plain data; keep serving.
fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Content, Context, JsonObject, Source};
    use chrono::TimeZone;

    fn context(id: &str, version: i64, created_second: i64) -> Arc<CachedContext> {
        let created_at = Utc.timestamp_opt(created_second, 0).unwrap();
        Arc::new(CachedContext::new(Context {
            id: ContextId::parse(id).unwrap(),
            version,
            content: Content {
                source: Source::Mcp,
                parent_id: None,
                data: JsonObject::empty(),
                metadata: JsonObject::empty(),
                embedding: None,
            },
            created_at,
            updated_at: created_at,
            size_bytes: 4,
            server_embedding: None,
        }))
    }

    fn l1(max_entries: usize, max_bytes: usize) -> L1 {
        L1::new(&L1Settings {
            max_entries,
            max_bytes,
            ttl_seconds: 300,
        })
    }

    fn id(raw: &str) -> ContextId {
        ContextId::parse(raw).unwrap()
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let cache = l1(100, 1 << 20);
        cache.put(context("a", 2, 0));
        cache.put(context("a", 1, 0));
        assert_eq!(cache.get(&id("a")).unwrap().version, 2);
        cache.put(context("a", 3, 0));
        assert_eq!(cache.get(&id("a")).unwrap().version, 3);
    }

    #[test]
    fn a_late_fill_of_a_deleted_context_is_refused_but_a_re_creation_is_not() {
        let cache = l1(100, 1 << 20);
        cache.put(context("a", 5, 0));
        cache.delete(&id("a"), context("a", 5, 0).created_at);
        cache.put(context("a", 5, 0));
        assert!(cache.get(&id("a")).is_none());
        cache.put(context("a", 1, 10));
        assert_eq!(cache.get(&id("a")).unwrap().version, 1);
        // And the old incarnation cannot come back over the new one.
        cache.put(context("a", 7, 0));
        assert_eq!(cache.get(&id("a")).unwrap().created_at.timestamp(), 10);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = L1::new(&L1Settings {
            max_entries: 100,
            max_bytes: 1 << 20,
            ttl_seconds: 0,
        });
        cache.put(context("a", 1, 0));
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get(&id("a")).is_none());
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn the_byte_bound_evicts_the_least_recently_used() {
        // One shard's budget is max_bytes / 16; fill one shard past it.
        let cache = l1(10_000, SHARDS * (ENTRY_OVERHEAD + 4) * 2);
        let ids: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        for raw in &ids {
            cache.put(context(raw, 1, 0));
        }
        let stats = cache.stats();
        assert!(
            stats.bytes <= SHARDS * (ENTRY_OVERHEAD + 4) * 2,
            "{stats:?}"
        );
        assert!(stats.entries <= SHARDS * 2, "{stats:?}");
        assert!(stats.entries > 0);
    }

    #[test]
    fn the_bounds_hold_exactly_as_configured_whatever_the_shards() {
        // Rounded up per shard, 200 entries over 16 shards once allowed 208.
        for max in [1, 5, 16, 17, 200, 1001] {
            let cache = l1(max, 1 << 30);
            for i in 0..max * 4 {
                cache.put(context(&format!("k{i}"), 1, 0));
            }
            assert!(cache.stats().entries <= max, "{max}: {:?}", cache.stats());
        }
        let bytes = 5 * (ENTRY_OVERHEAD + 8) + 3;
        let cache = l1(10_000, bytes);
        for i in 0..1000 {
            cache.put(context(&format!("k{i}"), 1, 0));
        }
        assert!(cache.stats().bytes <= bytes, "{:?}", cache.stats());
    }

    #[test]
    fn the_entry_bound_holds() {
        let cache = l1(32, 1 << 30);
        for i in 0..1000 {
            cache.put(context(&format!("k{i}"), 1, 0));
        }
        assert!(cache.stats().entries <= 32);
    }

    #[test]
    fn an_invalidation_drops_only_older_entries() {
        let cache = l1(100, 1 << 20);
        cache.put(context("a", 3, 0));
        cache.invalidate(&id("a"), Stamp::of(&context("a", 3, 0)));
        assert_eq!(cache.get(&id("a")).unwrap().version, 3);
        cache.invalidate(&id("a"), Stamp::of(&context("a", 4, 0)));
        assert!(cache.get(&id("a")).is_none());
        cache.put(context("b", 1, 0));
        cache.clear();
        assert!(cache.get(&id("b")).is_none());
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn zero_entries_means_nothing_is_cached() {
        let cache = l1(0, 1 << 20);
        cache.put(context("a", 1, 0));
        assert!(cache.get(&id("a")).is_none());
        assert_eq!(cache.stats().misses, 1);
    }
}
