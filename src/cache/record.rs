//! The bytes a context is cached as in L2 (Redis) and L3 (the Postgres cache table): every
//! field of the current version, embedding included, as compact JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{Content, Context, ContextId, JsonObject, Source};
use crate::store::NewVersion;

/// The record as written: borrowed, so encoding copies nothing but the bytes it makes.
#[derive(Serialize)]
struct RecordRef<'a> {
    context_id: &'a str,
    version: i64,
    source: Source,
    parent_id: Option<&'a str>,
    data: &'a JsonObject,
    metadata: &'a JsonObject,
    embedding: Option<&'a [f32]>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    size_bytes: i64,
}

/// The record as read.
#[derive(Deserialize)]
struct Record {
    context_id: String,
    version: i64,
    source: Source,
    parent_id: Option<String>,
    data: JsonObject,
    metadata: JsonObject,
    embedding: Option<Vec<f32>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    size_bytes: i64,
}

pub fn encode(context: &Context) -> Vec<u8> {
    encode_parts(
        &context.id,
        context.version,
        &context.content,
        context.created_at,
        context.updated_at,
    )
}

/// The record of the context a write is about to store.
pub fn encode_new(id: &ContextId, new: &NewVersion) -> Vec<u8> {
    encode_parts(
        id,
        new.version,
        &new.content,
        new.created_at,
        new.updated_at,
    )
}

fn encode_parts(
    id: &ContextId,
    version: i64,
    content: &Content,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
) -> Vec<u8> {
    serde_json::to_vec(&RecordRef {
        context_id: id.as_str(),
        version,
        source: content.source,
        parent_id: content.parent_id.as_ref().map(ContextId::as_str),
        data: &content.data,
        metadata: &content.metadata,
        embedding: content.embedding.as_deref(),
        created_at,
        updated_at,
        size_bytes: content.size_bytes() as i64,
    })
    .expect("a context always serializes")
}

/// `None` for bytes that are not a record (another version's format, corruption): a miss.
pub fn decode(bytes: &[u8]) -> Option<Context> {
    let r: Record = serde_json::from_slice(bytes).ok()?;
    Some(Context {
        id: ContextId::parse(&r.context_id).ok()?,
        version: r.version,
        content: Content {
            source: r.source,
            parent_id: r.parent_id.map(|p| ContextId::parse(&p)).transpose().ok()?,
            data: r.data,
            metadata: r.metadata,
            embedding: r.embedding,
        },
        created_at: r.created_at,
        updated_at: r.updated_at,
        size_bytes: r.size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_context_round_trips_and_garbage_is_none() {
        let now = Utc::now();
        let content = Content {
            source: Source::Factory,
            parent_id: Some(ContextId::parse("p").unwrap()),
            data: JsonObject::from_value(&json!({"a": [1, 2.5, f64::MAX]})).unwrap(),
            metadata: JsonObject::empty(),
            embedding: Some(vec![0.5, -1.0]),
        };
        let context = Context {
            id: ContextId::parse("c").unwrap(),
            version: 7,
            size_bytes: content.size_bytes() as i64,
            content,
            created_at: now,
            updated_at: now,
        };
        assert_eq!(decode(&encode(&context)), Some(context));
        assert_eq!(decode(b"not json"), None);
    }
}
