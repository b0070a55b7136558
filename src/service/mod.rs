//! Service: the context manager. It owns the rules (versions, retention, preconditions,
//! merges, limits) and is the only caller of the store and the cache.
//!
//! It knows nothing of HTTP: handlers in `api/` call one method each, and `crate::error` maps
//! a [`ServiceError`] to its problem+json.

mod contexts;
mod error;
mod keys;
mod ops;
pub mod reindex;
pub mod rules;
mod search;
mod sync;
mod transfer;

pub use contexts::{ContextService, Page, WriteStatus, Written, admit};
pub use error::ServiceError;
pub use keys::{CreatedKey, KeyService};
pub use ops::{Check, Ops, Readiness, Summary};
pub use reindex::{ReindexSummary, Remaker, reindex};
pub use rules::{ConflictStrategy, IfMatch, Preconditions, WriteRequest};
pub use search::{MAX_SEARCH_LIMIT, Matched, SearchHit, SearchMode, SearchRequest, SearchService};
pub use sync::{FactoryItem, MAX_SYNC_ITEMS, SyncResult, SyncStatus};
pub use transfer::{ExportSummary, ImportError};
