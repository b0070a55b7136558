//! Extractors whose rejections are problem+json, and the conditional-request headers.

use axum::extract::FromRequestParts;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderMap, HeaderValue, header};

pub use super::body::{Json, JsonBytes};
use crate::error::AppError;
use crate::service::{IfMatch, Preconditions};

/// `axum::extract::Query`, rejecting with 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path`, rejecting with 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct Path<T>(pub T);

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        AppError::BadRequest(format!("malformed query: {}", rejection.body_text()))
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        AppError::BadRequest(format!("malformed path: {}", rejection.body_text()))
    }
}

/// The strong entity tag of a version: `"3"`.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are valid")
}

/// Parses `If-Match` and `If-None-Match` of a write.
pub fn preconditions(headers: &HeaderMap) -> Result<Preconditions, AppError> {
    let if_match = match header_str(headers, header::IF_MATCH)? {
        None => None,
        Some(raw) => Some(parse_if_match(raw)?),
    };
    let create_only = match header_str(headers, header::IF_NONE_MATCH)? {
        None => false,
        Some("*") => true,
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "If-None-Match on a write must be `*` (create only), not {other:?}"
            )));
        }
    };
    Ok(Preconditions {
        if_match,
        create_only,
    })
}

fn parse_if_match(raw: &str) -> Result<IfMatch, AppError> {
    let raw = raw.trim();
    if raw == "*" {
        return Ok(IfMatch::Any);
    }
    let bad = || {
        AppError::BadRequest(format!(
            "If-Match must be `*` or one version as a strong entity tag, like \"3\"; got {raw:?}"
        ))
    };
    let tag = raw
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(raw);
    tag.parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .map(IfMatch::Version)
        .ok_or_else(bad)
}

/// The `If-None-Match` header of a read, without copying the rest of the headers.
pub struct IfNoneMatch(pub Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(header::IF_NONE_MATCH).cloned()))
    }
}

/// Whether a GET's `If-None-Match` matches `version` (weak comparison, lists, `*`).
pub fn if_none_match_hits(header: Option<&HeaderValue>, version: i64) -> bool {
    let Some(raw) = header.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let wanted = version.to_string();
    raw.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || tag
                .trim_start_matches("W/")
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                == Some(wanted.as_str())
    })
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<&str>, AppError> {
    headers
        .get(&name)
        .map(|v| {
            v.to_str()
                .map_err(|_| AppError::BadRequest(format!("{name} is not valid ASCII")))
        })
        .transpose()
}

/// The caller, as the auth layer resolved its key (the system principal when auth is off).
impl<S: Send + Sync> FromRequestParts<S> for crate::domain::Principal {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        crate::auth::principal_of_request(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn if_match_takes_a_quoted_or_bare_version_or_a_star() {
        for (raw, expected) in [
            ("\"3\"", IfMatch::Version(3)),
            ("3", IfMatch::Version(3)),
            ("*", IfMatch::Any),
        ] {
            let parsed = preconditions(&headers(&[(header::IF_MATCH, raw)])).unwrap();
            assert_eq!(parsed.if_match, Some(expected), "{raw}");
        }
    }

    #[test]
    fn a_malformed_if_match_is_a_bad_request() {
        for raw in ["W/\"3\"", "\"x\"", "\"0\"", "\"1\", \"2\""] {
            assert!(
                matches!(
                    preconditions(&headers(&[(header::IF_MATCH, raw)])),
                    Err(AppError::BadRequest(_))
                ),
                "{raw}"
            );
        }
    }

    #[test]
    fn if_none_match_matches_weakly_and_in_lists() {
        let hits = |raw: &str| if_none_match_hits(Some(&HeaderValue::from_str(raw).unwrap()), 3);
        assert!(hits("\"3\""));
        assert!(hits("W/\"3\""));
        assert!(hits("\"1\", \"3\""));
        assert!(hits("*"));
        assert!(!hits("\"2\""));
        assert!(!if_none_match_hits(None, 3));
    }
}
