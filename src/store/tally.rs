//! Running counts of what the store holds (contexts, versions, changes waiting for the
//! webhook), so that `/metrics` and `/metrics/summary` never run a query that grows with the
//! data. This instance's writes (and its pusher's deliveries) move them at once; a background
//! recount corrects them for what other instances did and for what the deltas cannot know
//! exactly (versions pruned out of order, imports).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::Counts;

#[derive(Debug, Default)]
pub struct Tally {
    /// Whether the store was counted once: before, the counts are only this instance's deltas.
    counted: AtomicBool,
    contexts: AtomicI64,
    versions: AtomicI64,
    pending: AtomicI64,
}

impl Tally {
    /// Moves the counts by what one committed write or delete did.
    pub fn add(&self, contexts: i64, versions: i64, pending: i64) {
        self.contexts.fetch_add(contexts, Ordering::Relaxed);
        self.versions.fetch_add(versions, Ordering::Relaxed);
        self.pending.fetch_add(pending, Ordering::Relaxed);
    }

    /// The store's own count, as a recount found it.
    pub fn set_counts(&self, counts: Counts) {
        self.contexts.store(counts.contexts, Ordering::Relaxed);
        self.versions.store(counts.versions, Ordering::Relaxed);
        self.counted.store(true, Ordering::Release);
    }

    /// Whether the counts are the store's (it was counted at least once since start).
    pub fn counted(&self) -> bool {
        self.counted.load(Ordering::Acquire)
    }

    pub fn set_pending(&self, pending: i64) {
        self.pending.store(pending, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        Counts {
            contexts: self.contexts.load(Ordering::Relaxed).max(0),
            versions: self.versions.load(Ordering::Relaxed).max(0),
        }
    }

    pub fn pending(&self) -> i64 {
        self.pending.load(Ordering::Relaxed).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_move_the_counts_and_a_recount_replaces_them() {
        let tally = Tally::default();
        tally.add(1, 1, 1);
        tally.add(0, 1, 1);
        assert_eq!(tally.counts().contexts, 1);
        assert_eq!(tally.counts().versions, 2);
        assert_eq!(tally.pending(), 2);
        tally.set_counts(Counts {
            contexts: 10,
            versions: 40,
        });
        tally.add(-1, -4, 1);
        assert_eq!((tally.counts().contexts, tally.counts().versions), (9, 36));
        // A delta that overshoots (another instance already deleted it) never shows below 0.
        tally.set_counts(Counts::default());
        tally.add(-1, -1, 0);
        assert_eq!(tally.counts().contexts, 0);
    }
}
