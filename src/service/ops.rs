//! Readiness and the operations numbers: what `/readyz`, `/metrics` and `/metrics/summary`
//! report about each dependency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cache::{RedisHealth, TieredCache};
use crate::config::Settings;
use crate::embed::Pending;
use crate::store::{StoreHealth, Tally};
use crate::sync::{IndexerState, SyncState};
use crate::vector::VectorIndex;

/// How long a readiness probe waits for a dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How old the store's last ping may be before `/metrics` starts another.
const STORE_WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// The store's last ping, for `/metrics`.
struct StoreWatch {
    up: AtomicBool,
    checked: Mutex<Instant>,
    probing: AtomicBool,
}

impl StoreWatch {
    fn record(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        *self.checked.lock().expect("not poisoned") = Instant::now();
    }
}

/// The state of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Ok,
    Degraded,
    Down,
    /// Not configured.
    Disabled,
}

#[derive(Debug, Clone)]
pub struct Readiness {
    pub store_backend: &'static str,
    pub store: Check,
    pub redis: Check,
    pub vector: Check,
    /// `disabled` with `embedder.backend: none`; `degraded` while a model loads or after
    /// failures.
    pub embedder: Check,
    /// `embedded` or `weaviate`.
    pub vector_backend: &'static str,
    /// Changes committed but not yet applied to the vector index.
    pub vector_backlog: i64,
}

impl Readiness {
    /// Ready unless the store is down; Redis or the vector backend down only degrades.
    pub fn is_ready(&self) -> bool {
        self.store != Check::Down
    }

    pub fn status(&self) -> Check {
        if self.store == Check::Down {
            Check::Down
        } else if [self.redis, self.vector].contains(&Check::Down)
            || [self.store, self.redis].contains(&Check::Degraded)
        {
            Check::Degraded
        } else {
            Check::Ok
        }
    }
}

pub struct Ops {
    store: Arc<dyn StoreHealth>,
    tally: Arc<Tally>,
    cache: Arc<TieredCache>,
    sync: Arc<SyncState>,
    index: Arc<dyn VectorIndex>,
    indexer: Arc<IndexerState>,
    embedder: Option<Arc<Pending>>,
    target_hit_rate: f64,
    sync_interval_seconds: u64,
    store_watch: Arc<StoreWatch>,
}

/// `/metrics/summary`, as the contract shapes it. Rates are percentages.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub contexts: ContextsSummary,
    pub cache: CacheSummary,
    pub sync: SyncSummary,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContextsSummary {
    pub total: i64,
    /// Versions kept, over all contexts.
    pub versions: i64,
    pub avg_versions_per_context: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CacheSummary {
    pub overall: OverallSummary,
    pub l1: L1Summary,
    pub l2: L2Summary,
    pub l3: LayerSummary,
    /// `cache.target_hit_rate`, percent.
    pub target_hit_rate: f64,
    /// Whether the overall hit rate reaches the target (false before any read).
    pub meets_target: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OverallSummary {
    /// Cacheable reads (each starts at L1).
    pub requests: u64,
    /// Reads answered by some layer, percent.
    pub hit_rate: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct L1Summary {
    /// Entries held.
    pub size: usize,
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct L2Summary {
    /// Redis is configured, L2 is on, and the connection is up.
    pub connected: bool,
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LayerSummary {
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncSummary {
    /// `sync.interval_seconds`: the outbox poll, the fallback when no commit signal arrives.
    pub interval_seconds: u64,
    /// Whether the webhook pusher runs (it does when `sync.factory.webhook_url` is set).
    pub running: bool,
    /// Changes waiting to be pushed.
    pub pending: u64,
    /// Commit to acknowledged delivery of the last push, in milliseconds.
    pub last_latency_ms: Option<f64>,
}

/// `hits` out of `hits + misses`, in percent; 0 before any request.
fn percent(hits: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * hits as f64 / total as f64
    }
}

impl Ops {
    pub fn new(
        store: Arc<dyn StoreHealth>,
        tally: Arc<Tally>,
        cache: Arc<TieredCache>,
        sync: Arc<SyncState>,
        (index, indexer): (Arc<dyn VectorIndex>, Arc<IndexerState>),
        settings: &Settings,
    ) -> Self {
        Self {
            store,
            tally,
            cache,
            sync,
            index,
            indexer,
            embedder: None,
            target_hit_rate: settings.cache.target_hit_rate,
            sync_interval_seconds: settings.sync.interval_seconds,
            // The store was opened just before: up, as of now.
            store_watch: Arc::new(StoreWatch {
                up: AtomicBool::new(true),
                checked: Mutex::new(Instant::now()),
                probing: AtomicBool::new(false),
            }),
        }
    }

    /// `/readyz` reports on this embedder.
    pub fn with_embedder(mut self, embedder: Arc<Pending>) -> Self {
        self.embedder = Some(embedder);
        self
    }

    /// Changes waiting for the webhook; 0 when there is none to push to.
    pub fn pending_pushes(&self) -> i64 {
        if self.sync.configured {
            self.tally.pending()
        } else {
            0
        }
    }

    /// Whether the store answered its last ping, for `/metrics`: never waits. A result older
    /// than [`STORE_WATCH_INTERVAL`] starts a new ping in the background (readiness checks
    /// count too), so a scrape costs nothing whatever the store does.
    pub fn store_up(&self) -> bool {
        let watch = &self.store_watch;
        let stale = watch.checked.lock().expect("not poisoned").elapsed() >= STORE_WATCH_INTERVAL;
        if stale && !watch.probing.swap(true, Ordering::AcqRel) {
            let (store, watch) = (self.store.clone(), self.store_watch.clone());
            tokio::spawn(async move {
                let up = matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await,
                    Ok(Ok(()))
                );
                watch.record(up);
                watch.probing.store(false, Ordering::Release);
            });
        }
        watch.up.load(Ordering::Acquire)
    }

    /// The cache layers' counts, for `/metrics`.
    pub fn cache_stats(&self) -> crate::cache::CacheStats {
        self.cache.stats()
    }

    /// Redis's connection and breaker, when Redis is configured.
    pub fn redis_stats(&self) -> Option<crate::cache::l2::L2Stats> {
        self.cache.redis_stats()
    }

    /// The store's connection pool now (Postgres).
    pub fn pool_status(&self) -> Option<crate::store::PoolStatus> {
        self.store.pool_status()
    }

    /// Changes committed but not yet applied to the vector index.
    pub fn vector_backlog(&self) -> i64 {
        self.indexer.backlog()
    }

    /// The numbers of `/metrics/summary`, from the running counts (no query).
    pub fn summary(&self) -> Summary {
        let counts = self.tally.counts();
        let stats = self.cache.stats();
        let l2 = stats.l2.unwrap_or_default();
        let requests = stats.requests();
        let hit_rate = percent(stats.hits(), requests);
        Summary {
            contexts: ContextsSummary {
                total: counts.contexts,
                versions: counts.versions,
                avg_versions_per_context: if counts.contexts == 0 {
                    0.0
                } else {
                    counts.versions as f64 / counts.contexts as f64
                },
            },
            cache: CacheSummary {
                overall: OverallSummary { requests, hit_rate },
                l1: L1Summary {
                    size: stats.l1.entries,
                    bytes: stats.l1.bytes,
                    hits: stats.l1.hits,
                    misses: stats.l1.misses,
                    hit_rate: percent(stats.l1.hits, stats.l1.hits + stats.l1.misses),
                },
                l2: L2Summary {
                    connected: stats.l2.is_some_and(|l2| l2.connected),
                    hits: l2.hits,
                    misses: l2.misses,
                    hit_rate: percent(l2.hits, l2.hits + l2.misses),
                },
                l3: LayerSummary {
                    hits: stats.l3_hits,
                    misses: stats.l3_misses,
                    hit_rate: percent(stats.l3_hits, stats.l3_hits + stats.l3_misses),
                },
                target_hit_rate: self.target_hit_rate,
                meets_target: requests > 0 && hit_rate >= self.target_hit_rate,
            },
            sync: SyncSummary {
                interval_seconds: self.sync_interval_seconds,
                running: self.sync.running(),
                pending: self.pending_pushes().max(0) as u64,
                last_latency_ms: self.sync.last_latency_ms(),
            },
        }
    }

    pub async fn readiness(&self) -> Readiness {
        let store = async {
            match tokio::time::timeout(PROBE_TIMEOUT, self.store.ping()).await {
                Ok(Ok(())) if self.store.refusing_writes() => Check::Degraded,
                Ok(Ok(())) => Check::Ok,
                Ok(Err(e)) => {
                    tracing::warn!(
                        error = format!("{:#}", anyhow::Error::from(e)),
                        "store check failed"
                    );
                    Check::Down
                }
                Err(_) => Check::Down,
            }
        };
        let redis = async {
            match tokio::time::timeout(PROBE_TIMEOUT, self.cache.redis_ready()).await {
                Ok(None) => Check::Disabled,
                Ok(Some(RedisHealth::Up)) => Check::Ok,
                Ok(Some(RedisHealth::Failing)) => Check::Degraded,
                Ok(Some(RedisHealth::Down)) | Err(_) => Check::Down,
            }
        };
        let vector = async {
            match tokio::time::timeout(PROBE_TIMEOUT, self.index.ping()).await {
                Ok(Ok(())) if self.indexer.healthy() && self.indexer.mismatched().count() == 0 => {
                    Check::Ok
                }
                // Reachable, but changes are not being applied (yet) to it and the keyword
                // index, or stored embeddings of another length are left out (`contextd
                // reindex` drops them): searchable, but not everything is found.
                Ok(Ok(())) => Check::Degraded,
                Ok(Err(_)) | Err(_) => Check::Down,
            }
        };
        let embedder = match self.embedder.as_deref() {
            None => Check::Disabled,
            // Loading, failed to load, or failing now: search by vector and by keyword works.
            Some(embedder) => match embedder.state() {
                Some(Ok(())) if !embedder.failing() => Check::Ok,
                _ => Check::Degraded,
            },
        };
        let (store, redis, vector) = tokio::join!(store, redis, vector);
        self.store_watch.record(store != Check::Down);
        Readiness {
            store_backend: self.store.backend(),
            store,
            redis,
            vector,
            embedder,
            vector_backend: self.index.backend(),
            vector_backlog: self.indexer.backlog(),
        }
    }
}
