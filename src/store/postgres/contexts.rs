//! The Postgres store: contexts and their history. Reads, the write transaction that locks the
//! context and runs the rules, deletes, lists, and the whole histories of export and import.

use super::*;

const _: () = assert!(
    crate::store::HISTORY_PAGE == 500,
    "the head statements write the page size in"
);

/// The head statement of `histories`, with its page size written in.
macro_rules! const_format_heads {
    ($filter:literal) => {
        concat!(
            "SELECT context_id, version, created_at, updated_at FROM factory_context_metadata ",
            $filter,
            " ORDER BY context_id LIMIT 500"
        )
    };
}

#[async_trait]
impl ContextStore for PostgresStore {
    async fn get(&self, id: &ContextId) -> Result<Option<Context>, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(SELECT_CURRENT)
                .await
                .map_err(db_error)?;
            let row = client
                .query_opt(&statement, &[&id.as_str()])
                .await
                .map_err(db_error)?;
            match row {
                None => Ok(None),
                Some(row) => {
                    let id = id.clone();
                    off_runtime(&row, 3, move |row| context_from_row(&id, row))
                        .await
                        .map(Some)
                }
            }
        })
        .await
    }

    async fn get_version(&self, id: &ContextId, version: i64) -> Result<VersionLookup, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let (current, record) = tokio::try_join!(
                client.prepare_cached(SELECT_CURRENT_VERSION),
                client.prepare_cached(SELECT_VERSION),
            )
            .map_err(db_error)?;
            let key = id.as_str();
            let (by_id, by_version): (Params, Params) = (&[&key], &[&key, &version]);
            let (current, record) = tokio::try_join!(
                client.query_opt(&current, by_id),
                client.query_opt(&record, by_version),
            )
            .map_err(db_error)?;
            Ok(VersionLookup {
                current_version: current
                    .as_ref()
                    .map(|row| row.try_get(0))
                    .transpose()
                    .map_err(column_error)?,
                created_at: current
                    .as_ref()
                    .map(|row| row.try_get(1))
                    .transpose()
                    .map_err(column_error)?,
                record: match record {
                    None => None,
                    Some(row) => {
                        let id = id.clone();
                        Some(off_runtime(&row, 9, move |row| record_from_row(&id, row)).await?)
                    }
                },
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
        self.bounded(true, async move {
            let mut client = self.client().await?;
            let (lock, current, load) = tokio::try_join!(
                client.prepare_cached(LOCK_CONTEXT),
                client.prepare_cached(SELECT_CURRENT),
                client.prepare_cached(SELECT_VERSION),
            )
            .map_err(db_error)?;
            let tx = client.transaction().await.map_err(db_error)?;

            // Lock, then read: pipelined, and the reads run after the lock is granted. `biased`
            // polls in the order written, so the statements go out in that order.
            let key = id.as_str();
            let by_id: Params = &[&key];
            let (locked, current, loaded) = tokio::join!(
                biased;
                tx.execute(&lock, by_id),
                tx.query_opt(&current, by_id),
                async {
                    match load_version {
                        Some(v) => tx.query_opt(&load, &[&key, &v]).await,
                        None => Ok(None),
                    }
                },
            );
            locked.map_err(db_error)?;
            let (current, loaded) = (current.map_err(db_error)?, loaded.map_err(db_error)?);
            let synced_at = current
                .as_ref()
                .map(|row| row.try_get::<_, Option<DateTime<Utc>>>(9))
                .transpose()
                .map_err(column_error)?
                .flatten();
            // Reading the JSON back and weighing the rules (a three-way merge) take CPU in
            // proportion to the context: large ones go to the CPU pool.
            let size = |row: &Option<Row>, column: usize| -> Result<usize, StoreError> {
                row.as_ref()
                    .map(|row| row.try_get::<_, i64>(column))
                    .transpose()
                    .map(|size| size.unwrap_or(0).max(0) as usize)
                    .map_err(column_error)
            };
            let work = size(&current, 3)? + size(&loaded, 9)?;
            let owned_id = id.clone();
            let (decision, current) = crate::cpu::run_sized(work, move || {
                let current = current
                    .map(|row| context_from_row(&owned_id, &row))
                    .transpose()?;
                let loaded = loaded
                    .map(|row| record_from_row(&owned_id, &row))
                    .transpose()?;
                let decision = decide(WriteView {
                    current: current.as_ref(),
                    loaded: loaded.as_ref(),
                    synced_at,
                });
                Ok::<_, StoreError>((decision, current))
            })
            .await?;
            let created = current.is_none();
            let new = match decision.resolve(|| current)? {
                Resolved::Done(outcome) => return Ok(outcome),
                Resolved::Store(new) => new,
            };

            store_versions(&tx, &[(id, &new)]).await?;
            tx.commit().await.map_err(db_error)?;

            Ok(WriteOutcome::Written {
                created,
                context: new.into_context(id),
            })
        })
        .await
    }

    async fn delete(
        &self,
        id: &ContextId,
        decide: DecideDelete,
    ) -> Result<DeleteOutcome, StoreError> {
        self.bounded(true, async move {
            let mut client = self.client().await?;
            let (lock, current, delete, outbox, notify) = tokio::try_join!(
                client.prepare_cached(LOCK_CONTEXT),
                client.prepare_cached(SELECT_CURRENT),
                client.prepare_cached(DELETE_CONTEXT),
                client.prepare_cached(APPEND_OUTBOX),
                client.prepare_cached(NOTIFY_CHANGE),
            )
            .map_err(db_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            let key = id.as_str();
            let by_id: Params = &[&key];
            let (locked, current) =
                tokio::join!(biased; tx.execute(&lock, by_id), tx.query_opt(&current, by_id));
            locked.map_err(db_error)?;
            let current = current.map_err(db_error)?;
            let Some(current) = current.map(|row| context_from_row(id, &row)).transpose()? else {
                return Ok(DeleteOutcome::Refused(Refusal::NotFound));
            };
            if let Err(refusal) = decide(&current) {
                return Ok(DeleteOutcome::Refused(refusal));
            }
            let no_change_type: Option<&str> = None;
            let outbox_params: Params = &[
                &key,
                &current.version,
                &current.created_at,
                &"delete",
                &no_change_type,
            ];
            let notice = Committed::write(current.created_at, Committed::DELETED).payload(id);
            let notice: Params = &[&notice];
            let results = tokio::join!(
                biased;
                tx.execute(&delete, by_id),
                tx.execute(&outbox, outbox_params),
                tx.execute(&notify, notice),
            );
            first_failure([results.0, results.1, results.2])?;
            tx.commit().await.map_err(db_error)?;
            Ok(DeleteOutcome::Deleted {
                version: current.version,
                created_at: current.created_at,
            })
        })
        .await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        visible: &Visible,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ContextSummary>, StoreError> {
        self.bounded(false, async move {
            // One statement per combination of filters, so each can use its index.
            let source = filter.source.map(Source::as_str);
            let parent = filter.parent_id.as_ref().map(ContextId::as_str);
            let range = visible.id_range();
            debug_assert!(
                limit <= MAX_LIST_ROWS,
                "a list call asks for at most a page"
            );
            let limit = limit.min(MAX_LIST_ROWS) as i64;
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
            if let Some(source) = &source {
                params.push(source);
            }
            if let Some(parent) = &parent {
                params.push(parent);
            }
            if let Some((from, until)) = &range {
                params.push(from);
                params.push(until);
            }
            if let Some(after) = &after {
                params.push(after);
            }
            params.push(&limit);
            let sql = list_statement(ListShape {
                source: source.is_some(),
                parent: parent.is_some(),
                prefix: range.is_some(),
                after: after.is_some(),
            });

            let client = self.client().await?;
            let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&statement, &params).await.map_err(db_error)?;
            rows.iter().map(summary_from_row).collect()
        })
        .await
    }

    async fn versions(
        &self,
        id: &ContextId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Option<Vec<VersionInfo>>, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let (current, list) = tokio::try_join!(
                client.prepare_cached(SELECT_CURRENT_VERSION),
                client.prepare_cached(LIST_VERSIONS),
            )
            .map_err(db_error)?;
            let before = before.unwrap_or(i64::MAX);
            let limit = limit as i64;
            let key = id.as_str();
            let (by_id, page): (Params, Params) = (&[&key], &[&key, &before, &limit]);
            let (current, rows) =
                tokio::try_join!(client.query_opt(&current, by_id), client.query(&list, page),)
                    .map_err(db_error)?;
            if current.is_none() {
                return Ok(None);
            }
            rows.iter()
                .map(info_from_row)
                .collect::<Result<_, _>>()
                .map(Some)
        })
        .await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let row = client.query_one(COUNTS, &[]).await.map_err(db_error)?;
            Ok(Counts {
                contexts: row.try_get(0).map_err(column_error)?,
                versions: row.try_get(1).map_err(column_error)?,
            })
        })
        .await
    }

    async fn write_batch(
        &self,
        items: Vec<(ContextId, Decide)>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        self.bounded(true, async move {
            let mut client = self.client().await?;
            let (lock, currents) = tokio::try_join!(
                client.prepare_cached(LOCK_CONTEXT),
                client.prepare_cached(SELECT_CURRENTS),
            )
            .map_err(db_error)?;
            let tx = client.transaction().await.map_err(db_error)?;

            // Lock every context, in id order so that two batches never wait on each other in a
            // circle, then read them all: pipelined, one round trip.
            let mut keys: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
            keys.sort_unstable();
            keys.dedup();
            let lock_params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
                keys.iter().map(|k| [k as _]).collect();
            let locks = futures_util::future::join_all(
                lock_params.iter().map(|params| tx.execute(&lock, params)),
            );
            let by_ids: Params = &[&keys];
            let (locks, rows) = tokio::join!(biased; locks, tx.query(&currents, by_ids));
            for locked in locks {
                locked.map_err(db_error)?;
            }
            let rows = rows.map_err(db_error)?;
            // Reading the JSON back and deciding take CPU in proportion to the contexts: a
            // large batch goes to the CPU pool.
            let mut work = 0usize;
            for row in &rows {
                work += row.try_get::<_, i64>(4).map_err(column_error)?.max(0) as usize;
            }
            let (outcomes, writes) =
                crate::cpu::run_sized(work, move || decide_batch(rows, items)).await?;
            let staged: Vec<(&ContextId, &NewVersion)> =
                writes.iter().map(|(id, new)| (id, new)).collect();
            store_versions(&tx, &staged).await?;
            tx.commit().await.map_err(db_error)?;
            Ok(outcomes)
        })
        .await
    }

    async fn histories(&self, after: Option<&str>) -> Result<Vec<ContextHistory>, StoreError> {
        self.bounded(false, async move {
            let mut client = self.client().await?;
            // One snapshot for both statements: each history is as it was at one moment.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(db_error)?;
            let heads = match after {
                Some(after) => tx.query(SELECT_HEADS_AFTER, &[&after]).await,
                None => tx.query(SELECT_HEADS, &[]).await,
            }
            .map_err(db_error)?;
            let (Some(first), Some(last)) = (heads.first(), heads.last()) else {
                return Ok(Vec::new());
            };
            let (first, last): (&str, &str) = (
                first.try_get(0).map_err(column_error)?,
                last.try_get(0).map_err(column_error)?,
            );
            // The page is every context from its first id to its last: their versions are
            // one range of the versions' key.
            let rows = tx
                .query(SELECT_VERSIONS_BETWEEN, &[&first, &last])
                .await
                .map_err(db_error)?;
            let page = assemble_histories(&heads, &rows)?;
            tx.commit().await.map_err(db_error)?;
            Ok(page)
        })
        .await
    }

    async fn import(&self, histories: Vec<ContextHistory>) -> Result<ImportSummary, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        // Estimates on tables an import is filling are stale; JIT-compiling a keyed lookup
        // for them would cost more than the lookup.
        tx.batch_execute("SET LOCAL jit = off")
            .await
            .map_err(db_error)?;
        // The batch's locks in one statement, in key order (so two imports cannot deadlock),
        // then what is stored under those ids now, in two more.
        let mut keys: Vec<&str> = histories.iter().map(|h| h.id.as_str()).collect();
        keys.sort_unstable();
        tx.execute(LOCK_CONTEXTS, &[&keys])
            .await
            .map_err(db_error)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&keys];
        let (heads, versions) = tokio::try_join!(
            tx.query(SELECT_HEADS_OF, &params),
            tx.query(SELECT_VERSIONS_OF, &params),
        )
        .map_err(db_error)?;
        let stored: std::collections::HashMap<ContextId, ContextHistory> =
            assemble_histories(&heads, &versions)?
                .into_iter()
                .map(|history| (history.id.clone(), history))
                .collect();
        let mut summary = ImportSummary::default();
        let changed: Vec<&ContextHistory> = histories
            .iter()
            .filter(|history| {
                let same = stored.get(&history.id) == Some(*history);
                if same {
                    summary.unchanged += 1;
                } else {
                    summary.imported += 1;
                }
                !same
            })
            .collect();
        replace_histories(&tx, &changed).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(summary)
    }
}

/// Takes the import's locks: one per id of `$1`, in the array's order.
const LOCK_CONTEXTS: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::text[]) AS k";

/// The heads of the ids in `$1`, in key order.
const SELECT_HEADS_OF: &str = "
    SELECT context_id, version, created_at, updated_at FROM factory_context_metadata
    WHERE context_id = ANY($1) ORDER BY context_id";

/// Every kept version of the ids in `$1`, in key order; the owner's id last. Looked up id by
/// id: the `LIMIT` keeps the LATERAL subquery from being pulled up into a join, which on a
/// growing table Postgres has not analyzed (no autovacuum) planned as a sequential scan of
/// every version per batch, and made an import of 1M contexts with 5 versions quadratic.
const SELECT_VERSIONS_OF: &str = "
    SELECT v.version, v.source, v.parent_id, v.data, v.metadata, v.embedding,
           v.change_type, v.changed_by, v.changed_at, v.size_bytes, v.context_id
    FROM unnest($1::text[]) AS k(id)
    CROSS JOIN LATERAL (
        SELECT * FROM factory_context_versions v
        WHERE v.context_id = k.id
        ORDER BY v.version LIMIT 1000000) v
    ORDER BY v.context_id, v.version";

/// Histories from heads (`context_id, version, created_at, updated_at`) and their versions
/// (the columns of `record_from_row`, the owner's id last), both in key order.
fn assemble_histories(heads: &[Row], versions: &[Row]) -> Result<Vec<ContextHistory>, StoreError> {
    let mut rows = versions.iter().peekable();
    let mut page = Vec::with_capacity(heads.len());
    for head in heads {
        let id = ContextId::parse(head.try_get::<_, &str>(0).map_err(column_error)?)
            .map_err(|e| corrupt(format!("a stored context id: {e}")))?;
        let mut versions = Vec::new();
        while let Some(row) = rows.next_if(|row| {
            row.try_get::<_, &str>(10)
                .is_ok_and(|owner| owner == id.as_str())
        }) {
            versions.push(record_from_row(&id, row)?);
        }
        page.push(ContextHistory {
            version: head.try_get(1).map_err(column_error)?,
            created_at: head.try_get(2).map_err(column_error)?,
            updated_at: head.try_get(3).map_err(column_error)?,
            id,
            versions,
        });
    }
    Ok(page)
}

/// `SELECT_CURRENT` for many ids at once, with the id first.
const SELECT_CURRENTS: &str = "
    SELECT m.context_id, m.version, m.source, m.parent_id, m.size_bytes, m.created_at,
           m.updated_at, v.data, v.metadata, v.embedding, m.synced_at,
           s.embedding AS server_embedding
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    LEFT JOIN contextd_server_embeddings s
        ON s.context_id = m.context_id AND s.version = m.version
    WHERE m.context_id = ANY($1)";

const SELECT_CURRENT_VERSION: &str =
    "SELECT version, created_at FROM factory_context_metadata WHERE context_id = $1";

const SELECT_VERSION: &str = "
    SELECT version, source, parent_id, data, metadata, embedding,
           change_type, changed_by, changed_at, size_bytes
    FROM factory_context_versions
    WHERE context_id = $1 AND version = $2";

const APPEND_OUTBOX: &str = "
    INSERT INTO factory_sync_outbox (context_id, version, incarnation, op, change_type)
    VALUES ($1, $2, $3, $4, $5)";

const DELETE_CONTEXT: &str = "DELETE FROM factory_context_metadata WHERE context_id = $1";

/// The most rows one `list` call returns: a page of the largest size, plus the one that says
/// whether another page follows.
pub const MAX_LIST_ROWS: usize = crate::domain::PageLimit::MAX + 1;

/// The statement of one page of `list`, one per shape so that each can use its index.
///
/// The page of metadata rows is chosen first, by an index range scan from the cursor, and
/// each row's version is then read by its key. Two things keep every plan, generic or custom,
/// at the rows of the page:
/// - the LATERAL subquery with its `LIMIT 1` cannot be pulled up into a join, so no plan can
///   turn it into a merge join that reads every version before the cursor (which made paging
///   through a large store quadratic once its tables were ANALYZEd and Postgres switched to
///   its generic plan, whose estimates ignore the cursor);
/// - the inner page has a constant bound ([`MAX_LIST_ROWS`]) the planner sees, so it scans the
///   index rather than sorting the table (a generic plan guesses a tenth of the table for a
///   `LIMIT $n`); the outer `LIMIT $n` then pulls only the rows asked for.
pub fn list_statement(shape: ListShape) -> String {
    let (filter, limit) = shape.filter('$');
    let bound = MAX_LIST_ROWS;
    format!(
        "SELECT m.context_id, m.version, m.source, m.parent_id, v.metadata,
                m.created_at, m.updated_at, m.size_bytes, m.has_embedding,
                EXISTS (SELECT 1 FROM contextd_server_embeddings s
                        WHERE s.context_id = m.context_id AND s.version = m.version)
         FROM (SELECT context_id, version, source, parent_id, created_at, updated_at,
                      size_bytes, has_embedding
               FROM factory_context_metadata m{filter}
               ORDER BY m.context_id LIMIT {bound}) m
         CROSS JOIN LATERAL (
             SELECT v.metadata FROM factory_context_versions v
             WHERE v.context_id = m.context_id AND v.version = m.version
             LIMIT 1) v
         ORDER BY m.context_id LIMIT ${limit}"
    )
}

const LIST_VERSIONS: &str = "
    SELECT version, change_type, changed_by, changed_at, size_bytes
    FROM factory_context_versions
    WHERE context_id = $1 AND version < $2
    ORDER BY version DESC
    LIMIT $3";

const COUNTS: &str = "
    SELECT (SELECT count(*) FROM factory_context_metadata),
           (SELECT count(*) FROM factory_context_versions)";

/// The first failure of statements pipelined in one transaction, in the order they were sent:
/// the statements after a failed one only report that the transaction was aborted.
fn first_failure<const N: usize>(
    results: [Result<u64, tokio_postgres::Error>; N],
) -> Result<(), StoreError> {
    for result in results {
        result.map_err(db_error)?;
    }
    Ok(())
}

/// Maps a row on the CPU pool when its `size_bytes` column (`size_column`) says the JSON in it
/// is large: reading `jsonb` back canonicalizes it, which must not hold a runtime worker.
async fn off_runtime<T: Send + 'static>(
    row: &Row,
    size_column: usize,
    map: impl FnOnce(&Row) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let size: i64 = row.try_get(size_column).map_err(column_error)?;
    let row = row.clone();
    crate::cpu::run_sized(usize::try_from(size).unwrap_or(usize::MAX), move || {
        map(&row)
    })
    .await
}

fn record_from_row(id: &ContextId, row: &Row) -> Result<VersionRecord, StoreError> {
    let change_type: &str = row.try_get(6).map_err(column_error)?;
    Ok(VersionRecord {
        id: id.clone(),
        info: VersionInfo {
            version: row.try_get(0).map_err(column_error)?,
            change_type: ChangeType::parse(change_type)
                .ok_or_else(|| corrupt(format!("change_type {change_type:?}")))?,
            changed_by: row.try_get(7).map_err(column_error)?,
            changed_at: row.try_get(8).map_err(column_error)?,
            size_bytes: row.try_get(9).map_err(column_error)?,
        },
        content: Content {
            source: source(row.try_get(1).map_err(column_error)?)?,
            parent_id: parent(row.try_get(2).map_err(column_error)?)?,
            data: object(row.try_get(3).map_err(column_error)?)?,
            metadata: object(row.try_get(4).map_err(column_error)?)?,
            embedding: row.try_get(5).map_err(column_error)?,
        },
    })
}

fn info_from_row(row: &Row) -> Result<VersionInfo, StoreError> {
    let change_type: &str = row.try_get(1).map_err(column_error)?;
    Ok(VersionInfo {
        version: row.try_get(0).map_err(column_error)?,
        change_type: ChangeType::parse(change_type)
            .ok_or_else(|| corrupt(format!("change_type {change_type:?}")))?,
        changed_by: row.try_get(2).map_err(column_error)?,
        changed_at: row.try_get(3).map_err(column_error)?,
        size_bytes: row.try_get(4).map_err(column_error)?,
    })
}

fn summary_from_row(row: &Row) -> Result<ContextSummary, StoreError> {
    let id: &str = row.try_get(0).map_err(column_error)?;
    Ok(ContextSummary {
        id: ContextId::parse(id).map_err(|e| corrupt(format!("context_id {id:?}: {e}")))?,
        version: row.try_get(1).map_err(column_error)?,
        source: source(row.try_get(2).map_err(column_error)?)?,
        parent_id: parent(row.try_get(3).map_err(column_error)?)?,
        metadata: object(row.try_get(4).map_err(column_error)?)?,
        created_at: row.try_get(5).map_err(column_error)?,
        updated_at: row.try_get(6).map_err(column_error)?,
        size_bytes: row.try_get(7).map_err(column_error)?,
        embedding_source: EmbeddingSource::of(
            row.try_get(8).map_err(column_error)?,
            row.try_get(9).map_err(column_error)?,
        ),
    })
}

/// Replaces whatever is stored under each history's id with exactly that history, every
/// statement of the batch pipelined: one round trip, whatever its size. Statements go out in
/// order, so a context's old rows go before its new head, and its head before its versions.
async fn replace_histories(
    tx: &deadpool_postgres::Transaction<'_>,
    histories: &[&ContextHistory],
) -> Result<(), StoreError> {
    if histories.is_empty() {
        return Ok(());
    }
    let (delete, upsert, insert, outbox) = tokio::try_join!(
        tx.prepare_cached(DELETE_CONTEXT),
        tx.prepare_cached(UPSERT_METADATA),
        tx.prepare_cached(INSERT_VERSION),
        tx.prepare_cached(APPEND_OUTBOX),
    )
    .map_err(db_error)?;
    /// The values of one history's statements, owned here so the parameters can borrow them.
    struct Staged<'a> {
        history: &'a ContextHistory,
        key: &'a str,
        /// The current version's change type, for the outbox row.
        change_type: &'static str,
        source: &'static str,
        parent: Option<&'a str>,
        size: i64,
        has_embedding: bool,
        versions: Vec<StagedVersion<'a>>,
    }
    struct StagedVersion<'a> {
        record: &'a VersionRecord,
        source: &'static str,
        parent: Option<&'a str>,
        data: JsonbRef<'a>,
        metadata: JsonbRef<'a>,
        change_type: &'static str,
        size: i64,
    }
    const NO_SYNC: Option<DateTime<Utc>> = None;
    let staged = histories
        .iter()
        .map(|history| {
            let current = history.current().ok_or_else(|| {
                StoreError::Internal(anyhow!("a history without its current version"))
            })?;
            let content = &current.content;
            Ok(Staged {
                history,
                key: history.id.as_str(),
                change_type: current.info.change_type.as_str(),
                source: content.source.as_str(),
                parent: content.parent_id.as_ref().map(ContextId::as_str),
                size: content.size_bytes() as i64,
                has_embedding: content.embedding.is_some(),
                versions: history
                    .versions
                    .iter()
                    .map(|record| StagedVersion {
                        record,
                        source: record.content.source.as_str(),
                        parent: record.content.parent_id.as_ref().map(ContextId::as_str),
                        data: JsonbRef(&record.content.data),
                        metadata: JsonbRef(&record.content.metadata),
                        change_type: record.info.change_type.as_str(),
                        size: record.content.size_bytes() as i64,
                    })
                    .collect(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut statements: Vec<(&tokio_postgres::Statement, Vec<Param<'_>>)> = Vec::new();
    for s in &staged {
        let h = s.history;
        statements.push((&delete, vec![&s.key]));
        statements.push((
            &upsert,
            vec![
                &s.key,
                &h.version,
                &s.source,
                &s.parent,
                &s.size,
                &s.has_embedding,
                &h.created_at,
                &h.updated_at,
                &NO_SYNC,
            ],
        ));
        for v in &s.versions {
            statements.push((
                &insert,
                vec![
                    &s.key,
                    &v.record.info.version,
                    &v.source,
                    &v.parent,
                    &v.data,
                    &v.metadata,
                    &v.record.content.embedding,
                    &v.change_type,
                    &v.record.info.changed_by,
                    &v.record.info.changed_at,
                    &v.size,
                ],
            ));
        }
        statements.push((
            &outbox,
            vec![&s.key, &h.version, &h.created_at, &"upsert", &s.change_type],
        ));
    }
    execute_pipelined(tx, &statements).await
}

type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);

/// Sends every statement at once, in order, on the transaction's connection (one round trip),
/// then fails with the first error if any failed.
async fn execute_pipelined(
    tx: &deadpool_postgres::Transaction<'_>,
    statements: &[(&tokio_postgres::Statement, Vec<Param<'_>>)],
) -> Result<(), StoreError> {
    let results = futures_util::future::join_all(
        statements
            .iter()
            .map(|(statement, params)| tx.execute(*statement, params)),
    )
    .await;
    for result in results {
        result.map_err(db_error)?;
    }
    Ok(())
}

/// The rules of a batch, in order, against the current rows of its contexts: each decision
/// sees what the ones before it wrote. The outcomes, and the versions to store.
#[allow(clippy::type_complexity)]
fn decide_batch(
    rows: Vec<Row>,
    items: Vec<(ContextId, Decide)>,
) -> Result<(Vec<WriteOutcome>, Vec<(ContextId, NewVersion)>), StoreError> {
    let mut state: std::collections::HashMap<ContextId, (Context, Option<DateTime<Utc>>)> =
        std::collections::HashMap::new();
    for row in rows {
        let raw: &str = row.try_get(0).map_err(column_error)?;
        let id = ContextId::parse(raw).map_err(|e| corrupt(format!("id {raw:?}: {e}")))?;
        let context = context_from_columns(&id, &row, 1)?;
        let synced_at = row.try_get(10).map_err(column_error)?;
        state.insert(id, (context, synced_at));
    }
    let mut outcomes = Vec::with_capacity(items.len());
    let mut writes: Vec<(ContextId, NewVersion)> = Vec::new();
    for (id, decide) in items {
        let current = state.get(&id);
        let decision = decide(WriteView {
            current: current.map(|(context, _)| context),
            loaded: None,
            synced_at: current.and_then(|(_, synced_at)| *synced_at),
        });
        let outcome = match decision.resolve(|| current.map(|(context, _)| context.clone()))? {
            Resolved::Done(outcome) => outcome,
            Resolved::Store(new) => {
                let created = current.is_none();
                let context = new.clone().into_context(&id);
                state.insert(id.clone(), (context.clone(), new.synced_at));
                writes.push((id, new));
                WriteOutcome::Written { context, created }
            }
        };
        outcomes.push(outcome);
    }
    Ok((outcomes, writes))
}

/// Stores new versions in the open transaction: head, version row, pruning, outbox row, L3
/// entry and the commit notification of each, all pipelined, so that a write of one version or
/// of a thousand costs one round trip. Statements go out in order: a context's head before
/// its version row (the foreign key), and versions of one context in the order given.
async fn store_versions(
    tx: &deadpool_postgres::Transaction<'_>,
    writes: &[(&ContextId, &NewVersion)],
) -> Result<(), StoreError> {
    let (upsert, insert, prune, outbox, cache, notify) = tokio::try_join!(
        tx.prepare_cached(UPSERT_METADATA),
        tx.prepare_cached(INSERT_VERSION),
        tx.prepare_cached(PRUNE_VERSIONS),
        tx.prepare_cached(APPEND_OUTBOX),
        tx.prepare_cached(UPSERT_CACHE_ENTRY),
        tx.prepare_cached(NOTIFY_CHANGE),
    )
    .map_err(db_error)?;
    let staged: Vec<Staged<'_>> = writes
        .iter()
        .map(|(id, new)| Staged::new(id, new))
        .collect();
    let mut statements: Vec<(&tokio_postgres::Statement, Vec<Param<'_>>)> = Vec::new();
    for s in &staged {
        let new = s.new;
        statements.push((
            &upsert,
            vec![
                &s.key,
                &new.version,
                &s.source,
                &s.parent,
                &s.size,
                &s.has_embedding,
                &new.created_at,
                &new.updated_at,
                &new.synced_at,
            ],
        ));
        statements.push((
            &insert,
            vec![
                &s.key,
                &new.version,
                &s.source,
                &s.parent,
                &s.data,
                &s.metadata,
                &new.content.embedding,
                &s.change_type,
                &new.changed_by,
                &new.updated_at,
                &s.size,
            ],
        ));
        statements.push((&prune, vec![&s.key, &new.keep_from]));
        statements.push((
            &outbox,
            vec![&s.key, &new.version, &new.created_at, &s.op, &s.change_type],
        ));
        if let Some(entry) = &new.cache_entry {
            statements.push((
                &cache,
                vec![&s.key, &new.version, &entry.value, &entry.expires_at],
            ));
        }
        statements.push((&notify, vec![&s.notice]));
    }
    execute_pipelined(tx, &statements).await
}

/// A page of heads for `histories`. The page size is a constant the planner sees, so even a
/// generic plan walks the key's index from the cursor.
const SELECT_HEADS: &str = const_format_heads!("");
const SELECT_HEADS_AFTER: &str = const_format_heads!("WHERE context_id > $1");

/// Every kept version of the contexts whose ids lie from `$1` to `$2`, in key order; the
/// owner's id last.
const SELECT_VERSIONS_BETWEEN: &str = "
    SELECT version, source, parent_id, data, metadata, embedding,
           change_type, changed_by, changed_at, size_bytes, context_id
    FROM factory_context_versions
    WHERE context_id >= $1 AND context_id <= $2
    ORDER BY context_id, version";
