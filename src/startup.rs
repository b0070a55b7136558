//! Start-up: wires the store, services and router from the settings, binds, and serves until
//! told to stop. Tests call `App::build` with port 0 and read `App::port`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::{self, Authenticator};
use crate::cache::l2::{L2Settings as RedisSettings, RedisL2};
use crate::cache::{TieredCache, maintenance};
use crate::config::{EmbedderBackend, VectorBackend};
use crate::config::{Settings, StoreLocation, redact_url};
use crate::embed::openai::OpenAiEmbedder;
use crate::embed::{Embedder, Pending, local};
use crate::keyword::KeywordIndex;
use crate::keyword::embedded::EmbeddedKeywordIndex;
use crate::mcp::{self, subscriptions::Subscriptions};
use crate::metrics::Metrics;
use crate::service::{ContextService, KeyService, Ops, SearchService};
use crate::store::{PostgresStore, SqliteStore, Store, Tally};
use crate::sync::{self, EmbeddingWorker, Indexer, IndexerState, Pusher, SyncState};
use crate::vector::VectorIndex;
use crate::vector::embedded::EmbeddedIndex;
use crate::vector::weaviate::WeaviateIndex;

/// A bound, ready-to-serve contextd.
pub struct App {
    listener: TcpListener,
    parts: Assembled,
}

/// Everything of a contextd but its listener: the router, and what runs beside it.
struct Assembled {
    router: axum::Router,
    grace: Duration,
    limits: crate::server::ServerLimits,
    metrics: Arc<Metrics>,
    /// Ends MCP sessions and streams, which would otherwise hold the graceful shutdown open.
    mcp_shutdown: CancellationToken,
    /// Tells the background loops to stop, once the server has.
    stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
}

/// The vector index the settings name, and whether it keeps its data across restarts.
fn open_vector_index(settings: &Settings) -> anyhow::Result<(Arc<dyn VectorIndex>, bool)> {
    let dimensions = settings.vector.dimensions;
    Ok(match settings.vector.backend {
        VectorBackend::Embedded => (
            Arc::new(EmbeddedIndex::new(dimensions, &settings.vector.embedded)),
            false,
        ),
        VectorBackend::Weaviate => (
            Arc::new(
                WeaviateIndex::new(&settings.vector.weaviate, dimensions)
                    .context("vector.weaviate")?
                    .with_text(settings.embedder.text.clone()),
            ),
            true,
        ),
    })
}

/// How long start-up asks an OpenAI-compatible embedder for the length of its vectors before
/// serving without knowing (it is checked again on every answer).
const EMBEDDER_PROBE_WAIT: Duration = Duration::from_secs(5);

/// The embedder `embedder.backend` names, or none. Its vectors must be `vector.dimensions`
/// long: start-up stops, naming both keys, when they are not. A local model's weights load in
/// the background (the embedder answers "unavailable" meanwhile); an OpenAI-compatible one is
/// asked once for one vector, and serving starts anyway when it does not answer in time.
async fn open_embedder(
    settings: &Settings,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<Pending>>> {
    let dimensions = settings.vector.dimensions;
    let observer = || -> crate::embed::Observer {
        let metrics = metrics.clone();
        Box::new(move |seconds| metrics.observe_embedding(seconds))
    };
    let mismatch = |key: &str, made: usize| {
        anyhow::anyhow!(
            "{key} makes vectors of {made} floats, but vector.dimensions is {dimensions}: set \
             vector.dimensions to {made} (then `contextd reindex`), or choose another model"
        )
    };
    match settings.embedder.backend {
        EmbedderBackend::None => Ok(None),
        EmbedderBackend::Local => {
            let dir = settings
                .embedder
                .local
                .model_dir
                .clone()
                .context("embedder.local.model_dir must be set")?;
            let info = local::inspect(&dir).context("embedder.local.model_dir")?;
            if info.dimensions != dimensions {
                return Err(mismatch(
                    "embedder.local.model_dir's model",
                    info.dimensions,
                ));
            }
            let pending = Arc::new(
                Pending::new(
                    "local",
                    local::model_name(&dir),
                    dimensions,
                    local::BATCH_SIZE,
                )
                .observed_by(observer()),
            );
            let loading = pending.clone();
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let loaded = local::LocalEmbedder::load(&dir)
                    .map(|model| Arc::new(model) as Arc<dyn Embedder>)
                    .map_err(|e| format!("{e:#}"));
                match &loaded {
                    Ok(_) => {
                        tracing::info!(took = ?started.elapsed(), "the local embedder is loaded")
                    }
                    Err(e) => tracing::error!(error = %e, "the local embedder did not load"),
                }
                loading.finish(loaded);
            });
            Ok(Some(pending))
        }
        EmbedderBackend::Openai => {
            let client = OpenAiEmbedder::new(&settings.embedder.openai, dimensions)
                .context("embedder.openai")?;
            match tokio::time::timeout(EMBEDDER_PROBE_WAIT, client.probe()).await {
                Ok(Ok(made)) if made != dimensions => {
                    return Err(mismatch(
                        &format!("embedder.openai.model ({})", settings.embedder.openai.model),
                        made,
                    ));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "the embedder did not answer at start; serving, and trying again as needed"
                ),
                Err(_) => tracing::warn!(
                    waited = ?EMBEDDER_PROBE_WAIT,
                    "the embedder did not answer at start; serving, and trying again as needed"
                ),
            }
            Ok(Some(Arc::new(
                Pending::ready(Arc::new(client)).observed_by(observer()),
            )))
        }
    }
}

/// `contextd reindex`, with no server running: opens the store (migrating it, as `export`
/// does), Redis when configured (to forget the cache entries of what is dropped) and the
/// vector index the settings name, then repairs and rebuilds.
pub async fn reindex(settings: &Settings) -> anyhow::Result<crate::service::ReindexSummary> {
    let store = open_store(settings).await?;
    let redis = if settings.cache.l2.enabled {
        connect_redis(settings).await?
    } else {
        None
    };
    let (index, persistent) = open_vector_index(settings)?;
    let remaker = open_embedder(settings, &Arc::new(Metrics::new()))
        .await?
        .map(|embedder| crate::service::Remaker {
            embedder,
            pointers: settings.embedder.text.clone(),
        });
    crate::service::reindex(store, index, persistent, redis, remaker).await
}

/// How long start-up waits for the invalidation channel before serving anyway.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// Connects to Redis when `REDIS_URL` is set. Never fails because Redis is down: the client
/// keeps reconnecting, and the cache works without it meanwhile.
pub async fn connect_redis(settings: &Settings) -> anyhow::Result<Option<Arc<RedisL2>>> {
    let Some(url) = &settings.redis.url else {
        return Ok(None);
    };
    tracing::info!(url = %redact_url(url.expose()), "connecting to Redis");
    let l2 = &settings.cache.l2;
    let redis = RedisL2::connect(RedisSettings {
        url: url.expose().clone(),
        key_prefix: l2.key_prefix.clone(),
        ttl: Duration::from_secs(l2.ttl_seconds),
        version_ttl: Duration::from_secs(l2.version_ttl_seconds),
        command_timeout: Duration::from_millis(l2.command_timeout_ms),
        cluster: settings.redis.cluster,
        tls_ca_file: settings.redis.tls_ca_file.clone(),
    })
    .await
    .context("redis.url (REDIS_URL)")?;
    Ok(Some(Arc::new(redis)))
}

/// Opens the store named by the settings and applies its migrations.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let location = settings
        .database
        .location()
        .map_err(|e| anyhow::anyhow!("database.url {e}"))?;
    Ok(match location {
        StoreLocation::Postgres(url) => {
            tracing::info!(url = %redact_url(url.expose()), "opening the Postgres store");
            Arc::new(PostgresStore::connect(&settings.database).await?)
        }
        StoreLocation::Sqlite(path) => {
            if settings.database.url.is_none() {
                tracing::info!(
                    path = %path.display(),
                    "DATABASE_URL is not set: using the embedded SQLite store"
                );
            } else {
                tracing::info!(path = %path.display(), "opening the SQLite store");
            }
            Arc::new(SqliteStore::open(&path).await?)
        }
    })
}

/// How the server treats connections, from the settings.
fn server_limits(settings: &Settings) -> crate::server::ServerLimits {
    crate::server::ServerLimits {
        header_timeout: Duration::from_secs(settings.server.header_timeout_seconds),
        max_connections: settings.server.max_connections,
    }
}

async fn bind(settings: &Settings) -> anyhow::Result<TcpListener> {
    TcpListener::bind(settings.server.bind)
        .await
        .with_context(|| format!("binding {}", settings.server.bind))
}

impl App {
    /// Connects and migrates the store, builds the services, and binds `server.bind`.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let parts = assemble(settings, metrics).await?;
        let listener = bind(settings).await?;
        Ok(Self { listener, parts })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` completes, then lets requests in flight finish (for at most
    /// `server.shutdown_grace_seconds`).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let settings_grace = self.parts.grace();
        let addr = self.local_addr();
        let stopping = stop_on(shutdown, Some(self.parts.mcp_shutdown.clone()));
        let metrics = self.parts.metrics();
        let serve = crate::server::serve(
            self.listener,
            self.parts.router.clone(),
            self.parts.limits(),
            metrics,
            stopping.clone(),
        );
        tracing::info!("listening on http://{addr}");
        finish(serve, stopping, settings_grace, self.parts).await;
        Ok(())
    }
}

/// `contextd serve`: binds first and answers at once (`/healthz` 200, `/readyz` 503, the rest
/// 503 "starting") while the store is reached and the services are built, which may take up to
/// `database.startup_timeout_seconds` when Postgres starts beside contextd; then serves.
pub async fn serve(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = bind(settings).await?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(std::sync::OnceLock::<axum::Router>::new());
    let router = crate::api::starting::switch(settings, ready.clone());
    let stopping = stop_on(shutdown, None);
    let limits = server_limits(settings);
    let mut server = tokio::spawn(crate::server::serve(
        listener,
        router,
        limits,
        metrics.clone(),
        stopping.clone(),
    ));
    tracing::info!("listening on http://{addr}");
    let parts = tokio::select! {
        built = assemble(settings, metrics) => built?,
        () = stopping.cancelled() => {
            tracing::info!("stopped before start-up was done");
            let _ = (&mut server).await;
            return Ok(());
        }
    };
    let _ = ready.set(parts.router.clone());
    // A shutdown from now on also ends the MCP streams.
    let mcp_shutdown = parts.mcp_shutdown.clone();
    let stopped = stopping.clone();
    tokio::spawn(async move {
        stopped.cancelled().await;
        mcp_shutdown.cancel();
    });
    tracing::info!("ready");
    let grace = Duration::from_secs(settings.server.shutdown_grace_seconds);
    finish(
        async move {
            let _ = server.await;
        },
        stopping,
        grace,
        parts,
    )
    .await;
    Ok(())
}

/// A token cancelled once `shutdown` completes (ending `mcp`'s streams too, when given).
fn stop_on(
    shutdown: impl Future<Output = ()> + Send + 'static,
    mcp: Option<CancellationToken>,
) -> CancellationToken {
    let stopping = CancellationToken::new();
    let token = stopping.clone();
    tokio::spawn(async move {
        shutdown.await;
        if let Some(mcp) = mcp {
            mcp.cancel();
        }
        token.cancel();
        tracing::info!("shutting down; letting requests in flight finish");
    });
    stopping
}

/// How long start-up waits for the vector index to load before it serves anyway.
const INDEX_START_WAIT: Duration = Duration::from_secs(2);

/// How long background work (indexer, pusher, pruner, warm loop) may take to stop after the
/// server has: bounded, so that a stop finishes well inside a container's kill timeout at any
/// backlog.
const BACKGROUND_STOP: Duration = Duration::from_secs(5);

/// Waits for the server to end (or the grace period after `stopping`), then stops the
/// background work and waits for it.
async fn finish(
    serve: impl Future<Output = ()>,
    stopping: CancellationToken,
    grace: Duration,
    parts: Assembled,
) {
    tokio::select! {
        () = serve => {}
        () = async {
            stopping.cancelled().await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(?grace, "requests still running after the grace period; stopping anyway"),
    }
    let _ = parts.stop.send(true);
    // Background work stops at its next step; what is still running after BACKGROUND_STOP
    // (a rebuild of a large index, a push to a slow receiver) is cut off. Nothing is lost:
    // every reader of the outbox resumes from its last recorded position.
    let deadline = tokio::time::Instant::now() + BACKGROUND_STOP;
    let mut cut_off = 0;
    for mut task in parts.background {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            cut_off += 1;
        }
    }
    if cut_off > 0 {
        tracing::warn!(
            tasks = cut_off,
            after = ?BACKGROUND_STOP,
            "background work was still running; stopped it (it resumes at the next start)"
        );
    }
    tracing::info!("stopped");
}

/// Connects and migrates the store, and builds the services and the router.
async fn assemble(settings: &Settings, metrics: Arc<Metrics>) -> anyhow::Result<Assembled> {
    {
        let store = open_store(settings).await?;
        let redis = connect_redis(settings).await?;
        let cache = Arc::new(TieredCache::new(&settings.cache, store.clone(), redis));
        cache.wait_until_subscribed(SUBSCRIBE_WAIT).await;
        let (stop, stopped) = watch::channel(false);
        let mut background = maintenance::spawn(cache.clone(), &settings.cache, stopped.clone());
        let sync_state = Arc::new(SyncState::new(settings.sync.factory.webhook_url.is_some()));
        let pusher = Pusher::new(
            store.clone(),
            &settings.sync.factory,
            Duration::from_secs(settings.sync.interval_seconds),
            metrics.clone(),
            sync_state.clone(),
        )?;
        background.push(sync::spawn_pruner(
            store.clone(),
            &settings.sync,
            stopped.clone(),
        ));
        let (index, persistent) = open_vector_index(settings)?;
        let embedder = open_embedder(settings, &metrics).await?;
        let indexer_state = Arc::new(IndexerState::default());
        // The keyword index is in memory: kept by the same indexer, loaded at each start.
        let keyword: Arc<dyn KeywordIndex> =
            Arc::new(EmbeddedKeywordIndex::new().context("making the keyword index")?);
        let mut indexer = Indexer::new(
            store.clone(),
            index.clone(),
            indexer_state.clone(),
            Duration::from_secs(settings.sync.interval_seconds),
            persistent,
        )
        .with_keywords(keyword.clone(), settings.embedder.text.clone());
        // With an embedder, contexts written without an embedding get the server's, made
        // after commit by a worker the indexer hands them to.
        if let Some(embedder) = &embedder {
            let (worker, link) = EmbeddingWorker::new(
                store.clone(),
                embedder.clone(),
                cache.clone(),
                metrics.clone(),
                settings.embedder.text.clone(),
            );
            indexer = indexer.with_embedding(link);
            background.push(worker.spawn(stopped.clone()));
        }
        // The embedded index starts empty and is loaded from the store in the background.
        // Start-up waits for it a moment (a small store is searchable as soon as contextd is
        // ready), then serves: until the index has caught up, search answers from what is
        // loaded and `/readyz` says `vector: degraded`. Weaviate keeps its data; its indexer
        // resumes where it was.
        background.push(indexer.spawn(None, stopped.clone()));
        let waited = tokio::time::Instant::now() + INDEX_START_WAIT;
        while !indexer_state.healthy() && tokio::time::Instant::now() < waited {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !indexer_state.healthy() {
            tracing::info!(
                waited = ?INDEX_START_WAIT,
                "serving while the indexes load (readyz: vector degraded until they have)"
            );
        }
        let contexts = Arc::new(ContextService::new(store.clone(), cache.clone(), settings));
        let tally = contexts.tally().clone();
        let pushing = pusher.is_some();
        background.push(recount(store.clone(), tally.clone(), pushing, stopped.clone()).await);
        if let Some(pusher) = pusher {
            background.push(pusher.with_tally(tally.clone()).spawn(stopped.clone()));
        }
        auth::ensure_bootstrap_key(settings, store.as_ref())
            .await
            .context("auth.bootstrap_key")?;
        let authenticator = Arc::new(Authenticator::new(settings, store.clone(), metrics.clone()));
        if authenticator.enabled() {
            authenticator.load().await.context("loading the API keys")?;
        }
        background.extend(authenticator.spawn(stopped.clone()));
        if authenticator.enabled() {
            tracing::info!(
                "auth is on: every route but health, readiness, docs{} needs a key",
                if settings.auth.open_metrics {
                    " and metrics"
                } else {
                    ""
                }
            );
        } else {
            tracing::info!(bind = %settings.server.bind, "auth is off (auth.mode)");
        }
        let commits = store.commits();
        let state = AppState {
            bodies: Arc::new(api::body::BodyBudget::new(
                &settings.limits,
                settings.max_body_bytes(),
                metrics.clone(),
            )),
            keys: Arc::new(KeyService::new(store.clone()).on_change({
                let authenticator = authenticator.clone();
                move |record| authenticator.apply(record)
            })),
            search: Arc::new({
                let search =
                    SearchService::new(contexts.clone(), index.clone(), settings.vector.dimensions)
                        .with_keyword(keyword);
                match &embedder {
                    Some(embedder) => search.with_embedder(embedder.clone()),
                    None => search,
                }
            }),
            contexts,
            ops: Arc::new({
                let ops = Ops::new(
                    store,
                    tally,
                    cache,
                    sync_state,
                    (index, indexer_state),
                    settings,
                );
                match embedder {
                    Some(embedder) => ops.with_embedder(embedder),
                    None => ops,
                }
            }),
            metrics: metrics.clone(),
        };
        let subscriptions = Arc::new(Subscriptions::default());
        background.push(subscriptions.spawn_feed(commits, stopped.clone()));
        let mcp_shutdown = CancellationToken::new();
        let mcp = settings.mcp.enabled.then(|| {
            let services = mcp::Services {
                contexts: state.contexts.clone(),
                search: state.search.clone(),
                metrics: state.metrics.clone(),
            };
            mcp::router(services, subscriptions, settings, mcp_shutdown.clone())
        });
        let router = api::router(state, settings, mcp, authenticator);
        Ok(Assembled {
            router,
            mcp_shutdown,
            stop,
            background,
            grace: Duration::from_secs(settings.server.shutdown_grace_seconds),
            limits: server_limits(settings),
            metrics,
        })
    }
}

impl Assembled {
    fn grace(&self) -> Duration {
        self.grace
    }

    fn limits(&self) -> crate::server::ServerLimits {
        self.limits.clone()
    }

    fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}

/// How often the store's contexts and versions are counted again, to correct the running
/// counts for what other instances wrote (the first count is right after start).
const RECOUNT_PERIOD: Duration = Duration::from_secs(60);

/// How long start-up waits for the first count: a small store is counted before serving (so
/// the first scrape has its counts), a large one in the background.
const FIRST_COUNT_WAIT: Duration = Duration::from_secs(1);

/// Counts the store (and, when `pushing`, the changes waiting for the webhook) now and every
/// [`RECOUNT_PERIOD`], off any request, into `tally`; returns
/// once the first count is done or [`FIRST_COUNT_WAIT`] has passed.
async fn recount(
    store: Arc<dyn Store>,
    tally: Arc<Tally>,
    pushing: bool,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let once = {
        let (store, tally) = (store.clone(), tally.clone());
        move || {
            let (store, tally) = (store.clone(), tally.clone());
            async move {
                match store.counts().await {
                    Ok(counts) => tally.set_counts(counts),
                    Err(e) => tracing::warn!(error = %e, "cannot count the contexts now"),
                }
                // Changes wait for the webhook only when there is one (without, every change
                // in the outbox would count).
                if pushing {
                    match store.pending_changes().await {
                        Ok(pending) => tally.set_pending(pending),
                        Err(e) => tracing::warn!(error = %e, "cannot count pending changes now"),
                    }
                }
            }
        }
    };
    let mut first = tokio::spawn(once());
    let first_done = tokio::time::timeout(FIRST_COUNT_WAIT, &mut first)
        .await
        .is_ok();
    let periodic = crate::background::every(RECOUNT_PERIOD, stop, once);
    tokio::spawn(async move {
        if !first_done {
            let _ = first.await;
        }
        let _ = periodic.await;
    })
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that arrives as soon as the server says it listens
/// is already seen as a request to stop.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| {
            let handler = signal(kind);
            async move {
                match handler {
                    Ok(mut handler) => {
                        handler.recv().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let (interrupt, terminate) = (
            listen(SignalKind::interrupt(), "Ctrl-C"),
            listen(SignalKind::terminate(), "SIGTERM"),
        );
        async move {
            tokio::select! {
                () = interrupt => {},
                () = terminate => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
