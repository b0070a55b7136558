//! MCP: contextd for agents that speak the Model Context Protocol, at `/mcp` on the REST port.
//!
//! Like `api/`, a face over `service/` and nothing more: tools parse with the REST types and
//! call the same service methods, resources read through the same cache, and subscriptions
//! hear the store's commit signal. No rule lives here.
//!
//! The transport is rmcp's Streamable HTTP service. Revision 2026-07-28 is served statelessly
//! (`server/discover`, per-request metadata, `subscriptions/listen` as a long POST); the 2025
//! revisions open a session with `initialize` and subscribe with `resources/subscribe`, their
//! notifications going out on the session's GET stream. Sessions are bounded in number
//! (`mcp.max_sessions`, then 503) and idle time (`mcp.session_idle_seconds`), and all of them
//! end when the server shuts down.

mod limits;
pub mod subscriptions;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CacheScope, Implementation, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, tool_handler};
use tokio_util::sync::CancellationToken;

use self::subscriptions::{Registration, Subscriptions, parse_uri, uri};
use crate::config::Settings;
use crate::domain::{PageLimit, Principal, Role};
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::service::admit;
use crate::service::{ContextService, SearchService};
use crate::store::ListFilter;

/// Resources per `resources/list` page.
const RESOURCE_PAGE: PageLimit = PageLimit::DEFAULT;

/// The revisions served: 2026-07-28 without a handshake, the 2025 ones through `initialize`.
const PROTOCOL_VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2025_03_26,
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2026_07_28,
];

const INSTRUCTIONS: &str = "contextd keeps contexts: versioned JSON documents shared by agents. \
    Read one with get_context, write with put_context (pass the version you read as \
    expected_version to avoid overwriting someone else's change), browse with list_contexts and \
    context_history, combine with merge_contexts, and find by embedding with search_contexts. \
    Every context is also the resource context://{context_id}; subscribe to hear of each change.";

/// The services MCP's tools and resources call: the same ones as REST's handlers.
#[derive(Clone)]
pub struct Services {
    pub contexts: Arc<ContextService>,
    pub search: Arc<SearchService>,
    pub metrics: Arc<Metrics>,
}

/// What every MCP request shares.
struct Shared {
    state: Services,
    subscriptions: Arc<Subscriptions>,
    tool_router: ToolRouter<McpServer>,
}

/// The MCP handler. rmcp makes one per 2025 session, and one per request on 2026-07-28.
#[derive(Clone)]
pub struct McpServer {
    shared: Arc<Shared>,
    /// This session's `resources/subscribe`s (2025 revisions), fed by their own task.
    session: Arc<tokio::sync::Mutex<Option<SessionSubscriptions>>>,
}

/// A 2025 session's subscriptions and the task that forwards them; both end with the session.
struct SessionSubscriptions {
    registration: Arc<Registration>,
    forwarder: tokio::task::JoinHandle<()>,
}

impl Drop for SessionSubscriptions {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl McpServer {
    fn state(&self) -> &Services {
        &self.shared.state
    }
}

/// The caller of an MCP request: the principal the auth layer put on its HTTP request.
pub(crate) fn caller(parts: &Parts) -> Result<Principal, AppError> {
    crate::auth::principal_of_request(parts)
}

/// The caller of a request whose context carries its HTTP parts.
fn caller_of(context: &RequestContext<RoleServer>) -> Result<Principal, McpError> {
    context
        .extensions
        .get::<Parts>()
        .ok_or_else(|| AppError::Unauthorized("no HTTP request behind this call".into()))
        .and_then(caller)
        .map_err(|e| protocol_error(e, "context://"))
}

/// A service error as MCP's protocol error, for the methods that have no tool result to
/// carry a problem (resources).
fn protocol_error(e: impl Into<AppError>, uri: &str) -> McpError {
    let e: AppError = e.into();
    let status = e.status();
    let problem = e.into_problem();
    let data = serde_json::to_value(&problem).ok();
    match status {
        StatusCode::NOT_FOUND => McpError::resource_not_found(problem.detail, data),
        s if s.is_client_error() => McpError::invalid_params(problem.detail, data),
        _ => McpError::internal_error(format!("reading {uri}: {}", problem.detail), data),
    }
}

#[tool_handler(router = self.shared.tool_router)]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new("contextd", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, McpError> {
        let router = &self.shared.tool_router;
        // The label is a tool of this server or `unknown`: bounded, whatever callers send.
        let tool = if router.has_route(&request.name) {
            request.name.to_string()
        } else {
            "unknown".to_owned()
        };
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        let result = router.call(call).await;
        let outcome = match &result {
            Ok(rmcp::model::CallToolResponse::Complete(done)) if done.is_error == Some(true) => {
                "error"
            }
            Ok(_) => "ok",
            Err(_) => "invalid",
        };
        self.state().metrics.observe_mcp_tool_call(&tool, outcome);
        result
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(PROTOCOL_VERSIONS)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let who = caller_of(&context)?;
        let cursor = request.and_then(|r| r.cursor);
        let page = self
            .state()
            .contexts
            .list(
                &who,
                &ListFilter::default(),
                cursor.as_deref(),
                RESOURCE_PAGE,
            )
            .await
            .map_err(|e| protocol_error(e, "context://"))?;
        let resources = page
            .items
            .into_iter()
            .map(|summary| {
                Resource::new(uri(&summary.id), summary.id.as_str())
                    .with_mime_type("application/json")
                    .with_description(format!(
                        "version {}, from {}, updated {}",
                        summary.version,
                        summary.source.as_str(),
                        summary.updated_at.to_rfc3339()
                    ))
            })
            .collect();
        let mut result = ListResourcesResult::with_all_items(resources)
            .with_ttl_ms(0)
            .with_cache_scope(CacheScope::Private);
        result.next_cursor = page.next_cursor;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let template = ResourceTemplate::new("context://{context_id}", "context")
            .with_title("A context")
            .with_description("A context's current data, as a JSON object")
            .with_mime_type("application/json");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template])
            .with_ttl_ms(0)
            .with_cache_scope(CacheScope::Public))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let who = caller_of(&context)?;
        let uri = request.uri;
        let Some(id) = parse_uri(&uri) else {
            return Err(McpError::resource_not_found(
                format!("{uri:?} is not a context://{{context_id}} URI"),
                None,
            ));
        };
        let (context, _) = self
            .state()
            .contexts
            .get(&who, &id)
            .await
            .map_err(|e| protocol_error(e, &uri))?;
        let text = serde_json::to_string(&context.content.data).expect("JSON objects serialize");
        let contents = ResourceContents::text(text, uri).with_mime_type("application/json");
        Ok(ReadResourceResult::new(vec![contents])
            .with_ttl_ms(0)
            .with_cache_scope(CacheScope::Private)
            .into())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let uris: Vec<String> = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| parse_uri(uri).is_some())
            .cloned()
            .collect();
        Some(
            SubscriptionFilter::builder()
                .resource_subscriptions(uris)
                .build(),
        )
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let who = caller_of(context.request_context())?;
        admit(&who, Role::Read, None).map_err(|e| protocol_error(e, "context://"))?;
        let registration = self.shared.subscriptions.register();
        // Contexts outside the caller's prefix are acknowledged like any other (saying no
        // would tell they exist) but never heard of.
        for id in context
            .accepted()
            .resource_subscriptions
            .iter()
            .flatten()
            .filter_map(|uri| parse_uri(uri))
            .filter(|id| who.sees(id))
        {
            registration.add(id);
        }
        let sink = context.sink().clone();
        subscriptions::forward(&registration, context.cancelled(), |uri| {
            let sink = sink.clone();
            async move { sink.notify_resource_updated(uri).await.is_ok() }
        })
        .await;
        Ok(())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let Some(id) = parse_uri(&request.uri) else {
            return Err(McpError::invalid_params(
                format!("{:?} is not a context://{{context_id}} URI", request.uri),
                None,
            ));
        };
        let who = caller_of(&context)?;
        admit(&who, Role::Read, Some(&id)).map_err(|e| protocol_error(e, &request.uri))?;
        let mut session = self.session.lock().await;
        let session = session.get_or_insert_with(|| {
            let registration = Arc::new(self.shared.subscriptions.register());
            let peer = context.peer.clone();
            let forwarder = tokio::spawn({
                let registration = registration.clone();
                async move {
                    subscriptions::forward(&registration, std::future::pending(), |uri| {
                        let peer = peer.clone();
                        async move {
                            peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                                .await
                                .is_ok()
                        }
                    })
                    .await;
                }
            });
            SessionSubscriptions {
                registration,
                forwarder,
            }
        });
        session.registration.add(id);
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if let (Some(id), Some(session)) = (parse_uri(&request.uri), &*self.session.lock().await) {
            session.registration.remove(&id);
        }
        Ok(())
    }
}

/// The `Host` names `/mcp` answers: `mcp.allowed_hosts`, else the same as every other route
/// (`server.allowed_hosts`, by default loopback names on a loopback bind); empty turns rmcp's
/// check off. rmcp takes IPv6 addresses without brackets.
fn allowed_hosts(settings: &Settings) -> Vec<String> {
    let hosts = if settings.mcp.allowed_hosts.is_empty() {
        settings.effective_hosts()
    } else {
        settings.mcp.allowed_hosts.clone()
    };
    hosts
        .into_iter()
        .map(
            |h| match h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(v6) => v6.to_owned(),
                None => h,
            },
        )
        .collect()
}

/// The MCP endpoint, for the application router to nest at `/mcp`. `shutdown` ends every
/// session and stream; cancel it when the server starts shutting down.
pub fn router(
    state: Services,
    subscriptions: Arc<Subscriptions>,
    settings: &Settings,
    shutdown: CancellationToken,
) -> axum::Router {
    let metrics = state.metrics.clone();
    let shared = Arc::new(Shared {
        state,
        subscriptions,
        tool_router: McpServer::tool_router(),
    });
    let mut sessions = LocalSessionManager::default();
    let mut session_config = SessionConfig::default();
    session_config.keep_alive = Some(Duration::from_secs(settings.mcp.session_idle_seconds));
    sessions.session_config = session_config;
    let sessions = Arc::new(sessions);
    metrics.know_mcp_tools(
        shared
            .tool_router
            .list_all()
            .iter()
            .map(|tool| tool.name.as_ref()),
    );
    let counted = sessions.clone();
    metrics.count_mcp_sessions_with(move || counted.sessions.try_read().ok().map(|s| s.len()));
    // Room for the largest context pretty-printed, plus an embedding, as on REST.
    let body_limit = settings.max_body_bytes();
    // A request answered by one message (every tool call) gets it as plain JSON; a stream
    // (`subscriptions/listen`) stays server-sent events.
    let config = StreamableHttpServerConfig::default()
        .with_json_response(true)
        .with_allowed_hosts(allowed_hosts(settings))
        .with_max_request_body_bytes(body_limit)
        .with_cancellation_token(shutdown);
    let service = StreamableHttpService::new(
        move || {
            Ok(McpServer {
                shared: shared.clone(),
                session: Arc::default(),
            })
        },
        sessions.clone(),
        config,
    );
    let limits = Arc::new(limits::McpLimits::new(
        settings, sessions, body_limit, metrics,
    ));
    axum::Router::new()
        .fallback_service(service)
        .layer(middleware::from_fn_with_state(limits, limits::enforce))
}
