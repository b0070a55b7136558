//! The rules of a write, as pure functions of what the store read under its lock.
//!
//! `decide_put` and `decide_restore` are the [`Decide`](crate::store::Decide) closures'
//! bodies. They read no clock and touch no I/O: `now` comes in as an argument, so every rule
//! here has a unit test.

use chrono::{DateTime, Utc};

use crate::domain::{ChangeType, Content, Context, JsonObject, Refusal, Source, three_way_merge};
use crate::store::{Decision, NewVersion, WriteView};

/// `If-Match` as a write carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: the context must exist.
    Any,
    /// `"<v>"`: the current version must be `v`.
    Version(i64),
}

/// The conditions a write carries in its headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub if_match: Option<IfMatch>,
    /// `If-None-Match: *`: the write may only create.
    pub create_only: bool,
}

/// `?on_conflict=`: what to do when `If-Match` names a version that is no longer current.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConflictStrategy {
    #[default]
    Reject,
    Overwrite,
    Merge,
}

impl ConflictStrategy {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "reject" => Some(Self::Reject),
            "overwrite" => Some(Self::Overwrite),
            "merge" => Some(Self::Merge),
            _ => None,
        }
    }
}

/// What a write asks for, once parsed and checked.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub content: Content,
    pub changed_by: Option<String>,
    pub preconditions: Preconditions,
    pub on_conflict: ConflictStrategy,
}

impl WriteRequest {
    /// The version a three-way merge would need as its base, to be read under the lock.
    pub fn merge_base(&self) -> Option<i64> {
        match (self.on_conflict, self.preconditions.if_match) {
            (ConflictStrategy::Merge, Some(IfMatch::Version(v))) => Some(v),
            _ => None,
        }
    }
}

/// Decides a `PUT` / `POST` against the current state.
pub fn decide_put(
    view: WriteView<'_>,
    request: WriteRequest,
    retention: i64,
    now: DateTime<Utc>,
) -> Decision {
    let current = view.current;
    if request.preconditions.create_only
        && let Some(current) = current
    {
        return Decision::Refuse(Refusal::PreconditionFailed {
            current_version: Some(current.version),
            reason: format!(
                "If-None-Match: * but context {} exists (version {})",
                current.id, current.version
            ),
        });
    }

    let mut content = request.content;
    match (request.preconditions.if_match, current) {
        (None, _) => {}
        (Some(IfMatch::Any), Some(_)) => {}
        (Some(IfMatch::Any), None) => {
            return Decision::Refuse(Refusal::PreconditionFailed {
                current_version: None,
                reason: "If-Match: * but the context does not exist".to_owned(),
            });
        }
        (Some(IfMatch::Version(v)), Some(current)) if current.version == v => {}
        (Some(IfMatch::Version(_)), _) if request.on_conflict == ConflictStrategy::Overwrite => {}
        (Some(IfMatch::Version(v)), None) => {
            return Decision::Refuse(Refusal::PreconditionFailed {
                current_version: None,
                reason: format!("If-Match names version {v} but the context does not exist"),
            });
        }
        (Some(IfMatch::Version(v)), Some(current)) => match request.on_conflict {
            ConflictStrategy::Overwrite => unreachable!("handled by the arm above"),
            ConflictStrategy::Reject => return Decision::Refuse(stale(v, current)),
            ConflictStrategy::Merge => match merge_onto(current, view.loaded, content, v) {
                Ok(merged) => content = merged,
                Err(refusal) => return Decision::Refuse(refusal),
            },
        },
    }

    match current {
        Some(current) if current.content == content => Decision::Unchanged,
        Some(current) => Decision::Write(next_version(
            current,
            content,
            ChangeType::Update,
            request.changed_by,
            retention,
            now,
        )),
        None => Decision::Write(first_version(
            content,
            ChangeType::Create,
            request.changed_by,
            now,
        )),
    }
}

/// The If-Match check of a change that cannot merge (restore, delete): a version that is not
/// the current one refuses it (412, naming the current version); `*` or none lets it go on.
pub fn check_if_match(if_match: Option<IfMatch>, current: &Context) -> Result<(), Refusal> {
    match if_match {
        Some(IfMatch::Version(v)) if v != current.version => Err(stale(v, current)),
        _ => Ok(()),
    }
}

/// If-Match named version `v`, but `current` is another.
fn stale(v: i64, current: &Context) -> Refusal {
    Refusal::PreconditionFailed {
        current_version: Some(current.version),
        reason: format!(
            "If-Match names version {v} but the current version is {}",
            current.version
        ),
    }
}

/// Three-way merges `ours` onto `current`, from the base version `base_version`, over `data`
/// and `metadata` alike; a conflict in `metadata` is named `metadata.<key>`.
fn merge_onto(
    current: &Context,
    base: Option<&crate::domain::VersionRecord>,
    ours: Content,
    base_version: i64,
) -> Result<Content, Refusal> {
    let Some(base) = base.filter(|b| b.info.version == base_version) else {
        return Err(Refusal::PreconditionFailed {
            current_version: Some(current.version),
            reason: format!(
                "cannot merge: version {base_version} named by If-Match is not kept \
                 (current version is {})",
                current.version
            ),
        });
    };
    let theirs = &current.content;
    let data = three_way_merge(&base.content.data, &theirs.data, &ours.data);
    let metadata = three_way_merge(&base.content.metadata, &theirs.metadata, &ours.metadata);
    match (data, metadata) {
        (Ok(data), Ok(metadata)) => Ok(Content {
            data,
            metadata,
            // Scalars follow the same rule as keys: ours where we changed them.
            source: pick(base.content.source, theirs.source, ours.source),
            parent_id: pick(
                base.content.parent_id.clone(),
                theirs.parent_id.clone(),
                ours.parent_id,
            ),
            embedding: pick(
                base.content.embedding.clone(),
                theirs.embedding.clone(),
                ours.embedding,
            ),
        }),
        (data, metadata) => {
            let mut conflicts = data.err().unwrap_or_default();
            conflicts.extend(
                metadata
                    .err()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|k| format!("metadata.{k}")),
            );
            Err(Refusal::MergeConflict {
                current_version: current.version,
                conflicts,
            })
        }
    }
}

/// Ours if we changed it from the base, else theirs.
fn pick<T: PartialEq>(base: T, theirs: T, ours: T) -> T {
    if ours != base { ours } else { theirs }
}

/// Decides `POST /contexts/{id}/versions/{n}/restore`.
pub fn decide_restore(
    view: WriteView<'_>,
    version: i64,
    changed_by: Option<String>,
    retention: i64,
    now: DateTime<Utc>,
) -> Decision {
    let Some(current) = view.current else {
        return Decision::Refuse(Refusal::NotFound);
    };
    let Some(record) = view.loaded else {
        return Decision::Refuse(if (1..=current.version).contains(&version) {
            Refusal::Gone { version }
        } else {
            Refusal::NotFound
        });
    };
    let content = Content {
        source: current.content.source,
        parent_id: current.content.parent_id.clone(),
        ..record.content.clone()
    };
    if content == current.content {
        return Decision::Unchanged;
    }
    Decision::Write(next_version(
        current,
        content,
        ChangeType::Restore,
        changed_by,
        retention,
        now,
    ))
}

/// Decides the write of a merge's result (`POST /contexts/merge`) into its target.
pub fn decide_merge(
    view: WriteView<'_>,
    content: Content,
    retention: i64,
    now: DateTime<Utc>,
) -> Decision {
    match view.current {
        Some(current) if current.content == content => Decision::Unchanged,
        Some(current) => Decision::Write(next_version(
            current,
            content,
            ChangeType::Merge,
            None,
            retention,
            now,
        )),
        None => Decision::Write(first_version(content, ChangeType::Merge, None, now)),
    }
}

/// One Factory context as `POST /sync/factory` takes it.
#[derive(Debug, Clone)]
pub struct SyncItem {
    pub data: JsonObject,
    pub metadata: JsonObject,
    pub embedding: Option<Vec<f32>>,
    /// Factory's own time of this state; `None`: never stale.
    pub timestamp: Option<DateTime<Utc>>,
}

/// Decides one Factory item: unchanged first (same data, metadata and embedding), then stale
/// (older than the current version's own time: the timestamp it was synced with if it came
/// from Factory, else its `updated_at`), else a new version with `change_type` `sync`.
pub fn decide_sync(
    view: WriteView<'_>,
    item: SyncItem,
    retention: i64,
    now: DateTime<Utc>,
) -> Decision {
    let Some(current) = view.current else {
        let content = Content {
            source: Source::Factory,
            parent_id: None,
            data: item.data,
            metadata: item.metadata,
            embedding: item.embedding,
        };
        let mut new = first_version(content, ChangeType::Sync, None, now);
        new.synced_at = item.timestamp;
        return Decision::Write(new);
    };
    let c = &current.content;
    if c.data == item.data && c.metadata == item.metadata && c.embedding == item.embedding {
        return Decision::Unchanged;
    }
    let own_time = view.synced_at.unwrap_or(current.updated_at);
    if item.timestamp.is_some_and(|t| t < own_time) {
        return Decision::Refuse(Refusal::Stale {
            current_version: current.version,
        });
    }
    let content = Content {
        source: Source::Factory,
        parent_id: c.parent_id.clone(),
        data: item.data,
        metadata: item.metadata,
        embedding: item.embedding,
    };
    let mut new = next_version(current, content, ChangeType::Sync, None, retention, now);
    new.synced_at = item.timestamp;
    Decision::Write(new)
}

fn first_version(
    content: Content,
    change_type: ChangeType,
    changed_by: Option<String>,
    now: DateTime<Utc>,
) -> NewVersion {
    NewVersion {
        version: 1,
        content,
        change_type,
        changed_by,
        created_at: now,
        updated_at: now,
        keep_from: 1,
        cache_entry: None,
        synced_at: None,
    }
}

fn next_version(
    current: &Context,
    content: Content,
    change_type: ChangeType,
    changed_by: Option<String>,
    retention: i64,
    now: DateTime<Utc>,
) -> NewVersion {
    let version = current.version + 1;
    NewVersion {
        version,
        content,
        change_type,
        changed_by,
        created_at: current.created_at,
        // Never before the previous version, even if the clock stepped back.
        updated_at: now.max(current.updated_at),
        keep_from: (version - retention + 1).max(1),
        cache_entry: None,
        synced_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ContextId, JsonObject, Source, VersionInfo, VersionRecord};
    use serde_json::{Value, json};

    fn object(value: Value) -> JsonObject {
        JsonObject::from_value(&value).unwrap()
    }

    fn content(data: Value) -> Content {
        Content {
            source: Source::Mcp,
            parent_id: None,
            data: object(data),
            metadata: JsonObject::empty(),
            embedding: None,
        }
    }

    fn current(version: i64, data: Value) -> Context {
        Context {
            id: ContextId::parse("c").unwrap(),
            version,
            content: content(data),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            size_bytes: 0,
            server_embedding: None,
        }
    }

    fn record(version: i64, data: Value) -> VersionRecord {
        VersionRecord {
            id: ContextId::parse("c").unwrap(),
            info: VersionInfo {
                version,
                change_type: ChangeType::Update,
                changed_by: None,
                changed_at: Utc::now(),
                size_bytes: 0,
            },
            content: content(data),
        }
    }

    fn put(data: Value, if_match: Option<IfMatch>, on_conflict: ConflictStrategy) -> WriteRequest {
        WriteRequest {
            content: content(data),
            changed_by: None,
            preconditions: Preconditions {
                if_match,
                create_only: false,
            },
            on_conflict,
        }
    }

    fn decide(
        current: Option<&Context>,
        loaded: Option<&VersionRecord>,
        request: WriteRequest,
    ) -> Decision {
        decide_put(
            WriteView {
                current,
                loaded,
                synced_at: None,
            },
            request,
            100,
            Utc::now(),
        )
    }

    #[test]
    fn a_first_write_creates_version_one() {
        match decide(None, None, put(json!({"a": 1}), None, Default::default())) {
            Decision::Write(new) => {
                assert_eq!(new.version, 1);
                assert_eq!(new.change_type, ChangeType::Create);
            }
            _ => panic!("expected a write"),
        }
    }

    #[test]
    fn the_same_content_is_unchanged() {
        let cur = current(4, json!({"a": 1}));
        assert!(matches!(
            decide(
                Some(&cur),
                None,
                put(json!({"a": 1}), None, Default::default())
            ),
            Decision::Unchanged
        ));
    }

    #[test]
    fn a_stale_if_match_is_refused_with_the_current_version() {
        let cur = current(4, json!({"a": 1}));
        let decision = decide(
            Some(&cur),
            None,
            put(
                json!({"a": 2}),
                Some(IfMatch::Version(3)),
                ConflictStrategy::Reject,
            ),
        );
        assert!(matches!(
            decision,
            Decision::Refuse(Refusal::PreconditionFailed {
                current_version: Some(4),
                ..
            })
        ));
    }

    #[test]
    fn overwrite_writes_over_a_stale_if_match() {
        let cur = current(4, json!({"a": 1}));
        let decision = decide(
            Some(&cur),
            None,
            put(
                json!({"a": 2}),
                Some(IfMatch::Version(3)),
                ConflictStrategy::Overwrite,
            ),
        );
        assert!(matches!(
            decision,
            Decision::Write(NewVersion { version: 5, .. })
        ));
    }

    #[test]
    fn merge_combines_changes_to_different_keys() {
        let base = record(3, json!({"a": 1, "b": 1}));
        let cur = current(4, json!({"a": 2, "b": 1}));
        let decision = decide(
            Some(&cur),
            Some(&base),
            put(
                json!({"a": 1, "b": 3}),
                Some(IfMatch::Version(3)),
                ConflictStrategy::Merge,
            ),
        );
        match decision {
            Decision::Write(new) => {
                assert_eq!(new.version, 5);
                assert_eq!(
                    serde_json::from_str::<Value>(new.content.data.as_str()).unwrap(),
                    json!({"a": 2, "b": 3})
                );
            }
            _ => panic!("expected a write"),
        }
    }

    #[test]
    fn merge_refuses_keys_changed_on_both_sides() {
        let base = record(3, json!({"a": 1}));
        let cur = current(4, json!({"a": 2}));
        let decision = decide(
            Some(&cur),
            Some(&base),
            put(
                json!({"a": 3}),
                Some(IfMatch::Version(3)),
                ConflictStrategy::Merge,
            ),
        );
        match decision {
            Decision::Refuse(Refusal::MergeConflict {
                current_version,
                conflicts,
            }) => {
                assert_eq!(current_version, 4);
                assert_eq!(conflicts, vec!["a".to_owned()]);
            }
            _ => panic!("expected a conflict"),
        }
    }

    #[test]
    fn merge_without_its_base_is_a_failed_precondition() {
        let cur = current(400, json!({"a": 2}));
        let decision = decide(
            Some(&cur),
            None,
            put(
                json!({"a": 3}),
                Some(IfMatch::Version(3)),
                ConflictStrategy::Merge,
            ),
        );
        assert!(matches!(
            decision,
            Decision::Refuse(Refusal::PreconditionFailed { .. })
        ));
    }

    #[test]
    fn if_none_match_star_refuses_an_existing_context() {
        let cur = current(1, json!({}));
        let mut request = put(json!({"a": 1}), None, Default::default());
        request.preconditions.create_only = true;
        assert!(matches!(
            decide(Some(&cur), None, request.clone()),
            Decision::Refuse(Refusal::PreconditionFailed {
                current_version: Some(1),
                ..
            })
        ));
        assert!(matches!(
            decide(None, None, request),
            Decision::Write(NewVersion { version: 1, .. })
        ));
    }

    #[test]
    fn if_match_on_a_missing_context_fails() {
        for if_match in [IfMatch::Any, IfMatch::Version(1)] {
            assert!(matches!(
                decide(
                    None,
                    None,
                    put(json!({}), Some(if_match), Default::default())
                ),
                Decision::Refuse(Refusal::PreconditionFailed {
                    current_version: None,
                    ..
                })
            ));
        }
    }

    #[test]
    fn retention_keeps_the_newest_versions() {
        let cur = current(10, json!({"a": 1}));
        let decision = decide_put(
            WriteView {
                current: Some(&cur),
                loaded: None,
                synced_at: None,
            },
            put(json!({"a": 2}), None, Default::default()),
            3,
            Utc::now(),
        );
        assert!(matches!(
            decision,
            Decision::Write(NewVersion {
                version: 11,
                keep_from: 9,
                ..
            })
        ));
    }

    #[test]
    fn restoring_a_pruned_version_is_gone_and_a_future_one_not_found() {
        let cur = current(10, json!({"a": 1}));
        let view = || WriteView {
            current: Some(&cur),
            loaded: None,
            synced_at: None,
        };
        assert!(matches!(
            decide_restore(view(), 2, None, 100, Utc::now()),
            Decision::Refuse(Refusal::Gone { version: 2 })
        ));
        assert!(matches!(
            decide_restore(view(), 11, None, 100, Utc::now()),
            Decision::Refuse(Refusal::NotFound)
        ));
    }

    fn item(data: Value, timestamp: Option<i64>) -> SyncItem {
        use chrono::TimeZone;
        SyncItem {
            data: object(data),
            metadata: JsonObject::empty(),
            embedding: None,
            timestamp: timestamp.map(|s| Utc.timestamp_opt(s, 0).unwrap()),
        }
    }

    fn sync(current: Option<&Context>, synced_at: Option<i64>, item: SyncItem) -> Decision {
        use chrono::TimeZone;
        decide_sync(
            WriteView {
                current,
                loaded: None,
                synced_at: synced_at.map(|s| Utc.timestamp_opt(s, 0).unwrap()),
            },
            item,
            100,
            Utc::now(),
        )
    }

    #[test]
    fn a_sync_item_for_a_new_id_creates_it_from_factory_with_its_timestamp() {
        match sync(None, None, item(json!({"a": 1}), Some(100))) {
            Decision::Write(new) => {
                assert_eq!(new.version, 1);
                assert_eq!(new.change_type, ChangeType::Sync);
                assert_eq!(new.content.source, Source::Factory);
                assert_eq!(new.synced_at.unwrap().timestamp(), 100);
            }
            _ => panic!("expected a write"),
        }
    }

    #[test]
    fn an_identical_sync_item_is_unchanged_even_when_stale() {
        let cur = current(3, json!({"a": 1}));
        assert!(matches!(
            sync(Some(&cur), Some(500), item(json!({"a": 1}), Some(1))),
            Decision::Unchanged
        ));
    }

    #[test]
    fn a_sync_item_older_than_the_synced_timestamp_is_stale() {
        let cur = current(3, json!({"a": 1}));
        assert!(matches!(
            sync(Some(&cur), Some(500), item(json!({"a": 2}), Some(499))),
            Decision::Refuse(Refusal::Stale { current_version: 3 })
        ));
        assert!(matches!(
            sync(Some(&cur), Some(500), item(json!({"a": 2}), Some(500))),
            Decision::Write(NewVersion { version: 4, .. })
        ));
    }

    #[test]
    fn without_a_synced_timestamp_the_current_updated_at_decides_staleness() {
        let cur = current(3, json!({"a": 1}));
        let updated = cur.updated_at.timestamp();
        assert!(matches!(
            sync(Some(&cur), None, item(json!({"a": 2}), Some(updated - 10))),
            Decision::Refuse(Refusal::Stale { .. })
        ));
        assert!(matches!(
            sync(Some(&cur), None, item(json!({"a": 2}), None)),
            Decision::Write(_)
        ));
    }

    #[test]
    fn restoring_makes_a_new_version_with_the_old_data() {
        let cur = current(10, json!({"a": 10}));
        let old = record(2, json!({"a": 2}));
        let decision = decide_restore(
            WriteView {
                current: Some(&cur),
                loaded: Some(&old),
                synced_at: None,
            },
            2,
            None,
            100,
            Utc::now(),
        );
        match decision {
            Decision::Write(new) => {
                assert_eq!(new.version, 11);
                assert_eq!(new.change_type, ChangeType::Restore);
                assert_eq!(
                    serde_json::from_str::<Value>(new.content.data.as_str()).unwrap(),
                    json!({"a": 2})
                );
            }
            _ => panic!("expected a write"),
        }
    }
}
