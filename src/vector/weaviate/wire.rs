//! The REST bodies contextd sends and reads (objects, batches, their per-item errors), and
//! which of Weaviate's errors are worth a retry.

use super::*;

/// One object of an upsert, ready to send.
pub(super) struct Prepared {
    pub(super) id: ContextId,
    pub(super) uuid: Uuid,
    pub(super) object: ObjectOut,
}

/// `definitions.Object` as contextd writes it (§4). Typed rather than a `Value` so that the
/// vector is written by serde_json's `f32` printer (`0.7`, not `0.699999988079071`): the same
/// number for Weaviate's float32, in half the bytes.
#[derive(Debug, Serialize)]
pub(super) struct ObjectOut {
    pub(super) class: String,
    /// Lowercase hyphenated, the form the server stores and returns (§3).
    pub(super) id: String,
    pub(super) properties: PropertiesOut,
    pub(super) vector: Vec<f32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PropertiesOut {
    pub(super) context_id: String,
    /// The context's text ([`crate::domain::context_text`]), what `bm25` searches (§10.3).
    pub(super) content: String,
    /// `metadata` as compact JSON text (§2.1).
    pub(super) metadata: String,
    /// RFC 3339, what a `date` property requires (§2.2).
    pub(super) timestamp: String,
    pub(super) source: &'static str,
    /// `""` for none: a filter on it then matches only top-level contexts by `""`.
    pub(super) parent_id: String,
}

/// The body of `POST /v1/batch/objects`.
#[derive(Serialize)]
pub(super) struct BatchOut<'a> {
    pub(super) objects: Vec<&'a ObjectOut>,
}

pub(super) fn json_body<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("request bodies always serialise"))
}

/// The Weaviate object id of a context: `uuid5(NAMESPACE_DNS, id)`, as the Weaviate Python
/// client's `generate_uuid5(id)` computes it (§3), so other tools find the same object.
pub fn object_id(id: &ContextId) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_DNS, id.as_str().as_bytes())
}

/// The object of one context in a batch (§4, §5); `text` selects its `content` (§10.3).
pub(super) fn object_body(class: &str, entry: &VectorEntry, text: &[String]) -> ObjectOut {
    ObjectOut {
        class: class.to_owned(),
        id: object_id(&entry.id).to_string(),
        properties: PropertiesOut {
            context_id: entry.id.as_str().to_owned(),
            content: crate::domain::context_text_up_to(
                &entry.data,
                text,
                crate::keyword::MAX_TEXT_BYTES,
            ),
            metadata: entry.metadata.as_str().to_owned(),
            timestamp: entry
                .updated_at
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            source: entry.source.as_str(),
            parent_id: entry
                .parent_id
                .as_ref()
                .map_or_else(String::new, |p| p.as_str().to_owned()),
        },
        vector: entry.vector.clone(),
    }
}

/// `DELETE /v1/batch/objects` body: every object whose `contextId` is one of `ids` (§6).
/// `minimal` output lists only failures, which is all this client reads.
pub(super) fn batch_delete_body(class: &str, ids: &[ContextId]) -> Value {
    let ids: Vec<&str> = ids.iter().map(ContextId::as_str).collect();
    json!({
        "match": {
            "class": class,
            "where": {"path": ["contextId"], "operator": "ContainsAny", "valueTextArray": ids},
        },
        "output": "minimal",
        "dryRun": false,
    })
}

/// The objects of `pending` that failed, with the server's message, from a batch answer (§5):
/// an item failed when `result.status` is `FAILED` or `result.errors.error` is non-empty. Items
/// are matched by id (the answer is in request order, but the id says it for sure); an object
/// the answer does not mention counts as failed, so it is sent again.
pub(super) fn batch_failures<'a>(
    results: &Value,
    pending: &[&'a Prepared],
) -> Result<Vec<(&'a Prepared, String)>, String> {
    let items = results.as_array().ok_or_else(|| {
        format!(
            "the answer is not an array: {}",
            truncate(&results.to_string(), 200)
        )
    })?;
    let mut outcome: std::collections::HashMap<Uuid, Option<String>> = Default::default();
    for (index, item) in items.iter().enumerate() {
        let uuid = item["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .or_else(|| pending.get(index).map(|p| p.uuid));
        let Some(uuid) = uuid else { continue };
        let result = &item["result"];
        let error = first_error(&result["errors"]);
        let failed = result["status"].as_str() == Some("FAILED") || error.is_some();
        outcome.insert(
            uuid,
            failed.then(|| error.unwrap_or_else(|| "FAILED without a message".to_owned())),
        );
    }
    Ok(pending
        .iter()
        .filter_map(|p| match outcome.get(&p.uuid) {
            Some(None) => None,
            Some(Some(message)) => Some((*p, message.clone())),
            None => Some((*p, "the answer has no result for this object".to_owned())),
        })
        .collect())
}

/// All messages of an `ErrorResponse` (`{"error":[{"message":..}]}`), joined; `None` when empty.
pub(super) fn first_error(errors: &Value) -> Option<String> {
    let messages: Vec<&str> = errors["error"]
        .as_array()?
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

/// Whether a per-object batch failure is the object's fault, so sending it again cannot help:
/// a value of the wrong type or format, an unknown property, a vector of the wrong length
/// (§4, §5). Anything else (a replica not reachable, a timeout, a shard busy) is worth a retry.
pub(super) fn is_permanent_item_error(message: &str) -> bool {
    const PERMANENT: [&str; 9] = [
        "invalid ",
        "RFC3339",
        "no such prop",
        "vector with length",
        "vector lengths",
        "is not a valid",
        "not allowed",
        "multi-tenancy",
        "could not find class",
    ];
    PERMANENT.iter().any(|marker| message.contains(marker))
}

/// Whether a GraphQL error (they come with HTTP 200) is the server's momentary state rather than
/// the query's fault; most are validation errors, which a retry cannot fix.
pub(super) fn is_transient_query_error(message: &str) -> bool {
    const TRANSIENT: [&str; 7] = [
        "deadline exceeded",
        "timeout",
        "timed out",
        "not ready",
        "unavailable",
        "connection refused",
        "cannot reach enough replicas",
    ];
    let lower = message.to_ascii_lowercase();
    TRANSIENT.iter().any(|marker| lower.contains(marker))
}

/// The readable message of an error body, whichever of the four shapes of §0 it has:
/// `{"error":[{"message":..}]}`, then `{"code":..,"message":..}` (also 429's and 422's
/// `errorCode` shapes, which carry `message` too), else the raw text; an empty body says so.
pub(crate) fn error_message(body: &[u8]) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        return "(empty body)".to_owned();
    }
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if let Some(messages) = first_error(&value) {
            return messages;
        }
        if let Some(message) = value.get("message").and_then(Value::as_str) {
            return match value.get("errorCode").and_then(Value::as_str) {
                Some(code) => format!("{code}: {message}"),
                None => message.to_owned(),
            };
        }
    }
    truncate(String::from_utf8_lossy(body).trim(), 500)
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
