//! The bytes a context is cached as in L2 (Redis) and L3 (the Postgres cache table): every
//! field of the current version, embedding included, as compact JSON. L3 keeps the record
//! deflated ([`compress`]): the table is a second copy of every current version, and text
//! compresses to about half.

use std::cell::RefCell;

use chrono::{DateTime, Utc};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
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
    #[serde(skip_serializing_if = "Option::is_none")]
    server_embedding: Option<&'a [f32]>,
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
    /// Absent from the records of earlier releases, which had none.
    #[serde(default)]
    server_embedding: Option<Vec<f32>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    size_bytes: i64,
}

pub fn encode(context: &Context) -> Vec<u8> {
    encode_parts(
        &context.id,
        context.version,
        &context.content,
        context.server_embedding.as_deref(),
        (context.created_at, context.updated_at),
    )
}

/// The record of the context a write is about to store.
pub fn encode_new(id: &ContextId, new: &NewVersion) -> Vec<u8> {
    encode_parts(
        id,
        new.version,
        &new.content,
        None,
        (new.created_at, new.updated_at),
    )
}

fn encode_parts(
    id: &ContextId,
    version: i64,
    content: &Content,
    server_embedding: Option<&[f32]>,
    (created_at, updated_at): (DateTime<Utc>, DateTime<Utc>),
) -> Vec<u8> {
    serde_json::to_vec(&RecordRef {
        context_id: id.as_str(),
        version,
        source: content.source,
        parent_id: content.parent_id.as_ref().map(ContextId::as_str),
        data: &content.data,
        metadata: &content.metadata,
        embedding: content.embedding.as_deref(),
        server_embedding,
        created_at,
        updated_at,
        size_bytes: content.size_bytes() as i64,
    })
    .expect("a context always serializes")
}

/// The most bytes [`decompress`] inflates a record to: far above any record of a context within
/// the size limit, so only a corrupt entry reaches it.
const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

thread_local! {
    /// One deflate and one inflate state per thread, reset for each record. Each holds a few
    /// hundred KB; made afresh per record, they were large short-lived allocations that
    /// glibc's malloc kept (its mmap threshold rises after the first), and a server on Postgres
    /// grew by tens of KB per write.
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(3), false));
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// A record as L3 stores it: raw deflate at level 3, which on JSON of prose and of
/// agent notes keeps about half the bytes (level 1 keeps about 70%) for some tens of
/// microseconds per kilobyte; levels above 3 gain under 1%.
pub fn compress(record: &[u8]) -> Vec<u8> {
    DEFLATE.with_borrow_mut(|deflate| {
        deflate.reset();
        let mut packed = Vec::with_capacity(record.len() / 2 + 64);
        loop {
            let rest = &record[deflate.total_in() as usize..];
            match deflate.compress_vec(rest, &mut packed, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => return packed,
                // Out of room: more, and go on from where it stopped.
                Ok(Status::Ok | Status::BufError) => packed.reserve(packed.capacity().max(64)),
                Err(e) => unreachable!("deflating into memory cannot fail: {e}"),
            }
        }
    })
}

/// The record [`compress`] made; `None` for bytes that do not inflate (corruption, a record
/// cut short) or inflate beyond [`MAX_RECORD_BYTES`]: a miss.
pub fn decompress(packed: &[u8]) -> Option<Vec<u8>> {
    INFLATE.with_borrow_mut(|inflate| {
        inflate.reset(false);
        let mut record = Vec::with_capacity(packed.len() * 3 + 64);
        loop {
            let (read, written) = (inflate.total_in(), inflate.total_out());
            let rest = &packed[read as usize..];
            match inflate.decompress_vec(rest, &mut record, FlushDecompress::Finish) {
                Ok(Status::StreamEnd) => return Some(record),
                Ok(Status::Ok | Status::BufError) => {
                    let stuck = inflate.total_in() == read && inflate.total_out() == written;
                    if record.len() as u64 > MAX_RECORD_BYTES
                        || (stuck && record.len() < record.capacity())
                    {
                        return None;
                    }
                    // Room for twice as much, never beyond the bound.
                    let bound = MAX_RECORD_BYTES as usize + 1;
                    record.reserve(record.capacity().min(bound - record.len()).max(64));
                }
                Err(_) => return None,
            }
        }
    })
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
        server_embedding: r.server_embedding,
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
            server_embedding: None,
        };
        assert_eq!(decode(&encode(&context)), Some(context.clone()));
        let embedded = Context {
            content: Content {
                embedding: None,
                ..context.content.clone()
            },
            server_embedding: Some(vec![0.25, 0.75]),
            ..context.clone()
        };
        assert_eq!(decode(&encode(&embedded)), Some(embedded));
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
        // A large record, many times the first guess of its size, and one after the other on
        // the same thread's state.
        let large = text.repeat(5_000).into_bytes();
        assert_eq!(decompress(&compress(&large)), Some(large));
        assert_eq!(decompress(&packed).as_deref(), Some(record.as_slice()));
        // A record cut short does not inflate whole.
        assert_ne!(
            decompress(&packed[..packed.len() / 2]).as_deref(),
            Some(record.as_slice())
        );
    }
}
