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
    DeliverOutcome, Delivery, EmbeddingStore, ImportSummary, KeyStore, ListFilter, ListShape,
    NewVersion, Resolved, StoreError, StoreHealth, VersionLookup, WriteGate, WriteOutcome,
    WriteView, migrate,
};
use crate::domain::{
    ChangeType, Content, Context, ContextHistory, ContextId, ContextSummary, EmbeddingSource,
    JsonObject, Refusal, Role, Source, VersionInfo, VersionRecord, Visible,
};

mod changes;
mod contexts;
pub use self::contexts::list_statement;
mod embeddings;
mod keys;

const INSERT_KEY: &str = "
    INSERT INTO api_keys (id, name, role, prefix, key_hash, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const SELECT_CURRENT: &str = "
    SELECT m.version, m.source, m.parent_id, m.size_bytes, m.created_at, m.updated_at,
           v.data, v.metadata, v.embedding, m.synced_at, s.embedding AS server_embedding
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    LEFT JOIN contextd_server_embeddings s
        ON s.context_id = m.context_id AND s.version = m.version
    WHERE m.context_id = ?1";

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
    enter_wal(&conn)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Switches the file to WAL. Two processes opening a new file at once race for that switch,
/// and SQLite answers the loser "database is locked" at once, without calling the busy
/// handler; so retry here for as long as the busy timeout would have waited.
fn enter_wal(conn: &Connection) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result.context("switching the SQLite file to WAL"),
        }
    }
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

fn embedding<I: rusqlite::RowIndex>(row: &Row, index: I) -> rusqlite::Result<Option<Vec<f32>>> {
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
        server_embedding: embedding(row, "server_embedding")?,
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

/// No L3 table: it would sit in the same file as the data it caches.
impl CacheTable for SqliteStore {}

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
