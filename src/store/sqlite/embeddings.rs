//! The SQLite store: what the indexer reads (current contexts, embeddings of another length)
//! and keeps (how far each indexer has applied the outbox).

use super::*;
use crate::store::ServerEmbedding;

#[async_trait]
impl EmbeddingStore for SqliteStore {
    async fn current_contexts(
        &self,
        after: Option<&str>,
        limit: usize,
        embedded_only: bool,
    ) -> Result<Vec<Context>, StoreError> {
        let after = after.unwrap_or("").to_owned();
        self.read_with(move |conn| {
            let mut statement = conn.prepare_cached(CURRENT_CONTEXTS).map_err(db_error)?;
            let rows = statement
                .query_map(
                    rusqlite::params![after, limit as i64, embedded_only],
                    |row| {
                        let id =
                            context_id(row, 10)?.ok_or_else(|| corrupt("a null context_id"))?;
                        context_from_row(&id, row)
                    },
                )
                .map_err(db_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
        })
        .await
    }

    async fn other_length_embeddings(
        &self,
        dimensions: usize,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(ContextId, usize)>, StoreError> {
        let after = after.unwrap_or("").to_owned();
        self.read_with(move |conn| {
            let mut statement = conn
                .prepare_cached(OTHER_LENGTH_EMBEDDINGS)
                .map_err(db_error)?;
            let rows = statement
                .query_map(
                    rusqlite::params![dimensions as i64, after, limit as i64],
                    |row| {
                        let id = context_id(row, 0)?.ok_or_else(|| corrupt("a null context_id"))?;
                        let length: i64 = row.get(1)?;
                        Ok((id, length.max(0) as usize))
                    },
                )
                .map_err(db_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
        })
        .await
    }

    async fn drop_embeddings(
        &self,
        ids: &[ContextId],
        dimensions: usize,
    ) -> Result<Vec<ContextId>, StoreError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.write_with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_error)?;
            let mut dropped = Vec::new();
            {
                let mut drop = tx.prepare_cached(DROP_EMBEDDING).map_err(db_error)?;
                let mut clear = tx.prepare_cached(CLEAR_HAS_EMBEDDING).map_err(db_error)?;
                for id in ids {
                    let changed = drop
                        .execute(rusqlite::params![id.as_str(), dimensions as i64])
                        .map_err(db_error)?;
                    if changed > 0 {
                        clear.execute([id.as_str()]).map_err(db_error)?;
                        dropped.push(id);
                    }
                }
            }
            tx.commit().map_err(db_error)?;
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
        let (after, model) = (after.unwrap_or("").to_owned(), model.to_owned());
        self.read_with(move |conn| {
            let mut statement = conn.prepare_cached(UNEMBEDDED).map_err(db_error)?;
            let rows = statement
                .query_map(
                    rusqlite::params![dimensions as i64, after, limit as i64, model],
                    |row| context_id(row, 0)?.ok_or_else(|| corrupt("a null context_id")),
                )
                .map_err(db_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
        })
        .await
    }

    async fn server_embeddings(
        &self,
        ids: &[ContextId],
    ) -> Result<Vec<ServerEmbedding>, StoreError> {
        let ids = ids.to_vec();
        self.read_with(move |conn| {
            let mut statement = conn.prepare_cached(SERVER_EMBEDDING).map_err(db_error)?;
            let mut found = Vec::new();
            for id in ids {
                let row = statement
                    .query_row([id.as_str()], |row| {
                        let hash: Vec<u8> = row.get(1)?;
                        Ok(ServerEmbedding {
                            id: id.clone(),
                            version: row.get(0)?,
                            model: row.get(3)?,
                            text_sha256: hash
                                .try_into()
                                .map_err(|_| corrupt("a text_sha256 not of 32 bytes"))?,
                            vector: embedding(row, 2)?.unwrap_or_default(),
                        })
                    })
                    .optional()
                    .map_err(db_error)?;
                found.extend(row);
            }
            Ok(found)
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
        let embeddings = embeddings.to_vec();
        self.write_with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_error)?;
            let mut stored = Vec::new();
            {
                let mut put = tx.prepare_cached(PUT_SERVER_EMBEDDING).map_err(db_error)?;
                let mut uncache = tx.prepare_cached(UNCACHE).map_err(db_error)?;
                for e in embeddings {
                    let changed = put
                        .execute(rusqlite::params![
                            e.id.as_str(),
                            e.version,
                            &e.text_sha256[..],
                            embedding_blob(&Some(e.vector)),
                            e.model,
                        ])
                        .map_err(db_error)?;
                    if changed > 0 {
                        uncache.execute([e.id.as_str()]).map_err(db_error)?;
                        stored.push(e.id);
                    }
                }
            }
            tx.commit().map_err(db_error)?;
            Ok(stored)
        })
        .await
    }

    async fn drop_server_embeddings(&self, dimensions: usize) -> Result<u64, StoreError> {
        self.write_with(move |conn| {
            conn.execute(DROP_SERVER_EMBEDDINGS, [dimensions as i64])
                .map(|n| n as u64)
                .map_err(db_error)
        })
        .await
    }

    async fn indexer_cursor(&self, name: &str) -> Result<i64, StoreError> {
        let name = name.to_owned();
        self.read_with(move |conn| {
            conn.query_row(INDEXER_CURSOR, [name], |row| row.get(0))
                .optional()
                .map(|seq| seq.unwrap_or(0))
                .map_err(db_error)
        })
        .await
    }

    async fn set_indexer_cursor(&self, name: &str, seq: i64) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write_with(move |conn| {
            conn.prepare_cached(SET_INDEXER_CURSOR)
                .and_then(|mut s| s.execute(rusqlite::params![name, seq]))
                .map(|_| ())
                .map_err(db_error)
        })
        .await
    }
}

/// Current contexts after `?1`, at most `?2`; only those with an embedding (the client's or
/// the server's) when `?3`.
const CURRENT_CONTEXTS: &str = "
    SELECT m.version, m.source, m.parent_id, m.size_bytes, m.created_at, m.updated_at,
           v.data, v.metadata, v.embedding, m.synced_at, m.context_id,
           s.embedding AS server_embedding
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    LEFT JOIN contextd_server_embeddings s
        ON s.context_id = m.context_id AND s.version = m.version
    WHERE (m.has_embedding OR s.embedding IS NOT NULL OR NOT ?3) AND m.context_id > ?1
    ORDER BY m.context_id
    LIMIT ?2";

/// Ids after `?2` (at most `?3`) whose current version has no client embedding and no server
/// embedding of `?1` floats made for it by the model `?4`.
const UNEMBEDDED: &str = "
    SELECT m.context_id
    FROM factory_context_metadata m
    LEFT JOIN contextd_server_embeddings s ON s.context_id = m.context_id
    WHERE NOT m.has_embedding AND m.context_id > ?2
      AND (s.context_id IS NULL OR s.version <> m.version OR length(s.embedding) / 4 <> ?1
           OR s.model <> ?4)
    ORDER BY m.context_id
    LIMIT ?3";

const SERVER_EMBEDDING: &str =
    "SELECT version, text_sha256, embedding, model FROM contextd_server_embeddings
     WHERE context_id = ?1";

/// The server embedding of `?1` at version `?2`, if that is still the current version and it
/// has no client embedding.
const PUT_SERVER_EMBEDDING: &str = "
    INSERT INTO contextd_server_embeddings (context_id, version, text_sha256, embedding, model)
    SELECT context_id, version, ?3, ?4, ?5 FROM factory_context_metadata
    WHERE context_id = ?1 AND version = ?2 AND NOT has_embedding
    ON CONFLICT (context_id) DO UPDATE SET
        version = excluded.version,
        model = excluded.model,
        text_sha256 = excluded.text_sha256,
        embedding = excluded.embedding,
        embedded_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

const UNCACHE: &str = "DELETE FROM factory_cache_records WHERE context_id = ?1";

const DROP_SERVER_EMBEDDINGS: &str =
    "DELETE FROM contextd_server_embeddings WHERE length(embedding) / 4 <> ?1";

/// Current embeddings whose length is not `?1` (a blob holds 4 bytes per value).
const OTHER_LENGTH_EMBEDDINGS: &str = "
    SELECT m.context_id, length(v.embedding) / 4
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    WHERE m.has_embedding AND v.embedding IS NOT NULL AND length(v.embedding) <> ?1 * 4
      AND m.context_id > ?2
    ORDER BY m.context_id
    LIMIT ?3";

/// Nulls the current version's embedding of `?1` if its length is still not `?2`.
const DROP_EMBEDDING: &str = "
    UPDATE factory_context_versions SET embedding = NULL
    WHERE context_id = ?1
      AND version = (SELECT version FROM factory_context_metadata WHERE context_id = ?1)
      AND embedding IS NOT NULL AND length(embedding) <> ?2 * 4";

const CLEAR_HAS_EMBEDDING: &str =
    "UPDATE factory_context_metadata SET has_embedding = 0 WHERE context_id = ?1";

const INDEXER_CURSOR: &str = "SELECT seq FROM contextd_indexer_state WHERE name = ?1";

const SET_INDEXER_CURSOR: &str = "
    INSERT INTO contextd_indexer_state (name, seq) VALUES (?1, ?2)
    ON CONFLICT (name) DO UPDATE SET
        seq = max(seq, excluded.seq),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
