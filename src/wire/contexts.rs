//! A context on the wire: what writes take, what reads answer, and the pages of lists and
//! history; with the parsers REST and MCP share (ids, page sizes).

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{
    ChangeType, Content, Context, ContextId, ContextSummary, EmbeddingSource, JsonObject,
    PageLimit, Source, VersionInfo, VersionRecord,
};
use crate::error::AppError;
use crate::service::Page;
use crate::store::ListFilter;

/// A context as written by `PUT /contexts/{id}` and `POST /contexts`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "data": {"user": "john", "task": "triage"},
    "source": "factory",
    "metadata": {"team": "support"},
    "changed_by": "swagger-ui"
}))]
pub struct ContextIn {
    /// `POST` only: the id to create (1..=255 of `[A-Za-z0-9._:-]`); generated when absent.
    /// On `PUT` it may be given only if it equals the id in the path.
    #[schema(example = "ctx_123", pattern = r"^[A-Za-z0-9._:-]{1,255}$")]
    pub context_id: Option<String>,
    /// The document: any JSON object.
    #[schema(value_type = Object, example = json!({"user": "john"}))]
    pub data: JsonObject,
    /// Which side wrote it.
    pub source: Source,
    /// The id of another context this one derives from.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,255}$")]
    pub parent_id: Option<String>,
    /// Any JSON object; `{}` when absent.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<JsonObject>,
    /// `vector.dimensions` finite floats (32-bit), not all zero.
    #[schema(value_type = Option<Vec<f32>>, min_items = 1)]
    pub embedding: Option<Vec<f64>>,
    /// Who made the change, recorded in the history.
    #[schema(max_length = 255)]
    pub changed_by: Option<String>,
}

impl ContextIn {
    /// Parses the body into the id it names and the content it carries; 422 names the field.
    pub(crate) fn parse(self) -> Result<(Option<ContextId>, Content, Option<String>), AppError> {
        let invalid = AppError::Unprocessable;
        let id = self
            .context_id
            .map(|raw| ContextId::parse(&raw).map_err(|e| invalid(format!("context_id: {e}"))))
            .transpose()?;
        let (data, metadata) = (self.data, self.metadata.unwrap_or_default());
        let parent_id = self
            .parent_id
            .map(|raw| ContextId::parse(&raw).map_err(|e| invalid(format!("parent_id: {e}"))))
            .transpose()?;
        // Parsed as f64 so that a value beyond f32 is named here (422), not a syntax error.
        let embedding = self
            .embedding
            .map(|values| {
                crate::domain::embedding::narrow(&values)
                    .map_err(|e| invalid(e.describe("embedding")))
            })
            .transpose()?;
        let content = Content {
            source: self.source,
            parent_id,
            data,
            metadata,
            embedding,
        };
        Ok((id, content, self.changed_by))
    }
}

/// A context, as every read and write returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContextOut<'a> {
    #[schema(value_type = String, example = "ctx_123")]
    pub context_id: &'a str,
    /// 1 on create, +1 per change.
    pub version: i64,
    pub source: Source,
    #[schema(value_type = Option<String>)]
    pub parent_id: Option<&'a str>,
    /// The document.
    #[schema(value_type = Object)]
    pub data: &'a JsonObject,
    #[schema(value_type = Object)]
    pub metadata: &'a JsonObject,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bytes of compact JSON `data` + `metadata`.
    pub size_bytes: i64,
    pub has_embedding: bool,
    /// `client` (sent with a write), `server` (made by contextd's embedder from the text,
    /// after the write), or null: no embedding (yet).
    pub embedding_source: Option<EmbeddingSource>,
    /// Only with `?include=embedding`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<f32>>)]
    pub embedding: Option<&'a [f32]>,
}

impl<'a> ContextOut<'a> {
    pub(crate) fn new(context: &'a Context, include_embedding: bool) -> Self {
        Self {
            context_id: context.id.as_str(),
            version: context.version,
            source: context.content.source,
            parent_id: context.content.parent_id.as_ref().map(ContextId::as_str),
            data: &context.content.data,
            metadata: &context.content.metadata,
            created_at: context.created_at,
            updated_at: context.updated_at,
            size_bytes: context.size_bytes,
            has_embedding: context.embedding().is_some(),
            embedding_source: context.embedding_source(),
            embedding: context.embedding().filter(|_| include_embedding),
        }
    }
}

/// A context in a list: everything but `data` (and the embedding).
#[derive(Debug, Serialize, ToSchema)]
pub struct ContextSummaryOut {
    pub context_id: String,
    pub version: i64,
    pub source: Source,
    pub parent_id: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: JsonObject,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub size_bytes: i64,
    pub has_embedding: bool,
    /// As on the context: `client`, `server` or null.
    pub embedding_source: Option<EmbeddingSource>,
}

impl From<ContextSummary> for ContextSummaryOut {
    fn from(s: ContextSummary) -> Self {
        Self {
            context_id: s.id.as_str().to_owned(),
            version: s.version,
            source: s.source,
            parent_id: s.parent_id.map(|p| p.as_str().to_owned()),
            metadata: s.metadata,
            created_at: s.created_at,
            updated_at: s.updated_at,
            size_bytes: s.size_bytes,
            has_embedding: s.embedding_source.is_some(),
            embedding_source: s.embedding_source,
        }
    }
}

/// One page of contexts.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContextPage {
    pub items: Vec<ContextSummaryOut>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl From<Page<ContextSummary>> for ContextPage {
    fn from(page: Page<ContextSummary>) -> Self {
        Self {
            items: page.items.into_iter().map(Into::into).collect(),
            next_cursor: page.next_cursor,
        }
    }
}

/// One entry of a context's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfoOut {
    pub version: i64,
    pub change_type: ChangeType,
    pub changed_by: Option<String>,
    pub changed_at: DateTime<Utc>,
    pub size_bytes: i64,
}

impl From<VersionInfo> for VersionInfoOut {
    fn from(v: VersionInfo) -> Self {
        Self {
            version: v.version,
            change_type: v.change_type,
            changed_by: v.changed_by,
            changed_at: v.changed_at,
            size_bytes: v.size_bytes,
        }
    }
}

/// One page of history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionPage {
    pub items: Vec<VersionInfoOut>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl From<Page<VersionInfo>> for VersionPage {
    fn from(page: Page<VersionInfo>) -> Self {
        Self {
            items: page.items.into_iter().map(Into::into).collect(),
            next_cursor: page.next_cursor,
        }
    }
}

/// One version with its payload.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionOut {
    pub context_id: String,
    pub version: i64,
    #[schema(value_type = Object)]
    pub data: JsonObject,
    #[schema(value_type = Object)]
    pub metadata: JsonObject,
    pub change_type: ChangeType,
    pub changed_by: Option<String>,
    pub changed_at: DateTime<Utc>,
}

impl From<VersionRecord> for VersionOut {
    fn from(r: VersionRecord) -> Self {
        Self {
            context_id: r.id.as_str().to_owned(),
            version: r.info.version,
            data: r.content.data,
            metadata: r.content.metadata,
            change_type: r.info.change_type,
            changed_by: r.info.changed_by,
            changed_at: r.info.changed_at,
        }
    }
}

pub fn parse_id(raw: &str) -> Result<ContextId, AppError> {
    ContextId::parse(raw).map_err(|e| AppError::Unprocessable(e.to_string()))
}

/// A page size from a query string: 1..=1000, 100 when absent (422 otherwise).
pub fn parse_limit(raw: Option<&str>) -> Result<PageLimit, AppError> {
    PageLimit::parse_text(raw).map_err(|e| AppError::Unprocessable(e.to_string()))
}

/// A page size from a typed argument (MCP): 1..=1000, 100 when absent (422 otherwise).
pub fn page_limit(limit: Option<i64>) -> Result<PageLimit, AppError> {
    PageLimit::parse(limit).map_err(|e| AppError::Unprocessable(e.to_string()))
}

/// What a context list is narrowed to, as the caller asked: `parent_id` parsed (422 naming
/// it). REST and MCP alike.
pub fn list_filter(
    source: Option<Source>,
    parent_id: Option<&str>,
) -> Result<ListFilter, AppError> {
    let parent_id = parent_id
        .map(|raw| {
            ContextId::parse(raw).map_err(|e| AppError::Unprocessable(format!("parent_id: {e}")))
        })
        .transpose()?;
    Ok(ListFilter { source, parent_id })
}

/// The JSON body of a context, without its embedding.
pub fn render(context: &Context) -> Bytes {
    serde_json::to_vec(&ContextOut::new(context, false))
        .expect("a context always serializes")
        .into()
}
