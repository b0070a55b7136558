//! The class contexts live in: its definition, and what a class found on the server must
//! have for contextd to use it (it never alters or deletes one).

use super::*;

/// The class contextd creates (§2.2). `metadata` is JSON text, not an `object` property: object
/// properties need fixed nested fields (§2.1). Filterable identifiers use `field` tokenization so
/// that `Equal` compares whole values.
pub fn class_definition(class: &str) -> Value {
    json!({
        "class": class,
        "description": "contextd: one object per context, vector supplied by contextd",
        "vectorizer": "none",
        "vectorIndexType": "hnsw",
        "vectorIndexConfig": {"distance": "cosine"},
        "properties": [
            {"name": "contextId", "dataType": ["text"], "tokenization": "field", "indexFilterable": true, "indexSearchable": false},
            {"name": "content", "dataType": ["text"], "tokenization": "word", "indexSearchable": true},
            {"name": "metadata", "dataType": ["text"], "indexFilterable": false, "indexSearchable": false},
            {"name": "timestamp", "dataType": ["date"]},
            {"name": "source", "dataType": ["text"], "tokenization": "field", "indexSearchable": false},
            {"name": "parentId", "dataType": ["text"], "tokenization": "field", "indexSearchable": false},
        ]
    })
}

/// What in an existing class differs from [`class_definition`], checking only what §2.3 says
/// matters: `vectorizer`, `vectorIndexConfig.distance`, each property's name and data type, and
/// that `content` is searchable word by word (§10.3).
pub(super) fn class_mismatches(class: &Value) -> Vec<String> {
    let wanted = class_definition("");
    let mut problems = Vec::new();
    let vectorizer = &class["vectorizer"];
    if vectorizer.as_str() != Some("none") {
        problems.push(format!("vectorizer is {vectorizer}, expected \"none\""));
    }
    let distance = &class["vectorIndexConfig"]["distance"];
    if distance.as_str() != Some("cosine") {
        problems.push(format!(
            "vectorIndexConfig.distance is {distance}, expected \"cosine\""
        ));
    }
    for property in wanted["properties"].as_array().into_iter().flatten() {
        let name = property["name"].as_str().unwrap_or_default();
        match find_property(class, name) {
            None => problems.push(format!("property {name:?} is missing")),
            Some(found) if found["dataType"] != property["dataType"] => problems.push(format!(
                "property {name:?} has dataType {}, expected {}",
                found["dataType"], property["dataType"]
            )),
            Some(_) => {}
        }
    }
    // `bm25` reads `content` (§10.3): searchable, and split into words.
    if let Some(content) = find_property(class, "content") {
        if content["indexSearchable"] == json!(false) {
            problems.push("property \"content\" is not indexSearchable".to_owned());
        }
        if content["tokenization"] == json!("field") {
            problems.push(
                "property \"content\" has tokenization \"field\", expected \"word\"".to_owned(),
            );
        }
    }
    problems
}

pub(super) fn find_property<'a>(class: &'a Value, name: &str) -> Option<&'a Value> {
    class["properties"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
}

/// A class name the server keeps as given, and that is a GraphQL name: the server capitalises a
/// lowercase first letter (§2.2), after which `GET /schema/{name}` would never find it.
pub(super) fn check_class_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_uppercase());
    anyhow::ensure!(
        first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && name.len() <= 255,
        "vector.weaviate.class_name {name:?} must start with an uppercase letter and hold only \
         A-Z, a-z, 0-9 and '_'"
    );
    Ok(())
}
