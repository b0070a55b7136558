//! JSON objects as contextd holds them: canonical text, parsed once at the edge.
//!
//! A context's `data` and `metadata` are kept as the *canonical* text of a JSON object:
//! compact, members sorted by key (UTF-8 byte order), each key once (the last occurrence wins,
//! as `serde_json::Value` would keep it), numbers and strings written as `serde_json` writes
//! them. Canonical text makes equality a byte comparison ("same data" whatever the key order
//! or spacing of the request), makes the size limit the length of the text, and lets a write
//! go from request to store to response without ever building a tree of its values: a tree
//! costs 10 to 50 times the bytes of the text it came from, the text about once
//! (`limits.max_json_nodes` and the in-flight byte budget rest on that).
//!
//! A tree ([`JsonObject::to_map`]) or the top-level members ([`JsonObject::members`]) are
//! built on demand by the few rules that need them (merges, patches).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON object as canonical text. Cheap to clone (shared), compared byte for byte.
#[derive(Clone)]
pub struct JsonObject(Arc<RawValue>);

/// Why a text is not a JSON object contextd can keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all.
    #[error("malformed JSON: {0}")]
    Syntax(String),
    /// JSON, but not an object: names what it is instead.
    #[error("must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    /// A key or string holds U+0000, which Postgres `jsonb` cannot store.
    #[error("holds the character U+0000, which contexts cannot store")]
    Nul,
}

impl JsonObject {
    /// `{}`.
    pub fn empty() -> Self {
        Self::from_canonical("{}".to_owned())
    }

    /// The canonical form of `text`, which must be a JSON object.
    pub fn parse(text: &str) -> Result<Self, JsonError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let canonical = canonicalize(&mut deserializer).map_err(|e| e.into_json_error())?;
        deserializer
            .end()
            .map_err(|e| JsonError::Syntax(e.to_string()))?;
        Ok(canonical)
    }

    /// The canonical form of a parsed object.
    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Self {
        // A `Map` is always an object of valid values; only U+0000 could be refused, and
        // callers that build maps (merges, lineage) never put one in that was not there.
        let text = serde_json::to_string(map).expect("a JSON map always serializes");
        Self::parse(&text).unwrap_or_else(|_| Self::empty())
    }

    /// The canonical form of `value`, which must be an object.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, JsonError> {
        match value {
            serde_json::Value::Object(map) => {
                let text = serde_json::to_string(map).expect("a JSON map always serializes");
                Self::parse(&text)
            }
            other => Err(JsonError::NotAnObject(value_kind(other))),
        }
    }

    /// Wraps text this module made canonical.
    fn from_canonical(text: String) -> Self {
        let raw = RawValue::from_string(text).expect("canonical text is valid JSON");
        Self(Arc::from(raw))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Bytes of the canonical text: the size contexts are measured by.
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// Whether this is `{}`.
    pub fn is_empty(&self) -> bool {
        self.as_str() == "{}"
    }

    /// The object as a tree, for the rules that need one.
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(self.as_str()).expect("canonical text is a JSON object")
    }

    /// The top-level members, in key order, each value as its canonical text.
    pub fn members(&self) -> Vec<(Cow<'_, str>, &RawValue)> {
        members_of(self.as_str())
    }

    /// The canonical text of member `key`, if present.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.members()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Builds an object from members whose values are canonical text (taken from canonical
    /// objects, e.g. by [`JsonObject::members`]). Keys are sorted here; of repeated keys the
    /// last wins.
    pub fn from_members<K: AsRef<str>, V: AsRef<str>>(
        members: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut members: Vec<(K, V)> = members.into_iter().collect();
        // A stable sort keeps repeated keys in their order, so the last of each run wins.
        members.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut out = String::with_capacity(
            2 + members
                .iter()
                .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 4)
                .sum::<usize>(),
        );
        out.push('{');
        let mut first = true;
        for (i, (key, value)) in members.iter().enumerate() {
            if members
                .get(i + 1)
                .is_some_and(|next| next.0.as_ref() == key.as_ref())
            {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            push_json_string(&mut out, key.as_ref());
            out.push(':');
            out.push_str(value.as_ref());
        }
        out.push('}');
        Self::from_canonical(out)
    }
}

impl Default for JsonObject {
    fn default() -> Self {
        Self::empty()
    }
}

impl PartialEq for JsonObject {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for JsonObject {}

impl fmt::Debug for JsonObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        let text = self.as_str();
        if text.len() <= SHOWN {
            write!(f, "{text}")
        } else {
            let cut = (0..=SHOWN).rev().find(|i| text.is_char_boundary(*i));
            write!(f, "{}... ({} bytes)", &text[..cut.unwrap_or(0)], text.len())
        }
    }
}

impl fmt::Display for JsonObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for JsonObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Any self-describing deserializer (a request body, a `serde_json::Value` of MCP arguments)
/// gives its object canonicalized; anything but an object is refused.
impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        canonicalize(deserializer).map_err(|e| match e {
            Failure::Json(e) => de::Error::custom(e),
            Failure::Other(e) => e,
        })
    }
}

impl schemars::JsonSchema for JsonObject {
    fn schema_name() -> Cow<'static, str> {
        "JsonObject".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "object"})
    }
}

/// `value` described for an error message: "an array", "a string".
pub fn value_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// How many values a JSON text holds (objects, arrays, strings that are not keys, numbers,
/// booleans, nulls), counted over its bytes without parsing it: what `limits.max_json_nodes`
/// bounds before any parser allocates. Exact for valid JSON; for invalid JSON some count,
/// never a crash (the parser then says what is wrong).
pub fn count_values(text: &[u8]) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() {
                    match text[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                let mut next = i;
                while next < text.len() && text[next].is_ascii_whitespace() {
                    next += 1;
                }
                if text.get(next) != Some(&b':') {
                    count += 1;
                }
                continue;
            }
            b'{' | b'[' => count += 1,
            b't' | b'f' | b'n' | b'-' | b'0'..=b'9' => {
                count += 1;
                while i + 1 < text.len()
                    && matches!(text[i + 1], b'a'..=b'z' | b'0'..=b'9' | b'.' | b'+' | b'-' | b'E')
                {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    count
}

/// Appends `s` as a JSON string, escaped exactly as `serde_json` escapes it.
fn push_json_string(out: &mut String, s: &str) {
    let mut bytes = Vec::with_capacity(s.len() + 2);
    serde_json::to_writer(&mut bytes, s).expect("a string always serializes");
    out.push_str(std::str::from_utf8(&bytes).expect("serde_json writes UTF-8"));
}

/// Top-level members of an object's canonical text (a [`JsonObject`]'s, or a nested object
/// value taken from one).
pub(super) fn members_of(text: &str) -> Vec<(Cow<'_, str>, &RawValue)> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(key) = map.next_key::<Key<'de>>()? {
                members.push((key.0, map.next_value::<&'de RawValue>()?));
            }
            Ok(members)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer
        .deserialize_map(Members)
        .expect("canonical text is a JSON object")
}

/// A map key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A canonicalization failure: ours (with its kind), or the deserializer's own.
enum Failure<E> {
    Json(JsonError),
    Other(E),
}

impl Failure<serde_json::Error> {
    fn into_json_error(self) -> JsonError {
        match self {
            Failure::Json(e) => e,
            Failure::Other(e) => JsonError::Syntax(e.to_string()),
        }
    }
}

/// Runs the canonical writer over whatever `deserializer` yields, which must be an object.
fn canonicalize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<JsonObject, Failure<D::Error>> {
    let failure = Cell::new(None);
    let mut out = Vec::new();
    let writer = Canonical {
        out: &mut out,
        failure: &failure,
        top: true,
    };
    match deserializer.deserialize_any(writer) {
        Ok(()) => {
            let text = String::from_utf8(out).expect("the canonical writer writes UTF-8");
            Ok(JsonObject::from_canonical(text))
        }
        Err(e) => Err(match failure.take() {
            Some(kind) => Failure::Json(kind),
            None => Failure::Other(e),
        }),
    }
}

/// Writes the canonical text of one value to `out` as the deserializer walks it. Objects are
/// written in arrival order and re-sorted in place only when their keys did not arrive sorted
/// and unique (canonical input, such as a store's own text, is copied straight through).
struct Canonical<'a> {
    out: &'a mut Vec<u8>,
    /// Set with the reason when the writer itself refuses the value.
    failure: &'a Cell<Option<JsonError>>,
    /// The document's top level, which must be an object.
    top: bool,
}

impl Canonical<'_> {
    fn refuse<E: de::Error>(&self, why: JsonError) -> E {
        let message = why.to_string();
        self.failure.set(Some(why));
        E::custom(message)
    }

    fn not_top<E: de::Error>(&self, kind: &'static str) -> Result<(), E> {
        if self.top {
            Err(self.refuse(JsonError::NotAnObject(kind)))
        } else {
            Ok(())
        }
    }

    fn write<E: de::Error, T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), E> {
        serde_json::to_writer(&mut *self.out, value).map_err(E::custom)
    }

    fn string<E: de::Error>(&mut self, v: &str) -> Result<(), E> {
        self.not_top("a string")?;
        if v.contains('\0') {
            return Err(self.refuse(JsonError::Nul));
        }
        self.write(v)
    }
}

impl<'de> DeserializeSeed<'de> for Canonical<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Canonical<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        self.not_top("a boolean")?;
        self.write(&v)
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.not_top("a number")?;
        self.write(&v)
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.not_top("a number")?;
        self.write(&v)
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.not_top("a number")?;
        // As `serde_json::Value` does: a float JSON cannot write is null.
        if v.is_finite() {
            self.write(&v)
        } else {
            self.write(&())
        }
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.string(v)
    }

    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.not_top("null")?;
        self.write(&())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.not_top("an array")?;
        self.out.push(b'[');
        let mut first = true;
        loop {
            let mark = self.out.len();
            if !first {
                self.out.push(b',');
            }
            let element = Canonical {
                out: &mut *self.out,
                failure: self.failure,
                top: false,
            };
            if seq.next_element_seed(element)?.is_none() {
                self.out.truncate(mark);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let start = self.out.len();
        self.out.push(b'{');
        // Each member's span `"key":value` in `out`, and whether keys arrived sorted and unique.
        // Offsets as u32: a body is far below 4 GiB, and the spans are half the size.
        let mut spans: Vec<(u32, u32)> = Vec::new();
        let mut previous: Option<Cow<'de, str>> = None;
        let mut sorted = true;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if key.contains('\0') {
                return Err(self.refuse(JsonError::Nul));
            }
            if !spans.is_empty() {
                self.out.push(b',');
            }
            if sorted {
                if previous.as_deref().is_some_and(|p| p >= key.as_ref()) {
                    sorted = false;
                } else {
                    previous = Some(key.clone());
                }
            }
            let member_start = self.out.len();
            serde_json::to_writer(&mut *self.out, key.as_ref()).map_err(de::Error::custom)?;
            self.out.push(b':');
            map.next_value_seed(Canonical {
                out: &mut *self.out,
                failure: self.failure,
                top: false,
            })?;
            spans.push((offset(member_start), offset(self.out.len())));
        }
        if !sorted {
            sort_members(self.out, start + 1, &mut spans);
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// A position in the canonical text, as the member spans keep it.
fn offset(position: usize) -> u32 {
    u32::try_from(position).expect("a JSON text under 4 GiB")
}

/// Re-sorts the members written at `spans` (all after `from` in `out`) by key, keeping the last
/// of each repeated key, and rewrites them in place. Keys are compared as written where they
/// hold no escapes (their bytes then sort as their characters do), decoded where they do.
fn sort_members(out: &mut Vec<u8>, from: usize, spans: &mut [(u32, u32)]) {
    let written = out.split_off(from);
    let member = |&(start, end): &(u32, u32)| &written[start as usize - from..end as usize - from];
    // Stable: repeated keys stay in arrival order, so the last of a run is the one to keep.
    spans.sort_by(|a, b| compare_keys(member(a), member(b)));
    let mut first = true;
    for (i, span) in spans.iter().enumerate() {
        let key = written_key(member(span));
        if spans
            .get(i + 1)
            .is_some_and(|next| written_key(member(next)) == key)
        {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(member(span));
    }
}

/// The key of a member `"key":value` as written: the bytes between its quotes, escapes and all.
fn written_key(member: &[u8]) -> &[u8] {
    let mut i = 1;
    while i < member.len() {
        match member[i] {
            b'\\' => i += 2,
            b'"' => return &member[1..i],
            _ => i += 1,
        }
    }
    &member[1..]
}

/// Orders two members by their keys' characters.
fn compare_keys(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (ka, kb) = (written_key(a), written_key(b));
    if !ka.contains(&b'\\') && !kb.contains(&b'\\') {
        return ka.cmp(kb);
    }
    let decode = |member: &[u8]| -> String {
        let mut deserializer = serde_json::Deserializer::from_slice(member);
        String::deserialize(&mut deserializer).expect("a key this writer wrote")
    };
    decode(a).cmp(&decode(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(text: &str) -> String {
        JsonObject::parse(text).unwrap().as_str().to_owned()
    }

    #[test]
    fn canonical_text_is_compact_with_sorted_unique_keys() {
        assert_eq!(
            canonical(r#" { "b" : [1, 2.50, {"z":1, "a":null}], "a": "x", "b2": true } "#),
            r#"{"a":"x","b":[1,2.5,{"a":null,"z":1}],"b2":true}"#
        );
        assert_eq!(canonical(r#"{"a":1,"a":2}"#), r#"{"a":2}"#);
        assert_eq!(canonical(r#"{"b":1,"a":2,"b":3}"#), r#"{"a":2,"b":3}"#);
        assert_eq!(canonical("{}"), "{}");
    }

    #[test]
    fn equal_objects_have_equal_text_whatever_their_spelling() {
        let a = JsonObject::parse(r#"{"x": {"q": 1, "p": [true]}, "é": "\u00e9"}"#).unwrap();
        let b = JsonObject::parse(r#"{"\u00e9":"é","x":{"p":[true],"q":1}}"#).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            JsonObject::parse(r#"{"x":{"p":[true],"q":2},"é":"é"}"#).unwrap()
        );
    }

    #[test]
    fn canonical_text_agrees_with_serde_json_on_values() {
        let text = r#"{"big":18446744073709551615,"neg":-12,"f":1e300,"g":0.1,"h":1.0,
                       "s":"tab\t quote\" slash\\ ctrl\u0001 emoji 😀","n":null}"#;
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        let object = JsonObject::parse(text).unwrap();
        let reparsed: serde_json::Value = serde_json::from_str(object.as_str()).unwrap();
        assert_eq!(reparsed, value);
        assert_eq!(JsonObject::from_value(&value).unwrap(), object);
        assert_eq!(canonical(object.as_str()), object.as_str(), "idempotent");
    }

    #[test]
    fn keys_with_escapes_sort_by_their_characters() {
        // `"` (0x22) sorts before `#` (0x23), although its escape `\"` starts with 0x5C.
        assert_eq!(canonical(r#"{"a#":1,"a\"":2}"#), r#"{"a\"":2,"a#":1}"#);
    }

    #[test]
    fn anything_but_an_object_is_refused_by_kind() {
        for (text, kind) in [
            ("[1]", "an array"),
            ("\"s\"", "a string"),
            ("1", "a number"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            assert_eq!(JsonObject::parse(text), Err(JsonError::NotAnObject(kind)));
        }
        assert!(matches!(
            JsonObject::parse("{\"a\":"),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            JsonObject::parse("{} {}"),
            Err(JsonError::Syntax(_))
        ));
    }

    #[test]
    fn u0000_is_refused_in_keys_and_strings_at_any_depth() {
        assert_eq!(
            JsonObject::parse(r#"{"a":["\u0000"]}"#),
            Err(JsonError::Nul)
        );
        assert_eq!(
            JsonObject::parse(r#"{"a":{"k\u0000":1}}"#),
            Err(JsonError::Nul)
        );
    }

    #[test]
    fn deserializing_from_a_value_canonicalizes_too() {
        let value = json!({"b": 1, "a": {"d": 2, "c": 3}});
        let object: JsonObject = serde_json::from_value(value).unwrap();
        assert_eq!(object.as_str(), r#"{"a":{"c":3,"d":2},"b":1}"#);
        let refused = serde_json::from_value::<JsonObject>(json!([1])).unwrap_err();
        assert!(refused.to_string().contains("not an array"), "{refused}");
    }

    #[test]
    fn members_come_in_key_order_and_rebuild_the_object() {
        let object = JsonObject::parse(r#"{"b":[1,{"y":2}],"a":"x","c\n":null}"#).unwrap();
        let members = object.members();
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "b", "c\n"]);
        assert_eq!(object.get("b").unwrap().get(), r#"[1,{"y":2}]"#);
        let rebuilt = JsonObject::from_members(members.iter().map(|(k, v)| (k, v.get())));
        assert_eq!(rebuilt, object);
    }

    #[test]
    fn from_members_sorts_and_keeps_the_last_of_a_key() {
        let built = JsonObject::from_members([("b", "1"), ("a", "1"), ("b", "2")]);
        assert_eq!(built.as_str(), r#"{"a":1,"b":2}"#);
    }

    #[test]
    fn values_are_counted_without_keys() {
        assert_eq!(count_values(br#"{}"#), 1);
        assert_eq!(
            count_values(br#"{"a":1,"b":[true,null,"x"],"c":{"d":-1.5e3}}"#),
            8
        );
        assert_eq!(count_values(br#"{"a\"b" : "c:d" , "e":"\\"}"#), 3);
        assert_eq!(count_values(br#"[{"a":{}},{"a":{}}]"#), 5);
        // Invalid text counts something and never panics.
        let _ = count_values(br#"{"a":"unterminated"#);
        let _ = count_values(b"\"\\");
    }

    #[test]
    fn a_serialized_object_is_its_text() {
        let object = JsonObject::parse(r#"{"b":1,"a":[]}"#).unwrap();
        let wrapped = json!({"data": object});
        assert_eq!(wrapped.to_string(), r#"{"data":{"a":[],"b":1}}"#);
        assert_eq!(serde_json::to_string(&object).unwrap(), r#"{"a":[],"b":1}"#);
    }
}
