//! The SQLite store: contexts and their history. Reads, the write transaction that locks the
//! context and runs the rules, deletes, lists, and the whole histories of export and import.

use super::*;

#[async_trait]
impl ContextStore for SqliteStore {
    async fn get(&self, id: &ContextId) -> Result<Option<Context>, StoreError> {
        let id = id.clone();
        self.read_with(move |conn| select_current(conn, &id).map_err(db_error))
            .await
    }

    async fn get_version(&self, id: &ContextId, version: i64) -> Result<VersionLookup, StoreError> {
        let id = id.clone();
        self.read_with(move |conn| {
            let head = conn
                .prepare_cached(SELECT_HEAD)
                .and_then(|mut s| {
                    s.query_row([id.as_str()], |row| {
                        Ok((row.get::<_, i64>(0)?, time(row, 1)?))
                    })
                    .optional()
                })
                .map_err(db_error)?;
            let record = select_version(conn, &id, version).map_err(db_error)?;
            Ok(VersionLookup {
                current_version: head.map(|(v, _)| v),
                created_at: head.map(|(_, created_at)| created_at),
                record,
            })
        })
        .await
    }

    async fn write(
        &self,
        id: &ContextId,
        load_version: Option<i64>,
        decide: Decide,
    ) -> Result<WriteOutcome, StoreError> {
        let outcome = self.write_one(id, load_version, decide).await?;
        if matches!(outcome, WriteOutcome::Written { .. }) {
            let _ = self.commits.send(CommitNotice::Changed(id.clone(), None));
        }
        Ok(outcome)
    }

    async fn write_batch(
        &self,
        items: Vec<(ContextId, Decide)>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let outcomes = self
            .write_with(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db_error)?;
                let mut outcomes = Vec::with_capacity(items.len());
                for (id, decide) in items {
                    let (current, synced_at) =
                        match select_current_synced(&tx, &id).map_err(db_error)? {
                            Some((context, synced_at)) => (Some(context), synced_at),
                            None => (None, None),
                        };
                    let decision = decide(WriteView {
                        current: current.as_ref(),
                        loaded: None,
                        synced_at,
                    });
                    let created = current.is_none();
                    outcomes.push(match decision.resolve(|| current)? {
                        Resolved::Done(outcome) => outcome,
                        Resolved::Store(new) => {
                            store_new_version(&tx, &id, &new).map_err(db_error)?;
                            WriteOutcome::Written {
                                created,
                                context: new.into_context(&id),
                            }
                        }
                    });
                }
                tx.commit().map_err(db_error)?;
                Ok(outcomes)
            })
            .await?;
        for outcome in &outcomes {
            if let WriteOutcome::Written { context, .. } = outcome {
                let _ = self
                    .commits
                    .send(CommitNotice::Changed(context.id.clone(), None));
            }
        }
        Ok(outcomes)
    }

    async fn delete(
        &self,
        id: &ContextId,
        decide: DecideDelete,
    ) -> Result<DeleteOutcome, StoreError> {
        let key = id.clone();
        let outcome = self
            .write_with(move |conn| {
                let id = key;
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db_error)?;
                let Some(current) = select_current(&tx, &id).map_err(db_error)? else {
                    return Ok(DeleteOutcome::Refused(Refusal::NotFound));
                };
                if let Err(refusal) = decide(&current) {
                    return Ok(DeleteOutcome::Refused(refusal));
                }
                tx.prepare_cached(DELETE_CONTEXT)
                    .and_then(|mut s| s.execute([id.as_str()]))
                    .and_then(|_| {
                        append_outbox(
                            &tx,
                            &id,
                            (current.version, &current.created_at),
                            "delete",
                            None,
                        )
                    })
                    .and_then(|()| tx.commit())
                    .map_err(db_error)?;
                Ok(DeleteOutcome::Deleted {
                    version: current.version,
                    created_at: current.created_at,
                })
            })
            .await?;
        if matches!(outcome, DeleteOutcome::Deleted { .. }) {
            let _ = self.commits.send(CommitNotice::Changed(id.clone(), None));
        }
        Ok(outcome)
    }

    async fn list(
        &self,
        filter: &ListFilter,
        visible: &Visible,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ContextSummary>, StoreError> {
        // Parameters in the order `list_statement` numbers them.
        let mut params: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(source) = filter.source {
            params.push(source.as_str().to_owned().into());
        }
        if let Some(parent) = &filter.parent_id {
            params.push(parent.as_str().to_owned().into());
        }
        let range = visible.id_range();
        if let Some((from, until)) = &range {
            params.push(from.to_string().into());
            params.push(until.clone().into());
        }
        if let Some(after) = after {
            params.push(after.to_owned().into());
        }
        params.push((limit as i64).into());
        let sql = list_statement(ListShape {
            source: filter.source.is_some(),
            parent: filter.parent_id.is_some(),
            prefix: range.is_some(),
            after: after.is_some(),
        });
        self.read_with(move |conn| {
            let mut statement = conn.prepare_cached(&sql).map_err(db_error)?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(params.iter()), summary_from_row)
                .map_err(db_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
        })
        .await
    }

    async fn versions(
        &self,
        id: &ContextId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Option<Vec<VersionInfo>>, StoreError> {
        let id = id.clone();
        let before = before.unwrap_or(i64::MAX);
        self.read_with(move |conn| {
            let exists = conn
                .prepare_cached(SELECT_HEAD)
                .and_then(|mut s| s.exists([id.as_str()]))
                .map_err(db_error)?;
            if !exists {
                return Ok(None);
            }
            let mut statement = conn.prepare_cached(LIST_VERSIONS).map_err(db_error)?;
            let rows = statement
                .query_map(
                    rusqlite::params![id.as_str(), before, limit as i64],
                    info_from_row,
                )
                .map_err(db_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map(Some)
                .map_err(db_error)
        })
        .await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        self.read_with(|conn| {
            conn.query_row(COUNTS, [], |row| {
                Ok(Counts {
                    contexts: row.get(0)?,
                    versions: row.get(1)?,
                })
            })
            .map_err(db_error)
        })
        .await
    }

    async fn histories(&self, after: Option<&str>) -> Result<Vec<ContextHistory>, StoreError> {
        let after = after.map(str::to_owned);
        self.read_with(move |conn| {
            // One read transaction for both statements: each history is as it was at one
            // moment.
            let tx = conn.unchecked_transaction().map_err(db_error)?;
            let heads = {
                let mut statement = tx
                    .prepare_cached(if after.is_some() {
                        SELECT_HEADS_AFTER
                    } else {
                        SELECT_HEADS
                    })
                    .map_err(db_error)?;
                let map = |row: &Row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        time(row, 2)?,
                        time(row, 3)?,
                    ))
                };
                match &after {
                    Some(after) => statement.query_map([after], map),
                    None => statement.query_map([], map),
                }
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(db_error)?
            };
            let (Some(first), Some(last)) = (heads.first(), heads.last()) else {
                return Ok(Vec::new());
            };
            let mut statement = tx
                .prepare_cached(SELECT_VERSIONS_BETWEEN)
                .map_err(db_error)?;
            let mut rows = statement
                .query([first.0.as_str(), last.0.as_str()])
                .map_err(db_error)?;
            let mut page = Vec::with_capacity(heads.len());
            let mut pending: Option<(String, VersionRecord)> = None;
            for (raw, version, created_at, updated_at) in &heads {
                let id = ContextId::parse(raw)
                    .map_err(|e| StoreError::Internal(anyhow!("a stored context id: {e}")))?;
                let mut versions = Vec::new();
                loop {
                    if pending.is_none() {
                        pending = match rows.next().map_err(db_error)? {
                            Some(row) => {
                                let owner: String = row.get(10).map_err(db_error)?;
                                let owner_id = ContextId::parse(&owner).map_err(|e| {
                                    StoreError::Internal(anyhow!("a stored context id: {e}"))
                                })?;
                                Some((owner, record_from_row(&owner_id, row).map_err(db_error)?))
                            }
                            None => None,
                        };
                    }
                    match pending.take() {
                        Some((owner, record)) if owner == id.as_str() => versions.push(record),
                        other => {
                            pending = other;
                            break;
                        }
                    }
                }
                page.push(ContextHistory {
                    id,
                    version: *version,
                    created_at: *created_at,
                    updated_at: *updated_at,
                    versions,
                });
            }
            Ok(page)
        })
        .await
    }

    async fn import(&self, histories: Vec<ContextHistory>) -> Result<ImportSummary, StoreError> {
        self.write_with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_error)?;
            let mut summary = ImportSummary::default();
            for history in &histories {
                if select_history(&tx, &history.id).map_err(db_error)?.as_ref() == Some(history) {
                    summary.unchanged += 1;
                    continue;
                }
                replace_history(&tx, history).map_err(db_error)?;
                summary.imported += 1;
            }
            tx.commit().map_err(db_error)?;
            Ok(summary)
        })
        .await
        .inspect(|summary| {
            if summary.imported > 0 {
                let _ = self.commits.send(CommitNotice::Unknown);
            }
        })
    }
}

const SELECT_HEAD: &str =
    "SELECT version, created_at, updated_at FROM factory_context_metadata WHERE context_id = ?1";

const DELETE_CONTEXT: &str = "DELETE FROM factory_context_metadata WHERE context_id = ?1";

/// The statement of one page of `list`, one per shape of filters so that each reads its own
/// index from the cursor: the key (the prefix as a key range, [`Visible::id_range`]),
/// `(source, context_id)` or `(parent_id, context_id)`. Then each row's version is read by its
/// key, so a page reads its own rows wherever the cursor is. The `CROSS JOIN` is SQLite's way
/// to fix that order: with a cursor near the end, its planner otherwise reads every version
/// after the cursor and sorts them.
pub fn list_statement(shape: ListShape) -> String {
    let (filter, limit) = shape.filter('?');
    format!(
        "SELECT m.context_id, m.version, m.source, m.parent_id, v.metadata,
                m.created_at, m.updated_at, m.size_bytes, m.has_embedding,
                EXISTS (SELECT 1 FROM contextd_server_embeddings s
                        WHERE s.context_id = m.context_id AND s.version = m.version)
         FROM factory_context_metadata m
         CROSS JOIN factory_context_versions v
           ON v.context_id = m.context_id AND v.version = m.version{filter}
         ORDER BY m.context_id LIMIT ?{limit}"
    )
}

const LIST_VERSIONS: &str = "
    SELECT version, change_type, changed_by, changed_at, size_bytes
    FROM factory_context_versions
    WHERE context_id = ?1 AND version < ?2
    ORDER BY version DESC
    LIMIT ?3";

const COUNTS: &str = "
    SELECT (SELECT count(*) FROM factory_context_metadata),
           (SELECT count(*) FROM factory_context_versions)";

fn summary_from_row(row: &Row) -> rusqlite::Result<ContextSummary> {
    Ok(ContextSummary {
        id: context_id(row, 0)?.ok_or_else(|| corrupt("a null context_id"))?,
        version: row.get(1)?,
        source: source(row, 2)?,
        parent_id: context_id(row, 3)?,
        metadata: object(row, 4)?,
        created_at: time(row, 5)?,
        updated_at: time(row, 6)?,
        size_bytes: row.get(7)?,
        embedding_source: EmbeddingSource::of(row.get(8)?, row.get(9)?),
    })
}

fn info_from_row(row: &Row) -> rusqlite::Result<VersionInfo> {
    Ok(VersionInfo {
        version: row.get(0)?,
        change_type: change_type(row, 1)?,
        changed_by: row.get(2)?,
        changed_at: time(row, 3)?,
        size_bytes: row.get(4)?,
    })
}

fn select_current(conn: &Connection, id: &ContextId) -> rusqlite::Result<Option<Context>> {
    Ok(select_current_synced(conn, id)?.map(|(context, _)| context))
}

fn select_history(conn: &Connection, id: &ContextId) -> rusqlite::Result<Option<ContextHistory>> {
    let head = conn
        .prepare_cached(SELECT_HEAD)?
        .query_row([id.as_str()], |row| {
            Ok((row.get::<_, i64>(0)?, time(row, 1)?, time(row, 2)?))
        })
        .optional()?;
    let Some((version, created_at, updated_at)) = head else {
        return Ok(None);
    };
    let versions = conn
        .prepare_cached(SELECT_ALL_VERSIONS)?
        .query_map([id.as_str()], |row| record_from_row(id, row))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(ContextHistory {
        id: id.clone(),
        version,
        created_at,
        updated_at,
        versions,
    }))
}

/// Replaces whatever is stored under the history's id with exactly that history.
fn replace_history(conn: &Connection, history: &ContextHistory) -> rusqlite::Result<()> {
    let current = history
        .current()
        .ok_or_else(|| corrupt("a history without its current version"))?;
    conn.prepare_cached(DELETE_CONTEXT)?
        .execute([history.id.as_str()])?;
    upsert_head(
        conn,
        &history.id,
        history.version,
        &current.content,
        (&history.created_at, &history.updated_at),
        None,
    )?;
    for record in &history.versions {
        insert_version(conn, &history.id, &record.info, &record.content)?;
    }
    append_outbox(
        conn,
        &history.id,
        (history.version, &history.created_at),
        "upsert",
        Some(current.info.change_type),
    )
}

const _: () = assert!(
    crate::store::HISTORY_PAGE == 500,
    "the head statements write the page size in"
);

/// A page of heads for `histories` (the page size written in).
const SELECT_HEADS: &str = "SELECT context_id, version, created_at, updated_at
    FROM factory_context_metadata ORDER BY context_id LIMIT 500";
const SELECT_HEADS_AFTER: &str = "SELECT context_id, version, created_at, updated_at
    FROM factory_context_metadata WHERE context_id > ?1 ORDER BY context_id LIMIT 500";

/// Every kept version of the contexts whose ids lie from `?1` to `?2`, in key order; the
/// owner's id last.
const SELECT_VERSIONS_BETWEEN: &str = "
    SELECT version, source, parent_id, data, metadata, embedding,
           change_type, changed_by, changed_at, size_bytes, context_id
    FROM factory_context_versions
    WHERE context_id >= ?1 AND context_id <= ?2
    ORDER BY context_id, version";
