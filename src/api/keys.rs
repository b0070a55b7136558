//! `/admin/keys`: API key management (admin keys only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{Json, Path};
use crate::domain::{Principal, Role};
use crate::error::{AppError, Problem};
use crate::store::ApiKeyRecord;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
}

/// A key to make.
#[derive(Debug, Deserialize, ToSchema)]
pub struct KeyIn {
    /// What the key is for, e.g. the team or service that holds it (1..=255 characters).
    #[schema(example = "billing-agent", min_length = 1, max_length = 255)]
    pub name: String,
    /// `read` (GETs, search, the change feed), `write` (read, plus every write), or `admin`
    /// (write, plus `/cache/warm` and key management).
    #[schema(example = "write", pattern = "^(read|write|admin)$")]
    pub role: String,
    /// When set, the key sees and touches only contexts whose id starts with it.
    #[schema(example = "team-a:", pattern = r"^[A-Za-z0-9._:-]{1,255}$")]
    pub prefix: Option<String>,
}

/// A key as listed: never the key itself, nor its hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyOut {
    #[schema(example = "key_3f2a9c1e0b7d4a66")]
    pub id: String,
    pub name: String,
    #[schema(example = "write")]
    pub role: &'static str,
    pub prefix: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When it was last used (recorded every few seconds); null if never.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; null while it works.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRecord> for KeyOut {
    fn from(k: ApiKeyRecord) -> Self {
        Self {
            id: k.id,
            name: k.name,
            role: k.role.as_str(),
            prefix: k.prefix,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A key just made, with the key itself: the only time it is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyOut {
    pub id: String,
    /// `ctxd_` and 43 letters or digits. Keep it: it is not stored, only its SHA-256.
    #[schema(example = "ctxd_4Xq0hW1bZ7nKc9TtR2uVv8sLmE3yPaD5fGjN6oQiB0w")]
    pub key: String,
    pub name: String,
    #[schema(example = "write")]
    pub role: &'static str,
    pub prefix: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Every key.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Oldest first, revoked ones included.
    pub items: Vec<KeyOut>,
}

/// Make an API key
///
/// Answers the key once; only its SHA-256 is kept. An admin key with a prefix makes keys only
/// inside it.
#[utoipa::path(
    post, path = "/admin/keys", tag = "admin",
    request_body = KeyIn,
    responses(
        (status = 201, description = "Made; `key` is shown this once", body = CreatedKeyOut),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name, role or prefix", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_key(
    State(state): State<AppState>,
    who: Principal,
    Json(body): Json<KeyIn>,
) -> Result<impl IntoResponse, AppError> {
    let role = Role::parse(&body.role).ok_or_else(|| {
        AppError::Unprocessable(format!(
            "role must be read, write or admin, not {:?}",
            body.role
        ))
    })?;
    let created = state
        .keys
        .create(&who, &body.name, role, body.prefix.as_deref())
        .await?;
    let record = created.record;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKeyOut {
            id: record.id,
            key: created.key.expose().to_owned(),
            name: record.name,
            role: record.role.as_str(),
            prefix: record.prefix,
            created_at: record.created_at,
        }),
    ))
}

/// List API keys
///
/// Every key (revoked ones too), without the keys or their hashes.
#[utoipa::path(
    get, path = "/admin/keys", tag = "admin",
    responses(
        (status = 200, description = "Every key", body = KeyList),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_keys(
    State(state): State<AppState>,
    who: Principal,
) -> Result<axum::Json<KeyList>, AppError> {
    let keys = state.keys.list(&who).await?;
    Ok(axum::Json(KeyList {
        items: keys.into_iter().map(Into::into).collect(),
    }))
}

/// Revoke an API key
///
/// The key stops working on every instance within a second. It stays listed, with
/// `revoked_at`.
#[utoipa::path(
    delete, path = "/admin/keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "The key's id (not the key)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke_key(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    state.keys.revoke(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
