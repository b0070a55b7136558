//! Cache: what keeps hot contexts out of the store's way.
//!
//! Today that is L1, a sharded in-process LRU. Entries carry a [`Stamp`] so that a fill which
//! raced a write can never put an older version over a newer one. The cache never decides
//! anything about contexts: the service tells it what was read and what was written.

mod l1;

pub use l1::{L1, L1Stats, Stamp};

/// Which layer answered a read, for the `Cache-Status` header (RFC 9211).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from the in-process LRU.
    L1Hit,
    /// Not cached, or not cacheable: read from the store.
    Miss,
}

impl CacheOutcome {
    /// The `Cache-Status` header value.
    pub fn header_value(self) -> &'static str {
        match self {
            CacheOutcome::L1Hit => "contextd; hit; detail=l1",
            CacheOutcome::Miss => "contextd; fwd=miss",
        }
    }
}
