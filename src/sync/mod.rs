//! Sync workers: the outbox's readers that run beside the server. Today that is the webhook
//! pusher (every committed change POSTed to Factory AI, in order, at least once) and the outbox
//! pruner. They wake on the commit signal, so a change is on its way within milliseconds of its
//! commit; the `sync.interval_seconds` poll is only the fallback. They never touch a write's
//! path: a failing receiver only makes changes wait in the outbox.

mod embedding;
mod indexer;
mod pusher;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use embedding::{
    EmbeddingLink, EmbeddingQueue, EmbeddingWorker, MAX_EMBED_TEXT_BYTES, QUEUE_CAPACITY,
    embedding_text, text_sha256,
};
pub use indexer::{Indexer, IndexerState, Rebuilt, entry_of};
pub use pusher::{Pusher, signature, standard_signature, webhook_id};

use crate::background::every;
use crate::config::SyncSettings;
use crate::store::ChangeLog;

/// What `/metrics/summary` says of the sync.
#[derive(Debug, Default)]
pub struct SyncState {
    /// A webhook is configured.
    pub configured: bool,
    running: AtomicBool,
    /// Commit to acknowledged delivery of the last push, in microseconds; `u64::MAX`: none yet.
    last_latency_micros: AtomicU64,
}

impl SyncState {
    pub fn new(configured: bool) -> Self {
        Self {
            configured,
            running: AtomicBool::new(false),
            last_latency_micros: AtomicU64::new(u64::MAX),
        }
    }

    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    pub fn last_latency_ms(&self) -> Option<f64> {
        match self.last_latency_micros.load(Ordering::Relaxed) {
            u64::MAX => None,
            micros => Some(micros as f64 / 1000.0),
        }
    }

    fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    fn set_last_latency(&self, latency: Duration) {
        self.last_latency_micros
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Deletes old outbox rows every hour: delivered ones, or, with no webhook, every one older
/// than the retention (the change feed's horizon).
pub fn spawn_pruner(
    store: Arc<dyn ChangeLog>,
    settings: &SyncSettings,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let retention = chrono::Duration::seconds(settings.outbox_retention_seconds as i64);
    let all = settings.factory.webhook_url.is_none();
    every(Duration::from_secs(3600), stop, move || {
        let store = store.clone();
        async move {
            match store.prune_outbox(Utc::now() - retention, all).await {
                Ok(0) => {}
                Ok(pruned) => tracing::debug!(pruned, "outbox rows pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning the outbox failed"),
            }
        }
    })
}
