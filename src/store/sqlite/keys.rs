//! The SQLite store: API keys. Made, made sure of (the bootstrap key), listed, revoked, last used.

use super::*;

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.write_with(move |conn| insert_key(conn, &key).map_err(db_error))
            .await?;
        let _ = self.commits.send(CommitNotice::KeysChanged);
        Ok(())
    }

    async fn ensure_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        let changed = self
            .write_with(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db_error)?;
                let updated = tx
                    .execute(
                        UPDATE_ENSURED_KEY,
                        rusqlite::params![key.key_hash.as_slice(), key.role.as_str(), key.prefix],
                    )
                    .map_err(db_error)?;
                let exists: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE key_hash = ?1)",
                        [key.key_hash.as_slice()],
                        |row| row.get(0),
                    )
                    .map_err(db_error)?;
                if !exists {
                    insert_key(&tx, &key).map_err(db_error)?;
                }
                tx.commit().map_err(db_error)?;
                Ok(updated > 0)
            })
            .await?;
        if changed {
            let _ = self.commits.send(CommitNotice::KeysChanged);
        }
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read_with(|conn| {
            let mut statement = conn
                .prepare_cached(&format!("{KEY_COLUMNS} ORDER BY created_at, id"))
                .map_err(db_error)?;
            let rows = statement.query_map([], key_from_row).map_err(db_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
        })
        .await
    }

    async fn revoke_key(
        &self,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let id = id.to_owned();
        let revoked = self
            .write_with(move |conn| {
                let found = conn
                    .execute(REVOKE_KEY, rusqlite::params![id, time_text(&at)])
                    .map_err(db_error)?;
                if found == 0 {
                    return Ok(None);
                }
                conn.query_row(&format!("{KEY_COLUMNS} WHERE id = ?1"), [id], key_from_row)
                    .map(Some)
                    .map_err(db_error)
            })
            .await?;
        if revoked.is_some() {
            let _ = self.commits.send(CommitNotice::KeysChanged);
        }
        Ok(revoked)
    }

    async fn touch_keys(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let used = used.to_vec();
        self.write_with(move |conn| {
            let tx = conn.transaction().map_err(db_error)?;
            {
                let mut touch = tx.prepare_cached(TOUCH_KEY).map_err(db_error)?;
                for (id, at) in &used {
                    touch
                        .execute(rusqlite::params![id, time_text(at)])
                        .map_err(db_error)?;
                }
            }
            tx.commit().map_err(db_error)
        })
        .await
    }
}

const KEY_COLUMNS: &str =
    "SELECT id, name, role, prefix, key_hash, created_at, last_used_at, revoked_at FROM api_keys";

/// Sets an existing key (by hash) as given and active; counts a row only when it changed one.
const UPDATE_ENSURED_KEY: &str = "
    UPDATE api_keys SET role = ?2, prefix = ?3, revoked_at = NULL
    WHERE key_hash = ?1
      AND (role IS NOT ?2 OR prefix IS NOT ?3 OR revoked_at IS NOT NULL)";

const REVOKE_KEY: &str = "
    UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1";

const TOUCH_KEY: &str = "
    UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, ?2), ?2) WHERE id = ?1";

/// Times as stored: RFC 3339, UTC, microseconds; they sort as they compare.
fn insert_key(conn: &Connection, key: &ApiKeyRecord) -> rusqlite::Result<()> {
    conn.execute(
        INSERT_KEY,
        rusqlite::params![
            key.id,
            key.name,
            key.role.as_str(),
            key.prefix,
            key.key_hash.as_slice(),
            time_text(&key.created_at),
        ],
    )
    .map(|_| ())
}

fn key_from_row(row: &Row) -> rusqlite::Result<ApiKeyRecord> {
    let role: String = row.get(2)?;
    let hash: Vec<u8> = row.get(4)?;
    let optional_time = |index| -> rusqlite::Result<Option<DateTime<Utc>>> {
        let text: Option<String> = row.get(index)?;
        text.map(|text| {
            DateTime::parse_from_rfc3339(&text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| corrupt(format!("time {text:?}: {e}")))
        })
        .transpose()
    };
    Ok(ApiKeyRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        role: Role::parse(&role).ok_or_else(|| corrupt(format!("key role {role:?}")))?,
        prefix: row.get(3)?,
        key_hash: hash
            .try_into()
            .map_err(|_| corrupt("a key hash that is not 32 bytes"))?,
        created_at: time(row, 5)?,
        last_used_at: optional_time(6)?,
        revoked_at: optional_time(7)?,
    })
}
