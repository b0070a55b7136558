//! `/contexts`: the context resource, its history, and restore.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::{IfNoneMatch, Json, Path, Query, etag, if_none_match_hits, preconditions};
use crate::cache::CachedContext;
use crate::domain::{ContextId, Principal, Source};
use crate::error::{AppError, Problem};
use crate::service::{ConflictStrategy, IfMatch, WriteRequest, WriteStatus, Written};
pub use crate::wire::contexts::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_context, put_context, delete_context))
        .routes(routes!(list_contexts, create_context))
        .routes(routes!(list_versions))
        .routes(routes!(get_version))
        .routes(routes!(restore_version))
}

/// Query of `GET /contexts/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// Return this version instead of the current one.
    #[param(value_type = Option<i64>, minimum = 1)]
    pub version: Option<String>,
    /// `embedding` adds the embedding to the response.
    #[param(value_type = Option<String>, pattern = "^(embedding)?$")]
    pub include: Option<String>,
}

/// Query of writes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    /// With `If-Match` naming an old version: `reject` (412, the default), `overwrite`, or
    /// `merge` (three-way merge of top-level keys; 409 lists conflicting keys).
    #[param(value_type = Option<String>, pattern = "^(reject|overwrite|merge)$")]
    pub on_conflict: Option<String>,
}

/// Query of `GET /contexts`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only contexts from this source.
    #[param(value_type = Option<Source>)]
    pub source: Option<String>,
    /// Only children of this context.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,255}$")]
    pub parent_id: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Query of `GET /contexts/{id}/versions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1..=1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn parse_include_embedding(raw: Option<&str>) -> Result<bool, AppError> {
    match raw {
        None | Some("") => Ok(false),
        Some("embedding") => Ok(true),
        Some(other) => Err(AppError::Unprocessable(format!(
            "include may only be `embedding`, not {other:?}"
        ))),
    }
}

/// A one-context response: the body, `ETag`, and any extra headers. The usual body is
/// rendered once per cached version and shared by every reader.
fn context_response(
    status: StatusCode,
    context: &CachedContext,
    include_embedding: bool,
    extra: impl IntoIterator<Item = (header::HeaderName, HeaderValue)>,
) -> Response {
    let body = if include_embedding {
        Bytes::from(
            serde_json::to_vec(&ContextOut::new(context, true))
                .expect("a context always serializes"),
        )
    } else {
        context.rendered(render)
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ETAG, etag(context.version));
    headers.extend(extra);
    response
}

fn location(id: &ContextId) -> (header::HeaderName, HeaderValue) {
    let value = HeaderValue::from_str(&format!("/contexts/{id}")).expect("ids are URL-safe ASCII");
    (header::LOCATION, value)
}

pub(super) fn written_response(written: &Written) -> Response {
    match written.status {
        WriteStatus::Created => context_response(
            StatusCode::CREATED,
            &written.context,
            false,
            [location(&written.context.id)],
        ),
        WriteStatus::Updated | WriteStatus::Unchanged => {
            context_response(StatusCode::OK, &written.context, false, [])
        }
    }
}

/// Get a context
///
/// The current version, or `?version=N`. `If-None-Match: "<v>"` answers 304 when unchanged.
/// `Cache-Status` tells which layer answered.
#[utoipa::path(
    get, path = "/contexts/{id}", tag = "contexts",
    params(("id" = String, Path, description = "Context id", pattern = r"^[A-Za-z0-9._:-]{1,255}$", example = "ctx_123"), GetParams,
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "An ETag you hold, e.g. \"3\"")),
    responses(
        (status = 200, description = "The context", body = ContextOut,
            headers(("ETag" = String), ("Cache-Status" = String))),
        (status = 304, description = "Not modified since the ETag you hold"),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such context or version", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "That version was pruned", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id or parameter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_context(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Query(params): Query<GetParams>,
    IfNoneMatch(if_none_match): IfNoneMatch,
) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    let include_embedding = parse_include_embedding(params.include.as_deref())?;
    let (context, cache_status) = match params.version.as_deref() {
        None => {
            let (context, outcome) = state.contexts.get(&who, &id).await?;
            (context, outcome.header_value())
        }
        Some(raw) => {
            let version = raw.parse::<i64>().map_err(|_| {
                AppError::Unprocessable(format!("version must be an integer, not {raw:?}"))
            })?;
            let (context, outcome) = state.contexts.get_at(&who, &id, version).await?;
            (context, outcome.header_value())
        }
    };
    let cache_status = (
        header::HeaderName::from_static("cache-status"),
        HeaderValue::from_static(cache_status),
    );
    if if_none_match_hits(if_none_match.as_ref(), context.version) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response
            .headers_mut()
            .insert(header::ETAG, etag(context.version));
        response.headers_mut().extend([cache_status]);
        return Ok(response);
    }
    Ok(context_response(
        StatusCode::OK,
        &context,
        include_embedding,
        [cache_status],
    ))
}

/// Create or update a context
///
/// 201 with version 1 when new, 200 with version +1 when changed, 200 with the current version
/// when nothing changed. `If-Match: "<v>"` makes the write conditional (see `on_conflict`);
/// `If-None-Match: *` makes it create-only.
#[utoipa::path(
    put, path = "/contexts/{id}", tag = "contexts",
    params(("id" = String, Path, description = "Context id", pattern = r"^[A-Za-z0-9._:-]{1,255}$", example = "ctx_123"), WriteParams,
        ("If-Match" = Option<String>, Header, nullable = false, description = "The version you read, e.g. \"3\" (a bare 3 is taken too), or *", pattern = r#"^(\*|"[1-9][0-9]{0,17}"|[1-9][0-9]{0,17})$"#),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "* to create only", pattern = r"^\*$")),
    request_body = ContextIn,
    responses(
        (status = 200, description = "Updated, or unchanged", body = ContextOut, headers(("ETag" = String))),
        (status = 201, description = "Created", body = ContextOut, headers(("ETag" = String), ("Location" = String))),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Merge conflict: `conflicts` lists the keys", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Precondition failed: `current_version` says why", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over `limits.max_context_bytes`: `limit` and `actual`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid id, source, data, metadata or embedding", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn put_context(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    Json(body): Json<ContextIn>,
) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    let on_conflict = match params.on_conflict.as_deref() {
        None => ConflictStrategy::default(),
        Some(raw) => ConflictStrategy::parse(raw).ok_or_else(|| {
            AppError::Unprocessable(format!(
                "on_conflict must be reject, overwrite or merge, not {raw:?}"
            ))
        })?,
    };
    let preconditions = preconditions(&headers)?;
    let (body_id, content, changed_by) = body.parse()?;
    if body_id.as_ref().is_some_and(|b| *b != id) {
        return Err(AppError::Unprocessable(
            "context_id in the body differs from the id in the path".to_owned(),
        ));
    }
    let written = state
        .contexts
        .put(
            &who,
            &id,
            WriteRequest {
                content,
                changed_by,
                preconditions,
                on_conflict,
            },
        )
        .await?;
    Ok(written_response(&written))
}

/// Create a context
///
/// Like `PUT`, but create-only: the id comes from the body, or `ctx_<uuid>` is generated.
#[utoipa::path(
    post, path = "/contexts", tag = "contexts",
    request_body = ContextIn,
    responses(
        (status = 201, description = "Created", body = ContextOut, headers(("ETag" = String), ("Location" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over `limits.max_context_bytes`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_context(
    State(state): State<AppState>,
    who: Principal,
    Json(body): Json<ContextIn>,
) -> Result<Response, AppError> {
    let (id, content, changed_by) = body.parse()?;
    let written = state.contexts.create(&who, id, content, changed_by).await?;
    Ok(written_response(&written))
}

/// Delete a context
///
/// Removes it with its whole history and its cache entries. `If-Match: "<v>"` deletes only
/// that version.
#[utoipa::path(
    delete, path = "/contexts/{id}", tag = "contexts",
    params(("id" = String, Path, description = "Context id", pattern = r"^[A-Za-z0-9._:-]{1,255}$", example = "ctx_123"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Delete only if this is the current version, e.g. \"3\" (a bare 3 is taken too)", pattern = r#"^(\*|"[1-9][0-9]{0,17}"|[1-9][0-9]{0,17})$"#)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such context", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_context(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, AppError> {
    let id = parse_id(&id)?;
    let preconditions = preconditions(&headers)?;
    state
        .contexts
        .delete(&who, &id, preconditions.if_match)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List contexts
///
/// In id order, without `data`; page with `cursor`.
#[utoipa::path(
    get, path = "/contexts", tag = "contexts",
    params(ListParams),
    responses(
        (status = 200, description = "One page", body = ContextPage),
        (status = 400, description = "Bad cursor or query", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad source, parent_id or limit", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_contexts(
    State(state): State<AppState>,
    who: Principal,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<ContextPage>, AppError> {
    let limit = parse_limit(params.limit.as_deref())?;
    let source = params
        .source
        .as_deref()
        .map(|raw| {
            Source::parse(raw).ok_or_else(|| {
                AppError::Unprocessable(format!("source must be factory or mcp, not {raw:?}"))
            })
        })
        .transpose()?;
    let filter = list_filter(source, params.parent_id.as_deref())?;
    let page = state
        .contexts
        .list(&who, &filter, params.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(page.into()))
}

/// List a context's versions
///
/// Newest first; page with `cursor`.
#[utoipa::path(
    get, path = "/contexts/{id}/versions", tag = "versions",
    params(("id" = String, Path, description = "Context id", pattern = r"^[A-Za-z0-9._:-]{1,255}$", example = "ctx_123"), PageParams),
    responses(
        (status = 200, description = "One page", body = VersionPage),
        (status = 400, description = "Bad cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such context", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id or limit", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_versions(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<VersionPage>, AppError> {
    let id = parse_id(&id)?;
    let limit = parse_limit(params.limit.as_deref())?;
    let page = state
        .contexts
        .versions(&who, &id, params.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(page.into()))
}

/// Parses the `{n}` of a version path; anything but a number from 1 names no version (so it
/// answers 404 before any precondition is weighed).
fn parse_version(id: &ContextId, raw: &str) -> Result<i64, AppError> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| AppError::NotFound(format!("context {id} has no version {raw:?}")))
}

/// Get one version
#[utoipa::path(
    get, path = "/contexts/{id}/versions/{n}", tag = "versions",
    params(("id" = String, Path, description = "Context id", pattern = r"^[A-Za-z0-9._:-]{1,255}$", example = "ctx_123"),
        ("n" = i64, Path, description = "Version number", minimum = 1, example = 1)),
    responses(
        (status = 200, description = "The version", body = VersionOut),
        (status = 400, description = "Malformed path", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such context or version", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Pruned by retention", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_version(
    State(state): State<AppState>,
    who: Principal,
    Path((id, n)): Path<(String, String)>,
) -> Result<axum::Json<VersionOut>, AppError> {
    let id = parse_id(&id)?;
    let version = parse_version(&id, &n)?;
    let record = state.contexts.version(&who, &id, version).await?;
    Ok(axum::Json(record.into()))
}

/// Body of a restore (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"changed_by": "swagger-ui"}))]
pub struct RestoreIn {
    /// Who made the change, recorded in the history.
    pub changed_by: Option<String>,
}

/// Restore a version
///
/// Makes a new version with that version's data and metadata (`change_type` `restore`).
#[utoipa::path(
    post, path = "/contexts/{id}/versions/{n}/restore", tag = "versions",
    params(("id" = String, Path, description = "Context id", pattern = r"^[A-Za-z0-9._:-]{1,255}$", example = "ctx_123"),
        ("n" = i64, Path, description = "Version to restore", minimum = 1, example = 1),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Restore only if this is the current version, e.g. \"3\" (a bare 3 is taken too)", pattern = r#"^(\*|"[1-9][0-9]{0,17}"|[1-9][0-9]{0,17})$"#)),
    request_body(content = Option<RestoreIn>, description = "Optional"),
    responses(
        (status = 200, description = "The new current version", body = ContextOut, headers(("ETag" = String))),
        (status = 400, description = "Malformed body or If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such context or version", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Pruned by retention", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn restore_version(
    State(state): State<AppState>,
    who: Principal,
    Path((id, n)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    let version = parse_version(&id, &n)?;
    let if_match = preconditions(&headers)?.if_match;
    // The body is optional: none, `null` and `{}` all mean "nothing to add".
    let restore: Option<RestoreIn> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::BadRequest(format!("malformed JSON: {e}")))?
    };
    let restore = restore.unwrap_or_default();
    let if_match = match if_match {
        Some(IfMatch::Any) | None => None,
        some => some,
    };
    let written = state
        .contexts
        .restore(&who, &id, version, if_match, restore.changed_by)
        .await?;
    Ok(context_response(
        StatusCode::OK,
        &written.context,
        false,
        [],
    ))
}
