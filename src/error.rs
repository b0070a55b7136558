//! One error type for the whole request path, and the only place that knows status codes.
//!
//! Every error leaves as `application/problem+json` (RFC 9457). Internal detail (a database
//! message, a cause chain) is logged here and never sent: the client gets a status and a
//! sentence it can act on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::Refusal;
use crate::service::ServiceError;
use crate::store::StoreError;

/// Seconds a client is asked to wait before retrying a 503.
pub const RETRY_AFTER_SECONDS: u64 = 1;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed JSON, query or header.
    #[error("{0}")]
    BadRequest(String),
    /// No key, or not a valid one (answered with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key whose role is too low.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    /// The id already exists (`POST /contexts`).
    #[error("{detail}")]
    AlreadyExists {
        detail: String,
        current_version: i64,
    },
    /// A three-way merge met keys changed differently on both sides.
    #[error("{detail}")]
    MergeConflict {
        detail: String,
        current_version: i64,
        conflicts: Vec<String>,
    },
    #[error("{detail}")]
    PreconditionFailed {
        detail: String,
        current_version: Option<i64>,
    },
    #[error("the context is {actual} bytes, over the limit of {limit}")]
    TooLarge { limit: usize, actual: usize },
    /// The body holds more JSON values than `limits.max_json_nodes`.
    #[error(
        "the body holds {actual} JSON values, over the limit of {limit} (limits.max_json_nodes)"
    )]
    TooManyValues { limit: usize, actual: usize },
    /// The request body is larger than the server reads at all.
    #[error("{0}")]
    BodyTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed but invalid: a bad id, source, shape, limit.
    #[error("{0}")]
    Unprocessable(String),
    /// The store (or another dependency) cannot answer now.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The problem+json body (RFC 9457), with contextd's extension members.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// 409 (merge), 412: the context's current version (null if it does not exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<Option<i64>>,
    /// 409 (merge): the keys changed differently on both sides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<Vec<String>>,
    /// 413: the limit (bytes of a context, or values in a body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// 413: the size of what was refused (bytes of the context, or values in the body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<usize>,
}

impl Problem {
    /// A problem with just the standard members.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://contextd.dev/problems/{}", slug(status)),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            current_version: None,
            conflicts: None,
            limit: None,
            actual: None,
        }
    }

    pub fn into_response_with(self, status: StatusCode) -> Response {
        let body = serde_json::to_vec(&self).expect("a problem always serializes");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"contextd\""),
            );
        }
        response
    }
}

/// The last segment of each problem type URI.
fn slug(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad-request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not-found",
        405 => "method-not-allowed",
        409 => "conflict",
        410 => "gone",
        412 => "precondition-failed",
        413 => "too-large",
        414 => "uri-too-long",
        415 => "unsupported-media-type",
        422 => "invalid",
        431 => "request-header-fields-too-large",
        503 => "unavailable",
        _ => "error",
    }
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Gone(_) => StatusCode::GONE,
            AppError::AlreadyExists { .. } | AppError::MergeConflict { .. } => StatusCode::CONFLICT,
            AppError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            AppError::TooLarge { .. }
            | AppError::TooManyValues { .. }
            | AppError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Turns a refusal of the rules into its HTTP answer, naming the context.
    pub fn from_refusal(refusal: Refusal, id: &str) -> Self {
        match refusal {
            Refusal::NotFound => AppError::NotFound(format!("context {id} does not exist")),
            Refusal::Gone { version } => AppError::Gone(format!(
                "version {version} of context {id} was pruned by the retention limit"
            )),
            Refusal::PreconditionFailed {
                current_version,
                reason,
            } => AppError::PreconditionFailed {
                detail: reason,
                current_version,
            },
            Refusal::MergeConflict {
                current_version,
                conflicts,
            } => AppError::MergeConflict {
                detail: format!(
                    "context {id} changed since the version you read, on the same keys: {}",
                    conflicts.join(", ")
                ),
                current_version,
                conflicts,
            },
            Refusal::Stale { current_version } => AppError::PreconditionFailed {
                detail: format!("the update of context {id} is older than its current version"),
                current_version: Some(current_version),
            },
            Refusal::AlreadyExists { current_version } => AppError::AlreadyExists {
                detail: format!("context {id} already exists"),
                current_version,
            },
        }
    }
}

impl From<ServiceError> for AppError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(detail) => AppError::Unprocessable(detail),
            ServiceError::Malformed(detail) => AppError::BadRequest(detail),
            e @ ServiceError::NeedsRole(_) => AppError::Forbidden(e.to_string()),
            ServiceError::NotPermitted(detail) => AppError::Forbidden(detail),
            ServiceError::NotFound(detail) => AppError::NotFound(detail),
            ServiceError::Refused { refusal, id } => AppError::from_refusal(refusal, &id),
            ServiceError::TooLarge { limit, actual } => AppError::TooLarge { limit, actual },
            ServiceError::Unavailable(detail) => AppError::Unavailable(detail),
            ServiceError::Store(e) => e.into(),
            // An item of a batch is named by its index where the caller can act on it.
            ServiceError::InItem { index, error } => match AppError::from(*error) {
                AppError::Unprocessable(detail) => {
                    AppError::Unprocessable(format!("contexts[{index}]: {detail}"))
                }
                AppError::NotFound(detail) => {
                    AppError::NotFound(format!("contexts[{index}]: {detail}"))
                }
                other => other,
            },
            ServiceError::Internal(e) => AppError::Internal(e),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "store unavailable");
                AppError::Unavailable("the store is unavailable; retry shortly".to_owned())
            }
            StoreError::Refusing(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "the store refuses writes");
                AppError::Unavailable(
                    "the store refuses writes now (its disk is full, or it is read-only); \
                     reads go on; retry later"
                        .to_owned(),
                )
            }
            StoreError::Rejected(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "the store refused a value");
                AppError::Unprocessable(
                    "the store cannot hold a value of this request (a string with U+0000, or a \
                     number out of range)"
                        .to_owned(),
                )
            }
            StoreError::Internal(cause) => AppError::Internal(cause),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        self.into_problem().into_response_with(status)
    }
}

impl AppError {
    /// The problem+json body of this error, as REST sends it and MCP tools return it. An
    /// internal error is logged here, with its cause chain, and leaves as a bare 500.
    pub fn into_problem(self) -> Problem {
        let mut problem = Problem::new(self.status(), self.to_string());
        match self {
            AppError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
            }
            AppError::AlreadyExists {
                current_version, ..
            } => problem.current_version = Some(Some(current_version)),
            AppError::MergeConflict {
                current_version,
                conflicts,
                ..
            } => {
                problem.current_version = Some(Some(current_version));
                problem.conflicts = Some(conflicts);
            }
            AppError::PreconditionFailed {
                current_version, ..
            } => problem.current_version = Some(current_version),
            AppError::TooLarge { limit, actual } | AppError::TooManyValues { limit, actual } => {
                problem.limit = Some(limit);
                problem.actual = Some(actual);
            }
            AppError::BadRequest(_)
            | AppError::Unauthorized(_)
            | AppError::Forbidden(_)
            | AppError::BodyTooLarge(_)
            | AppError::NotFound(_)
            | AppError::Gone(_)
            | AppError::UnsupportedMediaType(_)
            | AppError::Unprocessable(_)
            | AppError::Unavailable(_) => {}
        }
        problem
    }
}
