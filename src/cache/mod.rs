//! Cache: what keeps hot contexts out of the store's way, in three layers behind
//! [`TieredCache`]: L1, a sharded in-process LRU; L2, Redis (shared by the instances, which it
//! also keeps coherent with an invalidation channel); L3, the Postgres `factory_cache_records`
//! table, written by each write's own transaction. Entries carry a [`Stamp`] so that a fill
//! which raced a write can never put an older version over a newer one. The cache never decides
//! anything about contexts: the service tells it what was read and what was written.

mod l1;
pub mod l2;
pub mod maintenance;
pub mod record;
mod shared;
mod stamp;
mod tiered;

use std::ops::Deref;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::domain::Context;

pub use l1::{L1, L1Stats};
pub use shared::{NoL2, SharedLayer};
pub use stamp::Stamp;
pub use tiered::{CacheStats, RedisHealth, TieredCache};

/// A context as the cache holds and hands it out: the value, and its rendering (the response
/// body) made once, on first use, then shared by every reader without copying.
#[derive(Debug)]
pub struct CachedContext {
    context: Context,
    rendered: OnceLock<Bytes>,
}

impl CachedContext {
    pub fn new(context: Context) -> Self {
        Self {
            context,
            rendered: OnceLock::new(),
        }
    }

    /// What `render` makes of the context, made by the first caller only. The cache does not
    /// know the format; the API layer does, and always passes the same `render`.
    pub fn rendered(&self, render: impl FnOnce(&Context) -> Bytes) -> Bytes {
        self.rendered.get_or_init(|| render(&self.context)).clone()
    }
}

impl Deref for CachedContext {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.context
    }
}

/// Which layer answered a read, for the `Cache-Status` header (RFC 9211).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from the in-process LRU.
    L1Hit,
    /// Served from Redis.
    L2Hit,
    /// Served from the Postgres cache table.
    L3Hit,
    /// Not cached, or not cacheable: read from the store.
    Miss,
}

impl CacheOutcome {
    /// The `Cache-Status` header value.
    pub fn header_value(self) -> &'static str {
        match self {
            CacheOutcome::L1Hit => "contextd; hit; detail=l1",
            CacheOutcome::L2Hit => "contextd; hit; detail=l2",
            CacheOutcome::L3Hit => "contextd; hit; detail=l3",
            CacheOutcome::Miss => "contextd; fwd=miss",
        }
    }
}
