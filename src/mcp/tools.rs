//! The seven MCP tools: each parses its arguments with the REST API's own types and parsers,
//! calls the one service method the matching REST route calls, and returns the REST response
//! body as `structuredContent` and as JSON text.
//!
//! A refusal (what REST answers with 4xx/5xx) is a tool result with `isError: true` carrying
//! the problem+json, status included. Only arguments that do not fit the input schema (a
//! missing field, a wrong type) are protocol errors; rmcp raises those before a tool runs.

use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::{ErrorData as McpError, tool, tool_router};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use axum::http::request::Parts;
use rmcp::handler::server::tool::Extension;

use super::{McpServer, caller};
use crate::cache::CachedContext;
use crate::domain::{JsonObject, Source};
use crate::error::AppError;
use crate::service::{ConflictStrategy, IfMatch, Preconditions, WriteRequest};
use crate::wire::contexts::{
    ContextIn, ContextPage, VersionPage, list_filter, page_limit, parse_id, render,
};
use crate::wire::merge::MergeIn;
use crate::wire::search::{SearchIn, SearchOut};

/// A tool's arguments, parsed into `T`, whose JSON Schema is the tool's input schema.
///
/// It replaces rmcp's own `Parameters` (the `#[tool]` macro finds it by that name) for one
/// reason: rmcp answers arguments that do not deserialize with an `isError` tool result, and
/// the contract makes them a protocol error (invalid params), keeping `isError` for what the
/// REST API would refuse.
pub struct Parameters<T>(pub T);

impl<T: JsonSchema> JsonSchema for Parameters<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<S, T: DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Parameters<T> {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, McpError> {
        let arguments = context.arguments.take().unwrap_or_default();
        serde_json::from_value(serde_json::Value::Object(arguments))
            .map(Parameters)
            .map_err(|e| {
                McpError::invalid_params(
                    format!("the arguments do not fit the tool's input schema: {e}"),
                    None,
                )
            })
    }
}

/// Arguments of `get_context`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct GetContextArgs {
    /// The context's id (1..=255 of `[A-Za-z0-9._:-]`).
    pub context_id: String,
    /// Read this past version instead of the current one.
    pub version: Option<i64>,
}

/// Arguments of `put_context`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct PutContextArgs {
    /// The context's id (1..=255 of `[A-Za-z0-9._:-]`); created when it does not exist.
    pub context_id: String,
    /// The whole document, a JSON object. It replaces the current data.
    pub data: JsonObject,
    /// A JSON object describing the document; `{}` when absent.
    pub metadata: Option<JsonObject>,
    /// Which side writes it: `mcp` (the default) or `factory`.
    pub source: Option<Source>,
    /// The id of another context this one derives from.
    pub parent_id: Option<String>,
    /// The version you read. When the context has moved on, the write is refused (412) with
    /// `current_version`: read it again and retry.
    pub expected_version: Option<i64>,
    /// An embedding of the document, `vector.dimensions` floats, for `search_contexts`.
    pub embedding: Option<Vec<f64>>,
    /// Who made the change, recorded in the history.
    pub changed_by: Option<String>,
}

/// Arguments of `delete_context`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeleteContextArgs {
    /// The context to delete, with its whole history.
    pub context_id: String,
}

/// Arguments of `list_contexts`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListContextsArgs {
    /// Only contexts from this source.
    pub source: Option<Source>,
    /// Only children of this context.
    pub parent_id: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Arguments of `context_history`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ContextHistoryArgs {
    /// The context whose versions to list, newest first.
    pub context_id: String,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// What `delete_context` returns (REST answers 204 with no body).
#[derive(Debug, Serialize)]
struct Deleted {
    context_id: String,
    deleted: bool,
}

/// The tool result of a context, from the body REST sends for it: rendered once per cached
/// version, so a hot read serializes nothing (it only parses for `structuredContent`).
fn reply_context(result: Result<Arc<CachedContext>, AppError>) -> CallToolResult {
    let context = match result {
        Ok(context) => context,
        Err(e) => return reply::<()>(Err(e)),
    };
    let body = context.rendered(render);
    let structured: serde_json::Value =
        serde_json::from_slice(&body).expect("a rendered context is JSON");
    let text = String::from_utf8(body.to_vec()).expect("a rendered context is UTF-8");
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(structured);
    result
}

/// The tool result of a REST response body, or of a refusal.
fn reply<T: Serialize>(result: Result<T, AppError>) -> CallToolResult {
    match result {
        Ok(body) => CallToolResult::structured(
            serde_json::to_value(body).expect("response bodies always serialize"),
        ),
        Err(e) => CallToolResult::structured_error(
            serde_json::to_value(e.into_problem()).expect("a problem always serializes"),
        ),
    }
}

#[tool_router(router = tool_router, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Read a context: its data, metadata, source, parent and version. Give \
                       `version` to read a past version. Answers from the cache, like \
                       GET /contexts/{id}.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_context(
        &self,
        Parameters(args): Parameters<GetContextArgs>,
        Extension(parts): Extension<Parts>,
    ) -> CallToolResult {
        let contexts = &self.state().contexts;
        let result = async {
            let who = caller(&parts)?;
            let id = parse_id(&args.context_id)?;
            let (context, _) = match args.version {
                None => contexts.get(&who, &id).await?,
                Some(version) => contexts.get_at(&who, &id, version).await?,
            };
            Ok(context)
        };
        reply_context(result.await)
    }

    #[tool(
        description = "Create or replace a context's data (a JSON object). Each change makes a \
                       new version; writing what is already there changes nothing. Pass the \
                       `version` you read as `expected_version` to refuse the write (status \
                       412) if someone changed it since. Returns the context as stored.",
        annotations(
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn put_context(
        &self,
        Parameters(args): Parameters<PutContextArgs>,
        Extension(parts): Extension<Parts>,
    ) -> CallToolResult {
        let contexts = &self.state().contexts;
        let result = async {
            let who = caller(&parts)?;
            let id = parse_id(&args.context_id)?;
            let body = ContextIn {
                context_id: None,
                data: args.data,
                source: args.source.unwrap_or(Source::Mcp),
                parent_id: args.parent_id,
                metadata: args.metadata,
                embedding: args.embedding,
                changed_by: args.changed_by,
            };
            let (_, content, changed_by) = body.parse()?;
            let written = contexts
                .put(
                    &who,
                    &id,
                    WriteRequest {
                        content,
                        changed_by,
                        preconditions: Preconditions {
                            if_match: args.expected_version.map(IfMatch::Version),
                            create_only: false,
                        },
                        on_conflict: ConflictStrategy::Reject,
                    },
                )
                .await?;
            Ok(written.context)
        };
        reply_context(result.await)
    }

    #[tool(
        description = "Delete a context with its whole history. It cannot be undone.",
        annotations(
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn delete_context(
        &self,
        Parameters(args): Parameters<DeleteContextArgs>,
        Extension(parts): Extension<Parts>,
    ) -> CallToolResult {
        let result = async {
            let who = caller(&parts)?;
            let id = parse_id(&args.context_id)?;
            self.state().contexts.delete(&who, &id, None).await?;
            Ok(Deleted {
                context_id: id.as_str().to_owned(),
                deleted: true,
            })
        };
        reply(result.await)
    }

    #[tool(
        description = "List contexts in id order, without their data, optionally only one \
                       source's or one parent's children. Page with `cursor` = the \
                       `next_cursor` of the previous page (null on the last).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_contexts(
        &self,
        Parameters(args): Parameters<ListContextsArgs>,
        Extension(parts): Extension<Parts>,
    ) -> CallToolResult {
        let result = async {
            let who = caller(&parts)?;
            let limit = page_limit(args.limit)?;
            let filter = list_filter(args.source, args.parent_id.as_deref())?;
            let page = self
                .state()
                .contexts
                .list(&who, &filter, args.cursor.as_deref(), limit)
                .await?;
            Ok(ContextPage::from(page))
        };
        reply(result.await)
    }

    #[tool(
        description = "A context's versions, newest first: version, change_type (create, \
                       update, merge, restore, sync), changed_by, changed_at, size. Read one \
                       with get_context and `version`.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn context_history(
        &self,
        Parameters(args): Parameters<ContextHistoryArgs>,
        Extension(parts): Extension<Parts>,
    ) -> CallToolResult {
        let result = async {
            let who = caller(&parts)?;
            let id = parse_id(&args.context_id)?;
            let limit = page_limit(args.limit)?;
            let page = self
                .state()
                .contexts
                .versions(&who, &id, args.cursor.as_deref(), limit)
                .await?;
            Ok(VersionPage::from(page))
        };
        reply(result.await)
    }

    #[tool(
        description = "Merge 2 to 100 contexts into one, by strategy: `latest` (the most \
                       recently updated), `union` (all keys, later ids win), `intersection` \
                       (keys all share, first's values) or `deep` (union, merging nested \
                       objects). Writes `target_id` (new, or its next version) or a new \
                       `merged_<hex>` context, with the lineage in metadata.merged_from.",
        annotations(destructive_hint = false, open_world_hint = false)
    )]
    async fn merge_contexts(
        &self,
        Parameters(args): Parameters<MergeIn>,
        Extension(parts): Extension<Parts>,
    ) -> CallToolResult {
        let result = async {
            let who = caller(&parts)?;
            let written = args.merge(&who, &self.state().contexts).await?;
            Ok(written.context)
        };
        reply_context(result.await)
    }

    #[tool(
        description = "Find contexts by words (`query`), by meaning (`vector`, or `query` \
                       embedded by the server when it has an embedder), or both, highest score \
                       first; each result's `matched` says which. `mode`: `keyword` (BM25), \
                       `vector` (cosine; results below `threshold`, default 0.7, left out) or \
                       `hybrid` (both fused; `alpha` 0..1 weighs the vector side, default 0.5). \
                       Default: `vector` with only `vector`, else `hybrid` with an embedder, \
                       else `keyword`. Filter by source or parent_id.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn search_contexts(
        &self,
        Parameters(args): Parameters<SearchIn>,
        Extension(parts): Extension<Parts>,
    ) -> CallToolResult {
        let result = async {
            let who = caller(&parts)?;
            let (request, include_data) = args.into_request()?;
            let hits = self.state().search.search(&who, request).await?;
            Ok(SearchOut::new(hits, include_data))
        };
        reply(result.await)
    }
}
