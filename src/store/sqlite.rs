//! The embedded SQLite store: one file, no services, one instance.
//!
//! Storage and transactions only, like the Postgres store; the rules arrive as closures from
//! `service/`. SQLite calls block, so every one runs on tokio's blocking pool, never on the
//! async workers. Writes go through a single connection behind a mutex: writers are serialised
//! (none is lost, none waits on SQLITE_BUSY), and the outbox's AUTOINCREMENT order is commit
//! order. Reads use their own connections, which WAL mode lets run beside the writer.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::broadcast;

use super::{
    ApiKeyRecord, COMMIT_SIGNAL_CAPACITY, CacheTable, Change, ChangeLog, ChangeOp, ChangedContent,
    CommitNotice, ContextStore, Counts, Decide, DecideDelete, DeleteOutcome, Deliver,
    DeliverOutcome, Delivery, EmbeddingStore, ImportSummary, KeyStore, ListFilter, NewVersion,
    Resolved, StoreError, StoreHealth, VersionLookup, WriteGate, WriteOutcome, WriteView, migrate,
};
use crate::domain::{
    ChangeType, Content, Context, ContextHistory, ContextId, ContextSummary, JsonObject, Refusal,
    Role, Source, VersionInfo, VersionRecord, Visible,
};

const KEY_COLUMNS: &str =
    "SELECT id, name, role, prefix, key_hash, created_at, last_used_at, revoked_at FROM api_keys";

const INSERT_KEY: &str = "
    INSERT INTO api_keys (id, name, role, prefix, key_hash, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Sets an existing key (by hash) as given and active; counts a row only when it changed one.
const UPDATE_ENSURED_KEY: &str = "
    UPDATE api_keys SET role = ?2, prefix = ?3, revoked_at = NULL
    WHERE key_hash = ?1
      AND (role IS NOT ?2 OR prefix IS NOT ?3 OR revoked_at IS NOT NULL)";

const REVOKE_KEY: &str = "
    UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1";

const TOUCH_KEY: &str = "
    UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, ?2), ?2) WHERE id = ?1";

const SELECT_CURRENT: &str = "
    SELECT m.version, m.source, m.parent_id, m.size_bytes, m.created_at, m.updated_at,
           v.data, v.metadata, v.embedding, m.synced_at
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    WHERE m.context_id = ?1";

const SELECT_HEAD: &str =
    "SELECT version, created_at, updated_at FROM factory_context_metadata WHERE context_id = ?1";

const SELECT_VERSION: &str = "
    SELECT version, source, parent_id, data, metadata, embedding,
           change_type, changed_by, changed_at, size_bytes
    FROM factory_context_versions
    WHERE context_id = ?1 AND version = ?2";

const SELECT_ALL_VERSIONS: &str = "
    SELECT version, source, parent_id, data, metadata, embedding,
           change_type, changed_by, changed_at, size_bytes
    FROM factory_context_versions
    WHERE context_id = ?1
    ORDER BY version";

const UPSERT_METADATA: &str = "
    INSERT INTO factory_context_metadata
        (context_id, version, source, parent_id, size_bytes, has_embedding, created_at,
         updated_at, synced_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT (context_id) DO UPDATE SET
        version = excluded.version,
        source = excluded.source,
        parent_id = excluded.parent_id,
        size_bytes = excluded.size_bytes,
        has_embedding = excluded.has_embedding,
        synced_at = excluded.synced_at,
        updated_at = excluded.updated_at";

const INSERT_VERSION: &str = "
    INSERT INTO factory_context_versions
        (context_id, version, source, parent_id, data, metadata, embedding,
         change_type, changed_by, changed_at, size_bytes)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const PRUNE_VERSIONS: &str =
    "DELETE FROM factory_context_versions WHERE context_id = ?1 AND version < ?2";

/// One writer at a time: the next number is commit order.
const APPEND_OUTBOX: &str = "
    INSERT INTO factory_sync_outbox
        (seq, context_id, version, incarnation, op, change_type, created_at)
    VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM factory_sync_outbox), ?1, ?2, ?3, ?4, ?5, ?6)";

/// Changes with the content of their version, when it is still kept and of the same
/// incarnation (a re-created context reuses version numbers).
const CHANGE_COLUMNS: &str = "
    SELECT o.seq, o.context_id, o.version, o.op, o.created_at, o.attempts,
           v.data, v.metadata, v.changed_at, o.next_attempt_at
    FROM factory_sync_outbox o
    LEFT JOIN factory_context_metadata m
           ON o.op = 'upsert' AND m.context_id = o.context_id AND m.created_at = o.incarnation
    LEFT JOIN factory_context_versions v
           ON v.context_id = m.context_id AND v.version = o.version";

const MARK_DELIVERED: &str = "
    UPDATE factory_sync_outbox SET delivered_at = ?2, attempts = attempts + 1
    WHERE seq = ?1";

const MARK_FAILED: &str = "
    UPDATE factory_sync_outbox
    SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3
    WHERE seq = ?1";

const LATEST_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM factory_sync_outbox";

const WITH_EMBEDDINGS: &str = "
    SELECT m.version, m.source, m.parent_id, m.size_bytes, m.created_at, m.updated_at,
           v.data, v.metadata, v.embedding, m.synced_at, m.context_id
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    WHERE m.has_embedding AND m.context_id > ?1
    ORDER BY m.context_id
    LIMIT ?2";

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

const PENDING_CHANGES: &str = "SELECT count(*) FROM factory_sync_outbox WHERE delivered_at IS NULL";

const PRUNE_OUTBOX: &str = "
    DELETE FROM factory_sync_outbox
    WHERE created_at < ?1 AND (delivered_at IS NOT NULL OR ?2)";

const DELETE_CONTEXT: &str = "DELETE FROM factory_context_metadata WHERE context_id = ?1";

const LIST_COLUMNS: &str = "
    SELECT m.context_id, m.version, m.source, m.parent_id, v.metadata,
           m.created_at, m.updated_at, m.size_bytes, m.has_embedding
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version";

const LIST_VERSIONS: &str = "
    SELECT version, change_type, changed_by, changed_at, size_bytes
    FROM factory_context_versions
    WHERE context_id = ?1 AND version < ?2
    ORDER BY version DESC
    LIMIT ?3";

const COUNTS: &str = "
    SELECT (SELECT count(*) FROM factory_context_metadata),
           (SELECT count(*) FROM factory_context_versions)";

/// Connections that serve reads beside the writer.
const READERS: usize = 4;

/// How long a connection waits on another process's lock before giving up (503).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    /// The commit signal, in process: one instance, so its own commits are all there are.
    commits: broadcast::Sender<CommitNotice>,
    /// One pusher at a time.
    pusher: tokio::sync::Mutex<()>,
    writes: WriteGate,
}

impl SqliteStore {
    /// Opens (creating the file and its folder when missing) and migrates the database at
    /// `path`.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .context("opening the SQLite store")?
    }

    fn open_blocking(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the folder {}", dir.display()))?;
        }
        let mut writer = connect(path)?;
        migrate_sqlite(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| connect(path).map(Mutex::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
            commits: broadcast::channel(COMMIT_SIGNAL_CAPACITY).0,
            pusher: tokio::sync::Mutex::new(()),
            writes: WriteGate::default(),
        })
    }

    /// Runs `f` with the writer connection on the blocking pool.
    async fn write_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let writer = self.writer.clone();
        let result = tokio::task::spawn_blocking(move || f(&mut lock(&writer)))
            .await
            .map_err(|e| StoreError::Internal(anyhow!("a SQLite task failed: {e}")))?;
        self.writes.observe(&result);
        result
    }

    /// Runs `f` with one of the reader connections on the blocking pool.
    async fn read_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let index = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        tokio::task::spawn_blocking(move || f(&lock(&readers[index])))
            .await
            .map_err(|e| StoreError::Internal(anyhow!("a SQLite task failed: {e}")))?
    }
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: readers never wait for the writer. synchronous=FULL: a commit is on disk before the
    // write is acknowledged, as with Postgres.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Applies `schema.sqlite.sql`: each section once, each in an IMMEDIATE transaction that
/// checks the record first, so two processes opening one file take turns.
fn migrate_sqlite(conn: &mut Connection) -> anyhow::Result<()> {
    let (preamble, migrations) = migrate::parse(migrate::SQLITE_SCHEMA)?;
    conn.execute_batch(&preamble)
        .context("running the SQLite schema preamble")?;
    for migration in migrations {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM contextd_schema_migrations WHERE version = ?1)",
            [migration.version],
            |row| row.get(0),
        )?;
        if applied {
            continue;
        }
        tx.execute_batch(&migration.sql).with_context(|| {
            format!(
                "applying migration {} ({})",
                migration.version, migration.name
            )
        })?;
        tx.execute(
            "INSERT INTO contextd_schema_migrations (version, name) VALUES (?1, ?2)",
            rusqlite::params![migration.version, migration.name],
        )?;
        tx.commit()?;
        tracing::info!(version = migration.version, name = %migration.name, "applied migration");
    }
    Ok(())
}

/// A poisoned connection mutex means a panic mid-call; SQLite rolled back what it must.
fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A busy or unreachable file is worth a retry (503); anything else is a bug (500).
fn db_error(e: rusqlite::Error) -> StoreError {
    if matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DiskFull | ErrorCode::ReadOnly)
    ) {
        return StoreError::Refusing(e.into());
    }
    let transient = matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
        )
    );
    if transient {
        StoreError::Unavailable(e.into())
    } else {
        StoreError::Internal(e.into())
    }
}

fn corrupt(what: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(anyhow!("unexpected data in SQLite: {what}").into())
}

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

fn time_text(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn time(row: &Row, index: usize) -> rusqlite::Result<DateTime<Utc>> {
    let text: String = row.get(index)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(format!("time {text:?}: {e}")))
}

fn object(row: &Row, index: usize) -> rusqlite::Result<JsonObject> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|e| corrupt(format!("JSON object: {e}")))
}

fn json_text(object: &JsonObject) -> &str {
    object.as_str()
}

fn embedding(row: &Row, index: usize) -> rusqlite::Result<Option<Vec<f32>>> {
    let blob: Option<Vec<u8>> = row.get(index)?;
    blob.map(|bytes| {
        if bytes.len() % 4 != 0 {
            return Err(corrupt("an embedding blob of a length not a multiple of 4"));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    })
    .transpose()
}

fn embedding_blob(embedding: &Option<Vec<f32>>) -> Option<Vec<u8>> {
    embedding
        .as_ref()
        .map(|values| values.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn source(row: &Row, index: usize) -> rusqlite::Result<Source> {
    let raw: String = row.get(index)?;
    Source::parse(&raw).ok_or_else(|| corrupt(format!("source {raw:?}")))
}

fn change_type(row: &Row, index: usize) -> rusqlite::Result<ChangeType> {
    let raw: String = row.get(index)?;
    ChangeType::parse(&raw).ok_or_else(|| corrupt(format!("change_type {raw:?}")))
}

fn context_id(row: &Row, index: usize) -> rusqlite::Result<Option<ContextId>> {
    let raw: Option<String> = row.get(index)?;
    raw.map(|id| ContextId::parse(&id).map_err(|e| corrupt(format!("id {id:?}: {e}"))))
        .transpose()
}

fn context_from_row(id: &ContextId, row: &Row) -> rusqlite::Result<Context> {
    Ok(Context {
        id: id.clone(),
        version: row.get(0)?,
        content: Content {
            source: source(row, 1)?,
            parent_id: context_id(row, 2)?,
            data: object(row, 6)?,
            metadata: object(row, 7)?,
            embedding: embedding(row, 8)?,
        },
        size_bytes: row.get(3)?,
        created_at: time(row, 4)?,
        updated_at: time(row, 5)?,
    })
}

fn record_from_row(id: &ContextId, row: &Row) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        id: id.clone(),
        info: VersionInfo {
            version: row.get(0)?,
            change_type: change_type(row, 6)?,
            changed_by: row.get(7)?,
            changed_at: time(row, 8)?,
            size_bytes: row.get(9)?,
        },
        content: Content {
            source: source(row, 1)?,
            parent_id: context_id(row, 2)?,
            data: object(row, 3)?,
            metadata: object(row, 4)?,
            embedding: embedding(row, 5)?,
        },
    })
}

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
        has_embedding: row.get(8)?,
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

/// The current version and the Factory timestamp it was synced with, if any.
fn select_current_synced(
    conn: &Connection,
    id: &ContextId,
) -> rusqlite::Result<Option<(Context, Option<DateTime<Utc>>)>> {
    conn.prepare_cached(SELECT_CURRENT)?
        .query_row([id.as_str()], |row| {
            let synced_at: Option<String> = row.get(9)?;
            let synced_at = synced_at
                .map(|text| {
                    DateTime::parse_from_rfc3339(&text)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|e| corrupt(format!("time {text:?}: {e}")))
                })
                .transpose()?;
            Ok((context_from_row(id, row)?, synced_at))
        })
        .optional()
}

fn select_version(
    conn: &Connection,
    id: &ContextId,
    version: i64,
) -> rusqlite::Result<Option<VersionRecord>> {
    conn.prepare_cached(SELECT_VERSION)?
        .query_row(rusqlite::params![id.as_str(), version], |row| {
            record_from_row(id, row)
        })
        .optional()
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

/// Inserts one version row.
fn insert_version(
    conn: &Connection,
    id: &ContextId,
    info: &VersionInfo,
    content: &Content,
) -> rusqlite::Result<()> {
    conn.prepare_cached(INSERT_VERSION)?
        .execute(rusqlite::params![
            id.as_str(),
            info.version,
            content.source.as_str(),
            content.parent_id.as_ref().map(ContextId::as_str),
            json_text(&content.data),
            json_text(&content.metadata),
            embedding_blob(&content.embedding),
            info.change_type.as_str(),
            info.changed_by,
            time_text(&info.changed_at),
            content.size_bytes() as i64,
        ])?;
    Ok(())
}

/// Upserts the head row of a context whose current content is `content`.
fn upsert_head(
    conn: &Connection,
    id: &ContextId,
    version: i64,
    content: &Content,
    (created_at, updated_at): (&DateTime<Utc>, &DateTime<Utc>),
    synced_at: Option<&DateTime<Utc>>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(UPSERT_METADATA)?
        .execute(rusqlite::params![
            id.as_str(),
            version,
            content.source.as_str(),
            content.parent_id.as_ref().map(ContextId::as_str),
            content.size_bytes() as i64,
            content.embedding.is_some(),
            time_text(created_at),
            time_text(updated_at),
            synced_at.map(time_text),
        ])?;
    Ok(())
}

/// Appends a change; `incarnation` is the context's `created_at`.
fn append_outbox(
    conn: &Connection,
    id: &ContextId,
    (version, incarnation): (i64, &DateTime<Utc>),
    op: &str,
    change_type: Option<ChangeType>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(APPEND_OUTBOX)?
        .execute(rusqlite::params![
            id.as_str(),
            version,
            time_text(incarnation),
            op,
            change_type.map(ChangeType::as_str),
            time_text(&Utc::now()),
        ])?;
    Ok(())
}

fn change_from_row(row: &Row) -> rusqlite::Result<Change> {
    let op: String = row.get(3)?;
    let data: Option<String> = row.get(6)?;
    let content = match data {
        Some(_) => Some(ChangedContent {
            data: object(row, 6)?,
            metadata: object(row, 7)?,
            changed_at: time(row, 8)?,
        }),
        None => None,
    };
    Ok(Change {
        seq: row.get(0)?,
        id: context_id(row, 1)?.ok_or_else(|| corrupt("a null context_id"))?,
        version: row.get(2)?,
        op: match op.as_str() {
            "upsert" => ChangeOp::Upsert,
            "delete" => ChangeOp::Delete,
            other => return Err(corrupt(format!("op {other:?}"))),
        },
        committed_at: time(row, 4)?,
        attempts: row.get(5)?,
        content,
    })
}

fn store_new_version(conn: &Connection, id: &ContextId, new: &NewVersion) -> rusqlite::Result<()> {
    upsert_head(
        conn,
        id,
        new.version,
        &new.content,
        (&new.created_at, &new.updated_at),
        new.synced_at.as_ref(),
    )?;
    let info = VersionInfo {
        version: new.version,
        change_type: new.change_type,
        changed_by: new.changed_by.clone(),
        changed_at: new.updated_at,
        size_bytes: new.content.size_bytes() as i64,
    };
    insert_version(conn, id, &info, &new.content)?;
    conn.prepare_cached(PRUNE_VERSIONS)?
        .execute(rusqlite::params![id.as_str(), new.keep_from])?;
    append_outbox(
        conn,
        id,
        (new.version, &new.created_at),
        "upsert",
        Some(new.change_type),
    )
}

#[async_trait]
impl StoreHealth for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn refusing_writes(&self) -> bool {
        self.writes.refusing()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read_with(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(db_error))
            .await
    }
}

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
        let mut conditions = Vec::new();
        let mut params: Vec<String> = Vec::new();
        if let Some(source) = filter.source {
            params.push(source.as_str().to_owned());
            conditions.push(format!("m.source = ?{}", params.len()));
        }
        if let Some(parent) = &filter.parent_id {
            params.push(parent.as_str().to_owned());
            conditions.push(format!("m.parent_id = ?{}", params.len()));
        }
        if let Some(prefix) = visible.prefix() {
            params.push(prefix.to_owned());
            conditions.push(format!(
                "substr(m.context_id, 1, length(?{0})) = ?{0}",
                params.len()
            ));
        }
        if let Some(after) = after {
            params.push(after.to_owned());
            conditions.push(format!("m.context_id > ?{}", params.len()));
        }
        let mut sql = LIST_COLUMNS.to_owned();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY m.context_id LIMIT {limit}"));
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

    async fn history(&self, id: &ContextId) -> Result<Option<ContextHistory>, StoreError> {
        let id = id.clone();
        self.read_with(move |conn| select_history(conn, &id).map_err(db_error))
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

/// No L3 table: it would sit in the same file as the data it caches.
impl CacheTable for SqliteStore {}

#[async_trait]
impl ChangeLog for SqliteStore {
    fn signal_spans_processes(&self) -> bool {
        false
    }

    fn commits(&self) -> broadcast::Receiver<CommitNotice> {
        self.commits.subscribe()
    }

    async fn sequence_outbox(&self) -> Result<(), StoreError> {
        // Numbered in each write's own transaction already: one writer, so commit order.
        Ok(())
    }

    async fn changes(
        &self,
        since: i64,
        limit: usize,
        visible: &Visible,
    ) -> Result<Vec<Change>, StoreError> {
        let id_prefix = visible.prefix();
        let prefix = id_prefix.map(str::to_owned);
        self.read_with(move |conn| {
            let sql = format!(
                "{CHANGE_COLUMNS} WHERE o.seq > ?1 \
                 AND (?3 IS NULL OR substr(o.context_id, 1, length(?3)) = ?3) \
                 ORDER BY o.seq LIMIT ?2"
            );
            let mut statement = conn.prepare_cached(&sql).map_err(db_error)?;
            let rows = statement
                .query_map(
                    rusqlite::params![since, limit as i64, prefix],
                    change_from_row,
                )
                .map_err(db_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
        })
        .await
    }

    async fn deliver_pending(
        &self,
        limit: usize,
        deliver: Deliver,
    ) -> Result<DeliverOutcome, StoreError> {
        let Ok(_turn) = self.pusher.try_lock() else {
            return Ok(DeliverOutcome::Busy);
        };
        let claimed = self
            .read_with(move |conn| {
                let sql = format!(
                    "{CHANGE_COLUMNS} WHERE o.delivered_at IS NULL ORDER BY o.seq LIMIT ?1"
                );
                let mut statement = conn.prepare_cached(&sql).map_err(db_error)?;
                let rows = statement
                    .query_map([limit as i64], |row| {
                        let not_before: Option<String> = row.get(9)?;
                        Ok((change_from_row(row)?, not_before))
                    })
                    .map_err(db_error)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
            })
            .await?;
        let Some((_, not_before)) = claimed.first() else {
            return Ok(DeliverOutcome::Idle);
        };
        let next_attempt_at = not_before
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        if let Some(waiting) = DeliverOutcome::waiting_for(next_attempt_at) {
            return Ok(waiting);
        }
        let changes: Vec<Change> = claimed.into_iter().map(|(change, _)| change).collect();
        let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
        let delivery = deliver(changes.clone()).await;
        self.write_with(move |conn| {
            let tx = conn.transaction().map_err(db_error)?;
            for seq in &seqs {
                match &delivery {
                    Delivery::Delivered => tx.prepare_cached(MARK_DELIVERED).and_then(|mut s| {
                        s.execute(rusqlite::params![seq, time_text(&Utc::now())])
                    }),
                    Delivery::Failed { retry_at, error } => {
                        tx.prepare_cached(MARK_FAILED).and_then(|mut s| {
                            s.execute(rusqlite::params![seq, time_text(retry_at), error])
                        })
                    }
                }
                .map_err(db_error)?;
            }
            tx.commit().map_err(db_error)?;
            Ok(match delivery {
                Delivery::Delivered => DeliverOutcome::Delivered(changes),
                Delivery::Failed { .. } => DeliverOutcome::Failed,
            })
        })
        .await
    }

    async fn latest_seq(&self) -> Result<i64, StoreError> {
        self.read_with(|conn| {
            conn.query_row(LATEST_SEQ, [], |row| row.get(0))
                .map_err(db_error)
        })
        .await
    }

    async fn pending_changes(&self) -> Result<i64, StoreError> {
        self.read_with(|conn| {
            conn.query_row(PENDING_CHANGES, [], |row| row.get(0))
                .map_err(db_error)
        })
        .await
    }

    async fn prune_outbox(&self, before: DateTime<Utc>, all: bool) -> Result<u64, StoreError> {
        self.write_with(move |conn| {
            conn.prepare_cached(PRUNE_OUTBOX)
                .and_then(|mut s| s.execute(rusqlite::params![time_text(&before), all]))
                .map(|n| n as u64)
                .map_err(db_error)
        })
        .await
    }
}

#[async_trait]
impl EmbeddingStore for SqliteStore {
    async fn with_embeddings(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Context>, StoreError> {
        let after = after.unwrap_or("").to_owned();
        self.read_with(move |conn| {
            let mut statement = conn.prepare_cached(WITH_EMBEDDINGS).map_err(db_error)?;
            let rows = statement
                .query_map(rusqlite::params![after, limit as i64], |row| {
                    let id = context_id(row, 10)?.ok_or_else(|| corrupt("a null context_id"))?;
                    context_from_row(&id, row)
                })
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

impl SqliteStore {
    async fn write_one(
        &self,
        id: &ContextId,
        load_version: Option<i64>,
        decide: Decide,
    ) -> Result<WriteOutcome, StoreError> {
        let id = id.clone();
        self.write_with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_error)?;
            let (current, synced_at) = match select_current_synced(&tx, &id).map_err(db_error)? {
                Some((context, synced_at)) => (Some(context), synced_at),
                None => (None, None),
            };
            let loaded = match load_version {
                Some(v) => select_version(&tx, &id, v).map_err(db_error)?,
                None => None,
            };
            let decision = decide(WriteView {
                current: current.as_ref(),
                loaded: loaded.as_ref(),
                synced_at,
            });
            let created = current.is_none();
            let new = match decision.resolve(|| current)? {
                Resolved::Done(outcome) => return Ok(outcome),
                Resolved::Store(new) => new,
            };
            store_new_version(&tx, &id, &new).map_err(db_error)?;
            tx.commit().map_err(db_error)?;
            Ok(WriteOutcome::Written {
                created,
                context: new.into_context(&id),
            })
        })
        .await
    }
}
