//! Loading the settings: defaults, the YAML file, then the environment over it, every key
//! checked once, with errors that name the key and where its value came from.

use super::*;

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
        for pointer in &self.embedder.text {
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                return Err(key_error(
                    origins,
                    "embedder.text".to_owned(),
                    &format!(
                        "{pointer:?} is not a JSON pointer (RFC 6901: empty, or starting with /)"
                    ),
                ));
            }
        }
        match self.embedder.backend {
            EmbedderBackend::None => {}
            EmbedderBackend::Local => {
                if self.embedder.local.model_dir.is_none() {
                    return Err(key_error(
                        origins,
                        "embedder.local.model_dir".to_owned(),
                        "must be set when embedder.backend is local",
                    ));
                }
            }
            EmbedderBackend::Openai => {
                match &self.embedder.openai.url {
                    None => {
                        return Err(key_error(
                            origins,
                            "embedder.openai.url".to_owned(),
                            "must be set when embedder.backend is openai",
                        ));
                    }
                    Some(url) => {
                        if let Err(message) = http_url(url) {
                            return Err(key_error(
                                origins,
                                "embedder.openai.url".to_owned(),
                                &message,
                            ));
                        }
                    }
                }
                if !(1..=2048).contains(&self.embedder.openai.batch_size) {
                    return Err(key_error(
                        origins,
                        "embedder.openai.batch_size".to_owned(),
                        "must be between 1 and 2048",
                    ));
                }
                if self.embedder.openai.timeout_ms == 0 {
                    return Err(key_error(
                        origins,
                        "embedder.openai.timeout_ms".to_owned(),
                        "must be at least 1",
                    ));
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
pub(super) fn http_url(raw: &str) -> Result<reqwest::Url, String> {
    let url =
        reqwest::Url::parse(raw).map_err(|e| format!("must be an http:// or https:// URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err("must be an http:// or https:// URL with a host".to_owned());
    }
    Ok(url)
}

/// A `redis://` or `rediss://` URL with a host, parsed; a password with special characters
/// must be percent-encoded, as in every URL.
pub(super) fn redis_url(raw: &str) -> Result<(), String> {
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

pub(super) fn key_error(
    origins: &BTreeMap<String, String>,
    key: String,
    message: &str,
) -> ConfigError {
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
pub(super) fn strip_location(message: &str) -> &str {
    match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

/// An environment value as YAML would read it when it is a plain scalar (`5`, `true`, `null`),
/// else the text as is, so that a URL or secret is never reinterpreted.
pub(super) fn env_scalar(raw: &str) -> Value {
    match serde_norway::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::Null)) if !raw.is_empty() => v,
        _ => Value::String(raw.to_owned()),
    }
}

pub(super) fn set_path(tree: &mut Value, key: &[String], value: Value) -> Result<(), String> {
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
