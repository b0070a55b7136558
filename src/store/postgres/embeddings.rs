//! The Postgres store: what the indexer reads (current contexts, embeddings of another length)
//! and keeps (how far each indexer has applied the outbox).

use super::*;

#[async_trait]
impl EmbeddingStore for PostgresStore {
    async fn current_contexts(
        &self,
        after: Option<&str>,
        limit: usize,
        embedded_only: bool,
    ) -> Result<Vec<Context>, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    CURRENT_CONTEXTS,
                    &[&after.unwrap_or(""), &(limit as i64), &embedded_only],
                )
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|row| {
                    let raw: &str = row.try_get(10).map_err(column_error)?;
                    let id =
                        ContextId::parse(raw).map_err(|e| corrupt(format!("id {raw:?}: {e}")))?;
                    context_from_row(&id, row)
                })
                .collect()
        })
        .await
    }

    async fn other_length_embeddings(
        &self,
        dimensions: usize,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(ContextId, usize)>, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let dimensions = i32::try_from(dimensions).unwrap_or(i32::MAX);
            let rows = client
                .query(
                    OTHER_LENGTH_EMBEDDINGS,
                    &[&dimensions, &after.unwrap_or(""), &(limit as i64)],
                )
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|row| {
                    let raw: &str = row.try_get(0).map_err(column_error)?;
                    let id =
                        ContextId::parse(raw).map_err(|e| corrupt(format!("id {raw:?}: {e}")))?;
                    let length: i32 = row.try_get(1).map_err(column_error)?;
                    Ok((id, length.max(0) as usize))
                })
                .collect()
        })
        .await
    }

    async fn drop_embeddings(
        &self,
        ids: &[ContextId],
        dimensions: usize,
    ) -> Result<Vec<ContextId>, StoreError> {
        let mut keys: Vec<&str> = ids.iter().map(ContextId::as_str).collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded(true, async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let lock = tx.prepare_cached(LOCK_CONTEXT).await.map_err(db_error)?;
            // In id order, as every batch locks, so that this never deadlocks with a write.
            for key in &keys {
                tx.execute(&lock, &[key]).await.map_err(db_error)?;
            }
            let dimensions = i32::try_from(dimensions).unwrap_or(i32::MAX);
            let rows = tx
                .query(DROP_EMBEDDINGS, &[&keys, &dimensions])
                .await
                .map_err(db_error)?;
            let dropped = rows
                .iter()
                .map(|row| {
                    let raw: &str = row.try_get(0).map_err(column_error)?;
                    ContextId::parse(raw).map_err(|e| corrupt(format!("id {raw:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await.map_err(db_error)?;
            Ok(dropped)
        })
        .await
    }

    async fn indexer_cursor(&self, name: &str) -> Result<i64, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let row = client
                .query_opt(INDEXER_CURSOR, &[&name])
                .await
                .map_err(db_error)?;
            row.map_or(Ok(0), |row| row.try_get(0).map_err(column_error))
        })
        .await
    }

    async fn set_indexer_cursor(&self, name: &str, seq: i64) -> Result<(), StoreError> {
        self.bounded(true, async move {
            let client = self.client().await?;
            client
                .execute(SET_INDEXER_CURSOR, &[&name, &seq])
                .await
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }
}

/// Current contexts after `$1`, at most `$2`; only those with an embedding when `$3`.
const CURRENT_CONTEXTS: &str = "
    SELECT m.version, m.source, m.parent_id, m.size_bytes, m.created_at, m.updated_at,
           v.data, v.metadata, v.embedding, m.synced_at, m.context_id
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    WHERE (m.has_embedding OR NOT $3) AND m.context_id > $1
    ORDER BY m.context_id
    LIMIT $2";

/// Current embeddings whose length is not `$1`.
const OTHER_LENGTH_EMBEDDINGS: &str = "
    SELECT m.context_id, cardinality(v.embedding)
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    WHERE m.has_embedding AND v.embedding IS NOT NULL AND cardinality(v.embedding) <> $1
      AND m.context_id > $2
    ORDER BY m.context_id
    LIMIT $3";

/// Nulls the current version's embedding of the ids in `$1` whose length is still not `$2`,
/// clears their `has_embedding`, and drops their L3 entries (which hold the embedding); the
/// ids dropped. Run with the contexts locked.
const DROP_EMBEDDINGS: &str = "
    WITH dropped AS (
        UPDATE factory_context_versions v SET embedding = NULL
        FROM factory_context_metadata m
        WHERE m.context_id = ANY($1) AND v.context_id = m.context_id AND v.version = m.version
          AND v.embedding IS NOT NULL AND cardinality(v.embedding) <> $2
        RETURNING v.context_id
    ), flagged AS (
        UPDATE factory_context_metadata m SET has_embedding = false
        FROM dropped d WHERE m.context_id = d.context_id
    ), uncached AS (
        DELETE FROM factory_cache_records c USING dropped d WHERE c.context_id = d.context_id
    )
    SELECT context_id FROM dropped ORDER BY context_id";

const INDEXER_CURSOR: &str = "SELECT seq FROM contextd_indexer_state WHERE name = $1";

const SET_INDEXER_CURSOR: &str = "
    INSERT INTO contextd_indexer_state (name, seq) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET
        seq = greatest(contextd_indexer_state.seq, EXCLUDED.seq),
        updated_at = now()";
