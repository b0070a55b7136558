//! Auth: turns the bearer key of a request into the [`Principal`] the service decides on.
//!
//! This layer only says *who* is asking; what they may do (role, prefix) is decided in
//! `service/`, so REST and MCP obey one rule. The key table is small, so every key's SHA-256
//! is held in memory: loaded at start, changed at once by this instance's own key changes,
//! reloaded whenever the store's commit signal says keys changed on any instance (`NOTIFY` on
//! Postgres), and reloaded every [`RELOAD_PERIOD`] as a safety net ([`UNSIGNALLED_RELOAD`] on
//! SQLite, whose signal does not carry what `contextd keys` does beside the server). A key
//! that is not in memory is refused without asking the store, so a flood of made-up keys costs
//! the database nothing. When a key was last used is recorded in batches, off the request path.

pub mod keys;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use self::keys::{ApiKey, constant_time_eq};
use crate::background;
use crate::config::Settings;
use crate::domain::{Principal, Role};
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::store::{ApiKeyRecord, CommitNotice, Store};

/// How often the keys are reloaded from the store, should a change's signal ever be missed.
pub const RELOAD_PERIOD: Duration = Duration::from_secs(30);

/// The same where the signal cannot carry a change made by another process (SQLite with
/// `contextd keys revoke` run beside the server): short enough to keep the 1 s promise.
pub const UNSIGNALLED_RELOAD: Duration = Duration::from_millis(500);

/// How often `last_used_at` is written.
const TOUCH_PERIOD: Duration = Duration::from_secs(5);

/// Routes served without a key, whatever the mode (besides Swagger UI, and `/metrics` while
/// `auth.open_metrics`).
pub const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

/// Resolves bearer keys, for the router's auth layer.
pub struct Authenticator {
    enabled: bool,
    open_metrics: bool,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Every key, revoked ones included, by hash. Replaced whole on reload.
    keys: RwLock<Arc<KeySet>>,
    /// [`RELOAD_PERIOD`] or [`UNSIGNALLED_RELOAD`].
    reload_period: Duration,
    /// Usage of keys whose entry was replaced before it was flushed.
    used: std::sync::Mutex<HashMap<String, chrono::DateTime<Utc>>>,
}

/// Every key by its hash.
type KeySet = HashMap<[u8; 32], Arc<Known>>;

/// A key as the layer knows it. A request that uses it only sets `used`; the flush turns
/// that into `last_used_at`, so the hot path takes no lock but a read lock.
struct Known {
    principal: Principal,
    hash: [u8; 32],
    revoked: bool,
    used: AtomicBool,
}

impl Known {
    fn of(record: &ApiKeyRecord) -> Self {
        Self {
            principal: principal_of(record),
            hash: record.key_hash,
            revoked: record.revoked_at.is_some(),
            used: AtomicBool::new(false),
        }
    }
}

/// Why a key was refused: the metric's `reason`, and what the client is told.
struct Refusal {
    reason: &'static str,
    detail: &'static str,
}

/// `Bearer <token>`, the scheme in any case (RFC 9110 section 11.1).
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?.trim_start();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Authenticator {
    /// An authenticator that knows no key yet: call [`Authenticator::load`] before serving.
    pub fn new(settings: &Settings, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            enabled: settings.auth.enabled(settings.server.bind),
            open_metrics: settings.auth.open_metrics,
            metrics,
            keys: RwLock::default(),
            reload_period: if store.signal_spans_processes() {
                RELOAD_PERIOD
            } else {
                UNSIGNALLED_RELOAD
            },
            used: Default::default(),
            store,
        }
    }

    /// Whether requests need a key.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn is_open(&self, path: &str) -> bool {
        OPEN_PATHS.contains(&path)
            || path == "/swagger-ui"
            || path.starts_with("/swagger-ui/")
            || (self.open_metrics && path == "/metrics")
    }

    /// Reads every key from the store into memory. Usage noted on the keys it replaces is kept
    /// for the next flush.
    pub async fn load(&self) -> Result<(), crate::store::StoreError> {
        let records = self.store.keys().await?;
        let fresh: KeySet = records
            .iter()
            .map(|record| (record.key_hash, Arc::new(Known::of(record))))
            .collect();
        let old = std::mem::replace(&mut *self.write_keys(), Arc::new(fresh));
        for known in old.values() {
            self.note_usage(known);
        }
        Ok(())
    }

    /// Applies one key's new state at once (made, or revoked, here), before the reload that
    /// the commit signal brings.
    pub fn apply(&self, record: &ApiKeyRecord) {
        let mut keys = self.write_keys();
        let mut next = HashMap::clone(&keys);
        if let Some(old) = next.insert(record.key_hash, Arc::new(Known::of(record))) {
            self.note_usage(&old);
        }
        *keys = Arc::new(next);
    }

    fn write_keys(&self) -> std::sync::RwLockWriteGuard<'_, Arc<KeySet>> {
        self.keys
            .write()
            .expect("the key set is never left half-changed")
    }

    fn read_keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .expect("the key set is never left half-changed")
            .clone()
    }

    /// The principal of an `Authorization` header, from memory only.
    fn resolve(&self, authorization: Option<&HeaderValue>) -> Result<Principal, AppError> {
        let refuse = |refusal: Refusal| {
            self.metrics.observe_auth_failure(refusal.reason);
            AppError::Unauthorized(refusal.detail.to_owned())
        };
        let Some(value) = authorization else {
            return Err(refuse(Refusal {
                reason: "missing",
                detail: "this needs an API key: send Authorization: Bearer <key>",
            }));
        };
        let Some(token) = bearer_token(value).filter(|t| keys::is_well_formed(t)) else {
            return Err(refuse(Refusal {
                reason: "malformed",
                detail: "Authorization must be `Bearer ctxd_<43 letters or digits>`",
            }));
        };
        let hash = keys::hash(token);
        let keys = self.read_keys();
        match keys.get(&hash) {
            Some(known) if constant_time_eq(&known.hash, &hash) => {
                if known.revoked {
                    return Err(refuse(Refusal {
                        reason: "revoked",
                        detail: "this API key was revoked",
                    }));
                }
                known.used.store(true, Ordering::Relaxed);
                Ok(known.principal.clone())
            }
            _ => Err(refuse(Refusal {
                reason: "unknown",
                detail: "this API key is not known here",
            })),
        }
    }

    /// Moves an entry's unflushed use into the usage map.
    fn note_usage(&self, entry: &Known) {
        if entry.used.swap(false, Ordering::Relaxed)
            && let Some(id) = &entry.principal.key_id
        {
            self.used
                .lock()
                .expect("the usage map is never left half-changed")
                .insert(id.to_string(), Utc::now());
        }
    }

    /// Writes the `last_used_at` of the keys used since the last call (to within the flush
    /// period).
    pub async fn flush_usage(&self) {
        for known in self.read_keys().values() {
            self.note_usage(known);
        }
        let used: Vec<(String, chrono::DateTime<Utc>)> = std::mem::take(
            &mut *self
                .used
                .lock()
                .expect("the usage map is never left half-changed"),
        )
        .into_iter()
        .collect();
        if used.is_empty() {
            return;
        }
        if let Err(e) = self.store.touch_keys(&used).await {
            tracing::debug!(error = %e, "cannot record key usage now; it is dropped");
        }
    }

    async fn reload(&self) {
        if let Err(e) = self.load().await {
            tracing::warn!(error = %e, "cannot reload the API keys now; keeping the ones known");
        }
    }

    /// The background work, while auth is on: a reload on every key change (any instance) and
    /// every reload period, and usage flushes, until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        if !self.enabled {
            return Vec::new();
        }
        let mut commits = self.store.commits();
        let auth = self.clone();
        let mut stopped = stop.clone();
        let listener = tokio::spawn(async move {
            loop {
                let notice = tokio::select! {
                    notice = commits.recv() => notice,
                    _ = stopped.wait_for(|stop| *stop) => return,
                };
                match notice {
                    Ok(CommitNotice::KeysChanged | CommitNotice::Unknown)
                    | Err(broadcast::error::RecvError::Lagged(_)) => auth.reload().await,
                    Ok(CommitNotice::Changed(..)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let auth = self.clone();
        let reloader = background::every(self.reload_period, stop.clone(), move || {
            let auth = auth.clone();
            async move { auth.reload().await }
        });
        let auth = self.clone();
        let flusher = background::every(TOUCH_PERIOD, stop, move || {
            let auth = auth.clone();
            async move { auth.flush_usage().await }
        });
        vec![listener, reloader, flusher]
    }
}

/// The principal the auth layer put on a request, for REST extractors and MCP tools alike.
pub fn principal_of_request(parts: &axum::http::request::Parts) -> Result<Principal, AppError> {
    parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
        AppError::Unauthorized("this needs an API key: send Authorization: Bearer <key>".into())
    })
}

/// What a stored key lets its holder be.
pub fn principal_of(record: &ApiKeyRecord) -> Principal {
    Principal {
        key_id: Some(Arc::from(record.id.as_str())),
        role: record.role,
        prefix: record.prefix.as_deref().map(Arc::from),
    }
}

/// The auth layer: every request leaves it with a [`Principal`] in its extensions (the system
/// one when auth is off), or is answered 401. A 403 from below is counted here too.
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    if !auth.enabled {
        request.extensions_mut().insert(Principal::system());
        return next.run(request).await;
    }
    if auth.is_open(request.uri().path()) {
        return next.run(request).await;
    }
    match auth.resolve(request.headers().get(header::AUTHORIZATION)) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            let response = next.run(request).await;
            if response.status() == StatusCode::FORBIDDEN {
                auth.metrics.observe_auth_failure("forbidden");
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Makes sure the bootstrap key exists, as an admin key without prefix.
pub async fn ensure_bootstrap_key(settings: &Settings, store: &dyn Store) -> anyhow::Result<()> {
    let Some(raw) = &settings.auth.bootstrap_key else {
        return Ok(());
    };
    let key = ApiKey::parse(raw.expose())
        .ok_or_else(|| anyhow::anyhow!("auth.bootstrap_key is not a well-formed key"))?;
    store
        .ensure_key(&ApiKeyRecord {
            id: new_key_id(),
            name: "bootstrap".to_owned(),
            role: Role::Admin,
            prefix: None,
            key_hash: key.hash(),
            created_at: Utc::now(),
            last_used_at: None,
            revoked_at: None,
        })
        .await?;
    Ok(())
}

/// A new key id: `key_` and 16 hex characters of a random UUID.
pub fn new_key_id() -> String {
    format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}
