//! The Postgres store: API keys. Made, made sure of (the bootstrap key), listed, revoked, last used.

use super::*;

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.bounded(true, async move {
            let client = self.client().await?;
            client
                .execute(
                    INSERT_KEY,
                    &[
                        &key.id,
                        &key.name,
                        &key.role.as_str(),
                        &key.prefix,
                        &key.key_hash.as_slice(),
                        &key.created_at,
                    ],
                )
                .await
                .map_err(db_error)?;
            // Every instance loads the new key (the others hold no key they did not load).
            client
                .execute(NOTIFY_KEYS_CHANGED, &[])
                .await
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    async fn ensure_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.bounded(true, async move {
            let client = self.client().await?;
            let changed = client
                .query_opt(
                    ENSURE_KEY,
                    &[
                        &key.id,
                        &key.name,
                        &key.role.as_str(),
                        &key.prefix,
                        &key.key_hash.as_slice(),
                        &key.created_at,
                    ],
                )
                .await
                .map_err(db_error)?
                .map(|row| row.try_get::<_, bool>(0))
                .transpose()
                .map_err(column_error)?
                .unwrap_or(false);
            if changed {
                client
                    .execute(NOTIFY_KEYS_CHANGED, &[])
                    .await
                    .map_err(db_error)?;
            }
            Ok(())
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let sql = format!("{KEY_COLUMNS} ORDER BY created_at, id");
            let rows = client.query(&sql, &[]).await.map_err(db_error)?;
            rows.iter().map(key_from_row).collect()
        })
        .await
    }

    async fn revoke_key(
        &self,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.bounded(true, async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let found = tx
                .execute(REVOKE_KEY, &[&id, &at])
                .await
                .map_err(db_error)?;
            if found == 0 {
                return Ok(None);
            }
            tx.execute(NOTIFY_KEYS_CHANGED, &[])
                .await
                .map_err(db_error)?;
            let row = tx
                .query_one(&format!("{KEY_COLUMNS} WHERE id = $1"), &[&id])
                .await
                .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            key_from_row(&row).map(Some)
        })
        .await
    }

    async fn touch_keys(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError> {
        self.bounded(true, async move {
            if used.is_empty() {
                return Ok(());
            }
            let client = self.client().await?;
            let touch = client.prepare_cached(TOUCH_KEY).await.map_err(db_error)?;
            type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
            let params: Vec<[Param<'_>; 2]> =
                used.iter().map(|(id, at)| [id as _, at as _]).collect();
            let results =
                futures_util::future::join_all(params.iter().map(|p| client.execute(&touch, p)))
                    .await;
            for result in results {
                result.map_err(db_error)?;
            }
            Ok(())
        })
        .await
    }
}

const NOTIFY_KEYS_CHANGED: &str = "SELECT pg_notify('contextd_changes', '!keys')";

const KEY_COLUMNS: &str =
    "SELECT id, name, role, prefix, key_hash, created_at, last_used_at, revoked_at FROM api_keys";

const INSERT_KEY: &str = "
    INSERT INTO api_keys (id, name, role, prefix, key_hash, created_at)
    VALUES ($1, $2, $3, $4, $5, $6)";

/// Inserts the key, or sets an existing one with that hash as given and active; returns a row
/// only when it changed one that existed.
const ENSURE_KEY: &str = "
    INSERT INTO api_keys (id, name, role, prefix, key_hash, created_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (key_hash) DO UPDATE
        SET role = EXCLUDED.role, prefix = EXCLUDED.prefix, revoked_at = NULL
        WHERE api_keys.role IS DISTINCT FROM EXCLUDED.role
           OR api_keys.prefix IS DISTINCT FROM EXCLUDED.prefix
           OR api_keys.revoked_at IS NOT NULL
    RETURNING (xmax <> 0) AS updated";

const REVOKE_KEY: &str = "
    UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1";

const TOUCH_KEY: &str = "
    UPDATE api_keys SET last_used_at = greatest(coalesce(last_used_at, $2), $2) WHERE id = $1";

fn key_from_row(row: &Row) -> Result<ApiKeyRecord, StoreError> {
    let role: &str = row.try_get(2).map_err(column_error)?;
    let hash: &[u8] = row.try_get(4).map_err(column_error)?;
    Ok(ApiKeyRecord {
        id: row.try_get(0).map_err(column_error)?,
        name: row.try_get(1).map_err(column_error)?,
        role: Role::parse(role).ok_or_else(|| corrupt(format!("key role {role:?}")))?,
        prefix: row.try_get(3).map_err(column_error)?,
        key_hash: hash
            .try_into()
            .map_err(|_| corrupt("a key hash that is not 32 bytes"))?,
        created_at: row.try_get(5).map_err(column_error)?,
        last_used_at: row.try_get(6).map_err(column_error)?,
        revoked_at: row.try_get(7).map_err(column_error)?,
    })
}
