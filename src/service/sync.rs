//! Sync with Factory AI: ingest of Factory contexts, the Factory-format read, and the change
//! feed. The push to Factory's webhook lives in `crate::sync`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::ContextService;
use super::ServiceError;
use super::contexts::{admit, generated_id};
use super::rules::{self, SyncItem};
use crate::cache::CachedContext;
use crate::domain::{Content, ContextId, JsonObject, Principal, Refusal, Role, Source, Visible};
use crate::store::{Change, WriteOutcome};

/// Most items one `POST /sync/factory` takes.
pub const MAX_SYNC_ITEMS: usize = 1000;

/// One Factory context, as ingest takes it, parsed.
#[derive(Debug, Clone)]
pub struct FactoryItem {
    /// `None`: a new context, `ctx_<uuid>`.
    pub id: Option<ContextId>,
    pub data: JsonObject,
    pub metadata: JsonObject,
    pub timestamp: Option<DateTime<Utc>>,
    pub embedding: Option<Vec<f32>>,
}

/// What ingest did with one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    Created,
    Updated,
    Unchanged,
    SkippedStale,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Created => "created",
            SyncStatus::Updated => "updated",
            SyncStatus::Unchanged => "unchanged",
            SyncStatus::SkippedStale => "skipped_stale",
        }
    }
}

/// The result of one item: its id, the version it now has, and what happened.
#[derive(Debug, Clone)]
pub struct SyncResult {
    pub id: ContextId,
    pub version: i64,
    pub status: SyncStatus,
}

impl ContextService {
    /// `POST /sync/factory`: every item checked first (one bad item refuses the request, naming
    /// its index), then all written in one transaction, each with `source` `factory` and
    /// `change_type` `sync`.
    pub async fn ingest(
        &self,
        who: &Principal,
        items: Vec<FactoryItem>,
    ) -> Result<Vec<SyncResult>, ServiceError> {
        admit(who, Role::Write, None)?;
        if !(1..=MAX_SYNC_ITEMS).contains(&items.len()) {
            return Err(ServiceError::Invalid(format!(
                "a batch holds 1 to {MAX_SYNC_ITEMS} contexts, not {}",
                items.len()
            )));
        }
        for (index, item) in items.iter().enumerate() {
            if let Some(id) = &item.id {
                admit(who, Role::Write, Some(id)).map_err(|e| at_index(index, e))?;
            }
            let content = Content {
                source: Source::Factory,
                parent_id: None,
                data: item.data.clone(),
                metadata: item.metadata.clone(),
                embedding: item.embedding.clone(),
            };
            self.check_content(&content)
                .map_err(|e| at_index(index, e))?;
        }
        let retention = self.retention;
        let mut ids = Vec::with_capacity(items.len());
        for item in &items {
            ids.push(match &item.id {
                Some(id) => id.clone(),
                None => generated_id(who, ContextId::generate().as_str())?,
            });
        }
        let writes: Vec<_> = items
            .into_iter()
            .zip(ids)
            .map(|(item, id)| {
                let sync = SyncItem {
                    data: item.data,
                    metadata: item.metadata,
                    embedding: item.embedding,
                    timestamp: item.timestamp,
                };
                let decide = self.with_l3(&id, move |view, now| {
                    rules::decide_sync(view, sync, retention, now)
                });
                (id, decide)
            })
            .collect();
        let ids: Vec<ContextId> = writes.iter().map(|(id, _)| id.clone()).collect();
        let outcomes = self.store.write_batch(writes).await?;
        let mut results = Vec::with_capacity(outcomes.len());
        for (id, outcome) in ids.into_iter().zip(outcomes) {
            let result = match outcome {
                WriteOutcome::Written { context, created } => {
                    let context = Arc::new(CachedContext::new(context));
                    self.count_write(context.version, created);
                    self.cache.written(&context).await;
                    SyncResult {
                        id: context.id.clone(),
                        version: context.version,
                        status: if created {
                            SyncStatus::Created
                        } else {
                            SyncStatus::Updated
                        },
                    }
                }
                WriteOutcome::Unchanged(context) => SyncResult {
                    id: context.id.clone(),
                    version: context.version,
                    status: SyncStatus::Unchanged,
                },
                WriteOutcome::Refused(Refusal::Stale { current_version }) => SyncResult {
                    id,
                    version: current_version,
                    status: SyncStatus::SkippedStale,
                },
                WriteOutcome::Refused(refusal) => {
                    return Err(ServiceError::Internal(anyhow::anyhow!(
                        "sync refused an item: {refusal:?}"
                    )));
                }
            };
            results.push(result);
        }
        Ok(results)
    }

    /// `GET /sync/factory/changes`: committed changes after `since`, in commit order.
    pub async fn changes(
        &self,
        who: &Principal,
        since: i64,
        limit: usize,
    ) -> Result<Vec<Change>, ServiceError> {
        admit(who, Role::Read, None)?;
        self.store.sequence_outbox().await?;
        Ok(self.store.changes(since, limit, &Visible::to(who)).await?)
    }
}

fn at_index(index: usize, e: ServiceError) -> ServiceError {
    ServiceError::InItem {
        index,
        error: Box::new(e),
    }
}
