//! A context's text: what keyword search indexes and an embedder embeds.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::JsonObject;

/// [`context_text`], at most `limit` bytes of it (cut at a character boundary). Without
/// pointers the strings are read straight off the stored JSON text, never building the
/// document in memory (a 10 MB context would cost several times that as a `Value`), and the
/// reading stops once `limit` is reached.
pub fn context_text_up_to(data: &JsonObject, pointers: &[String], limit: usize) -> String {
    let mut text = if pointers.is_empty() {
        let mut collector = Collector {
            text: String::new(),
            limit,
        };
        let mut deserializer = serde_json::Deserializer::from_str(data.as_str());
        // Stopping early (the limit reached) is an error to serde, not to us.
        let _ = (&mut collector).deserialize(&mut deserializer);
        collector.text
    } else {
        context_text(data, pointers)
    };
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Appends every string value it is shown, newline-separated, until it holds `limit` bytes.
struct Collector {
    text: String,
    limit: usize,
}

impl Collector {
    fn full(&self) -> bool {
        self.text.len() >= self.limit
    }
}

impl<'de> DeserializeSeed<'de> for &mut Collector {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut Collector {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<(), E> {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(value);
        if self.full() {
            return Err(E::custom("the text is long enough"));
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        while items.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<(), A::Error> {
        // Keys are not text.
        while members.next_key::<IgnoredAny>()?.is_some() {
            members.next_value_seed(&mut *self)?;
        }
        Ok(())
    }
}

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
    fn the_streamed_text_is_the_same_text_cut_at_the_limit() {
        let notes = data(json!({
            "title": "Refactor the parser",
            "steps": [{"text": "write tests", "done": true}, {"text": "fix quotes", "n": 2}],
            "author": {"name": "Ada \"the\" Lovelace \u{e9}"},
            "count": 3,
            "none": null,
        }));
        let whole = context_text(&notes, &[]);
        assert_eq!(context_text_up_to(&notes, &[], 10_000), whole);
        assert_eq!(context_text_up_to(&notes, &[], 5), &whole[..5]);
        // A cut inside a character keeps the whole characters before it.
        let accents = data(json!({"t": "ééé"}));
        assert_eq!(context_text_up_to(&accents, &[], 3), "é");
        let pointers = ["/title".to_owned()];
        assert_eq!(context_text_up_to(&notes, &pointers, 8), "Refactor");
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
