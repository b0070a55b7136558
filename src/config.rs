//! Typed settings: `config/context.yaml`, then the environment over it.
//!
//! Precedence, lowest first: built-in defaults, the YAML file, `CONTEXTD__SECTION__KEY`
//! variables, then `DATABASE_URL` and `REDIS_URL`. Every key is checked: an unknown key or a
//! bad value is an error naming the key (and the variable it came from). Secrets are wrapped in
//! [`Secret`] so that neither `Debug` nor a log line can show them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::{Mapping, Value};

/// The file read when neither `--config` nor `CONTEXTD_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "config/context.yaml";

/// Prefix of the variables that override single keys; `__` separates the levels.
const ENV_PREFIX: &str = "CONTEXTD__";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub versions: VersionSettings,
    pub limits: LimitSettings,
    pub cache: CacheSettings,
    pub vector: VectorSettings,
    pub sync: SyncSettings,
    pub mcp: McpSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address and port to listen on; port 0 picks a free one.
    pub bind: SocketAddr,
    /// A request still running after this long answers 503.
    pub request_timeout_seconds: u64,
    /// On SIGTERM, how long requests in flight may take to finish.
    pub shutdown_grace_seconds: u64,
    /// A connection must send a whole request head within this many seconds, and one idle
    /// between requests is closed after it.
    pub header_timeout_seconds: u64,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// `Host` values served while auth is off (DNS-rebinding protection), each a name or
    /// address with any port. Empty: `localhost`, `127.0.0.1` and `[::1]` on a loopback
    /// bind; no check on any other bind.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/dbname`, or `sqlite:PATH` for the embedded store;
    /// `DATABASE_URL` sets it. Unset: `sqlite:data/contextd.db`.
    pub url: Option<Secret<String>>,
    /// Most connections one instance opens.
    pub pool_size: usize,
    /// How long to wait for a connection (to open, or from the pool) before answering 503.
    pub connect_timeout_seconds: u64,
    /// At start, how long to keep trying a Postgres that is not reachable yet before giving up.
    pub startup_timeout_seconds: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS; `REDIS_URL` sets it.
    /// Unset: no Redis.
    pub url: Option<Secret<String>>,
    /// The URL's host is a seed node of a Redis Cluster (database 0 only).
    pub cluster: bool,
    /// A CA file (PEM) trusted for `rediss://`, beside the system roots.
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VersionSettings {
    /// Versions kept per context; older ones are pruned by the write that exceeds it.
    pub retention: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Largest compact `data` + `metadata` a context may have, in bytes.
    pub max_context_bytes: usize,
    /// Bytes of request bodies being read, parsed and processed at once, over all requests;
    /// a request beyond it waits `inflight_wait_ms`, then answers 503.
    pub max_inflight_body_bytes: usize,
    /// How long a request waits for room in `max_inflight_body_bytes` before its 503.
    pub inflight_wait_ms: u64,
    /// Most JSON values (objects, arrays, strings, numbers, booleans, nulls) one body may hold;
    /// more answers 413.
    pub max_json_nodes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// The overall hit rate to aim for, in percent (`/metrics/summary` says whether it is met).
    pub target_hit_rate: f64,
    pub l1: L1Settings,
    pub l2: L2Settings,
    pub l3: L3Settings,
    pub warm: WarmSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct L2Settings {
    /// Use Redis (`REDIS_URL`) as L2. Cross-instance invalidation runs whenever Redis is set.
    pub enabled: bool,
    /// Seconds a current-version entry lives in Redis.
    pub ttl_seconds: u64,
    /// Seconds a version-specific entry (immutable) lives in Redis.
    pub version_ttl_seconds: u64,
    /// Prefix of every key and channel, so instances of different clusters share a Redis.
    pub key_prefix: String,
    /// A Redis command slower than this counts as a miss (and towards the circuit breaker).
    pub command_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct L3Settings {
    /// Use the Postgres table `factory_cache_entries` as L3 (never on SQLite).
    pub enabled: bool,
    /// Seconds an entry written by a write stays valid.
    pub ttl_seconds: u64,
    /// Seconds between sweeps that delete expired entries.
    pub cleanup_interval_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmSettings {
    /// Periodically load the most accessed L3 entries into L1 and L2.
    pub enabled: bool,
    /// Seconds between warm passes (also how often access counts are written back).
    pub interval_seconds: u64,
    /// How many of the most accessed contexts a pass loads.
    pub top_n: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Seconds between polls of the outbox, the fallback when no commit signal arrives.
    pub interval_seconds: u64,
    /// Seconds a change stays in the outbox (and the change feed) after it was delivered (or,
    /// with no webhook, after it was written).
    pub outbox_retention_seconds: u64,
    pub factory: FactorySettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FactorySettings {
    /// Where every change is POSTed as `{changes: [...]}`; unset: no push.
    pub webhook_url: Option<String>,
    /// Signs each push per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), and with `X-Contextd-Signature: sha256=<hex HMAC of the body>`
    /// for older receivers. A `whsec_` secret is base64 after the prefix; any other is used as
    /// its UTF-8 bytes. A secret.
    pub secret: Option<Secret<String>>,
    /// Milliseconds a delivery may take before it counts as failed.
    pub timeout_ms: u64,
    /// Most changes in one push.
    pub batch_size: usize,
    /// First retry delay after a failed push, in milliseconds; it doubles per attempt.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct L1Settings {
    /// Most contexts held in process; 0 turns L1 off.
    pub max_entries: usize,
    /// Most bytes (of data + metadata) held in process.
    pub max_bytes: usize,
    /// An entry older than this is read again from the store.
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VectorSettings {
    /// Length every `embedding` must have.
    pub dimensions: usize,
    /// `embedded` (in process, rebuilt from the store at start) or `weaviate`.
    pub backend: VectorBackend,
    pub embedded: EmbeddedSettings,
    pub weaviate: WeaviateSettings,
}

/// Which vector index serves search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorBackend {
    Embedded,
    Weaviate,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedSettings {
    /// Below this many vectors a search scans them all (exact, and faster when few); at or
    /// above it, the approximate (HNSW) graph answers.
    pub exact_below: usize,
    /// HNSW: links per node.
    pub max_connections: usize,
    /// HNSW: candidates kept while building.
    pub ef_construction: usize,
    /// HNSW: candidates kept while searching (recall against speed).
    pub ef_search: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeaviateSettings {
    /// `http://HOST:8080`; required with `vector.backend: weaviate`.
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer <key>`. A secret.
    pub api_key: Option<Secret<String>>,
    /// The class contexts are stored in.
    pub class_name: String,
    /// Milliseconds one request may take.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpSettings {
    /// Serve the MCP endpoint at `/mcp`.
    pub enabled: bool,
    /// Most MCP sessions (2025 revisions, opened by `initialize`) open at once; one more is
    /// refused with 503 until an old one closes or idles out.
    pub max_sessions: usize,
    /// Seconds a session may stay idle before it is closed.
    pub session_idle_seconds: u64,
    /// GET streams one session may hold open at once; one more answers 503.
    pub max_streams_per_session: usize,
    /// Long-lived MCP streams (GET streams, `subscriptions/listen`) open at once in all.
    pub max_streams: usize,
    /// `Host` values `/mcp` answers (DNS-rebinding protection). Empty: the same as every
    /// route (`server.allowed_hosts`).
    pub allowed_hosts: Vec<String>,
}

/// When requests need an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// On unless `server.bind` is a loopback address.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `auto` (on unless `server.bind` is loopback), `on` or `off`.
    pub mode: AuthMode,
    /// Serve `/metrics` without a key while auth is on.
    pub open_metrics: bool,
    /// An admin key (`ctxd_` + 43 base62 characters) made sure to exist at start, for first
    /// runs and containers. A secret.
    pub bootstrap_key: Option<Secret<String>>,
}

impl AuthSettings {
    /// Whether requests need a key, given where the server listens.
    pub fn enabled(&self, bind: SocketAddr) -> bool {
        match self.mode {
            AuthMode::On => true,
            AuthMode::Off => false,
            AuthMode::Auto => !bind.ip().is_loopback(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A tracing filter, e.g. `info` or `contextd=debug,tower_http=info`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout_seconds: 30,
            shutdown_grace_seconds: 30,
            header_timeout_seconds: 10,
            max_connections: 10_000,
            allowed_hosts: Vec::new(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 16,
            connect_timeout_seconds: 5,
            startup_timeout_seconds: 60,
        }
    }
}

impl Default for VersionSettings {
    fn default() -> Self {
        Self { retention: 100 }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_context_bytes: 10 * 1024 * 1024,
            max_inflight_body_bytes: 64 * 1024 * 1024,
            inflight_wait_ms: 1000,
            max_json_nodes: 1_000_000,
        }
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            target_hit_rate: 85.0,
            l1: L1Settings::default(),
            l2: L2Settings::default(),
            l3: L3Settings::default(),
            warm: WarmSettings::default(),
        }
    }
}

impl Default for L2Settings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: 3600,
            version_ttl_seconds: 86_400,
            key_prefix: "contextd:".to_owned(),
            command_timeout_ms: 100,
        }
    }
}

impl Default for L3Settings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: 7 * 86_400,
            cleanup_interval_seconds: 300,
        }
    }
}

impl Default for WarmSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_seconds: 60,
            top_n: 1000,
        }
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            interval_seconds: 5,
            outbox_retention_seconds: 7 * 86_400,
            factory: FactorySettings::default(),
        }
    }
}

impl Default for FactorySettings {
    fn default() -> Self {
        Self {
            webhook_url: None,
            secret: None,
            timeout_ms: 5000,
            batch_size: 100,
            retry_initial_ms: 100,
            retry_max_ms: 60_000,
        }
    }
}

impl Default for L1Settings {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 256 * 1024 * 1024,
            ttl_seconds: 300,
        }
    }
}

/// `vector.dimensions` when not configured: OpenAI's text-embedding-3-small and ada-002.
pub const DEFAULT_DIMENSIONS: usize = 1536;

impl Default for VectorSettings {
    fn default() -> Self {
        Self {
            dimensions: DEFAULT_DIMENSIONS,
            backend: VectorBackend::Embedded,
            embedded: EmbeddedSettings::default(),
            weaviate: WeaviateSettings::default(),
        }
    }
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        Self {
            exact_below: 15_000,
            max_connections: 16,
            ef_construction: 200,
            ef_search: 64,
        }
    }
}

impl Default for WeaviateSettings {
    fn default() -> Self {
        Self {
            url: None,
            api_key: None,
            class_name: "FactoryContext".to_owned(),
            timeout_ms: 5000,
        }
    }
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_sessions: 1000,
            session_idle_seconds: 300,
            max_streams_per_session: 4,
            max_streams: 4096,
            allowed_hosts: Vec::new(),
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::Auto,
            open_metrics: true,
            bootstrap_key: None,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
        }
    }
}

/// The SQLite file used when no `DATABASE_URL` is given, relative to the working directory.
pub const DEFAULT_SQLITE_PATH: &str = "data/contextd.db";

/// Where the contexts live, as `database.url` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A Postgres URL (a secret: it may hold a password).
    Postgres(Secret<String>),
    /// An embedded SQLite file.
    Sqlite(PathBuf),
}

impl DatabaseSettings {
    /// The store named by `url`; the default SQLite file when it is unset.
    pub fn location(&self) -> Result<StoreLocation, String> {
        let Some(url) = &self.url else {
            return Ok(StoreLocation::Sqlite(PathBuf::from(DEFAULT_SQLITE_PATH)));
        };
        let raw = url.expose();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return PostgresTarget::parse(raw).map(|_| StoreLocation::Postgres(url.clone()));
        }
        if let Some(rest) = raw.strip_prefix("sqlite:") {
            // `sqlite:PATH`, and the `sqlite://PATH` spelling other tools use.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() || path.contains('?') {
                return Err("must be sqlite:PATH, a file path (no query string)".to_owned());
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        Err("must be a postgres://, postgresql:// or sqlite: URL".to_owned())
    }
}

/// How contextd speaks TLS to Postgres: libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it (the default, as libpq's), plaintext otherwise; the
    /// certificate is not checked.
    Prefer,
    /// TLS or nothing; the certificate is checked as `verify-ca` when `sslrootcert` is given,
    /// not at all otherwise (libpq's rule).
    Require,
    /// TLS, the certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, the certificate signed by a trusted CA and naming the host.
    VerifyFull,
}

/// A Postgres URL taken apart: what tokio-postgres connects with, and the TLS parameters it
/// does not know (`sslmode=verify-ca|verify-full`, `sslrootcert`), taken out of the URL.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    /// `sslrootcert`: the CA file to trust (PEM); the system roots when absent.
    pub root_cert: Option<PathBuf>,
}

impl PostgresTarget {
    /// Parses a `postgres://` URL; the error says which part is wrong and how to fix it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (base, query) = match raw.split_once('?') {
            Some((base, query)) => (base, query),
            None => (raw, ""),
        };
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    ssl_mode = match percent_decode(value).as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(format!(
                                "has sslmode={other:?}; contextd takes disable, prefer, require, \
                                 verify-ca or verify-full"
                            ));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value))),
                _ => kept.push(pair),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: tokio_postgres::Config = rebuilt.parse().map_err(|e| {
            format!(
                "is not a valid Postgres URL ({e}); a user name or password holding any of \
                 @ : / ? # [ ] % or a space must be percent-encoded (%40 for @, %3A for :, %2F \
                 for /, %25 for %)"
            )
        })?;
        // A raw `@` in a password leaves the rest of it in the host name ("p@ss@db": host
        // "ss@db"), which no host can have.
        let bad_host = config.get_hosts().iter().any(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => {
                name.contains(['@', ' ', '/', '?', '#']) || name.is_empty()
            }
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => false,
        });
        if bad_host {
            return Err(
                "has a host name no host can have, as when a user name or password holds a raw \
                 @ (or : / ? #): percent-encode them in the URL (%40 for @, %3A for :, %2F for /, \
                 %3F for ?, %23 for #, %25 for %)"
                    .to_owned(),
            );
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        Ok(Self {
            config,
            ssl_mode,
            root_cert,
        })
    }

    /// How much of the server's certificate is checked.
    pub fn verify(&self) -> crate::tls::Verify {
        use crate::tls::Verify;
        match self.ssl_mode {
            SslMode::Disable | SslMode::Prefer => Verify::Nothing,
            SslMode::Require if self.root_cert.is_none() => Verify::Nothing,
            SslMode::Require | SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::Full,
        }
    }
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = raw
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A value that must never be shown: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that needs it (a connection, a signature).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A URL with its password replaced by `***`, for log lines.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[redacted]".to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    // A query string may carry `password=...` too; keep only the path.
    let path = tail.split('?').next().unwrap_or_default();
    format!("{scheme}://{authority}{path}")
}

/// Why the settings could not be loaded. The message names the file, key or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("config key `{key}`{origin}: {message}")]
    Key {
        key: String,
        origin: String,
        message: String,
    },
    #[error("environment variable {var} names no config key ({message})")]
    UnknownVariable { var: String, message: String },
}

/// `Host` values served on a loopback bind when `server.allowed_hosts` is empty.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl Settings {
    /// The largest request body read: room for the largest context pretty-printed, plus an
    /// embedding. The exact limit on the compact JSON is checked (413 with `limit` and
    /// `actual`) once the body is parsed.
    pub fn max_body_bytes(&self) -> usize {
        self.limits.max_context_bytes * 2 + self.vector.dimensions * 32 + 64 * 1024
    }

    /// `server.allowed_hosts` as configured, else the loopback names on a loopback bind, else
    /// none (an empty list: no check). `mcp.allowed_hosts` defaults to the same.
    pub fn effective_hosts(&self) -> Vec<String> {
        if !self.server.allowed_hosts.is_empty() {
            self.server.allowed_hosts.clone()
        } else if self.server.bind.ip().is_loopback() {
            LOOPBACK_HOSTS.iter().map(|h| (*h).to_owned()).collect()
        } else {
            Vec::new()
        }
    }

    /// Loads the settings from `path` (or `CONTEXTD_CONFIG`, or the default file, which may be
    /// absent) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env_path = std::env::var_os("CONTEXTD_CONFIG").map(PathBuf::from);
        let (path, required) = match (path, env_path) {
            (Some(p), _) => (p.to_path_buf(), true),
            (None, Some(p)) => (p, true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let yaml = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::from_sources(yaml.as_deref(), &path, std::env::vars())
    }

    /// Builds the settings from YAML text and environment variables; `load` without the I/O.
    pub fn from_sources(
        yaml: Option<&str>,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree = match yaml {
            Some(text) => {
                serde_norway::from_str::<Value>(text).map_err(|source| ConfigError::Yaml {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            None => Value::Null,
        };
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }

        let mut origins = BTreeMap::new();
        let mut overrides: Vec<(Vec<String>, String, String)> = Vec::new();
        for (var, raw) in env {
            let key = if var == "DATABASE_URL" {
                vec!["database".to_owned(), "url".to_owned()]
            } else if var == "REDIS_URL" {
                vec!["redis".to_owned(), "url".to_owned()]
            } else if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
                rest.split("__").map(str::to_ascii_lowercase).collect()
            } else {
                continue;
            };
            overrides.push((key, var, raw));
        }
        // The short names win over `CONTEXTD__DATABASE__URL`: apply them last.
        overrides.sort_by_key(|(_, var, _)| !var.starts_with(ENV_PREFIX));
        for (key, var, raw) in overrides {
            if key.iter().any(String::is_empty) {
                return Err(ConfigError::UnknownVariable {
                    var,
                    message: "empty key segment".to_owned(),
                });
            }
            set_path(&mut tree, &key, env_scalar(&raw)).map_err(|message| {
                ConfigError::UnknownVariable {
                    var: var.clone(),
                    message,
                }
            })?;
            origins.insert(key.join("."), var);
        }

        // Round-trip through YAML text so that untagged scalars take the type each field wants
        // (a numeric secret stays a string, "5" from the environment becomes a number).
        let text = serde_norway::to_string(&tree).expect("a YAML value always serializes");
        let deserializer = serde_norway::Deserializer::from_str(&text);
        let settings: Settings = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().to_string();
            // serde_norway names the parent section itself ("versions: unknown field").
            let parent = key.rsplit_once('.').map_or("", |(parent, _)| parent);
            let message = strip_location(&message);
            let message = message
                .strip_prefix(parent)
                .and_then(|m| m.strip_prefix(": "))
                .unwrap_or(message);
            key_error(&origins, key, message)
        })?;
        settings.validate(&origins)?;
        Ok(settings)
    }

    /// Range checks that the types alone do not make.
    fn validate(&self, origins: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let checks: [(&str, bool, &str); 17] = [
            (
                "cache.target_hit_rate",
                (0.0..=100.0).contains(&self.cache.target_hit_rate),
                "must be a percentage, 0 to 100",
            ),
            (
                "cache.l2.ttl_seconds",
                self.cache.l2.ttl_seconds >= 1,
                "must be at least 1",
            ),
            (
                "cache.l2.command_timeout_ms",
                self.cache.l2.command_timeout_ms >= 1,
                "must be at least 1",
            ),
            (
                "cache.l3.cleanup_interval_seconds",
                self.cache.l3.cleanup_interval_seconds >= 1,
                "must be at least 1",
            ),
            (
                "cache.warm.interval_seconds",
                self.cache.warm.interval_seconds >= 1,
                "must be at least 1",
            ),
            (
                "sync.interval_seconds",
                self.sync.interval_seconds >= 1,
                "must be at least 1",
            ),
            (
                "versions.retention",
                self.versions.retention >= 1,
                "must be at least 1",
            ),
            (
                "limits.max_context_bytes",
                self.limits.max_context_bytes >= 4,
                "must be at least 4 (two empty objects)",
            ),
            (
                "vector.dimensions",
                (1..=65_536).contains(&self.vector.dimensions),
                "must be between 1 and 65536",
            ),
            (
                "database.pool_size",
                self.database.pool_size >= 1,
                "must be at least 1",
            ),
            (
                "database.connect_timeout_seconds",
                self.database.connect_timeout_seconds >= 1,
                "must be at least 1",
            ),
            (
                "server.request_timeout_seconds",
                self.server.request_timeout_seconds >= 1,
                "must be at least 1",
            ),
            (
                "server.header_timeout_seconds",
                self.server.header_timeout_seconds >= 1,
                "must be at least 1",
            ),
            (
                "server.max_connections",
                self.server.max_connections >= 1,
                "must be at least 1",
            ),
            (
                "limits.max_inflight_body_bytes",
                self.limits.max_inflight_body_bytes >= 1024,
                "must be at least 1024",
            ),
            (
                "limits.max_json_nodes",
                self.limits.max_json_nodes >= 1,
                "must be at least 1",
            ),
            (
                "log.level",
                tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
                "is not a valid tracing filter (e.g. `info`, `contextd=debug`)",
            ),
        ];
        for (key, ok, message) in checks {
            if !ok {
                return Err(key_error(origins, key.to_owned(), message));
            }
        }
        if let Some(key) = &self.auth.bootstrap_key
            && !crate::domain::is_well_formed(key.expose())
        {
            return Err(key_error(
                origins,
                "auth.bootstrap_key".to_owned(),
                "must be `ctxd_` and 43 letters or digits (make one with `contextd keys generate`)",
            ));
        }
        if let Err(message) = self.database.location() {
            return Err(key_error(origins, "database.url".to_owned(), &message));
        }
        if !(2..=255).contains(&self.vector.embedded.max_connections) {
            return Err(key_error(
                origins,
                "vector.embedded.max_connections".to_owned(),
                "must be between 2 and 255",
            ));
        }
        if self.vector.embedded.ef_search == 0 || self.vector.embedded.ef_construction == 0 {
            return Err(key_error(
                origins,
                "vector.embedded".to_owned(),
                "ef_search and ef_construction must be at least 1",
            ));
        }
        if self.vector.backend == VectorBackend::Weaviate {
            match &self.vector.weaviate.url {
                None => {
                    return Err(key_error(
                        origins,
                        "vector.weaviate.url".to_owned(),
                        "must be set when vector.backend is weaviate",
                    ));
                }
                Some(url) => {
                    if let Err(message) = http_url(url) {
                        return Err(key_error(
                            origins,
                            "vector.weaviate.url".to_owned(),
                            &message,
                        ));
                    }
                }
            }
        }
        if let Some(url) = &self.sync.factory.webhook_url
            && let Err(message) = http_url(url)
        {
            return Err(key_error(
                origins,
                "sync.factory.webhook_url".to_owned(),
                &message,
            ));
        }
        if let Some(secret) = &self.sync.factory.secret
            && let Err(message) = crate::domain::webhook_key(secret.expose())
        {
            return Err(key_error(
                origins,
                "sync.factory.secret".to_owned(),
                &message,
            ));
        }
        if !(1..=1000).contains(&self.sync.factory.batch_size) {
            return Err(key_error(
                origins,
                "sync.factory.batch_size".to_owned(),
                "must be between 1 and 1000",
            ));
        }
        if self.sync.factory.timeout_ms == 0 || self.sync.factory.retry_initial_ms == 0 {
            return Err(key_error(
                origins,
                "sync.factory".to_owned(),
                "timeout_ms and retry_initial_ms must be at least 1",
            ));
        }
        if let Some(url) = &self.redis.url {
            let url = url.expose();
            if let Err(message) = redis_url(url) {
                return Err(key_error(origins, "redis.url".to_owned(), &message));
            }
        }
        Ok(())
    }
}

/// An `http://` or `https://` URL with a host, parsed (not just its prefix looked at).
fn http_url(raw: &str) -> Result<reqwest::Url, String> {
    let url =
        reqwest::Url::parse(raw).map_err(|e| format!("must be an http:// or https:// URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err("must be an http:// or https:// URL with a host".to_owned());
    }
    Ok(url)
}

/// A `redis://` or `rediss://` URL with a host, parsed; a password with special characters
/// must be percent-encoded, as in every URL.
fn redis_url(raw: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(raw).map_err(|e| {
        format!(
            "must be a redis:// or rediss:// URL ({e}); percent-encode special characters of \
             the user and password (@ is %40, : is %3A, / is %2F)"
        )
    })?;
    if !matches!(url.scheme(), "redis" | "rediss") || url.host_str().is_none_or(str::is_empty) {
        return Err("must be a redis:// or rediss:// URL with a host".to_owned());
    }
    Ok(())
}

fn key_error(origins: &BTreeMap<String, String>, key: String, message: &str) -> ConfigError {
    let origin = origins
        .iter()
        .find(|(k, _)| key == **k || key.starts_with(&format!("{k}.")))
        .map(|(_, var)| format!(" (from {var})"))
        .unwrap_or_default();
    ConfigError::Key {
        key,
        origin,
        message: message.to_owned(),
    }
}

/// serde_norway appends "at line L column C" of the round-tripped text, which means nothing to
/// the user; the key path says where.
fn strip_location(message: &str) -> &str {
    match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

/// An environment value as YAML would read it when it is a plain scalar (`5`, `true`, `null`),
/// else the text as is, so that a URL or secret is never reinterpreted.
fn env_scalar(raw: &str) -> Value {
    match serde_norway::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::Null)) if !raw.is_empty() => v,
        _ => Value::String(raw.to_owned()),
    }
}

fn set_path(tree: &mut Value, key: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = key.split_last().expect("keys have at least one segment");
    let mut node = tree;
    for segment in parents {
        let map = node
            .as_mapping_mut()
            .ok_or_else(|| format!("`{segment}` is under a key that is not a section"))?;
        let child = map
            .entry(Value::String(segment.clone()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if child.is_null() {
            *child = Value::Mapping(Mapping::new());
        }
        node = child;
    }
    let map = node
        .as_mapping_mut()
        .ok_or_else(|| format!("`{last}` is under a key that is not a section"))?;
    map.insert(Value::String(last.clone()), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_not_prefix_matched() {
        assert!(super::http_url("http://weaviate:8080").is_ok());
        assert!(super::http_url("https://hooks.example.com/contextd").is_ok());
        for bad in ["http://", "http:// spaces", "ftp://host", "weaviate:8080"] {
            assert!(super::http_url(bad).is_err(), "{bad}");
        }
        assert!(super::redis_url("redis://127.0.0.1:6379/2").is_ok());
        assert!(super::redis_url("rediss://user:p%40ss@redis.example.com:6380").is_ok());
        for bad in ["redis://", "http://redis:6379", "redis:///0", "not a url"] {
            assert!(super::redis_url(bad).is_err(), "{bad}");
        }
    }

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_sources(
            Some(yaml),
            Path::new("test.yaml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_committed_config_file_loads_and_matches_the_defaults() {
        let yaml = include_str!("../config/context.yaml");
        let settings = load(yaml, &[]).unwrap();
        // Every key, compared through Debug (secrets are all unset here).
        assert_eq!(
            format!("{settings:?}"),
            format!("{:?}", Settings::default())
        );
    }

    #[test]
    fn environment_variables_override_nested_keys() {
        let settings = load(
            "versions:\n  retention: 7\n",
            &[
                ("CONTEXTD__VERSIONS__RETENTION", "5"),
                ("CONTEXTD__SERVER__BIND", "127.0.0.1:9999"),
                ("CONTEXTD__CACHE__L1__MAX_ENTRIES", "200"),
                ("DATABASE_URL", "postgres://u:p@localhost/db"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(settings.versions.retention, 5);
        assert_eq!(settings.server.bind.port(), 9999);
        assert_eq!(settings.cache.l1.max_entries, 200);
        assert_eq!(
            settings.database.url.unwrap().expose(),
            "postgres://u:p@localhost/db"
        );
    }

    #[test]
    fn database_url_wins_over_the_long_form() {
        let settings = load(
            "",
            &[
                ("DATABASE_URL", "postgres://short/db"),
                ("CONTEXTD__DATABASE__URL", "postgres://long/db"),
            ],
        )
        .unwrap();
        assert_eq!(
            settings.database.url.unwrap().expose(),
            "postgres://short/db"
        );
    }

    #[test]
    fn an_unknown_key_in_the_file_is_named() {
        let err = load("versions:\n  retention: 5\n  keep_forever: true\n", &[]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("keep_forever"), "{message}");
    }

    #[test]
    fn an_unknown_variable_is_named() {
        let err = load("", &[("CONTEXTD__VERSIONS__RETENTON", "5")]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("retenton"), "{message}");
        assert!(
            message.contains("CONTEXTD__VERSIONS__RETENTON"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_value_names_its_key_and_variable() {
        let err = load("", &[("CONTEXTD__VERSIONS__RETENTION", "many")]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("versions.retention"), "{message}");
        assert!(
            message.contains("CONTEXTD__VERSIONS__RETENTION"),
            "{message}"
        );

        let err = load("versions:\n  retention: 0\n", &[]).unwrap_err();
        assert!(err.to_string().contains("versions.retention"), "{err}");

        let err = load("server:\n  bind: nowhere\n", &[]).unwrap_err();
        assert!(err.to_string().contains("server.bind"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let settings = load(
            "",
            &[
                ("DATABASE_URL", "postgres://u:hunter2@localhost/db"),
                ("REDIS_URL", "redis://:hunter3@localhost:6379"),
                ("CONTEXTD__SYNC__FACTORY__SECRET", "hunter4"),
            ],
        )
        .unwrap();
        let debug = format!("{settings:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("hunter3"), "{debug}");
        assert!(!debug.contains("hunter4"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    }

    #[test]
    fn a_numeric_secret_from_the_environment_stays_a_string() {
        let settings = load("", &[("REDIS_URL", "redis://localhost:6379/2")]).unwrap();
        assert_eq!(
            settings.redis.url.unwrap().expose(),
            "redis://localhost:6379/2"
        );
    }

    #[test]
    fn the_store_is_sqlite_by_default_and_as_the_url_says() {
        let location = |env: &[(&str, &str)]| load("", env).map(|s| s.database.location().unwrap());
        assert_eq!(
            location(&[]).unwrap(),
            StoreLocation::Sqlite(PathBuf::from("data/contextd.db"))
        );
        assert_eq!(
            location(&[("DATABASE_URL", "sqlite:/var/lib/c.db")]).unwrap(),
            StoreLocation::Sqlite(PathBuf::from("/var/lib/c.db"))
        );
        assert_eq!(
            location(&[("DATABASE_URL", "sqlite://rel/c.db")]).unwrap(),
            StoreLocation::Sqlite(PathBuf::from("rel/c.db"))
        );
        assert!(matches!(
            location(&[("DATABASE_URL", "postgresql://u@h/db")]).unwrap(),
            StoreLocation::Postgres(_)
        ));
        for bad in ["mysql://h/db", "sqlite:", "postgres://h:notaport/db"] {
            let err = load("", &[("DATABASE_URL", bad)]).unwrap_err().to_string();
            assert!(
                err.contains("database.url") && err.contains("DATABASE_URL"),
                "{err}"
            );
        }
    }

    #[test]
    fn postgres_tls_parameters_are_taken_out_of_the_url() {
        use crate::tls::Verify;
        let parse = |url: &str| PostgresTarget::parse(url).unwrap();
        let plain = parse("postgres://u:p@db:5432/c?application_name=x");
        assert_eq!(
            (plain.ssl_mode, plain.verify()),
            (SslMode::Prefer, Verify::Nothing)
        );
        assert_eq!(plain.config.get_application_name(), Some("x"));
        let full = parse("postgres://u@db/c?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem");
        assert_eq!(full.verify(), Verify::Full);
        assert_eq!(full.root_cert, Some(PathBuf::from("/etc/ca x.pem")));
        assert_eq!(
            parse("postgres://db/c?sslmode=verify-ca").verify(),
            Verify::Chain
        );
        assert_eq!(
            parse("postgres://db/c?sslmode=require").verify(),
            Verify::Nothing
        );
        assert_eq!(
            parse("postgres://db/c?sslmode=require&sslrootcert=/ca.pem").verify(),
            Verify::Chain
        );
        assert_eq!(
            parse("postgres://db/c?sslmode=disable").ssl_mode,
            SslMode::Disable
        );
        let bad = PostgresTarget::parse("postgres://db/c?sslmode=allow").unwrap_err();
        assert!(bad.contains("verify-full"), "{bad}");
    }

    #[test]
    fn a_password_with_raw_special_characters_gets_a_percent_encoding_hint() {
        let err = load("", &[("DATABASE_URL", "postgres://u:p@ss@db/c")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("percent-encode"), "{err}");
        assert!(!err.contains("p@ss"), "the password leaked: {err}");
        // Percent-encoded, it is fine.
        assert!(load("", &[("DATABASE_URL", "postgres://u:p%40ss@db/c")]).is_ok());
    }

    #[test]
    fn redacted_urls_keep_everything_but_the_password() {
        assert_eq!(
            redact_url("postgres://user:hunter2@db:5432/contextd?sslmode=require&password=x"),
            "postgres://user:***@db:5432/contextd"
        );
        assert_eq!(
            redact_url("postgres://user@db/contextd"),
            "postgres://user@db/contextd"
        );
        assert_eq!(redact_url("not a url"), "[redacted]");
    }
}
