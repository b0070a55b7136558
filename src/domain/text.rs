//! A context's text: what keyword search indexes and an embedder embeds.

use serde_json::Value;

use super::JsonObject;

/// The strings of `data` that `pointers` (JSON pointers, RFC 6901) select, in the pointers'
/// order, each pointer's strings in document order (the canonical order: keys sorted), joined by
/// newlines. A pointer to an object or an array selects every string within it; one that
/// selects nothing adds nothing. No pointers: every string value of `data` (keys are not text).
pub fn context_text(data: &JsonObject, pointers: &[String]) -> String {
    let Ok(value) = serde_json::from_str::<Value>(data.as_str()) else {
        return String::new();
    };
    let mut strings = Vec::new();
    if pointers.is_empty() {
        collect(&value, &mut strings);
    } else {
        for pointer in pointers {
            if let Some(selected) = value.pointer(pointer) {
                collect(selected, &mut strings);
            }
        }
    }
    strings.join("\n")
}

fn collect<'a>(value: &'a Value, into: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => into.push(s),
        Value::Array(items) => items.iter().for_each(|item| collect(item, into)),
        Value::Object(members) => members.values().for_each(|member| collect(member, into)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(value: Value) -> JsonObject {
        JsonObject::from_value(&value).unwrap()
    }

    #[test]
    fn every_string_value_in_document_order_by_default() {
        let notes = data(json!({
            "title": "Refactor the parser",
            "steps": [{"text": "write tests", "done": true}, {"text": "fix quotes", "n": 2}],
            "author": {"name": "Ada"},
            "count": 3,
        }));
        assert_eq!(
            context_text(&notes, &[]),
            "Ada\nwrite tests\nfix quotes\nRefactor the parser"
        );
    }

    #[test]
    fn pointers_select_in_their_order_and_missing_ones_add_nothing() {
        let notes = data(json!({"title": "T", "body": {"a": "x", "b": ["y", 1]}, "n": 5}));
        let pointers = [
            "/body".to_owned(),
            "/nope".to_owned(),
            "/title".to_owned(),
            "/n".to_owned(),
        ];
        assert_eq!(context_text(&notes, &pointers), "x\ny\nT");
        assert_eq!(context_text(&data(json!({})), &[]), "");
    }
}
