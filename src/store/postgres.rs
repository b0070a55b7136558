//! The Postgres store: production, and many instances on one database.
//!
//! Storage and transactions only; the rules arrive as closures from `service/`. Statements are
//! named constants, prepared once per connection, and those of one step are pipelined (sent
//! together, answered in order), so a write costs four round trips whatever it touches.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio::sync::broadcast;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, accepts, to_sql_checked};

use super::{
    ApiKeyRecord, COMMIT_SIGNAL_CAPACITY, CacheTable, Change, ChangeLog, ChangeOp, ChangedContent,
    CommitNotice, Committed, ContextStore, Counts, Decide, DecideDelete, DeleteOutcome, Deliver,
    DeliverOutcome, Delivery, EmbeddingStore, ImportSummary, KeyStore, ListFilter, NewVersion,
    PoolStatus, Resolved, StoreError, StoreHealth, VersionLookup, WriteGate, WriteOutcome,
    WriteView, migrate,
};
use crate::config::{DatabaseSettings, redact_url};
use crate::domain::{
    ChangeType, Content, Context, ContextHistory, ContextId, ContextSummary, JsonObject, Refusal,
    Role, Source, VersionInfo, VersionRecord, Visible,
};

/// Serializes every writer of one context, creators included (there is no row to lock yet).
const LOCK_CONTEXT: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

const SELECT_CURRENT: &str = "
    SELECT m.version, m.source, m.parent_id, m.size_bytes, m.created_at, m.updated_at,
           v.data, v.metadata, v.embedding, m.synced_at
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    WHERE m.context_id = $1";

/// `SELECT_CURRENT` for many ids at once, with the id first.
const SELECT_CURRENTS: &str = "
    SELECT m.context_id, m.version, m.source, m.parent_id, m.size_bytes, m.created_at,
           m.updated_at, v.data, v.metadata, v.embedding, m.synced_at
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    WHERE m.context_id = ANY($1)";

/// Wakes every instance's outbox workers (and subscribers) at commit; the payload is the id.
const NOTIFY_CHANGE: &str = "SELECT pg_notify('contextd_changes', $1)";

/// The channel of `NOTIFY_CHANGE`.
pub const CHANGES_CHANNEL: &str = "contextd_changes";

const SELECT_CURRENT_VERSION: &str =
    "SELECT version, created_at FROM factory_context_metadata WHERE context_id = $1";

const SELECT_VERSION: &str = "
    SELECT version, source, parent_id, data, metadata, embedding,
           change_type, changed_by, changed_at, size_bytes
    FROM factory_context_versions
    WHERE context_id = $1 AND version = $2";

const UPSERT_METADATA: &str = "
    INSERT INTO factory_context_metadata
        (context_id, version, source, parent_id, size_bytes, has_embedding, created_at,
         updated_at, synced_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (context_id) DO UPDATE SET
        version = EXCLUDED.version,
        source = EXCLUDED.source,
        parent_id = EXCLUDED.parent_id,
        size_bytes = EXCLUDED.size_bytes,
        has_embedding = EXCLUDED.has_embedding,
        synced_at = $9,
        updated_at = EXCLUDED.updated_at";

const INSERT_VERSION: &str = "
    INSERT INTO factory_context_versions
        (context_id, version, source, parent_id, data, metadata, embedding,
         change_type, changed_by, changed_at, size_bytes)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

const PRUNE_VERSIONS: &str =
    "DELETE FROM factory_context_versions WHERE context_id = $1 AND version < $2";

const APPEND_OUTBOX: &str = "
    INSERT INTO factory_sync_outbox (context_id, version, incarnation, op, change_type)
    VALUES ($1, $2, $3, $4, $5)";

/// Only one sequencer at a time, in the whole cluster.
const SEQUENCER_LOCK: &str = "SELECT pg_advisory_xact_lock(7165263487346373001)";

/// Numbers the committed changes that have no number yet, in insertion order, after the highest
/// number given. Under the sequencer lock, and seeing only committed rows, it never gives a
/// number below one already given: readers paging by number miss nothing.
const SEQUENCE_OUTBOX: &str = "
    WITH base AS (SELECT coalesce(max(seq), 0) AS n FROM factory_sync_outbox),
         pending AS (
             SELECT id, row_number() OVER (ORDER BY id) AS k
             FROM factory_sync_outbox WHERE seq IS NULL
             ORDER BY id LIMIT 10000
         )
    UPDATE factory_sync_outbox o SET seq = base.n + pending.k
    FROM base, pending WHERE o.id = pending.id";

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

/// Only one pusher at a time, in the whole cluster; the others skip their turn.
const PUSHER_LOCK: &str = "SELECT pg_try_advisory_xact_lock(7165263487346373002)";

const MARK_DELIVERED: &str = "
    UPDATE factory_sync_outbox
    SET delivered_at = clock_timestamp(), attempts = attempts + 1
    WHERE seq = ANY($1)";

const MARK_FAILED: &str = "
    UPDATE factory_sync_outbox
    SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3
    WHERE seq = ANY($1)";

const LATEST_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM factory_sync_outbox";

/// The commit-signal payload that says "API keys changed"; no context id contains a `!`.
const KEYS_CHANGED_PAYLOAD: &str = "!keys";

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

const WITH_EMBEDDINGS: &str = "
    SELECT m.version, m.source, m.parent_id, m.size_bytes, m.created_at, m.updated_at,
           v.data, v.metadata, v.embedding, m.synced_at, m.context_id
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    WHERE m.has_embedding AND m.context_id > $1
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
        DELETE FROM factory_cache_entries c USING dropped d WHERE c.context_id = d.context_id
    )
    SELECT context_id FROM dropped ORDER BY context_id";

const INDEXER_CURSOR: &str = "SELECT seq FROM contextd_indexer_state WHERE name = $1";

const SET_INDEXER_CURSOR: &str = "
    INSERT INTO contextd_indexer_state (name, seq) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET
        seq = greatest(contextd_indexer_state.seq, EXCLUDED.seq),
        updated_at = now()";

const PENDING_CHANGES: &str = "SELECT count(*) FROM factory_sync_outbox WHERE delivered_at IS NULL";

const PRUNE_OUTBOX: &str = "
    DELETE FROM factory_sync_outbox
    WHERE created_at < $1 AND (delivered_at IS NOT NULL OR $2)";

/// The L3 entry of the current version; `access_count` survives the write.
const UPSERT_CACHE_ENTRY: &str = "
    INSERT INTO factory_cache_entries (cache_key, context_id, version, value, expires_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (cache_key) DO UPDATE SET
        version = EXCLUDED.version,
        value = EXCLUDED.value,
        created_at = now(),
        expires_at = EXCLUDED.expires_at";

const SELECT_CACHE_ENTRY: &str = "
    SELECT value FROM factory_cache_entries
    WHERE cache_key = $1 AND (expires_at IS NULL OR expires_at > now())";

const TOUCH_CACHE_ENTRIES: &str = "
    UPDATE factory_cache_entries e
    SET access_count = e.access_count + t.n, last_accessed = now()
    FROM unnest($1::text[], $2::bigint[]) AS t(cache_key, n)
    WHERE e.cache_key = t.cache_key";

const DELETE_EXPIRED_CACHE_ENTRIES: &str =
    "DELETE FROM factory_cache_entries WHERE expires_at <= now()";

const SELECT_HOTTEST_CACHE_ENTRIES: &str = "
    SELECT value FROM factory_cache_entries
    WHERE expires_at IS NULL OR expires_at > now()
    ORDER BY access_count DESC
    LIMIT $1";

const DELETE_CONTEXT: &str = "DELETE FROM factory_context_metadata WHERE context_id = $1";

const LIST_COLUMNS: &str = "
    SELECT m.context_id, m.version, m.source, m.parent_id, v.metadata,
           m.created_at, m.updated_at, m.size_bytes, m.has_embedding
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version";

const LIST_VERSIONS: &str = "
    SELECT version, change_type, changed_by, changed_at, size_bytes
    FROM factory_context_versions
    WHERE context_id = $1 AND version < $2
    ORDER BY version DESC
    LIMIT $3";

const SELECT_HEAD: &str = "
    SELECT version, created_at, updated_at FROM factory_context_metadata WHERE context_id = $1";

const SELECT_ALL_VERSIONS: &str = "
    SELECT version, source, parent_id, data, metadata, embedding,
           change_type, changed_by, changed_at, size_bytes
    FROM factory_context_versions
    WHERE context_id = $1
    ORDER BY version";

const COUNTS: &str = "
    SELECT (SELECT count(*) FROM factory_context_metadata),
           (SELECT count(*) FROM factory_context_versions)";

/// The L3 key of a context's current version.
pub fn cache_key(id: &ContextId) -> String {
    format!("context:{id}")
}

/// Statement parameters.
type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

pub struct PostgresStore {
    pool: Pool,
    /// The most one operation may take.
    deadline: Duration,
    /// Connections made before this instant are not reused (see [`PostgresStore::bounded`]).
    tainted_before: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    writes: WriteGate,
    commits: broadcast::Sender<CommitNotice>,
    /// Listens for every instance's commits; ends with the store.
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PostgresStore {
    /// Connects (creating the database when it does not exist yet), applies `schema.sql`, and
    /// opens the pool.
    pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        let (config, tls) = connection_config(settings)?;
        let url = settings.url.as_ref().expect("connection_config checked it");
        let startup = Duration::from_secs(settings.startup_timeout_seconds);
        let mut client = connect_creating_database(&config, &tls, url.expose(), startup).await?;
        migrate::run(&mut client).await?;
        drop(client);

        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Some(Duration::from_secs(settings.connect_timeout_seconds));
        // A connection that was open when an operation ran out of time may be one that stopped
        // answering (a blackholed network keeps it open): none made before then is reused.
        let tainted_before = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
        let taint = tainted_before.clone();
        let pool = Pool::builder(manager)
            .post_recycle(Hook::sync_fn(move |_, metrics| {
                match *taint.lock().expect("never poisoned") {
                    Some(before) if metrics.created < before => Err(HookError::message(
                        "made before an operation timed out; replaced",
                    )),
                    _ => Ok(()),
                }
            }))
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .context("building the Postgres pool")?;
        let (commits, _) = broadcast::channel(COMMIT_SIGNAL_CAPACITY);
        let listener = tokio::spawn(listen_for_commits(config, tls, commits.clone()));
        Ok(Self {
            pool,
            commits,
            listener,
            deadline: Duration::from_secs(settings.connect_timeout_seconds),
            tainted_before,
            writes: WriteGate::default(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs one store operation within `database.connect_timeout_seconds` (waiting for a
    /// connection included): a Postgres that stops answering fails the operation with
    /// `Unavailable` then, rather than holding it until TCP gives up. After a timeout, no
    /// connection made before it is used again. `writes` says whether the operation writes,
    /// for the [`WriteGate`].
    async fn bounded<T>(
        &self,
        writes: bool,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.deadline, operation).await {
            Ok(result) => result,
            Err(_) => {
                *self.tainted_before.lock().expect("never poisoned") =
                    Some(std::time::Instant::now());
                Err(StoreError::Unavailable(anyhow!(
                    "Postgres did not answer within {:?} (database.connect_timeout_seconds)",
                    self.deadline
                )))
            }
        };
        if writes {
            self.writes.observe(&result);
        }
        result
    }
}

/// The TLS connector of every Postgres connection: rustls, checking the server's certificate
/// as the URL's `sslmode` says.
type Tls = tokio_postgres_rustls::MakeRustlsConnect;

fn connection_config(settings: &DatabaseSettings) -> anyhow::Result<(tokio_postgres::Config, Tls)> {
    let url = settings
        .url
        .as_ref()
        .context("database.url (DATABASE_URL) is not set")?;
    let target = crate::config::PostgresTarget::parse(url.expose())
        .map_err(|message| anyhow!("database.url {} {message}", redact_url(url.expose())))?;
    let roots = crate::tls::roots(target.root_cert.as_deref(), false)
        .context("database.url sslrootcert")?;
    let tls = Tls::new(crate::tls::client_config(target.verify(), roots)?);
    let mut config = target.config;
    let timeout = Duration::from_secs(settings.connect_timeout_seconds);
    config.connect_timeout(timeout);
    // A peer that vanishes is noticed by TCP within about the timeout, and the server gives up
    // a statement that runs longer than the client would wait for it.
    config
        .keepalives(true)
        .keepalives_idle(timeout)
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        .tcp_user_timeout(timeout);
    let statement_timeout = format!("-c statement_timeout={}", timeout.as_millis());
    let options = match config.get_options() {
        Some(given) if !given.is_empty() => format!("{given} {statement_timeout}"),
        _ => statement_timeout,
    };
    config.options(options);
    if config.get_application_name().is_none() {
        config.application_name("contextd");
    }
    Ok((config, tls))
}

/// Forwards the commit notifications of every instance (`LISTEN`) to the commit signal, on a
/// connection of its own, reconnecting forever. After each (re)connection it says `Unknown`:
/// commits may have happened while it was not listening.
async fn listen_for_commits(
    config: tokio_postgres::Config,
    tls: Tls,
    commits: broadcast::Sender<CommitNotice>,
) {
    use futures_util::StreamExt;
    let mut delay = Duration::from_millis(100);
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let (notices, mut received) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = message
                            && notices.send(n.payload().to_owned()).is_err()
                        {
                            break;
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
                    .await
                    .is_ok()
                {
                    delay = Duration::from_millis(100);
                    let _ = commits.send(CommitNotice::Unknown);
                    while let Some(payload) = received.recv().await {
                        let notice = if payload == KEYS_CHANGED_PAYLOAD {
                            CommitNotice::KeysChanged
                        } else {
                            Committed::parse(&payload)
                                .map(|(id, committed)| CommitNotice::Changed(id, committed))
                                .unwrap_or(CommitNotice::Unknown)
                        };
                        let _ = commits.send(notice);
                    }
                }
                driver.abort();
                tracing::warn!("the commit listener lost its connection; reconnecting");
            }
            Err(e) => tracing::debug!(error = %e, "the commit listener cannot connect yet"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Connects, and when the database does not exist, creates it from the `postgres` database
/// first, so that a fresh Postgres needs no manual step. A Postgres that is not reachable yet
/// (starting beside contextd in compose or Kubernetes) is tried again with backoff for up to
/// `startup`, each attempt logged; what no retry can mend (a refused password, a certificate
/// that does not verify) stops at once, saying why.
async fn connect_creating_database(
    config: &tokio_postgres::Config,
    tls: &Tls,
    url: &str,
    startup: Duration,
) -> anyhow::Result<tokio_postgres::Client> {
    let deadline = std::time::Instant::now() + startup;
    let mut delay = Duration::from_millis(250);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match connect(config, tls).await {
            Ok(client) => return Ok(client),
            Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                create_database(config, tls).await?;
            }
            Err(e) => {
                let tls_failure = crate::tls::explain(&e);
                let retryable = e.as_db_error().is_none() && tls_failure.is_none();
                if retryable && std::time::Instant::now() + delay < deadline {
                    tracing::warn!(
                        url = %redact_url(url), attempt, error = %e, retry_in = ?delay,
                        "Postgres is not reachable yet; retrying (database.startup_timeout_seconds)"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
                let why = tls_failure.unwrap_or_else(|| e.to_string());
                let gave_up = if retryable {
                    format!(" (gave up after {attempt} attempts in {startup:?})")
                } else {
                    String::new()
                };
                return Err(anyhow!(e))
                    .with_context(|| format!("connecting to {}: {why}{gave_up}", redact_url(url)));
            }
        }
    }
}

async fn connect(
    config: &tokio_postgres::Config,
    tls: &Tls,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.clone()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "Postgres connection closed");
        }
    });
    Ok(client)
}

async fn create_database(config: &tokio_postgres::Config, tls: &Tls) -> anyhow::Result<()> {
    let name = config
        .get_dbname()
        .context("the database URL names no database")?
        .to_owned();
    let mut maintenance = config.clone();
    maintenance.dbname("postgres");
    let client = connect(&maintenance, tls)
        .await
        .context("connecting to the `postgres` database to create ours")?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => {
            tracing::info!(database = %name, "created the database");
            Ok(())
        }
        // Another instance created it first: just as good.
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("creating database {name}")),
    }
}

/// Connection trouble is worth a retry (503); anything else is a bug (500).
fn db_error(e: tokio_postgres::Error) -> StoreError {
    let transient = match e.code() {
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::QUERY_CANCELED,
                ]
                .contains(code)
        }
    };
    let refusing = e.code().is_some_and(|code| {
        [
            SqlState::DISK_FULL,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::INSUFFICIENT_RESOURCES,
        ]
        .contains(code)
    });
    if refusing {
        StoreError::Refusing(e.into())
    } else if transient {
        StoreError::Unavailable(e.into())
    } else if e.code().is_some_and(|c| c.code().starts_with("22")) {
        // A data exception: a value the rules let through that Postgres cannot hold.
        StoreError::Rejected(e.into())
    } else {
        StoreError::Internal(e.into())
    }
}

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

/// A row that does not map back to our types is never the network's fault.
fn column_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Internal(e.into())
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db_error(e),
        PoolError::Timeout(_) | PoolError::Closed => StoreError::Unavailable(anyhow!(e)),
        other => StoreError::Internal(anyhow!(other.to_string())),
    }
}

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

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(anyhow!("unexpected data in Postgres: {what}"))
}

fn object(value: Jsonb) -> Result<JsonObject, StoreError> {
    Ok(value.0)
}

/// A JSON object in a `jsonb` (or `json`) column. Written as its canonical text (`jsonb`'s
/// binary format is a version byte, then the text); read back through the canonicalizer,
/// since `jsonb` keeps keys in an order of its own and writes spaces.
struct Jsonb(JsonObject);

/// The same, borrowed, for writing.
#[derive(Debug)]
struct JsonbRef<'a>(&'a JsonObject);

/// The version byte of `jsonb`'s binary format.
const JSONB_VERSION: u8 = 1;

impl ToSql for JsonbRef<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.extend_from_slice(&[JSONB_VERSION]);
        }
        out.extend_from_slice(self.0.as_str().as_bytes());
        Ok(IsNull::No)
    }

    accepts!(JSON, JSONB);
    to_sql_checked!();
}

impl<'a> FromSql<'a> for Jsonb {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = match (ty == &Type::JSONB, raw.split_first()) {
            (true, Some((&JSONB_VERSION, text))) => text,
            (true, _) => return Err("unknown jsonb format version".into()),
            (false, _) => raw,
        };
        let text = std::str::from_utf8(text)?;
        Ok(Self(JsonObject::parse(text)?))
    }

    accepts!(JSON, JSONB);
}

fn source(raw: &str) -> Result<Source, StoreError> {
    Source::parse(raw).ok_or_else(|| corrupt(format!("source {raw:?}")))
}

fn parent(raw: Option<String>) -> Result<Option<ContextId>, StoreError> {
    raw.map(|p| ContextId::parse(&p).map_err(|e| corrupt(format!("parent_id {p:?}: {e}"))))
        .transpose()
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

fn context_from_row(id: &ContextId, row: &Row) -> Result<Context, StoreError> {
    context_from_columns(id, row, 0)
}

/// A context from the nine columns of `SELECT_CURRENT`'s shape, starting at column `first`.
fn context_from_columns(id: &ContextId, row: &Row, first: usize) -> Result<Context, StoreError> {
    let at = |n: usize| first + n;
    Ok(Context {
        id: id.clone(),
        version: row.try_get(at(0)).map_err(column_error)?,
        content: Content {
            source: source(row.try_get(at(1)).map_err(column_error)?)?,
            parent_id: parent(row.try_get(at(2)).map_err(column_error)?)?,
            data: object(row.try_get(at(6)).map_err(column_error)?)?,
            metadata: object(row.try_get(at(7)).map_err(column_error)?)?,
            embedding: row.try_get(at(8)).map_err(column_error)?,
        },
        size_bytes: row.try_get(at(3)).map_err(column_error)?,
        created_at: row.try_get(at(4)).map_err(column_error)?,
        updated_at: row.try_get(at(5)).map_err(column_error)?,
    })
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
        has_embedding: row.try_get(8).map_err(column_error)?,
    })
}

#[async_trait]
impl StoreHealth for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn refusing_writes(&self) -> bool {
        self.writes.refusing()
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        let status = self.pool.status();
        Some(PoolStatus {
            max_size: status.max_size,
            open: status.size,
            idle: status.available,
            waiting: status.waiting,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            client.simple_query("SELECT 1").await.map_err(db_error)?;
            Ok(())
        })
        .await
    }
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
            let notice = Committed {
                created_at: current.created_at,
                version: Committed::DELETED,
            }
            .payload(id);
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
            let prefix = visible.prefix();
            let limit = limit as i64;
            let mut conditions = Vec::new();
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
            if let Some(source) = &source {
                params.push(source);
                conditions.push(format!("m.source = ${}", params.len()));
            }
            if let Some(parent) = &parent {
                params.push(parent);
                conditions.push(format!("m.parent_id = ${}", params.len()));
            }
            if let Some(prefix) = &prefix {
                params.push(prefix);
                conditions.push(format!(
                    "left(m.context_id, length(${0})) = ${0}",
                    params.len()
                ));
            }
            if let Some(after) = &after {
                params.push(after);
                conditions.push(format!("m.context_id > ${}", params.len()));
            }
            params.push(&limit);
            let mut sql = LIST_COLUMNS.to_owned();
            if !conditions.is_empty() {
                sql.push_str(" WHERE ");
                sql.push_str(&conditions.join(" AND "));
            }
            sql.push_str(&format!(" ORDER BY m.context_id LIMIT ${}", params.len()));

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

    async fn history(&self, id: &ContextId) -> Result<Option<ContextHistory>, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            select_history(&client, id).await
        })
        .await
    }

    async fn import(&self, histories: Vec<ContextHistory>) -> Result<ImportSummary, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let lock = tx.prepare_cached(LOCK_CONTEXT).await.map_err(db_error)?;
        let mut summary = ImportSummary::default();
        for history in &histories {
            let key = history.id.as_str();
            tx.execute(&lock, &[&key]).await.map_err(db_error)?;
            if select_history(&tx, &history.id).await?.as_ref() == Some(history) {
                summary.unchanged += 1;
                continue;
            }
            replace_history(&tx, history).await?;
            summary.imported += 1;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(summary)
    }
}

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
                .query_opt(&statement, &[&cache_key(id)])
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
                .map(|(id, n)| (cache_key(&id), n))
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

#[async_trait]
impl ChangeLog for PostgresStore {
    fn signal_spans_processes(&self) -> bool {
        true
    }

    fn commits(&self) -> broadcast::Receiver<CommitNotice> {
        self.commits.subscribe()
    }

    async fn sequence_outbox(&self) -> Result<(), StoreError> {
        self.bounded(true, async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            // One simple query, so the server runs the lock before the UPDATE takes its snapshot.
            // (Two pipelined unprepared statements are prepared first, and `join!` may then send
            // the UPDATE ahead of the lock: two sequencers would then number the same rows.)
            tx.batch_execute(&format!("{SEQUENCER_LOCK}; {SEQUENCE_OUTBOX}"))
                .await
                .map_err(db_error)?;
            tx.commit().await.map_err(db_error)
        })
        .await
    }

    async fn changes(
        &self,
        since: i64,
        limit: usize,
        visible: &Visible,
    ) -> Result<Vec<Change>, StoreError> {
        let id_prefix = visible.prefix();
        self.bounded(false, async move {
            let client = self.client().await?;
            let sql = format!(
                "{CHANGE_COLUMNS} WHERE o.seq > $1 \
                 AND ($3::text IS NULL OR left(o.context_id, length($3)) = $3) \
                 ORDER BY o.seq LIMIT $2"
            );
            let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client
                .query(&statement, &[&since, &(limit as i64), &id_prefix])
                .await
                .map_err(db_error)?;
            rows.iter().map(change_from_row).collect()
        })
        .await
    }

    async fn deliver_pending(
        &self,
        limit: usize,
        deliver: Deliver,
    ) -> Result<DeliverOutcome, StoreError> {
        let mut client = self.client().await?;
        let sql = format!(
            "{CHANGE_COLUMNS} WHERE o.delivered_at IS NULL AND o.seq IS NOT NULL \
             ORDER BY o.seq LIMIT $1 FOR UPDATE OF o SKIP LOCKED"
        );
        let claim = client.prepare_cached(&sql).await.map_err(db_error)?;
        let tx = client.transaction().await.map_err(db_error)?;
        let limit = limit as i64;
        // The lock first, and only then the claim: a claim made without the lock would hold
        // rows for a moment, and the pusher that does hold it would skip them and push later
        // changes first.
        let ours: bool = tx
            .query_one(PUSHER_LOCK, &[])
            .await
            .map_err(db_error)?
            .try_get(0)
            .map_err(column_error)?;
        if !ours {
            return Ok(DeliverOutcome::Busy);
        }
        let rows = tx.query(&claim, &[&limit]).await.map_err(db_error)?;
        let Some(first) = rows.first() else {
            return Ok(DeliverOutcome::Idle);
        };
        let not_before: Option<DateTime<Utc>> = first.try_get(9).map_err(column_error)?;
        if let Some(waiting) = DeliverOutcome::waiting_for(not_before) {
            return Ok(waiting);
        }
        let changes: Vec<Change> = rows.iter().map(change_from_row).collect::<Result<_, _>>()?;
        let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
        let outcome = match deliver(changes.clone()).await {
            Delivery::Delivered => {
                tx.execute(MARK_DELIVERED, &[&seqs])
                    .await
                    .map_err(db_error)?;
                DeliverOutcome::Delivered(changes)
            }
            Delivery::Failed { retry_at, error } => {
                tx.execute(MARK_FAILED, &[&seqs, &retry_at, &error])
                    .await
                    .map_err(db_error)?;
                DeliverOutcome::Failed
            }
        };
        tx.commit().await.map_err(db_error)?;
        Ok(outcome)
    }

    async fn latest_seq(&self) -> Result<i64, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let row = client.query_one(LATEST_SEQ, &[]).await.map_err(db_error)?;
            row.try_get(0).map_err(column_error)
        })
        .await
    }

    async fn pending_changes(&self) -> Result<i64, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let row = client
                .query_one(PENDING_CHANGES, &[])
                .await
                .map_err(db_error)?;
            row.try_get(0).map_err(column_error)
        })
        .await
    }

    async fn prune_outbox(&self, before: DateTime<Utc>, all: bool) -> Result<u64, StoreError> {
        self.bounded(true, async move {
            let client = self.client().await?;
            client
                .execute(PRUNE_OUTBOX, &[&before, &all])
                .await
                .map_err(db_error)
        })
        .await
    }
}

#[async_trait]
impl EmbeddingStore for PostgresStore {
    async fn with_embeddings(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Context>, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let rows = client
                .query(WITH_EMBEDDINGS, &[&after.unwrap_or(""), &(limit as i64)])
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

async fn select_history(
    client: &impl deadpool_postgres::GenericClient,
    id: &ContextId,
) -> Result<Option<ContextHistory>, StoreError> {
    let key = id.as_str();
    let head = client
        .query_opt(SELECT_HEAD, &[&key])
        .await
        .map_err(db_error)?;
    let Some(head) = head else {
        return Ok(None);
    };
    let rows = client
        .query(SELECT_ALL_VERSIONS, &[&key])
        .await
        .map_err(db_error)?;
    Ok(Some(ContextHistory {
        id: id.clone(),
        version: head.try_get(0).map_err(column_error)?,
        created_at: head.try_get(1).map_err(column_error)?,
        updated_at: head.try_get(2).map_err(column_error)?,
        versions: rows
            .iter()
            .map(|row| record_from_row(id, row))
            .collect::<Result<_, _>>()?,
    }))
}

/// Replaces whatever is stored under the history's id with exactly that history.
async fn replace_history(
    tx: &deadpool_postgres::Transaction<'_>,
    history: &ContextHistory,
) -> Result<(), StoreError> {
    let current = history
        .current()
        .ok_or_else(|| StoreError::Internal(anyhow!("a history without its current version")))?;
    let key = history.id.as_str();
    let content = &current.content;
    let (delete, upsert, insert, outbox) = tokio::try_join!(
        tx.prepare_cached(DELETE_CONTEXT),
        tx.prepare_cached(UPSERT_METADATA),
        tx.prepare_cached(INSERT_VERSION),
        tx.prepare_cached(APPEND_OUTBOX),
    )
    .map_err(db_error)?;
    tx.execute(&delete, &[&key]).await.map_err(db_error)?;
    tx.execute(
        &upsert,
        &[
            &key,
            &history.version,
            &content.source.as_str(),
            &content.parent_id.as_ref().map(ContextId::as_str),
            &(content.size_bytes() as i64),
            &content.embedding.is_some(),
            &history.created_at,
            &history.updated_at,
            &None::<DateTime<Utc>>,
        ],
    )
    .await
    .map_err(db_error)?;
    for record in &history.versions {
        let c = &record.content;
        tx.execute(
            &insert,
            &[
                &key,
                &record.info.version,
                &c.source.as_str(),
                &c.parent_id.as_ref().map(ContextId::as_str),
                &JsonbRef(&c.data),
                &JsonbRef(&c.metadata),
                &c.embedding,
                &record.info.change_type.as_str(),
                &record.info.changed_by,
                &record.info.changed_at,
                &(c.size_bytes() as i64),
            ],
        )
        .await
        .map_err(db_error)?;
    }
    tx.execute(
        &outbox,
        &[
            &key,
            &history.version,
            &history.created_at,
            &"upsert",
            &current.info.change_type.as_str(),
        ],
    )
    .await
    .map_err(db_error)?;
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

fn change_from_row(row: &Row) -> Result<Change, StoreError> {
    let raw: &str = row.try_get(1).map_err(column_error)?;
    let op: &str = row.try_get(3).map_err(column_error)?;
    let data: Option<Jsonb> = row.try_get(6).map_err(column_error)?;
    let content = match data {
        Some(data) => Some(ChangedContent {
            data: object(data)?,
            metadata: object(row.try_get(7).map_err(column_error)?)?,
            changed_at: row.try_get(8).map_err(column_error)?,
        }),
        None => None,
    };
    Ok(Change {
        seq: row.try_get(0).map_err(column_error)?,
        id: ContextId::parse(raw).map_err(|e| corrupt(format!("id {raw:?}: {e}")))?,
        version: row.try_get(2).map_err(column_error)?,
        op: match op {
            "upsert" => ChangeOp::Upsert,
            "delete" => ChangeOp::Delete,
            other => return Err(corrupt(format!("op {other:?}"))),
        },
        committed_at: row.try_get(4).map_err(column_error)?,
        attempts: row.try_get(5).map_err(column_error)?,
        content,
    })
}

/// One new version's statement parameters, owned or borrowed from its `NewVersion`, so that the
/// statements of many versions can be in flight at once.
struct Staged<'a> {
    key: &'a str,
    new: &'a NewVersion,
    source: &'static str,
    parent: Option<&'a str>,
    size: i64,
    has_embedding: bool,
    data: JsonbRef<'a>,
    metadata: JsonbRef<'a>,
    change_type: &'static str,
    op: &'static str,
    cache_key: String,
    /// The commit signal's payload.
    notice: String,
}

impl<'a> Staged<'a> {
    fn new(id: &'a ContextId, new: &'a NewVersion) -> Self {
        let content = &new.content;
        Self {
            key: id.as_str(),
            new,
            source: content.source.as_str(),
            parent: content.parent_id.as_ref().map(ContextId::as_str),
            size: content.size_bytes() as i64,
            has_embedding: content.embedding.is_some(),
            data: JsonbRef(&content.data),
            metadata: JsonbRef(&content.metadata),
            change_type: new.change_type.as_str(),
            op: "upsert",
            cache_key: cache_key(id),
            notice: Committed {
                created_at: new.created_at,
                version: new.version,
            }
            .payload(id),
        }
    }
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
    type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
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
                vec![
                    &s.cache_key,
                    &s.key,
                    &new.version,
                    &entry.value,
                    &entry.expires_at,
                ],
            ));
        }
        statements.push((&notify, vec![&s.notice]));
    }
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
