//! Merge strategies of `POST /contexts/merge`: how the `data` of several contexts becomes one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::JsonObject;

/// How `POST /contexts/merge` combines the `data` of its contexts, in list order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MergeStrategy {
    /// The data of the most recently updated context (a tie goes to the later in the list).
    Latest,
    /// All keys; a later context's value replaces an earlier one's.
    Union,
    /// The keys present in every context, with the first context's values.
    Intersection,
    /// Like union, but where both values are objects they are merged recursively.
    Deep,
}

impl MergeStrategy {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "latest" => Some(Self::Latest),
            "union" => Some(Self::Union),
            "intersection" => Some(Self::Intersection),
            "deep" => Some(Self::Deep),
            _ => None,
        }
    }
}

/// One input of a merge: its data and when it was last updated.
pub struct MergeInput<'a> {
    pub data: &'a JsonObject,
    pub updated_at: DateTime<Utc>,
}

/// Merges `inputs` (at least one) by `strategy`.
pub fn merge_data(strategy: MergeStrategy, inputs: &[MergeInput<'_>]) -> JsonObject {
    match strategy {
        MergeStrategy::Latest => inputs
            .iter()
            // `max_by_key` keeps the last of equal maxima: a tie goes to the later context.
            .max_by_key(|input| input.updated_at)
            .map(|input| input.data.clone())
            .unwrap_or_default(),
        MergeStrategy::Union => {
            let mut merged = JsonObject::new();
            for input in inputs {
                for (key, value) in input.data {
                    merged.insert(key.clone(), value.clone());
                }
            }
            merged
        }
        MergeStrategy::Intersection => {
            let Some((first, rest)) = inputs.split_first() else {
                return JsonObject::new();
            };
            first
                .data
                .iter()
                .filter(|(key, _)| rest.iter().all(|input| input.data.contains_key(*key)))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        }
        MergeStrategy::Deep => {
            let mut merged = JsonObject::new();
            for input in inputs {
                deep_merge_into(&mut merged, input.data);
            }
            merged
        }
    }
}

/// Merges `from` into `into`: objects on both sides merge key by key, anything else is replaced.
fn deep_merge_into(into: &mut JsonObject, from: &JsonObject) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(serde_json::Value::Object(existing)), serde_json::Value::Object(incoming)) => {
                deep_merge_into(existing, incoming);
            }
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{Value, json};

    fn object(value: Value) -> JsonObject {
        value.as_object().unwrap().clone()
    }

    fn merge(strategy: MergeStrategy, inputs: &[(Value, i64)]) -> Value {
        let objects: Vec<(JsonObject, DateTime<Utc>)> = inputs
            .iter()
            .map(|(data, second)| (object(data.clone()), Utc.timestamp_opt(*second, 0).unwrap()))
            .collect();
        let inputs: Vec<MergeInput<'_>> = objects
            .iter()
            .map(|(data, updated_at)| MergeInput {
                data,
                updated_at: *updated_at,
            })
            .collect();
        Value::Object(merge_data(strategy, &inputs))
    }

    #[test]
    fn latest_takes_the_most_recently_updated_and_a_tie_goes_to_the_later() {
        let inputs = [
            (json!({"a": 1}), 10),
            (json!({"b": 2}), 30),
            (json!({"c": 3}), 20),
        ];
        assert_eq!(merge(MergeStrategy::Latest, &inputs), json!({"b": 2}));
        let tie = [(json!({"a": 1}), 10), (json!({"b": 2}), 10)];
        assert_eq!(merge(MergeStrategy::Latest, &tie), json!({"b": 2}));
    }

    #[test]
    fn union_keeps_every_key_and_later_values_win() {
        let inputs = [
            (json!({"a": 1, "b": {"x": 1}}), 0),
            (json!({"b": {"y": 2}, "c": 3}), 0),
        ];
        assert_eq!(
            merge(MergeStrategy::Union, &inputs),
            json!({"a": 1, "b": {"y": 2}, "c": 3})
        );
    }

    #[test]
    fn intersection_keeps_shared_keys_with_the_first_values() {
        let inputs = [
            (json!({"a": 1, "b": 2, "c": 3}), 0),
            (json!({"b": 20, "c": 30, "d": 40}), 0),
            (json!({"c": 300, "b": 200}), 0),
        ];
        assert_eq!(
            merge(MergeStrategy::Intersection, &inputs),
            json!({"b": 2, "c": 3})
        );
        let disjoint = [(json!({"a": 1}), 0), (json!({"b": 1}), 0)];
        assert_eq!(merge(MergeStrategy::Intersection, &disjoint), json!({}));
    }

    #[test]
    fn deep_merges_nested_objects_recursively_and_replaces_everything_else() {
        let inputs = [
            (
                json!({"user": {"name": "jo", "prefs": {"theme": "dark", "lang": "en"}}, "tags": [1]}),
                0,
            ),
            (
                json!({"user": {"prefs": {"lang": "fr"}, "age": 30}, "tags": [2], "n": 1}),
                0,
            ),
            (json!({"user": {"prefs": "reset"}}), 0),
        ];
        assert_eq!(
            merge(MergeStrategy::Deep, &inputs),
            json!({"user": {"name": "jo", "prefs": "reset", "age": 30}, "tags": [2], "n": 1})
        );
        let two = [
            (json!({"o": {"a": {"x": 1}}}), 0),
            (json!({"o": {"a": {"y": 2}, "b": 3}}), 0),
        ];
        assert_eq!(
            merge(MergeStrategy::Deep, &two),
            json!({"o": {"a": {"x": 1, "y": 2}, "b": 3}})
        );
    }

    #[test]
    fn strategies_parse_by_name_only() {
        assert_eq!(MergeStrategy::parse("deep"), Some(MergeStrategy::Deep));
        assert_eq!(MergeStrategy::parse("Deep"), None);
        assert_eq!(MergeStrategy::parse("newest"), None);
    }
}
