//! The cache's background work: the warm loop (write back read counts, then load the most read
//! L3 entries into L1 and L2) and the L3 cleanup loop. Both stop when told to.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::TieredCache;
use crate::background::every;
use crate::config::CacheSettings;

/// Starts the loops the settings ask for; they end when `stop` turns true.
pub fn spawn(
    cache: Arc<TieredCache>,
    settings: &CacheSettings,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if !cache.stats().l3_enabled {
        return tasks;
    }
    let warm = settings.warm.clone();
    tasks.push(every(
        Duration::from_secs(warm.interval_seconds),
        stop.clone(),
        {
            let cache = cache.clone();
            move || {
                let cache = cache.clone();
                async move {
                    cache.flush_reads().await;
                    if warm.enabled {
                        let warmed = cache.warm_hottest(warm.top_n).await;
                        tracing::debug!(warmed, "cache warm pass");
                    }
                }
            }
        },
    ));
    tasks.push(every(
        Duration::from_secs(settings.l3.cleanup_interval_seconds),
        stop,
        move || {
            let cache = cache.clone();
            async move {
                let deleted = cache.cleanup_l3().await;
                if deleted > 0 {
                    tracing::debug!(deleted, "expired L3 entries deleted");
                }
            }
        },
    ));
    tasks
}
