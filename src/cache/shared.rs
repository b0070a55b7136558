//! L2, the layer every instance shares, behind a trait with two backends: Redis
//! ([`RedisL2`]) and none ([`NoL2`], when Redis is not configured or `cache.l2.enabled` is
//! off). [`TieredCache`](super::TieredCache) holds one and never asks which.
//!
//! Entries are encoded contexts keyed by id (the current version) and by id, incarnation and
//! version (past versions); a fill older than what the layer holds is refused there (the
//! [`Stamp`] says which is newer). The invalidation channel is Redis's too, but it is not this
//! layer: it runs whenever Redis is configured, with L2 on or off.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::Stamp;
use super::l2::{L2Lookup, L2Stats, RedisL2};
use crate::domain::ContextId;

#[async_trait]
pub trait SharedLayer: Send + Sync + 'static {
    /// The current version of `id`, as held.
    async fn get(&self, id: &ContextId) -> L2Lookup;

    /// Holds `value` as `id`'s current version unless something newer is held.
    async fn put(&self, id: &ContextId, stamp: Stamp, value: Bytes);

    /// Holds a tombstone for `id` (stamped with the deleted incarnation).
    async fn delete(&self, id: &ContextId, stamp: Stamp);

    /// A past version of `id`'s incarnation, as held.
    async fn get_version(
        &self,
        id: &ContextId,
        incarnation: DateTime<Utc>,
        version: i64,
    ) -> L2Lookup;

    /// Holds a past version (past versions never change).
    async fn put_version(
        &self,
        id: &ContextId,
        incarnation: DateTime<Utc>,
        version: i64,
        value: Bytes,
    );

    /// Drops every past version held for `id` (a re-created context reuses their numbers).
    async fn forget(&self, id: &ContextId);

    /// Its counters for `/metrics`; `None` when there is no layer.
    fn stats(&self) -> Option<L2Stats>;

    /// Whether anything is held at all: callers skip the work of encoding a fill for none.
    fn holds(&self) -> bool;
}

/// No shared layer: every lookup misses, every fill is dropped.
pub struct NoL2;

#[async_trait]
impl SharedLayer for NoL2 {
    async fn get(&self, _id: &ContextId) -> L2Lookup {
        L2Lookup::Miss
    }

    async fn put(&self, _id: &ContextId, _stamp: Stamp, _value: Bytes) {}

    async fn delete(&self, _id: &ContextId, _stamp: Stamp) {}

    async fn get_version(
        &self,
        _id: &ContextId,
        _incarnation: DateTime<Utc>,
        _version: i64,
    ) -> L2Lookup {
        L2Lookup::Miss
    }

    async fn put_version(
        &self,
        _id: &ContextId,
        _incarnation: DateTime<Utc>,
        _version: i64,
        _value: Bytes,
    ) {
    }

    async fn forget(&self, _id: &ContextId) {}

    fn stats(&self) -> Option<L2Stats> {
        None
    }

    fn holds(&self) -> bool {
        false
    }
}

#[async_trait]
impl SharedLayer for RedisL2 {
    async fn get(&self, id: &ContextId) -> L2Lookup {
        RedisL2::get(self, id).await
    }

    async fn put(&self, id: &ContextId, stamp: Stamp, value: Bytes) {
        RedisL2::put(self, id, stamp, value).await;
    }

    async fn delete(&self, id: &ContextId, stamp: Stamp) {
        RedisL2::delete(self, id, stamp).await;
    }

    async fn get_version(
        &self,
        id: &ContextId,
        incarnation: DateTime<Utc>,
        version: i64,
    ) -> L2Lookup {
        RedisL2::get_version(self, id, incarnation, version).await
    }

    async fn put_version(
        &self,
        id: &ContextId,
        incarnation: DateTime<Utc>,
        version: i64,
        value: Bytes,
    ) {
        RedisL2::put_version(self, id, incarnation, version, value).await;
    }

    async fn forget(&self, id: &ContextId) {
        RedisL2::forget(self, id).await;
    }

    fn stats(&self) -> Option<L2Stats> {
        Some(RedisL2::stats(self))
    }

    fn holds(&self) -> bool {
        true
    }
}
