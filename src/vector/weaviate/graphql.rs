//! Search over GraphQL: the `nearVector` query with its `where` filter, written with every
//! string escaped, and its answer read back into hits.

use super::*;

pub(super) fn check_finite(vector: &[f32]) -> Result<(), String> {
    match vector.iter().position(|x| !x.is_finite()) {
        // serde_json would write NaN as `null`, and GraphQL has no literal for it.
        Some(at) => Err(format!("the vector holds {} at index {at}", vector[at])),
        None => Ok(()),
    }
}

/// The GraphQL text of a search (§7): the vector as a literal list (a variable cannot carry it,
/// §7), `certainty` only when there is a threshold, the filters as `Equal`s joined by `And`.
pub(super) fn search_query(class: &str, query: &SearchQuery) -> Result<String, String> {
    check_finite(&query.vector)?;
    if !query.min_certainty.is_finite() {
        return Err(format!(
            "min_certainty {} is not a number",
            query.min_certainty
        ));
    }
    let mut text = String::with_capacity(64 + query.vector.len() * 12);
    let _ = write!(text, "{{ Get {{ {class}(nearVector: {{vector: ");
    write_vector(&mut text, &query.vector);
    if query.min_certainty > 0.0 {
        // Above 1 nothing can match; Weaviate only knows certainties in 0..=1.
        let _ = write!(text, ", certainty: {}", query.min_certainty.min(1.0));
    }
    text.push('}');
    let mut conditions = Vec::new();
    if let Some(source) = query.source {
        conditions.push(equal("source", source.as_str()));
    }
    if let Some(parent) = &query.parent_id {
        conditions.push(equal("parentId", parent.as_str()));
    }
    if let Some(prefix) = query.visible.prefix() {
        // Ids are `[A-Za-z0-9._:-]`: no `*` or `?` of Like's own in them.
        conditions.push(format!(
            "{{path: [\"contextId\"], operator: Like, valueText: {}}}",
            graphql_string(&format!("{prefix}*"))
        ));
    }
    match conditions.as_slice() {
        [] => {}
        [one] => {
            let _ = write!(text, ", where: {one}");
        }
        many => {
            let _ = write!(
                text,
                ", where: {{operator: And, operands: [{}]}}",
                many.join(", ")
            );
        }
    }
    let _ = write!(
        text,
        ", limit: {}) {{ contextId _additional {{ certainty distance }} }} }} }}",
        query.limit
    );
    Ok(text)
}

/// `{path: ["p"], operator: Equal, valueText: "v"}`; `operator` is an enum, so unquoted (§7.3).
pub(super) fn equal(property: &str, value: &str) -> String {
    format!(
        "{{path: [{}], operator: Equal, valueText: {}}}",
        graphql_string(property),
        graphql_string(value)
    )
}

/// `[0.7, 0.3]`: Rust's shortest round-trip form of each `f32`, never in exponent notation, so
/// every element is a valid GraphQL Int or Float literal.
pub(super) fn write_vector(out: &mut String, vector: &[f32]) {
    out.push('[');
    for (i, x) in vector.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{x}");
    }
    out.push(']');
}

/// A GraphQL string literal: quoted, with `"`, `\` and control characters escaped.
pub(super) fn graphql_string(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 2);
    out.push('"');
    for c in raw.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The hits of a GraphQL answer (§7). `errors` is read first: they come with HTTP 200 and may
/// sit beside a `data` whose class field is null. A null or absent result means no hits.
pub(super) fn parse_search_response(class: &str, answer: &Value) -> Result<Vec<Hit>, VectorError> {
    if let Some(errors) = answer
        .get("errors")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
    {
        let messages: Vec<String> = errors
            .iter()
            .map(|e| {
                e["message"]
                    .as_str()
                    .map_or_else(|| e.to_string(), str::to_owned)
            })
            .collect();
        let text = format!("the search query failed: {}", messages.join("; "));
        return Err(if messages.iter().any(|m| is_transient_query_error(m)) {
            VectorError::Unavailable(anyhow!(text))
        } else {
            VectorError::Rejected(text)
        });
    }
    let Some(items) = answer["data"]["Get"][class].as_array() else {
        return Ok(Vec::new());
    };
    let mut hits = Vec::with_capacity(items.len());
    for item in items {
        let raw = item["contextId"].as_str().unwrap_or_default();
        let Ok(id) = ContextId::parse(raw) else {
            // Not written by contextd (or not by this version): not a context, so not a hit.
            tracing::warn!(
                class,
                context_id = raw,
                "skipping a search result whose contextId is not a context id"
            );
            continue;
        };
        let additional = &item["_additional"];
        let distance = additional["distance"].as_f64();
        let certainty = additional["certainty"].as_f64();
        let (certainty, distance) = match (certainty, distance) {
            (Some(c), Some(d)) => (c, d),
            (Some(c), None) => (c, 2.0 * (1.0 - c)),
            (None, Some(d)) => (1.0 - d / 2.0, d),
            (None, None) => {
                return Err(VectorError::Rejected(format!(
                    "a search result for {id} has neither certainty nor distance"
                )));
            }
        };
        hits.push(Hit {
            id,
            certainty,
            distance,
        });
    }
    Ok(hits)
}
