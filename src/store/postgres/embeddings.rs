//! The Postgres store: what the indexer reads (current contexts, embeddings of another length)
//! and keeps (how far each indexer has applied the outbox).

use super::*;
use crate::store::ServerEmbedding;

/// The context id in column `n`.
fn id_column(row: &Row, n: usize) -> Result<ContextId, StoreError> {
    let raw: &str = row.try_get(n).map_err(column_error)?;
    ContextId::parse(raw).map_err(|e| corrupt(format!("id {raw:?}: {e}")))
}

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

    async fn unembedded(
        &self,
        model: &str,
        dimensions: usize,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ContextId>, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let dimensions = i32::try_from(dimensions).unwrap_or(i32::MAX);
            let rows = client
                .query(
                    UNEMBEDDED,
                    &[&dimensions, &after.unwrap_or(""), &(limit as i64), &model],
                )
                .await
                .map_err(db_error)?;
            rows.iter().map(|row| id_column(row, 0)).collect()
        })
        .await
    }

    async fn server_embeddings(
        &self,
        ids: &[ContextId],
    ) -> Result<Vec<ServerEmbedding>, StoreError> {
        let keys: Vec<&str> = ids.iter().map(ContextId::as_str).collect();
        self.bounded(false, async move {
            let client = self.client().await?;
            let rows = client
                .query(SERVER_EMBEDDINGS, &[&keys])
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|row| {
                    let hash: &[u8] = row.try_get(2).map_err(column_error)?;
                    Ok(ServerEmbedding {
                        id: id_column(row, 0)?,
                        version: row.try_get(1).map_err(column_error)?,
                        model: row.try_get(4).map_err(column_error)?,
                        text_sha256: hash
                            .try_into()
                            .map_err(|_| corrupt("a text_sha256 not of 32 bytes"))?,
                        vector: row.try_get(3).map_err(column_error)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn put_server_embeddings(
        &self,
        embeddings: &[ServerEmbedding],
    ) -> Result<Vec<ContextId>, StoreError> {
        if embeddings.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded(true, async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let put = tx
                .prepare_cached(PUT_SERVER_EMBEDDING)
                .await
                .map_err(db_error)?;
            let notify = tx.prepare_cached(NOTIFY_CHANGE).await.map_err(db_error)?;
            let mut stored = Vec::with_capacity(embeddings.len());
            for e in embeddings {
                let row = tx
                    .query_opt(
                        &put,
                        &[
                            &e.id.as_str(),
                            &e.version,
                            &&e.text_sha256[..],
                            &e.vector,
                            &e.model,
                        ],
                    )
                    .await
                    .map_err(db_error)?;
                if let Some(row) = row {
                    let notice = Committed {
                        created_at: row.try_get(0).map_err(column_error)?,
                        version: e.version,
                        server_embedded: true,
                    }
                    .payload(&e.id);
                    tx.execute(&notify, &[&notice]).await.map_err(db_error)?;
                    stored.push(e.id.clone());
                }
            }
            tx.commit().await.map_err(db_error)?;
            Ok(stored)
        })
        .await
    }

    async fn drop_server_embeddings(&self, dimensions: usize) -> Result<u64, StoreError> {
        self.bounded(true, async move {
            let client = self.client().await?;
            let dimensions = i32::try_from(dimensions).unwrap_or(i32::MAX);
            client
                .execute(DROP_SERVER_EMBEDDINGS, &[&dimensions])
                .await
                .map_err(db_error)
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

/// Current contexts after `$1`, at most `$2`; only those with an embedding (the client's or
/// the server's) when `$3`.
const CURRENT_CONTEXTS: &str = "
    SELECT m.version, m.source, m.parent_id, m.size_bytes, m.created_at, m.updated_at,
           v.data, v.metadata, v.embedding, m.synced_at, m.context_id,
           s.embedding AS server_embedding
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    LEFT JOIN contextd_server_embeddings s
        ON s.context_id = m.context_id AND s.version = m.version
    WHERE (m.has_embedding OR s.embedding IS NOT NULL OR NOT $3) AND m.context_id > $1
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

/// Ids after `$2` (at most `$3`) whose current version has no client embedding and no server
/// embedding of `$1` floats made for it by the model `$4`.
const UNEMBEDDED: &str = "
    SELECT m.context_id
    FROM factory_context_metadata m
    LEFT JOIN contextd_server_embeddings s ON s.context_id = m.context_id
    WHERE NOT m.has_embedding AND m.context_id > $2
      AND (s.context_id IS NULL OR s.version <> m.version OR cardinality(s.embedding) <> $1
           OR s.model <> $4)
    ORDER BY m.context_id
    LIMIT $3";

const SERVER_EMBEDDINGS: &str = "
    SELECT context_id, version, text_sha256, embedding, model
    FROM contextd_server_embeddings WHERE context_id = ANY($1)";

/// The server embedding of `$1` at version `$2`, if that is still the current version and it
/// has no client embedding; the L3 entry, made before it, goes. Returns the incarnation.
const PUT_SERVER_EMBEDDING: &str = "
    WITH head AS (
        SELECT context_id, version, created_at FROM factory_context_metadata
        WHERE context_id = $1 AND version = $2 AND NOT has_embedding
    ), put AS (
        INSERT INTO contextd_server_embeddings
            (context_id, version, text_sha256, embedding, model)
        SELECT context_id, version, $3, $4, $5 FROM head
        ON CONFLICT (context_id) DO UPDATE SET
            version = EXCLUDED.version,
            model = EXCLUDED.model,
            text_sha256 = EXCLUDED.text_sha256,
            embedding = EXCLUDED.embedding,
            embedded_at = now()
        RETURNING context_id
    ), uncached AS (
        DELETE FROM factory_cache_records c USING put p WHERE c.context_id = p.context_id
    )
    SELECT h.created_at FROM head h JOIN put p ON p.context_id = h.context_id";

const DROP_SERVER_EMBEDDINGS: &str =
    "DELETE FROM contextd_server_embeddings WHERE cardinality(embedding) <> $1";

const INDEXER_CURSOR: &str = "SELECT seq FROM contextd_indexer_state WHERE name = $1";

const SET_INDEXER_CURSOR: &str = "
    INSERT INTO contextd_indexer_state (name, seq) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET
        seq = greatest(contextd_indexer_state.seq, EXCLUDED.seq),
        updated_at = now()";
