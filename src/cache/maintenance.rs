//! The cache's background work: the warm loop (write back read counts, then load the most read
//! L3 entries into L1 and L2) and the L3 cleanup loop. Both stop when told to.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::TieredCache;
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

/// Runs `pass` every `period` until `stop` turns true; a pass in progress finishes first.
fn every<F, Fut>(period: Duration, mut stop: watch::Receiver<bool>, pass: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; start one period in
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                _ = stop.wait_for(|stop| *stop) => true,
            };
            if stopping {
                break;
            }
            pass().await;
        }
    })
}
