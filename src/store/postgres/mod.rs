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
    DeliverOutcome, Delivery, EmbeddingStore, ImportSummary, KeyStore, ListFilter, ListShape,
    NewVersion, PoolStatus, Resolved, StoreError, StoreHealth, VersionLookup, WriteGate,
    WriteOutcome, WriteView, migrate,
};
use crate::config::{DatabaseSettings, redact_url};
use crate::domain::{
    ChangeType, Content, Context, ContextHistory, ContextId, ContextSummary, EmbeddingSource,
    JsonObject, Refusal, Role, Source, VersionInfo, VersionRecord, Visible,
};

mod cache_table;
mod changes;
mod contexts;

pub use self::contexts::list_statement;
mod embeddings;
mod keys;

/// Serializes every writer of one context, creators included (there is no row to lock yet).
const LOCK_CONTEXT: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

const SELECT_CURRENT: &str = "
    SELECT m.version, m.source, m.parent_id, m.size_bytes, m.created_at, m.updated_at,
           v.data, v.metadata, v.embedding, m.synced_at, s.embedding AS server_embedding
    FROM factory_context_metadata m
    JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
    LEFT JOIN contextd_server_embeddings s
        ON s.context_id = m.context_id AND s.version = m.version
    WHERE m.context_id = $1";

/// Wakes every instance's outbox workers (and subscribers) at commit; the payload is the id.
const NOTIFY_CHANGE: &str = "SELECT pg_notify('contextd_changes', $1)";

/// The channel of `NOTIFY_CHANGE`.
pub const CHANGES_CHANNEL: &str = "contextd_changes";

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

/// The commit-signal payload that says "API keys changed"; no context id contains a `!`.
const KEYS_CHANGED_PAYLOAD: &str = "!keys";

/// The L3 entry of the current version; `access_count` survives the write.
const UPSERT_CACHE_ENTRY: &str = "
    INSERT INTO factory_cache_records (context_id, version, record, expires_at)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (context_id) DO UPDATE SET
        version = EXCLUDED.version,
        record = EXCLUDED.record,
        expires_at = EXCLUDED.expires_at";

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

fn context_from_row(id: &ContextId, row: &Row) -> Result<Context, StoreError> {
    context_from_columns(id, row, 0)
}

/// A context from the nine columns of `SELECT_CURRENT`'s shape, starting at column `first`,
/// and the one named `server_embedding` (the current version's, or null).
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
        server_embedding: row.try_get("server_embedding").map_err(column_error)?,
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
            notice: Committed::write(new.created_at, new.version).payload(id),
        }
    }
}
