//! The Postgres store: the L3 cache table, a compressed record of each current version.

use super::*;

#[async_trait]
impl CacheTable for PostgresStore {
    fn has_cache_table(&self) -> bool {
        true
    }

    async fn cache_get(&self, id: &ContextId) -> Result<Option<Vec<u8>>, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(SELECT_CACHE_ENTRY)
                .await
                .map_err(db_error)?;
            let row = client
                .query_opt(&statement, &[&id.as_str()])
                .await
                .map_err(db_error)?;
            row.map(|row| row.try_get(0).map_err(column_error))
                .transpose()
        })
        .await
    }

    async fn cache_touch(&self, counts: Vec<(ContextId, i64)>) -> Result<(), StoreError> {
        self.bounded(true, async move {
            if counts.is_empty() {
                return Ok(());
            }
            let (keys, ns): (Vec<String>, Vec<i64>) = counts
                .into_iter()
                .map(|(id, n)| (id.as_str().to_owned(), n))
                .unzip();
            let client = self.client().await?;
            client
                .execute(TOUCH_CACHE_ENTRIES, &[&keys, &ns])
                .await
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    async fn cache_cleanup(&self) -> Result<u64, StoreError> {
        self.bounded(true, async move {
            let client = self.client().await?;
            client
                .execute(DELETE_EXPIRED_CACHE_ENTRIES, &[])
                .await
                .map_err(db_error)
        })
        .await
    }

    async fn cache_hottest(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let rows = client
                .query(SELECT_HOTTEST_CACHE_ENTRIES, &[&(limit as i64)])
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|row| row.try_get(0).map_err(column_error))
                .collect()
        })
        .await
    }
}

const SELECT_CACHE_ENTRY: &str = "
    SELECT record FROM factory_cache_records WHERE context_id = $1 AND expires_at > now()";

const TOUCH_CACHE_ENTRIES: &str = "
    UPDATE factory_cache_records e
    SET access_count = e.access_count + t.n, last_accessed = now()
    FROM unnest($1::text[], $2::bigint[]) AS t(context_id, n)
    WHERE e.context_id = t.context_id";

const DELETE_EXPIRED_CACHE_ENTRIES: &str =
    "DELETE FROM factory_cache_records WHERE expires_at <= now()";

const SELECT_HOTTEST_CACHE_ENTRIES: &str = "
    SELECT record FROM factory_cache_records
    WHERE expires_at > now()
    ORDER BY access_count DESC
    LIMIT $1";
