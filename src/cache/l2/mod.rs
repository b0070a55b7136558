//! L2: the Redis layer of the cache, shared by every contextd instance.
//!
//! It holds the current version of hot contexts (what each instance's L1 holds), immutable
//! version-specific entries, and the invalidation channel that keeps the instances' L1s
//! coherent. Redis is an optimisation here, never a dependency: this module must not fail a
//! request, nor slow one noticeably, whatever Redis does (down, slow, restarting, flushed).
//! So every command has a short timeout and fails at once while fred is disconnected; a
//! failure is answered as a miss (`Unavailable`, `false`), logged at most once every few
//! seconds, and counted by a circuit breaker that, once open, answers every call at once
//! without touching the network. fred reconnects in the background forever; when Redis is
//! back, the breaker closes after one successful trial and the invalidation listener
//! resubscribes and tells its owner to resync. Nothing here decides anything about contexts.
//!
//! Layout, every key and the channel under `key_prefix` (the id sits in braces, which makes it
//! a Redis Cluster hash tag, so all of an id's keys share a slot and one script may touch them
//! together; braces are outside the id alphabet, so no id's key can be another's):
//! - `context:{id}`: a hash, `s` = the entry's [`Stamp::encode`], `v` = the record
//!   ([`super::record`]; absent in a tombstone); TTL `ttl`. Written only by a guarded script.
//! - `context:{id}:v{n}`: the record of version `n`, immutable; TTL `version_ttl`.
//! - `context:{id}:versions`: the set of the `n` above, so that [`RedisL2::forget`] finds them.
//! - channel `invalidations`: one JSON message `{"id", "stamp"}` per write.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use fred::error::Error as RedisError;
use fred::prelude::{
    Client, ClientLike, Config, ConnectionConfig, EventInterface, FromValue, HashesInterface,
    KeysInterface, LuaInterface, PerformanceConfig, PubsubInterface, ReconnectPolicy, Server,
    ServerConfig, TcpConfig, Value,
};
use fred::types::config::UnresponsiveConfig;
use fred::types::{ConnectHandle, Message};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Stamp;
use crate::domain::ContextId;

mod breaker;
mod listener;

use self::breaker::{Breaker, Permit};
pub use self::listener::SubscriptionHandle;
use self::listener::{Invalidation, Listener};

/// At most one warning per this interval per kind (the rest are counted and reported with it).
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Per attempt to open a connection (and for AUTH/SELECT on it): a background cost only.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long [`RedisL2::connect`] waits for the first connection before answering anyway.
const INITIAL_CONNECT_WAIT: Duration = Duration::from_secs(1);
/// fred's reconnection backoff, forever: 100 ms doubling up to 2 s (plus jitter).
const RECONNECT_MIN_DELAY_MS: u32 = 100;
const RECONNECT_MAX_DELAY_MS: u32 = 2_000;
/// A connection that leaves a command unanswered this long is dropped and reopened by fred,
/// so a half-dead peer (no RST, no replies) cannot hold the client forever.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(2);
/// Polling step while waiting for fred to report a connection.
/// The invalidation listener is off the request path: it can afford longer timeouts.
const LISTENER_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the listener checks, with a PING, that its idle connection is still alive.
const LISTENER_HEALTH_EVERY: Duration = Duration::from_secs(2);
const LISTENER_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Messages fred may buffer for the listener before it reports a lag (then: resync).
const LISTENER_BUFFER: usize = 4096;

const CONNECTED_POLL: Duration = Duration::from_millis(10);

/// Guarded store of a current entry. KEYS[1]: the entry (a hash: `s` = stamp, `v` = record; a
/// tombstone has no `v`). ARGV: stamp, TTL in ms, record (absent for a tombstone). Stores only
/// if the entry held is not newer, and answers 1 if it stored, 0 if not. Stamps are fixed-width
/// digit strings, so comparing them as strings compares the stamps. A key of another type (an
/// older layout) is replaced rather than failing every put on it.
const PUT_SCRIPT: &str = r#"
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local held = redis.call('HGET', KEYS[1], 's')
  if held and held > ARGV[1] then
    return 0
  end
end
redis.call('DEL', KEYS[1])
if ARGV[3] then
  redis.call('HSET', KEYS[1], 's', ARGV[1], 'v', ARGV[3])
else
  redis.call('HSET', KEYS[1], 's', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Store of a version entry and its listing in the id's version index, in one step so that
/// `forget` never misses an entry. KEYS: the entry, the index. ARGV: record, TTL in ms, version.
/// Every listed entry expires at most one TTL after it was put, and each put pushes the index's
/// expiry to one TTL from now, so the index outlives every entry it lists.
const PUT_VERSION_SCRIPT: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"#;

/// Drops an id's version entries, its index and its current entry, except a tombstone (which
/// must outlive the delete to refuse late fills). KEYS: the current entry, the index. ARGV: the
/// prefix of a version key (version n is ARGV[1] .. n), the stamp suffix of a tombstone. The
/// version keys are not in KEYS (they are only known here), but share the index's hash slot.
const FORGET_SCRIPT: &str = r#"
for _, n in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('DEL', ARGV[1] .. n)
end
redis.call('DEL', KEYS[2])
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local held = redis.call('HGET', KEYS[1], 's')
  if held and string.sub(held, -string.len(ARGV[2])) == ARGV[2] then
    return 1
  end
end
redis.call('DEL', KEYS[1])
return 1
"#;

/// How to reach Redis and how long entries live there.
#[derive(Clone)]
pub struct L2Settings {
    /// `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// Prepended as is to every key and to the channel (include a separator: `contextd:`), so
    /// that instances of different deployments, or tests, can share one Redis.
    pub key_prefix: String,
    /// Lifetime of a current entry or tombstone.
    pub ttl: Duration,
    /// Lifetime of a version-specific entry.
    pub version_ttl: Duration,
    /// The most a request waits for Redis, per command (50-100 ms: a miss is cheaper than a wait).
    pub command_timeout: Duration,
    /// The URL's host is a seed node of a Redis Cluster; the client learns the others.
    pub cluster: bool,
    /// A CA file (PEM) to trust for `rediss://`, beside the system roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl L2Settings {
    /// Settings for `url` with the defaults: prefix `contextd:`, TTL 5 min, versions 1 h,
    /// commands 75 ms.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "contextd:".to_owned(),
            ttl: Duration::from_secs(300),
            version_ttl: Duration::from_secs(3600),
            command_timeout: Duration::from_millis(75),
            cluster: false,
            tls_ca_file: None,
        }
    }
}

impl std::fmt::Debug for L2Settings {
    // By hand, so that a password in the URL never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match (self.url.split_once("://"), self.url.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &self.url[at..]),
            _ => self.url.clone(),
        };
        f.debug_struct("L2Settings")
            .field("url", &url)
            .field("key_prefix", &self.key_prefix)
            .field("ttl", &self.ttl)
            .field("version_ttl", &self.version_ttl)
            .field("command_timeout", &self.command_timeout)
            .field("cluster", &self.cluster)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

/// What L2 answered for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L2Lookup {
    /// The record's bytes.
    Hit(Bytes),
    /// Nothing cached (or an entry this version cannot read).
    Miss,
    /// The id was deleted not long ago. Not proof that it is absent now (a re-creation's fill
    /// may have failed): read on as for a miss, but do not expect an older fill to stick.
    Tombstone,
    /// Redis failed, timed out, or the breaker is open: read on as for a miss.
    Unavailable,
}

/// Counters for `/metrics`: lookups (`get`, `get_version`) that hit and that did not (misses,
/// tombstones and unavailable alike), commands that failed, and the state now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L2Stats {
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub breaker_open: bool,
    pub connected: bool,
    /// Redis answered a command with an error within the last [`FAILING_FOR`].
    pub failing: bool,
}

/// How long after a failed command Redis counts as failing (for `/readyz`).
pub const FAILING_FOR: Duration = Duration::from_secs(10);

/// The Redis L2. Cheap to share as `Arc<RedisL2>`: one multiplexed connection for commands,
/// plus one per [`RedisL2::subscribe`].
pub struct RedisL2 {
    client: Client,
    shared: Arc<Shared>,
    /// To open the listener's dedicated connection the same way.
    config: Config,
    connection: ConnectionConfig,
    policy: ReconnectPolicy,
    prefix: String,
    channel: String,
    ttl_ms: i64,
    version_ttl_ms: i64,
    /// A last resort above fred's own per-command timeout, should fred ever not answer.
    guard_timeout: Duration,
    put_script: LuaScript,
    put_version_script: LuaScript,
    forget_script: LuaScript,
    /// The stamp suffix that marks a tombstone, for the forget script.
    tombstone_suffix: String,
    router: Option<ConnectHandle>,
    watcher: JoinHandle<()>,
}

impl RedisL2 {
    /// A client for `settings.url` that connects in the background and reconnects forever.
    /// Waits up to a second for the first connection, so that the first requests can use it,
    /// then answers whether or not Redis is there. Fails only for a malformed URL.
    pub async fn connect(settings: L2Settings) -> anyhow::Result<Self> {
        // fred's error for a bad URL names the problem without echoing the URL (and its
        // password), so it can be passed on as is.
        let mut config = Config::from_url(&settings.url)
            .map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))?;
        if settings.url.starts_with("rediss://") {
            // TLS, never plaintext: the system roots and `redis.tls_ca_file`, names checked.
            let roots = crate::tls::roots(settings.tls_ca_file.as_deref(), true)
                .context("redis.tls_ca_file")?;
            let tls = crate::tls::client_config(crate::tls::Verify::Full, roots)?;
            config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
        }
        if settings.cluster {
            let seed = match &config.server {
                ServerConfig::Centralized { server } => server.clone(),
                ServerConfig::Clustered { hosts, .. } => hosts
                    .first()
                    .cloned()
                    .context("a Redis Cluster URL names no node")?,
                _ => anyhow::bail!("redis.cluster takes a redis:// or rediss:// URL of one node"),
            };
            anyhow::ensure!(
                config.database.unwrap_or(0) == 0,
                "a Redis Cluster has database 0 only: drop the /N from REDIS_URL"
            );
            config.database = None;
            config.server = ServerConfig::Clustered {
                hosts: vec![seed],
                // Follow the nodes the cluster reports, not only the seed given.
                policy: fred::types::config::ClusterDiscoveryPolicy::UseCache,
            };
        }
        // Not being able to connect the first time is not an error either: keep trying.
        config.fail_fast = false;
        let command_timeout = settings.command_timeout.max(Duration::from_millis(1));
        let connection = ConnectionConfig {
            connection_timeout: CONNECT_TIMEOUT,
            internal_command_timeout: CONNECT_TIMEOUT,
            // A cache command is never replayed after a reconnection: its caller has moved on,
            // and a late write could land after newer ones.
            max_command_attempts: 1,
            unresponsive: UnresponsiveConfig {
                max_timeout: Some(UNRESPONSIVE_AFTER),
                interval: UNRESPONSIVE_AFTER / 4,
            },
            tcp: TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            },
            // The command queue stays unbounded: fred queues its own reconnection commands
            // there, and a full queue would end its router. Ours cannot grow: commands fail fast
            // while disconnected, and a command that timed out is dropped, never written.
            ..ConnectionConfig::default()
        };
        // fred's own timeout, unlike a timeout around the future, also marks the command so
        // that it is never written once its caller has given up.
        let perf = PerformanceConfig {
            default_command_timeout: command_timeout,
            ..PerformanceConfig::default()
        };
        // Attempts 0: forever.
        let policy =
            ReconnectPolicy::new_exponential(0, RECONNECT_MIN_DELAY_MS, RECONNECT_MAX_DELAY_MS, 2);
        let client = Client::new(
            config.clone(),
            Some(perf),
            Some(connection.clone()),
            Some(policy.clone()),
        );
        let shared = Arc::new(Shared::default());
        // Subscribe to fred's events before connecting, so that none is missed.
        let watcher = tokio::spawn(watch_connection(
            client.clone(),
            client.error_rx(),
            client.reconnect_rx(),
            shared.clone(),
        ));
        let router = client.connect();
        wait_connected(&client, INITIAL_CONNECT_WAIT).await;

        let prefix = settings.key_prefix;
        let tombstone = Stamp::tombstone(chrono::DateTime::UNIX_EPOCH).encode();
        let tombstone_suffix = match tombstone.split_once(':') {
            Some((_, version)) => format!(":{version}"),
            None => tombstone,
        };
        Ok(Self {
            client,
            shared,
            config,
            connection,
            policy,
            channel: format!("{prefix}invalidations"),
            prefix,
            ttl_ms: millis(settings.ttl),
            version_ttl_ms: millis(settings.version_ttl),
            guard_timeout: command_timeout * 2,
            put_script: LuaScript::new(PUT_SCRIPT),
            put_version_script: LuaScript::new(PUT_VERSION_SCRIPT),
            forget_script: LuaScript::new(FORGET_SCRIPT),
            tombstone_suffix,
            router: Some(router),
            watcher,
        })
    }

    /// The current-version entry of `id`.
    pub async fn get(&self, id: &ContextId) -> L2Lookup {
        let key = self.current_key(id);
        let found = self
            .call(
                "get",
                self.client
                    .hmget::<(Option<String>, Option<Bytes>), _, _>(key, ("s", "v")),
            )
            .await;
        let lookup = match found {
            None => L2Lookup::Unavailable,
            Some((Some(stamp), value)) => match (Stamp::decode(&stamp), value) {
                (Some(stamp), _) if stamp.is_tombstone() => L2Lookup::Tombstone,
                (Some(_), Some(value)) => L2Lookup::Hit(value),
                // Not an entry this version wrote: as if absent (the next put replaces it).
                _ => L2Lookup::Miss,
            },
            Some((None, _)) => L2Lookup::Miss,
        };
        self.shared.count(&lookup);
        lookup
    }

    /// Stores `value` as the current entry of `id` unless the entry held is newer than `stamp`
    /// (a later version, or the tombstone of a delete), in one atomic step. Whether it stored;
    /// `false` as well when Redis failed (logged).
    pub async fn put(&self, id: &ContextId, stamp: Stamp, value: Bytes) -> bool {
        self.guarded_put("put", id, stamp, Some(value)).await
    }

    /// Stores the tombstone of a delete, `stamp` being `Stamp::tombstone(created_at)`, under the
    /// same guard: until it expires, `get` answers `Tombstone` and puts of the incarnation it
    /// ended are refused, while a re-created context (a later `created_at`) replaces it.
    pub async fn delete(&self, id: &ContextId, stamp: Stamp) -> bool {
        debug_assert!(stamp.is_tombstone(), "delete takes a tombstone stamp");
        self.guarded_put("delete", id, stamp, None).await
    }

    /// The entry of version `version` of the incarnation of `id` created at `incarnation`.
    /// Keyed by incarnation too, so a re-created context, which reuses version numbers, never
    /// meets an entry of its predecessor, however late that entry was put.
    pub async fn get_version(
        &self,
        id: &ContextId,
        incarnation: DateTime<Utc>,
        version: i64,
    ) -> L2Lookup {
        let key = self.version_key(id, &version_member(incarnation, version));
        let lookup = match self
            .call("get_version", self.client.get::<Option<Bytes>, _>(key))
            .await
        {
            None => L2Lookup::Unavailable,
            Some(Some(value)) => L2Lookup::Hit(value),
            Some(None) => L2Lookup::Miss,
        };
        self.shared.count(&lookup);
        lookup
    }

    /// Stores version `version` of the incarnation created at `incarnation`. A version's
    /// content never changes, so no guard is needed.
    pub async fn put_version(
        &self,
        id: &ContextId,
        incarnation: DateTime<Utc>,
        version: i64,
        value: Bytes,
    ) {
        let member = version_member(incarnation, version);
        let keys = vec![self.version_key(id, &member), self.versions_key(id)];
        let args = vec![
            Value::Bytes(value),
            Value::from(self.version_ttl_ms),
            Value::from(member),
        ];
        self.call(
            "put_version",
            self.put_version_script.run::<i64>(&self.client, keys, args),
        )
        .await;
    }

    /// Drops every version entry of `id`, and its current entry unless that is a tombstone (to
    /// be called on delete, since a re-created context reuses version numbers; the tombstone
    /// written by [`RedisL2::delete`] stays, whichever of the two runs first).
    pub async fn forget(&self, id: &ContextId) {
        let keys = vec![self.current_key(id), self.versions_key(id)];
        let args = vec![
            Value::from(format!("{}:v", self.current_key(id))),
            Value::from(self.tombstone_suffix.as_str()),
        ];
        self.call(
            "forget",
            self.forget_script.run::<i64>(&self.client, keys, args),
        )
        .await;
    }

    /// Tells the other instances (see [`RedisL2::subscribe`]) that `id` is now at `stamp`.
    pub async fn publish(&self, id: &ContextId, stamp: Stamp) {
        let message = Invalidation {
            id: id.as_str().to_owned(),
            stamp: stamp.encode(),
        };
        let message = serde_json::to_string(&message).expect("two strings always serialize");
        self.call(
            "publish",
            self.client
                .publish::<i64, _, _>(self.channel.as_str(), message),
        )
        .await;
    }

    /// Listens to the invalidation channel on a dedicated connection, calling `on_invalidate`
    /// for each message (from this instance too) and `on_resync` each time the subscription is
    /// back after having been down, or messages were dropped: invalidations may have been
    /// missed then. Both run on the listener task and must not block. Survives Redis restarts;
    /// ends when the handle is dropped or stopped. Must be called within a tokio runtime.
    pub fn subscribe(
        &self,
        on_invalidate: impl Fn(ContextId, Stamp) + Send + Sync + 'static,
        on_resync: impl Fn() + Send + Sync + 'static,
    ) -> SubscriptionHandle {
        let perf = PerformanceConfig {
            default_command_timeout: LISTENER_COMMAND_TIMEOUT,
            broadcast_channel_capacity: LISTENER_BUFFER,
            ..PerformanceConfig::default()
        };
        // On a Redis Cluster a published message reaches every node's subscribers (the cluster
        // bus carries it), so the listener subscribes on one node, the seed, as a plain client.
        let mut config = self.config.clone();
        if let ServerConfig::Clustered { hosts, .. } = &config.server
            && let Some(seed) = hosts.first()
        {
            config.server = ServerConfig::Centralized {
                server: seed.clone(),
            };
        }
        let client = Client::new(
            config,
            Some(perf),
            Some(self.connection.clone()),
            Some(self.policy.clone()),
        );
        let listening = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel();
        let listener = Listener {
            client,
            channel: self.channel.clone(),
            listening: listening.clone(),
            log: LogLimiter::default(),
        };
        let task = tokio::spawn(listener.run(on_invalidate, on_resync, stopped));
        SubscriptionHandle {
            stop: Some(stop),
            task: Some(task),
            listening,
        }
    }

    /// Whether a connection is up now, as far as fred has told (no round trip).
    pub fn is_connected(&self) -> bool {
        // fred goes on calling itself connected for its first reconnection delay after a
        // connection dropped; its error event says so at once.
        self.client.is_connected() && !self.shared.link_down.load(Ordering::Relaxed)
    }

    /// A real PING within the command timeout, whatever the breaker says.
    pub async fn ping(&self) -> bool {
        if !self.is_connected() {
            return false;
        }
        matches!(
            tokio::time::timeout(self.guard_timeout, self.client.ping::<String>(None)).await,
            Ok(Ok(_))
        )
    }

    pub fn stats(&self) -> L2Stats {
        L2Stats {
            hits: self.shared.hits.load(Ordering::Relaxed),
            misses: self.shared.misses.load(Ordering::Relaxed),
            errors: self.shared.errors.load(Ordering::Relaxed),
            breaker_open: self.shared.breaker.is_open(),
            connected: self.is_connected(),
            failing: self
                .shared
                .last_failure
                .lock()
                .expect("never poisoned")
                .is_some_and(|at| at.elapsed() < FAILING_FOR),
        }
    }

    async fn guarded_put(
        &self,
        what: &'static str,
        id: &ContextId,
        stamp: Stamp,
        value: Option<Bytes>,
    ) -> bool {
        let mut args = vec![Value::from(stamp.encode()), Value::from(self.ttl_ms)];
        args.extend(value.map(Value::Bytes));
        let stored = self
            .call(
                what,
                self.put_script
                    .run::<i64>(&self.client, vec![self.current_key(id)], args),
            )
            .await;
        stored == Some(1)
    }

    /// Runs one Redis operation under the breaker and the timeouts: `None` if the breaker is
    /// open (without polling `operation`, so without touching the network), if fred is not
    /// connected, or if the operation failed or timed out.
    async fn call<T>(
        &self,
        what: &'static str,
        operation: impl Future<Output = Result<T, RedisError>>,
    ) -> Option<T> {
        let permit = self.shared.breaker.admit()?;
        // What fred's per-command `fail_fast` option does, here for every command (fred's Lua
        // interface takes no per-command options): queueing behind a reconnection would cost
        // the caller its whole timeout.
        if !self.is_connected() {
            self.shared.failed(permit, what, &"not connected");
            return None;
        }
        match tokio::time::timeout(self.guard_timeout, operation).await {
            Ok(Ok(value)) => {
                self.shared.succeeded(permit);
                Some(value)
            }
            Ok(Err(error)) => {
                // Redis answered, with an error: it is up, and failing.
                *self.shared.last_failure.lock().expect("never poisoned") = Some(Instant::now());
                self.shared.failed(permit, what, &error);
                None
            }
            Err(_) => {
                self.shared.failed(permit, what, &"timed out");
                None
            }
        }
    }

    fn current_key(&self, id: &ContextId) -> String {
        format!("{}context:{{{id}}}", self.prefix)
    }

    /// `member` is what [`version_member`] makes: the version and its incarnation.
    fn version_key(&self, id: &ContextId, member: &str) -> String {
        format!("{}context:{{{id}}}:v{member}", self.prefix)
    }

    fn versions_key(&self, id: &ContextId) -> String {
        format!("{}context:{{{id}}}:versions", self.prefix)
    }
}

/// A version entry's name within its id: `{version}@{incarnation in µs}`.
fn version_member(incarnation: DateTime<Utc>, version: i64) -> String {
    format!("{version}@{}", incarnation.timestamp_micros())
}

impl Drop for RedisL2 {
    fn drop(&mut self) {
        self.watcher.abort();
        // fred's router task would otherwise go on reconnecting for ever.
        if let (Some(router), Ok(runtime)) =
            (self.router.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(shut_down(self.client.clone(), router));
        }
    }
}

/// Follows fred's connection events. An error event (a connection dropped, or an attempt to
/// open one failed) marks the link down at once, so that calls fail fast instead of queueing
/// behind the reconnection. A reconnection marks it up, and lets the breaker's trial through
/// at once: there is no reason left to wait out the cooldown.
async fn watch_connection(
    client: Client,
    mut errors: broadcast::Receiver<(RedisError, Option<Server>)>,
    mut reconnections: broadcast::Receiver<Server>,
    shared: Arc<Shared>,
) {
    loop {
        tokio::select! {
            // When both are pending the error came first (or they are a drop and its recovery
            // seen late): taking errors first never leaves the link marked down while it is up.
            biased;
            error = errors.recv() => match error {
                Ok((error, _)) => {
                    shared.link_down.store(true, Ordering::Relaxed);
                    shared.note_refusal(&error);
                }
                Err(RecvError::Lagged(_)) => shared.link_down.store(true, Ordering::Relaxed),
                Err(RecvError::Closed) => return,
            },
            reconnection = reconnections.recv() => match reconnection {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // fred reports the reconnection just before it marks the client connected;
                    // a trial sent in between would fail the fail-fast check.
                    wait_connected(&client, CONNECT_TIMEOUT).await;
                    shared.link_down.store(false, Ordering::Relaxed);
                    shared.refusal_logged.store(false, Ordering::Relaxed);
                    // Failures of the connection that dropped say nothing of this one.
                    *shared.last_failure.lock().expect("never poisoned") = None;
                    shared.breaker.retry_now();
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Waits until fred reports a connection, for at most `limit`.
async fn wait_connected(client: &Client, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !client.is_connected() && Instant::now() < deadline {
        tokio::time::sleep(CONNECTED_POLL).await;
    }
}

/// Closes a client for good: QUIT if Redis answers, and in any case ends its router task,
/// which would otherwise go on reconnecting.
async fn shut_down(client: Client, router: ConnectHandle) {
    let _ = tokio::time::timeout(LISTENER_COMMAND_TIMEOUT, client.quit()).await;
    router.abort();
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

/// A Lua script run by hash, loaded on demand.
struct LuaScript {
    source: &'static str,
    sha1: String,
}

impl LuaScript {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            sha1: fred::util::sha1_hash(source),
        }
    }

    /// EVALSHA, then EVAL if Redis does not know the script (first use since it started, or
    /// after SCRIPT FLUSH). EVAL also caches it, so the next EVALSHA works.
    async fn run<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R, RedisError> {
        match client
            .evalsha(self.sha1.as_str(), keys.clone(), args.clone())
            .await
        {
            Err(error) if error.details().starts_with("NOSCRIPT") => {
                client.eval(self.source, keys, args).await
            }
            result => result,
        }
    }
}

/// Whether Redis refused contextd itself (a wrong password, a user without the permissions it
/// needs), in the server's own words: what no retry mends and an operator must hear of.
fn refusal(error: &RedisError) -> Option<String> {
    let text = error.to_string();
    let upper = text.to_ascii_uppercase();
    [
        "WRONGPASS",
        "NOAUTH",
        "NOPERM",
        "INVALID USERNAME-PASSWORD",
        "AUTH ",
    ]
    .iter()
    .any(|word| upper.contains(word))
    .then_some(text)
}

/// What a [`RedisL2`] shares with its connection watcher.
#[derive(Default)]
struct Shared {
    /// Set once a refusal was logged; cleared when a connection is made.
    refusal_logged: AtomicBool,
    /// When Redis last answered a command with an error.
    last_failure: Mutex<Option<Instant>>,
    breaker: Breaker,
    /// Set by fred's error events, cleared by its reconnections.
    link_down: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    log: LogLimiter,
}

impl Shared {
    /// Logs Redis's refusal of contextd once (until the next successful connection), at warn,
    /// in Redis's words; the URL and its password are never part of it.
    fn note_refusal(&self, error: &RedisError) {
        if let Some(words) = refusal(error)
            && !self.refusal_logged.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                redis = %words,
                "Redis refused contextd's connection (check the user, password and ACL \
                 permissions in REDIS_URL); contextd goes on without Redis meanwhile"
            );
        }
    }

    fn count(&self, lookup: &L2Lookup) {
        let counter = match lookup {
            L2Lookup::Hit(_) => &self.hits,
            _ => &self.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn succeeded(&self, permit: Permit<'_>) {
        if self.breaker.succeeded(permit.settle()) {
            tracing::info!("redis L2 is back; circuit breaker closed");
        }
    }

    fn failed(&self, permit: Permit<'_>, what: &str, error: &dyn std::fmt::Display) {
        let trial = permit.settle();
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.log.warn(&format!(
            "redis L2 {what} failed, served as a miss: {error}"
        ));
        if let Some(cooldown) = self.breaker.failed(trial) {
            tracing::warn!(
                cooldown_ms = cooldown.as_millis() as u64,
                "redis L2 circuit breaker open: skipping Redis"
            );
        }
    }
}

/// At most one warning per [`LOG_EVERY`]: a dead Redis fails every request, and one line every
/// few seconds (with the count of the others) says as much as thousands.
struct LogLimiter {
    start: Instant,
    /// Milliseconds since `start` before which nothing more is logged.
    quiet_until: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            quiet_until: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl LogLimiter {
    fn warn(&self, message: &str) {
        let now = self.start.elapsed().as_millis() as u64;
        let quiet_until = self.quiet_until.load(Ordering::Relaxed);
        let turn = now >= quiet_until
            && self
                .quiet_until
                .compare_exchange(
                    quiet_until,
                    now + LOG_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if turn {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(suppressed, "{message}");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
