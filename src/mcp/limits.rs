//! The bounds of `/mcp`, enforced in front of rmcp whatever the framing of a request.
//!
//! - Sessions: an `initialize` (which opens one) is refused with 503 while
//!   `mcp.max_sessions` are open. Every POST body is read whole here first (rmcp reads it
//!   whole anyway), so an `initialize` sent chunked or large is seen like any other, and
//!   initializes take turns, so two at once cannot both take the last place.
//! - Values: a POST body with more than `limits.max_json_nodes` values is refused with 413
//!   before rmcp builds its tree of it.
//! - Streams: a GET stream (a 2025 session's notifications) counts against
//!   `mcp.max_streams_per_session` and, like every long-lived answer (a 2026-07-28
//!   `subscriptions/listen`), against `mcp.max_streams` in total, until its body ends.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde::Deserialize;

use crate::config::Settings;
use crate::domain::count_values;
use crate::error::AppError;
use crate::metrics::Metrics;

/// The session and stream bounds, shared by every request to `/mcp`.
pub struct McpLimits {
    sessions: Arc<LocalSessionManager>,
    max_sessions: usize,
    /// Held by an `initialize` from its check to its answer: sessions are opened one at a time.
    opening: tokio::sync::Mutex<()>,
    max_json_nodes: usize,
    max_body_bytes: usize,
    streams: Mutex<Streams>,
    max_per_session: usize,
    max_total: usize,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Streams {
    total: usize,
    per_session: HashMap<String, usize>,
}

/// What a JSON-RPC message names, and nothing else of it.
#[derive(Deserialize)]
struct Envelope {
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Messages {
    One(Envelope),
    Many(Vec<Envelope>),
}

impl Messages {
    fn names(&self, method: &str) -> bool {
        match self {
            Messages::One(m) => m.method.as_deref() == Some(method),
            Messages::Many(all) => all.iter().any(|m| m.method.as_deref() == Some(method)),
        }
    }
}

/// A stream's place, given back when its body ends or is dropped.
struct StreamSlot {
    limits: Arc<McpLimits>,
    session: Option<String>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.limits.streams.lock().expect("never poisoned");
        streams.total -= 1;
        if let Some(session) = &self.session
            && let Some(count) = streams.per_session.get_mut(session)
        {
            *count -= 1;
            if *count == 0 {
                streams.per_session.remove(session);
            }
        }
    }
}

impl McpLimits {
    pub fn new(
        settings: &Settings,
        sessions: Arc<LocalSessionManager>,
        max_body_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sessions,
            max_sessions: settings.mcp.max_sessions,
            opening: tokio::sync::Mutex::new(()),
            max_json_nodes: settings.limits.max_json_nodes,
            max_body_bytes,
            streams: Mutex::default(),
            max_per_session: settings.mcp.max_streams_per_session,
            max_total: settings.mcp.max_streams,
            metrics,
        }
    }

    /// Sessions open now.
    pub async fn open_sessions(&self) -> usize {
        self.sessions.sessions.read().await.len()
    }

    /// A place for one more stream (of `session`, if any), or why there is none.
    fn take_stream(self: &Arc<Self>, session: Option<&str>) -> Result<StreamSlot, AppError> {
        let mut streams = self.streams.lock().expect("never poisoned");
        let of_session = session.map_or(0, |s| streams.per_session.get(s).copied().unwrap_or(0));
        let refusal = if streams.total >= self.max_total {
            Some(format!(
                "{} MCP streams are open, the most this server keeps (mcp.max_streams)",
                self.max_total
            ))
        } else if session.is_some() && of_session >= self.max_per_session {
            Some(format!(
                "this session has {} streams open, the most one may have \
                 (mcp.max_streams_per_session)",
                self.max_per_session
            ))
        } else {
            None
        };
        if let Some(detail) = refusal {
            self.metrics.observe_overload("mcp_streams");
            return Err(AppError::Unavailable(format!("{detail}; retry shortly")));
        }
        streams.total += 1;
        if let Some(session) = session {
            *streams.per_session.entry(session.to_owned()).or_default() += 1;
        }
        Ok(StreamSlot {
            limits: self.clone(),
            session: session.map(str::to_owned),
        })
    }
}

/// The layer in front of rmcp.
pub async fn enforce(
    State(limits): State<Arc<McpLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let session = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match *request.method() {
        Method::GET => {
            let slot = match limits.take_stream(session.as_deref()) {
                Ok(slot) => slot,
                Err(refusal) => return refusal.into_response(),
            };
            hold_while_streaming(next.run(request).await, slot)
        }
        Method::POST => {
            let (parts, body) = request.into_parts();
            let bytes = match to_bytes(body, limits.max_body_bytes).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    return AppError::BadRequest(format!("cannot read the request body: {e}"))
                        .into_response();
                }
            };
            let actual = crate::cpu::run_sized(bytes.len(), {
                let bytes = bytes.clone();
                move || count_values(&bytes)
            })
            .await;
            if actual > limits.max_json_nodes {
                return AppError::TooManyValues {
                    limit: limits.max_json_nodes,
                    actual,
                }
                .into_response();
            }
            let messages = serde_json::from_slice::<Messages>(&bytes).ok();
            let names = |method| messages.as_ref().is_some_and(|m| m.names(method));
            let request = Request::from_parts(parts, Body::from(bytes));
            if session.is_none() && names("initialize") {
                let _turn = limits.opening.lock().await;
                if limits.open_sessions().await >= limits.max_sessions {
                    return AppError::Unavailable(format!(
                        "{} MCP sessions are open, the most this server keeps \
                         (mcp.max_sessions); retry shortly",
                        limits.max_sessions
                    ))
                    .into_response();
                }
                return next.run(request).await;
            }
            if names("subscriptions/listen") {
                let slot = match limits.take_stream(session.as_deref()) {
                    Ok(slot) => slot,
                    Err(refusal) => return refusal.into_response(),
                };
                return hold_while_streaming(next.run(request).await, slot);
            }
            next.run(request).await
        }
        _ => next.run(request).await,
    }
}

/// Keeps `slot` while `response` streams (server-sent events); gives it back at once else.
fn hold_while_streaming(response: Response, slot: StreamSlot) -> Response {
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streaming {
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(Slotted { body, _slot: slot }))
}

/// A response body holding its stream's place.
struct Slotted {
    body: Body,
    _slot: StreamSlot,
}

impl http_body::Body for Slotted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
