//! The bytes a context is cached as in L2 (Redis) and L3 (the Postgres cache table): every
//! field of the current version, embedding included, as compact JSON. L3 keeps the record
//! deflated ([`compress`]): the table is a second copy of every current version, and text
//! compresses to about half.

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

/// The most bytes [`decompress`] inflates a record to: far above any record of a context within
/// the size limit, so only a corrupt entry reaches it.
const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

/// A record as L3 stores it: raw deflate at level 3, which on JSON of prose and of
/// agent notes keeps about half the bytes (level 1 keeps about 70%) for some tens of
/// microseconds per kilobyte; levels above 3 gain under 1%.
pub fn compress(record: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(record.len() / 2 + 16),
        flate2::Compression::new(3),
    );
    encoder
        .write_all(record)
        .and_then(|()| encoder.finish())
        .expect("deflating into memory cannot fail")
}

/// The record [`compress`] made; `None` for bytes that do not inflate (corruption) or inflate
/// beyond [`MAX_RECORD_BYTES`]: a miss.
pub fn decompress(packed: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut record = Vec::with_capacity(packed.len() * 3);
    flate2::read::DeflateDecoder::new(packed)
        .take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut record)
        .ok()?;
    (record.len() as u64 <= MAX_RECORD_BYTES).then_some(record)
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
        assert_eq!(decode(&encode(&context)), Some(context.clone()));
        assert_eq!(decode(b"not json"), None);

        let packed = compress(&encode(&context));
        let record = decompress(&packed).unwrap();
        assert_eq!(decode(&record), Some(context));
    }

    #[test]
    fn text_deflates_and_what_does_not_inflate_is_none() {
        let text = "the agent noted that the user prefers small commits with clear messages; ";
        let record = serde_json::to_vec(&json!({"data": {"notes": text.repeat(14)}})).unwrap();
        let packed = compress(&record);
        assert!(
            packed.len() * 4 < record.len(),
            "{} of {}",
            packed.len(),
            record.len()
        );
        assert_eq!(decompress(&packed).as_deref(), Some(record.as_slice()));

        assert_eq!(decompress(b"\xff\xfe not deflate"), None);
        // A record cut short does not inflate whole.
        assert_ne!(
            decompress(&packed[..packed.len() / 2]).as_deref(),
            Some(record.as_slice())
        );
    }
}
