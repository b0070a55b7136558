//! `/sync/factory`: Factory AI's side of the sync — ingest, the Factory-format read, and the
//! change feed. (The push to Factory's webhook runs in `crate::sync`.)

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::body::parse_json;
use super::contexts::{parse_id, parse_limit};
use super::extract::{JsonBytes, Path, Query};
use crate::domain::{ContextId, JsonObject, Principal};
use crate::error::{AppError, Problem};
use crate::service::{FactoryItem, MAX_SYNC_ITEMS};
use crate::wire::{ChangeOut, FactoryContextOut};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest))
        .routes(routes!(changes))
        .routes(routes!(factory_context))
}

/// One Factory context to ingest.
#[derive(Debug, Deserialize, ToSchema)]
pub struct FactoryContextIn {
    /// The context id; a new `ctx_<uuid>` when absent.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,255}$")]
    pub id: Option<String>,
    /// Any JSON object.
    #[schema(value_type = Object)]
    pub data: JsonObject,
    /// Any JSON object; `{}` when absent.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<JsonObject>,
    /// Factory's time of this state (RFC 3339). An item older than the stored version is
    /// skipped (`skipped_stale`); without it, never.
    pub timestamp: Option<DateTime<Utc>>,
    /// `vector.dimensions` floats.
    pub embedding: Option<Vec<f32>>,
}

/// One Factory context, or a batch of them. (The body's schema: it is parsed by hand, so that
/// a bad item is named by its index.)
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "ctx_456",
    "data": {"user": "jane", "task": "billing"},
    "metadata": {"team": "support"}
}))]
#[serde(untagged)]
#[allow(dead_code)]
pub enum IngestIn {
    Batch(FactoryBatchIn),
    One(FactoryContextIn),
}

/// A batch: stored all or none.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct FactoryBatchIn {
    /// 1..=1000 Factory contexts.
    #[schema(min_items = 1, max_items = 1000)]
    pub contexts: Vec<FactoryContextIn>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResult {
    pub id: String,
    /// The version the context has now.
    pub version: i64,
    /// `created`, `updated`, `unchanged` or `skipped_stale`.
    #[schema(example = "created")]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestOut {
    /// One per item, in the request's order.
    pub results: Vec<IngestResult>,
}

/// Parses one item (JSON text); a refusal names its place.
fn parse_item(index: Option<usize>, text: &str) -> Result<FactoryItem, AppError> {
    let place = |e: AppError| match (index, e) {
        (Some(i), AppError::Unprocessable(detail)) => {
            AppError::Unprocessable(format!("contexts[{i}]: {detail}"))
        }
        (_, e) => e,
    };
    let item: FactoryContextIn = parse_json(text.as_bytes()).map_err(place)?;
    let id = item
        .id
        .as_deref()
        .map(|raw| {
            ContextId::parse(raw).map_err(|e| place(AppError::Unprocessable(format!("id: {e}"))))
        })
        .transpose()?;
    Ok(FactoryItem {
        id,
        data: item.data,
        metadata: item.metadata.unwrap_or_default(),
        timestamp: item.timestamp,
        embedding: item.embedding,
    })
}

/// The items of an ingest body: one Factory context, or `{"contexts": [...]}`. Parsed as
/// text, item by item, so no tree of the whole body is ever built.
fn parse_ingest(body: &[u8]) -> Result<Vec<FactoryItem>, AppError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| AppError::BadRequest(format!("malformed JSON: the body is not UTF-8: {e}")))?;
    let whole: &RawValue = serde_json::from_str(text)
        .map_err(|e| AppError::BadRequest(format!("malformed JSON: {e}")))?;
    let kind = match whole.get().as_bytes().first() {
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        _ => Some("a number"),
    };
    if let Some(kind) = kind {
        return Err(AppError::Unprocessable(format!(
            "the body must be a Factory context or {{\"contexts\": [...]}}, not {kind}"
        )));
    }
    let members: BTreeMap<String, &RawValue> = serde_json::from_str(text)
        .map_err(|e| AppError::BadRequest(format!("malformed JSON: {e}")))?;
    let Some(contexts) = members.get("contexts") else {
        return Ok(vec![parse_item(None, text)?]);
    };
    let items: Vec<&RawValue> = serde_json::from_str(contexts.get()).map_err(|_| {
        AppError::Unprocessable("contexts must be an array of Factory contexts".to_owned())
    })?;
    if !(1..=MAX_SYNC_ITEMS).contains(&items.len()) {
        return Err(AppError::Unprocessable(format!(
            "contexts must hold 1 to {MAX_SYNC_ITEMS} items, not {}",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_item(Some(i), item.get()))
        .collect()
}

/// Ingest Factory contexts
///
/// One Factory context, or `{contexts: [...]}` (1..=1000), stored with `source` `factory` and
/// `change_type` `sync`, all in one transaction. Each gets a status: `created`, `updated`,
/// `unchanged` (same data, metadata and embedding; decided first) or `skipped_stale` (its
/// `timestamp` is older than the stored version's). One bad item refuses the whole request
/// (422 naming its index) and nothing is stored.
#[utoipa::path(
    post, path = "/sync/factory", tag = "sync",
    request_body = IngestIn,
    responses(
        (status = 200, description = "Stored", body = IngestOut),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "An item is over `limits.max_context_bytes`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An item is invalid (its index is named), or not 1..=1000 items", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn ingest(
    State(state): State<AppState>,
    who: Principal,
    JsonBytes(body): JsonBytes,
) -> Result<axum::Json<IngestOut>, AppError> {
    let items = crate::cpu::run_sized(body.len(), move || parse_ingest(&body)).await?;
    let results = state.contexts.ingest(&who, items).await?;
    Ok(axum::Json(IngestOut {
        results: results
            .into_iter()
            .map(|r| IngestResult {
                id: r.id.as_str().to_owned(),
                version: r.version,
                status: r.status.as_str(),
            })
            .collect(),
    }))
}

/// Read a context in Factory format
///
/// `timestamp` is the context's `updated_at`.
#[utoipa::path(
    get, path = "/sync/factory/{id}", tag = "sync",
    params(("id" = String, Path, description = "Context id", pattern = r"^[A-Za-z0-9._:-]{1,255}$", example = "ctx_456")),
    responses(
        (status = 200, description = "The context", body = FactoryContextOut),
        (status = 404, description = "No such context", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn factory_context(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<FactoryContextOut>, AppError> {
    let id = parse_id(&id)?;
    let (context, _) = state.contexts.get(&who, &id).await?;
    Ok(axum::Json(FactoryContextOut {
        id: context.id.as_str().to_owned(),
        data: context.content.data.clone(),
        metadata: context.content.metadata.clone(),
        version: context.version,
        timestamp: context.updated_at,
    }))
}

/// Query of the change feed.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesParams {
    /// Changes after this `seq` (0, or the previous page's `next_since`).
    #[param(value_type = Option<i64>, minimum = 0)]
    pub since: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChangesOut {
    pub changes: Vec<ChangeOut>,
    /// Pass as `since` for the next page.
    pub next_since: i64,
}

/// Change feed
///
/// Every committed change (`upsert` or `delete`) in commit order. Page with `next_since`:
/// no change is skipped or repeated.
#[utoipa::path(
    get, path = "/sync/factory/changes", tag = "sync",
    params(ChangesParams),
    responses(
        (status = 200, description = "One page", body = ChangesOut),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad since or limit", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn changes(
    State(state): State<AppState>,
    who: Principal,
    Query(params): Query<ChangesParams>,
) -> Result<axum::Json<ChangesOut>, AppError> {
    let since = match params.since.as_deref() {
        None => 0,
        Some(raw) => raw.parse::<i64>().ok().filter(|s| *s >= 0).ok_or_else(|| {
            AppError::Unprocessable(format!("since must be a seq (0 or more), not {raw:?}"))
        })?,
    };
    let limit = parse_limit(params.limit.as_deref())?;
    let changes = state.contexts.changes(&who, since, limit.get()).await?;
    let next_since = changes.last().map_or(since, |c| c.seq);
    Ok(axum::Json(ChangesOut {
        changes: changes.into_iter().map(Into::into).collect(),
        next_since,
    }))
}
