//! Contexts, their versions, and the refusals a write can meet.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ContextId, JsonObject};

/// Which side of the platform wrote a context.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Factory,
    Mcp,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Factory => "factory",
            Source::Mcp => "mcp",
        }
    }

    /// Parses the wire name; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "factory" => Some(Source::Factory),
            "mcp" => Some(Source::Mcp),
            _ => None,
        }
    }
}

/// What made a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeType {
    Create,
    Update,
    Merge,
    Restore,
    Sync,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Create => "create",
            ChangeType::Update => "update",
            ChangeType::Merge => "merge",
            ChangeType::Restore => "restore",
            ChangeType::Sync => "sync",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "create" => Some(ChangeType::Create),
            "update" => Some(ChangeType::Update),
            "merge" => Some(ChangeType::Merge),
            "restore" => Some(ChangeType::Restore),
            "sync" => Some(ChangeType::Sync),
            _ => None,
        }
    }
}

/// What a version holds. Two writes with equal `Content` are the same write: the second makes
/// no new version.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    pub source: Source,
    pub parent_id: Option<ContextId>,
    pub data: JsonObject,
    pub metadata: JsonObject,
    pub embedding: Option<Vec<f32>>,
}

impl Content {
    /// Bytes of `data` + `metadata` as stored: their canonical (compact) JSON text.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + self.metadata.len()
    }
}

/// Where a context's embedding came from.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingSource {
    /// Sent with the write (`embedding`): kept as sent, never replaced by the server's.
    Client,
    /// Made by contextd's embedder from the context's text, after the write committed.
    Server,
}

impl EmbeddingSource {
    /// Who made a version's embedding, from whether the client sent one and whether the
    /// server has made one; the client's wins (the server never embeds such a version).
    pub fn of(client: bool, server: bool) -> Option<Self> {
        match (client, server) {
            (true, _) => Some(EmbeddingSource::Client),
            (false, true) => Some(EmbeddingSource::Server),
            (false, false) => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EmbeddingSource::Client => "client",
            EmbeddingSource::Server => "server",
        }
    }
}

/// The current state of a context.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    pub id: ContextId,
    pub version: i64,
    /// What the version holds; its `embedding` is the client's.
    pub content: Content,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub size_bytes: i64,
    /// The embedding contextd's embedder made of this version's text, when the write carried
    /// none and it has been made. Not part of the version: a later write compares and keeps
    /// only what the client sent.
    pub server_embedding: Option<Vec<f32>>,
}

impl Context {
    /// The embedding search uses: the client's, else the server's.
    pub fn embedding(&self) -> Option<&[f32]> {
        self.content
            .embedding
            .as_deref()
            .or(self.server_embedding.as_deref())
    }

    /// Who made [`Context::embedding`]; `None` when there is none.
    pub fn embedding_source(&self) -> Option<EmbeddingSource> {
        EmbeddingSource::of(
            self.content.embedding.is_some(),
            self.server_embedding.is_some(),
        )
    }
}

/// A context as lists show it: everything but `data` and the embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextSummary {
    pub id: ContextId,
    pub version: i64,
    pub source: Source,
    pub parent_id: Option<ContextId>,
    pub metadata: JsonObject,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub size_bytes: i64,
    /// Who made the current version's embedding; `None` when it has none.
    pub embedding_source: Option<EmbeddingSource>,
}

/// One entry of a context's history, without its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub version: i64,
    pub change_type: ChangeType,
    pub changed_by: Option<String>,
    pub changed_at: DateTime<Utc>,
    pub size_bytes: i64,
}

/// One entry of a context's history with its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRecord {
    pub id: ContextId,
    pub info: VersionInfo,
    pub content: Content,
}

/// A context with all of its kept history, oldest version first: what `contextd export`
/// writes and `contextd import` reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextHistory {
    pub id: ContextId,
    /// The current version; one of `versions`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub versions: Vec<VersionRecord>,
}

impl ContextHistory {
    /// The current version's record.
    pub fn current(&self) -> Option<&VersionRecord> {
        self.versions
            .iter()
            .find(|v| v.info.version == self.version)
    }
}

/// Why the rules turned a write down. The store hands it back untouched; the API maps it to a
/// status code.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The context does not exist.
    NotFound,
    /// The version asked for was pruned by retention.
    Gone { version: i64 },
    /// `If-Match` / `If-None-Match` did not hold.
    PreconditionFailed {
        current_version: Option<i64>,
        reason: String,
    },
    /// A three-way merge found keys changed differently on both sides.
    MergeConflict {
        current_version: i64,
        conflicts: Vec<String>,
    },
    /// A create-only write met an existing context.
    AlreadyExists { current_version: i64 },
    /// A Factory item older than the current version (sync answers `skipped_stale`).
    Stale { current_version: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: serde_json::Value) -> JsonObject {
        JsonObject::from_value(&value).unwrap()
    }

    #[test]
    fn size_is_the_compact_json_length_of_data_plus_metadata() {
        let content = Content {
            source: Source::Mcp,
            parent_id: None,
            data: object(json!({"user": "john"})),
            metadata: object(json!({})),
            embedding: None,
        };
        assert_eq!(
            content.size_bytes(),
            r#"{"user":"john"}"#.len() + "{}".len()
        );
    }

    #[test]
    fn source_and_change_type_round_trip_their_wire_names() {
        for s in [Source::Factory, Source::Mcp] {
            assert_eq!(Source::parse(s.as_str()), Some(s));
        }
        for c in [
            ChangeType::Create,
            ChangeType::Update,
            ChangeType::Merge,
            ChangeType::Restore,
            ChangeType::Sync,
        ] {
            assert_eq!(ChangeType::parse(c.as_str()), Some(c));
        }
        assert_eq!(Source::parse("Factory"), None);
    }
}
