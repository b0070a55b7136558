//! The context manager: reads through L1, writes through one store transaction.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};

use super::ServiceError;
use super::rules::{self, IfMatch, Preconditions, WriteRequest};
use crate::cache::{CacheOutcome, CachedContext, TieredCache};
use crate::config::Settings;
use crate::domain::{
    Content, Context, ContextId, ContextSummary, Cursor, JsonObject, MergeInput, MergeStrategy,
    PageLimit, Principal, Refusal, Role, Source, VersionInfo, VersionRecord, Visible, merge_data,
};
use crate::store::{
    Counts, Decide, Decision, DeleteOutcome, ListFilter, Store, Tally, VersionLookup, WriteOutcome,
    WriteView,
};

/// Whether a write made a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    Created,
    Updated,
    Unchanged,
}

/// The context after a write.
#[derive(Debug, Clone)]
pub struct Written {
    pub context: Arc<CachedContext>,
    pub status: WriteStatus,
}

/// One page of a keyset-paginated list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub struct ContextService {
    pub(super) store: Arc<dyn Store>,
    pub(super) cache: Arc<TieredCache>,
    /// Counts for `/metrics`, moved by each write here.
    pub(super) tally: Arc<Tally>,
    pub(super) retention: i64,
    max_context_bytes: usize,
    dimensions: usize,
}

/// Most contexts one merge combines.
const MAX_MERGE: usize = 100;

/// Longest `changed_by` accepted.
const MAX_CHANGED_BY: usize = 255;

/// Times are kept to the microsecond, as Postgres stores them, so a response and a later read
/// of the same version agree.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The one access rule, for REST and MCP alike: the caller's role must reach `role`, and an
/// id outside the caller's prefix does not exist for it (404, so existence never leaks).
pub fn admit(who: &Principal, role: Role, id: Option<&ContextId>) -> Result<(), ServiceError> {
    if !who.has(role) {
        return Err(ServiceError::NeedsRole(role));
    }
    match id {
        Some(id) if !who.sees(id) => Err(ServiceError::refused(Refusal::NotFound, id.as_str())),
        _ => Ok(()),
    }
}

/// A new id under the caller's prefix: `<prefix><stem>`.
pub(super) fn generated_id(who: &Principal, stem: &str) -> Result<ContextId, ServiceError> {
    let raw = format!("{}{stem}", who.prefix.as_deref().unwrap_or(""));
    ContextId::parse(&raw).map_err(|e| {
        ServiceError::Invalid(format!("cannot make an id under the key's prefix: {e}"))
    })
}

impl ContextService {
    pub fn new(store: Arc<dyn Store>, cache: Arc<TieredCache>, settings: &Settings) -> Self {
        Self {
            store,
            cache,
            tally: Arc::default(),
            retention: i64::from(settings.versions.retention),
            max_context_bytes: settings.limits.max_context_bytes,
            dimensions: settings.vector.dimensions,
        }
    }

    /// The running counts this service's writes move.
    pub fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }

    /// Moves the counts by a committed write of `version`: one more context when it was
    /// created, one more version unless retention pruned one (the history is full), and one
    /// more change for the webhook.
    pub(super) fn count_write(&self, version: i64, created: bool) {
        let versions = i64::from(version <= self.retention);
        self.tally.add(i64::from(created), versions, 1);
    }

    /// Wraps the rules of a write so that a version they decide to store carries its L3 entry,
    /// written in the same transaction.
    pub(super) fn with_l3(
        &self,
        id: &ContextId,
        rules: impl FnOnce(WriteView<'_>, DateTime<Utc>) -> Decision + Send + 'static,
    ) -> Decide {
        let (cache, id) = (self.cache.clone(), id.clone());
        Box::new(move |view| {
            let now = now();
            let mut decision = rules(view, now);
            if let Decision::Write(new) = &mut decision {
                new.cache_entry = cache.l3_entry(&id, new, now);
            }
            decision
        })
    }

    /// Checks what only configuration can tell: the size limit and the embedding length.
    pub fn check_content(&self, content: &Content) -> Result<(), ServiceError> {
        // (`data` and `metadata` are `JsonObject`s: objects, free of U+0000, by construction.)
        let actual = content.size_bytes();
        if actual > self.max_context_bytes {
            return Err(ServiceError::TooLarge {
                limit: self.max_context_bytes,
                actual,
            });
        }
        if let Some(embedding) = &content.embedding {
            crate::domain::embedding::check(embedding, self.dimensions)
                .map_err(|e| ServiceError::Invalid(e.describe("embedding")))?;
        }
        Ok(())
    }

    /// `changed_by` is a short name: at most 255 characters, none of them U+0000.
    pub fn check_changed_by(changed_by: Option<&str>) -> Result<(), ServiceError> {
        let Some(by) = changed_by else {
            return Ok(());
        };
        if by.chars().count() > MAX_CHANGED_BY {
            return Err(ServiceError::Invalid(format!(
                "changed_by is at most {MAX_CHANGED_BY} characters"
            )));
        }
        if by.contains('\0') {
            return Err(ServiceError::Invalid(
                "changed_by holds the character U+0000".to_owned(),
            ));
        }
        Ok(())
    }

    /// The current version, from the first cache layer that holds it, else the store.
    #[tracing::instrument(skip_all, fields(context.id = %id), err(level = "debug"))]
    pub async fn get(
        &self,
        who: &Principal,
        id: &ContextId,
    ) -> Result<(Arc<CachedContext>, CacheOutcome), ServiceError> {
        admit(who, Role::Read, Some(id))?;
        self.get_cached(id).await
    }

    /// [`Self::get`] for contextd itself (search hits): no caller to check.
    pub(super) async fn get_cached(
        &self,
        id: &ContextId,
    ) -> Result<(Arc<CachedContext>, CacheOutcome), ServiceError> {
        if let Some(hit) = self.cache.get(id).await {
            return Ok(hit);
        }
        let context = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| ServiceError::refused(Refusal::NotFound, id.as_str()))?;
        let context = Arc::new(CachedContext::new(context));
        self.cache.fill(&context);
        Ok((context, CacheOutcome::Miss))
    }

    /// `GET /contexts/{id}?version=N`: a version in the shape of the current one. The current
    /// version comes through the cache; a past one from L2's immutable entries, else the store.
    pub async fn get_at(
        &self,
        who: &Principal,
        id: &ContextId,
        version: i64,
    ) -> Result<(Arc<CachedContext>, CacheOutcome), ServiceError> {
        admit(who, Role::Read, Some(id))?;
        let (current, outcome) = self.get_cached(id).await?;
        if version == current.version {
            return Ok((current, outcome));
        }
        // Not past the current version as the cache knows it: ask the store, which knows best.
        if (1..current.version).contains(&version)
            && let Some(hit) = self
                .cache
                .get_version(id, current.created_at, version)
                .await
        {
            return Ok((hit, CacheOutcome::L2Hit));
        }
        let (record, created_at) = self.version_with_created_at(id, version).await?;
        let context = Arc::new(CachedContext::new(Context {
            id: record.id,
            version: record.info.version,
            size_bytes: record.info.size_bytes,
            content: record.content,
            created_at,
            updated_at: record.info.changed_at,
            // Only the current version's server embedding is kept.
            server_embedding: None,
        }));
        self.cache.fill_version(&context);
        Ok((context, CacheOutcome::Miss))
    }

    /// A version of the history, or why there is none: 404 (never was), 410 (pruned).
    pub async fn version(
        &self,
        who: &Principal,
        id: &ContextId,
        version: i64,
    ) -> Result<VersionRecord, ServiceError> {
        admit(who, Role::Read, Some(id))?;
        Ok(self.version_with_created_at(id, version).await?.0)
    }

    #[tracing::instrument(skip_all, fields(context.id = %id, version), err(level = "debug"))]
    async fn version_with_created_at(
        &self,
        id: &ContextId,
        version: i64,
    ) -> Result<(VersionRecord, DateTime<Utc>), ServiceError> {
        let VersionLookup {
            current_version,
            created_at,
            record,
        } = self.store.get_version(id, version).await?;
        match (current_version, record) {
            (Some(_), Some(record)) => {
                let created_at = created_at.unwrap_or(record.info.changed_at);
                Ok((record, created_at))
            }
            (None, _) => Err(ServiceError::refused(Refusal::NotFound, id.as_str())),
            (Some(current), None) if (1..=current).contains(&version) => Err(
                ServiceError::refused(Refusal::Gone { version }, id.as_str()),
            ),
            (Some(current), None) => Err(ServiceError::NotFound(format!(
                "context {id} has no version {version} (the current version is {current})"
            ))),
        }
    }

    /// `PUT /contexts/{id}`: create or update, under the request's preconditions.
    #[tracing::instrument(skip_all, fields(context.id = %id), err(level = "debug"))]
    pub async fn put(
        &self,
        who: &Principal,
        id: &ContextId,
        request: WriteRequest,
    ) -> Result<Written, ServiceError> {
        admit(who, Role::Write, Some(id))?;
        if request.content.parent_id.as_ref() == Some(id) {
            return Err(ServiceError::Invalid(
                "parent_id must name another context, not this one".to_owned(),
            ));
        }
        self.check_content(&request.content)?;
        Self::check_changed_by(request.changed_by.as_deref())?;
        let retention = self.retention;
        let load = request.merge_base();
        let outcome = self
            .store
            .write(
                id,
                load,
                self.with_l3(id, move |view, now| {
                    rules::decide_put(view, request, retention, now)
                }),
            )
            .await?;
        self.finish_write(id, outcome).await
    }

    /// `POST /contexts`: create only; an existing id is a conflict.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn create(
        &self,
        who: &Principal,
        id: Option<ContextId>,
        content: Content,
        changed_by: Option<String>,
    ) -> Result<Written, ServiceError> {
        let id = match id {
            Some(id) => id,
            None => generated_id(who, ContextId::generate().as_str())?,
        };
        let request = WriteRequest {
            content,
            changed_by,
            preconditions: Preconditions {
                if_match: None,
                create_only: true,
            },
            on_conflict: Default::default(),
        };
        self.put(who, &id, request).await.map_err(|e| match e {
            // Create-only failed because the id exists: for POST that is a conflict.
            ServiceError::Refused {
                refusal:
                    Refusal::PreconditionFailed {
                        current_version: Some(v),
                        ..
                    },
                id,
            } => ServiceError::refused(Refusal::AlreadyExists { current_version: v }, &id),
            other => other,
        })
    }

    /// `POST /contexts/{id}/versions/{n}/restore`.
    #[tracing::instrument(skip_all, fields(context.id = %id, version), err(level = "debug"))]
    pub async fn restore(
        &self,
        who: &Principal,
        id: &ContextId,
        version: i64,
        if_match: Option<IfMatch>,
        changed_by: Option<String>,
    ) -> Result<Written, ServiceError> {
        admit(who, Role::Write, Some(id))?;
        Self::check_changed_by(changed_by.as_deref())?;
        let retention = self.retention;
        let outcome = self
            .store
            .write(
                id,
                Some(version),
                self.with_l3(id, move |view, now| {
                    if let Some(current) = view.current
                        && let Err(refusal) = rules::check_if_match(if_match, current)
                    {
                        return Decision::Refuse(refusal);
                    }
                    rules::decide_restore(view, version, changed_by, retention, now)
                }),
            )
            .await?;
        self.finish_write(id, outcome).await
    }

    /// Maps the outcome and, after a commit, tells the cache (and through it the other
    /// instances).
    pub(super) async fn finish_write(
        &self,
        id: &ContextId,
        outcome: WriteOutcome,
    ) -> Result<Written, ServiceError> {
        let (context, status) = match outcome {
            WriteOutcome::Written { context, created } => (
                context,
                if created {
                    WriteStatus::Created
                } else {
                    WriteStatus::Updated
                },
            ),
            WriteOutcome::Unchanged(context) => (context, WriteStatus::Unchanged),
            WriteOutcome::Refused(refusal) => {
                return Err(ServiceError::refused(refusal, id.as_str()));
            }
        };
        let context = Arc::new(CachedContext::new(context));
        if status == WriteStatus::Unchanged {
            self.cache.fill(&context);
        } else {
            self.count_write(context.version, status == WriteStatus::Created);
            self.cache.written(&context).await;
        }
        Ok(Written { context, status })
    }

    /// `DELETE /contexts/{id}`: the context, its history and its cache entries.
    #[tracing::instrument(skip_all, fields(context.id = %id), err(level = "debug"))]
    pub async fn delete(
        &self,
        who: &Principal,
        id: &ContextId,
        if_match: Option<IfMatch>,
    ) -> Result<(), ServiceError> {
        admit(who, Role::Write, Some(id))?;
        let outcome = self
            .store
            .delete(
                id,
                Box::new(move |current: &Context| rules::check_if_match(if_match, current)),
            )
            .await?;
        match outcome {
            DeleteOutcome::Deleted {
                created_at,
                version,
            } => {
                self.tally.add(-1, -version.min(self.retention), 1);
                self.cache.deleted(id, created_at).await;
                Ok(())
            }
            DeleteOutcome::Refused(refusal) => Err(ServiceError::refused(refusal, id.as_str())),
        }
    }

    /// `POST /contexts/merge`: the data of `ids` (2..=100, all existing) combined by `strategy`
    /// into `target` (or a new `merged_<8 hex>`), with `parent_id` the first id and the lineage
    /// in `metadata.merged_from`. Created, or a new version of an existing target.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn merge(
        &self,
        who: &Principal,
        ids: &[ContextId],
        strategy: MergeStrategy,
        target: Option<ContextId>,
        source: Source,
    ) -> Result<Written, ServiceError> {
        admit(who, Role::Write, target.as_ref())?;
        if !(2..=MAX_MERGE).contains(&ids.len()) {
            return Err(ServiceError::Invalid(format!(
                "context_ids must name 2 to {MAX_MERGE} contexts, not {}",
                ids.len()
            )));
        }
        // An id outside the caller's prefix does not exist for it: named among the missing,
        // unread, exactly as a missing one, so whether it exists never shows.
        let mut contexts = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            if !who.sees(id) {
                missing.push(id.as_str());
                continue;
            }
            match self.store.get(id).await? {
                Some(context) => contexts.push(context),
                None => missing.push(id.as_str()),
            }
        }
        if !missing.is_empty() {
            return Err(ServiceError::NotFound(format!(
                "no such contexts: {}",
                missing.join(", ")
            )));
        }
        let inputs: Vec<MergeInput<'_>> = contexts
            .iter()
            .map(|c| MergeInput {
                data: &c.content.data,
                updated_at: c.updated_at,
            })
            .collect();
        // Merging takes CPU in proportion to the inputs: large ones on the CPU pool.
        let work: usize = contexts.iter().map(|c| c.content.data.len()).sum();
        let data = if work < crate::cpu::HEAVY_BYTES {
            merge_data(strategy, &inputs)
        } else {
            let owned: Vec<(JsonObject, DateTime<Utc>)> = contexts
                .iter()
                .map(|c| (c.content.data.clone(), c.updated_at))
                .collect();
            crate::cpu::run(move || {
                let inputs: Vec<MergeInput<'_>> = owned
                    .iter()
                    .map(|(data, updated_at)| MergeInput {
                        data,
                        updated_at: *updated_at,
                    })
                    .collect();
                merge_data(strategy, &inputs)
            })
            .await
        };
        let lineage: Vec<serde_json::Value> = contexts
            .iter()
            .map(|c| serde_json::json!({"context_id": c.id.as_str(), "version": c.version}))
            .collect();
        let metadata = JsonObject::from_value(&serde_json::json!({ "merged_from": lineage }))
            .expect("an object of ids and numbers");
        let content = Content {
            source,
            parent_id: Some(ids[0].clone()),
            data,
            metadata,
            embedding: None,
        };
        self.check_content(&content)?;
        let id = match target {
            Some(target) => target,
            None => {
                let hex = uuid::Uuid::new_v4().simple().to_string();
                generated_id(who, &format!("merged_{}", &hex[..8]))?
            }
        };
        let retention = self.retention;
        let outcome = self
            .store
            .write(
                &id,
                None,
                self.with_l3(&id, move |view, now| {
                    rules::decide_merge(view, content, retention, now)
                }),
            )
            .await?;
        self.finish_write(&id, outcome).await
    }

    /// `POST /cache/warm`: loads each context from the store into L1 and L2; how many were
    /// loaded, and which ids do not exist.
    pub async fn warm(
        &self,
        who: &Principal,
        ids: &[ContextId],
    ) -> Result<(usize, Vec<ContextId>), ServiceError> {
        admit(who, Role::Admin, None)?;
        let mut warmed = 0;
        let mut missing = Vec::new();
        for id in ids {
            match self.store.get(id).await? {
                Some(context) => {
                    self.cache
                        .warm(&Arc::new(CachedContext::new(context)))
                        .await;
                    warmed += 1;
                }
                None => missing.push(id.clone()),
            }
        }
        Ok((warmed, missing))
    }

    /// `GET /contexts`: one page in id order.
    pub async fn list(
        &self,
        who: &Principal,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: PageLimit,
    ) -> Result<Page<ContextSummary>, ServiceError> {
        let limit = limit.get();
        admit(who, Role::Read, None)?;
        let cursor = cursor.filter(|c| !c.is_empty());
        let after = match cursor.map(Cursor::decode).transpose() {
            Ok(None) => None,
            Ok(Some(Cursor::AfterId(id))) => Some(id),
            Ok(Some(_)) | Err(_) => return Err(bad_cursor()),
        };
        let mut items = self
            .store
            .list(filter, &Visible::to(who), after.as_deref(), limit + 1)
            .await?;
        let next_cursor = next_page(&mut items, limit)
            .map(|last| Cursor::AfterId(last.id.as_str().to_owned()).encode());
        Ok(Page { items, next_cursor })
    }

    /// `GET /contexts/{id}/versions`: one page, newest first.
    pub async fn versions(
        &self,
        who: &Principal,
        id: &ContextId,
        cursor: Option<&str>,
        limit: PageLimit,
    ) -> Result<Page<VersionInfo>, ServiceError> {
        let limit = limit.get();
        admit(who, Role::Read, Some(id))?;
        let cursor = cursor.filter(|c| !c.is_empty());
        let before = match cursor.map(Cursor::decode).transpose() {
            Ok(None) => None,
            Ok(Some(Cursor::BeforeVersion(v))) => Some(v),
            Ok(Some(_)) | Err(_) => return Err(bad_cursor()),
        };
        let mut items = self
            .store
            .versions(id, before, limit + 1)
            .await?
            .ok_or_else(|| ServiceError::refused(Refusal::NotFound, id.as_str()))?;
        let next_cursor =
            next_page(&mut items, limit).map(|last| Cursor::BeforeVersion(last.version).encode());
        Ok(Page { items, next_cursor })
    }

    /// How many contexts and versions are stored: the running counts (no query); `None` until
    /// the store was first counted after start.
    pub fn counted(&self) -> Option<Counts> {
        self.tally.counted().then(|| self.tally.counts())
    }
}

/// Trims the extra item fetched to learn whether another page exists; returns the last item
/// kept when it does.
fn next_page<T>(items: &mut Vec<T>, limit: usize) -> Option<&T> {
    if items.len() > limit {
        items.truncate(limit);
        items.last()
    } else {
        None
    }
}

fn bad_cursor() -> ServiceError {
    ServiceError::Malformed("cursor is not one this list issued; start again without it".to_owned())
}
