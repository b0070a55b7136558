//! Factory AI's formats: a context as Factory reads it, and a change of the feed and the
//! webhook.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::JsonObject;
use crate::store::{Change, ChangeOp};

/// A context in Factory AI's format: what the Factory-format read, the change feed and the
/// webhook carry.
#[derive(Debug, Serialize, ToSchema)]
pub struct FactoryContextOut {
    pub id: String,
    #[schema(value_type = Object)]
    pub data: JsonObject,
    #[schema(value_type = Object)]
    pub metadata: JsonObject,
    pub version: i64,
    /// When this version was written.
    pub timestamp: DateTime<Utc>,
}

/// One committed change.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeOut {
    /// Commit order.
    pub seq: i64,
    pub id: String,
    pub version: i64,
    /// `upsert` or `delete`.
    #[schema(example = "upsert")]
    pub op: &'static str,
    /// For an upsert whose version is still kept: that version, in Factory format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<FactoryContextOut>,
}

impl From<Change> for ChangeOut {
    fn from(change: Change) -> Self {
        let id = change.id.as_str().to_owned();
        Self {
            seq: change.seq,
            context: match (change.op, change.content) {
                (ChangeOp::Upsert, Some(content)) => Some(FactoryContextOut {
                    id: id.clone(),
                    data: content.data,
                    metadata: content.metadata,
                    version: change.version,
                    timestamp: content.changed_at,
                }),
                _ => None,
            },
            id,
            version: change.version,
            op: change.op.as_str(),
        }
    }
}
