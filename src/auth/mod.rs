//! Auth: turns the bearer key of a request into the [`Principal`] the service decides on.
//!
//! This layer only says *who* is asking; what they may do (role, prefix) is decided in
//! `service/`, so REST and MCP obey one rule. Keys are looked up by their SHA-256 and kept,
//! verified, in process; a revocation on any instance reaches every instance's cache through
//! the store's commit signal (`NOTIFY` on Postgres, in process on SQLite), and the cache also
//! forgets a key after [`VERIFIED_TTL`] as a safety net ([`UNSIGNALLED_TTL`] on SQLite, whose
//! signal does not reach across processes). When a key was last used is
//! recorded in batches, off the request path.

pub mod keys;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// How long a verified key is trusted without asking the store again, should a revocation's
/// signal ever be missed.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// The same where the signal cannot carry a revocation made by another process (SQLite with
/// `contextd keys revoke` run beside the server): short enough to keep the 1 s promise.
pub const UNSIGNALLED_TTL: Duration = Duration::from_millis(500);

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
    verified: std::sync::Mutex<HashMap<[u8; 32], Arc<Verified>>>,
    /// [`VERIFIED_TTL`] or [`UNSIGNALLED_TTL`].
    ttl: Duration,
    /// Bumped by every invalidation; a lookup that started before one does not cache.
    generation: AtomicU64,
    /// Usage of keys whose verified entry was dropped before it was flushed.
    used: std::sync::Mutex<HashMap<String, chrono::DateTime<Utc>>>,
}

/// A key verified against the store. A request that uses it only sets `used`; the flush turns
/// that into `last_used_at`, so the hot path takes no lock but the cache's own.
struct Verified {
    principal: Principal,
    hash: [u8; 32],
    at: Instant,
    used: AtomicBool,
}

/// Why a key was refused: the metric's `reason`, and what the client is told.
struct Refusal {
    reason: &'static str,
    detail: &'static str,
}

impl Authenticator {
    pub fn new(settings: &Settings, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            enabled: settings.auth.enabled(settings.server.bind),
            open_metrics: settings.auth.open_metrics,
            metrics,
            verified: Default::default(),
            ttl: if store.signal_spans_processes() {
                VERIFIED_TTL
            } else {
                UNSIGNALLED_TTL
            },
            generation: AtomicU64::new(0),
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

    /// The principal of an `Authorization` header.
    async fn resolve(&self, authorization: Option<&HeaderValue>) -> Result<Principal, AppError> {
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
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| keys::is_well_formed(t));
        let Some(token) = token else {
            return Err(refuse(Refusal {
                reason: "malformed",
                detail: "Authorization must be `Bearer ctxd_<43 letters or digits>`",
            }));
        };
        let hash = keys::hash(token);
        let generation = self.generation.load(Ordering::Acquire);
        let cached = self
            .verified
            .lock()
            .expect("the key cache is never left half-changed")
            .get(&hash)
            .filter(|v| v.at.elapsed() < self.ttl)
            .cloned();
        let principal = match cached {
            Some(v) if constant_time_eq(&v.hash, &hash) => {
                v.used.store(true, Ordering::Relaxed);
                v.principal.clone()
            }
            _ => {
                let record = self.store.key_by_hash(&hash).await?;
                let record = match record {
                    Some(r) if constant_time_eq(&r.key_hash, &hash) => r,
                    _ => {
                        return Err(refuse(Refusal {
                            reason: "unknown",
                            detail: "this API key is not known here",
                        }));
                    }
                };
                if record.revoked_at.is_some() {
                    return Err(refuse(Refusal {
                        reason: "revoked",
                        detail: "this API key was revoked",
                    }));
                }
                let principal = principal_of(&record);
                let mut verified = self
                    .verified
                    .lock()
                    .expect("the key cache is never left half-changed");
                let entry = Arc::new(Verified {
                    principal: principal.clone(),
                    hash,
                    at: Instant::now(),
                    used: AtomicBool::new(true),
                });
                if self.generation.load(Ordering::Acquire) == generation {
                    verified.insert(hash, entry);
                } else {
                    drop(verified);
                    self.note_usage(&entry);
                }
                principal
            }
        };
        Ok(principal)
    }

    /// Forgets every verified key: one may have been revoked.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let dropped = std::mem::take(
            &mut *self
                .verified
                .lock()
                .expect("the key cache is never left half-changed"),
        );
        for entry in dropped.values() {
            self.note_usage(entry);
        }
    }

    /// Moves an entry's unflushed use into the usage map.
    fn note_usage(&self, entry: &Verified) {
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
        let entries: Vec<Arc<Verified>> = self
            .verified
            .lock()
            .expect("the key cache is never left half-changed")
            .values()
            .cloned()
            .collect();
        for entry in &entries {
            self.note_usage(entry);
        }
        let used: Vec<(String, chrono::DateTime<Utc>)> = std::mem::take(
            &mut *self
                .used
                .lock()
                .expect("the usage map is never left half-changed"),
        )
        .into_iter()
        .collect();
        if let Err(e) = self.store.touch_keys(&used).await {
            tracing::debug!(error = %e, "cannot record key usage now; it is dropped");
        }
    }

    /// The background work: invalidation on every key change (any instance), and usage
    /// flushes, until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut commits = self.store.commits();
        let auth = self.clone();
        let mut stopped = stop.clone();
        let listener = tokio::spawn(async move {
            loop {
                tokio::select! {
                    notice = commits.recv() => match notice {
                        Ok(CommitNotice::KeysChanged | CommitNotice::Unknown)
                        | Err(broadcast::error::RecvError::Lagged(_)) => auth.invalidate(),
                        Ok(CommitNotice::Changed(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
            }
        });
        let auth = self.clone();
        let flusher = background::every(TOUCH_PERIOD, stop, move || {
            let auth = auth.clone();
            async move { auth.flush_usage().await }
        });
        vec![listener, flusher]
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
    match auth
        .resolve(request.headers().get(header::AUTHORIZATION))
        .await
    {
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
