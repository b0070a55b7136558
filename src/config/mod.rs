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
    pub embedder: EmbedderSettings,
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
    /// Use the Postgres table `factory_cache_records` as L3 (never on SQLite).
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

/// Which embedder makes the embeddings of contexts written without one, and of text queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderBackend {
    /// No embeddings made by contextd: clients bring their own; text queries search by keyword.
    None,
    /// A sentence-transformers model run in process on the CPU.
    Local,
    /// An OpenAI-compatible `/v1/embeddings` endpoint.
    Openai,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedderSettings {
    pub backend: EmbedderBackend,
    /// JSON pointers into `data` selecting a context's text (what is embedded and indexed for
    /// keyword search). Empty: every string value of `data`, in document order.
    pub text: Vec<String>,
    pub local: LocalEmbedderSettings,
    pub openai: OpenAiEmbedderSettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalEmbedderSettings {
    /// A directory with `config.json`, `tokenizer.json` and `model.safetensors` (a
    /// sentence-transformers BERT model such as all-MiniLM-L6-v2); required with
    /// `embedder.backend: local`.
    pub model_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiEmbedderSettings {
    /// `https://HOST[:PORT][/prefix]`: requests go to `{url}/v1/embeddings`; required with
    /// `embedder.backend: openai`.
    pub url: Option<String>,
    /// The `model` sent with each request.
    pub model: String,
    /// Sent as `Authorization: Bearer <key>`. A secret.
    pub api_key: Option<Secret<String>>,
    /// Texts per request, 1..=2048.
    pub batch_size: usize,
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

impl Default for EmbedderSettings {
    fn default() -> Self {
        Self {
            backend: EmbedderBackend::None,
            text: Vec::new(),
            local: LocalEmbedderSettings::default(),
            openai: OpenAiEmbedderSettings::default(),
        }
    }
}

impl Default for OpenAiEmbedderSettings {
    fn default() -> Self {
        Self {
            url: None,
            model: "text-embedding-3-small".to_owned(),
            api_key: None,
            batch_size: 64,
            timeout_ms: 10_000,
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

mod database;
mod load;
mod secret;

pub use database::{DEFAULT_SQLITE_PATH, PostgresTarget, SslMode, StoreLocation};
#[cfg(test)]
use load::*;
pub use load::{ConfigError, LOOPBACK_HOSTS};
pub use secret::{Secret, redact_url};

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
        let yaml = include_str!("../../config/context.yaml");
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
