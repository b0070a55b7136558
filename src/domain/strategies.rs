//! Merge strategies of `POST /contexts/merge`: how the `data` of several contexts becomes one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use std::collections::{BTreeMap, BTreeSet};

use super::JsonObject;
use super::json::members_of;

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

/// Merges `inputs` (at least one) by `strategy`. Values are taken as canonical text, so no
/// tree is built but where `deep` meets an object on both sides.
pub fn merge_data(strategy: MergeStrategy, inputs: &[MergeInput<'_>]) -> JsonObject {
    match strategy {
        MergeStrategy::Latest => inputs
            .iter()
            // `max_by_key` keeps the last of equal maxima: a tie goes to the later context.
            .max_by_key(|input| input.updated_at)
            .map(|input| input.data.clone())
            .unwrap_or_default(),
        MergeStrategy::Union => {
            let members: Vec<_> = inputs.iter().map(|input| input.data.members()).collect();
            // `from_members` keeps the last of a repeated key: a later context's value wins.
            JsonObject::from_members(
                members
                    .iter()
                    .flatten()
                    .map(|(key, value)| (key, value.get())),
            )
        }
        MergeStrategy::Intersection => {
            let Some((first, rest)) = inputs.split_first() else {
                return JsonObject::empty();
            };
            let rest: Vec<BTreeSet<String>> = rest
                .iter()
                .map(|input| {
                    input
                        .data
                        .members()
                        .into_iter()
                        .map(|(k, _)| k.into_owned())
                        .collect()
                })
                .collect();
            let members = first.data.members();
            JsonObject::from_members(
                members
                    .iter()
                    .filter(|(key, _)| rest.iter().all(|keys| keys.contains(key.as_ref())))
                    .map(|(key, value)| (key, value.get())),
            )
        }
        MergeStrategy::Deep => {
            let mut merged = BTreeMap::new();
            for input in inputs {
                deep_merge_into(&mut merged, input.data.as_str());
            }
            JsonObject::from_members(merged)
        }
    }
}

/// Merges the object `from` (canonical text) into `into` (key -> canonical text of the
/// value): objects on both sides merge key by key, anything else is replaced.
fn deep_merge_into(into: &mut BTreeMap<String, String>, from: &str) {
    for (key, value) in members_of(from) {
        match into.get_mut(key.as_ref()) {
            Some(existing) if is_object(existing) && is_object(value.get()) => {
                let mut inner = BTreeMap::new();
                deep_merge_into(&mut inner, existing);
                deep_merge_into(&mut inner, value.get());
                *existing = JsonObject::from_members(inner).as_str().to_owned();
            }
            _ => {
                into.insert(key.into_owned(), value.get().to_owned());
            }
        }
    }
}

/// Whether canonical text is an object.
fn is_object(text: &str) -> bool {
    text.starts_with('{')
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{Value, json};

    fn object(value: Value) -> JsonObject {
        JsonObject::from_value(&value).unwrap()
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
        serde_json::from_str(merge_data(strategy, &inputs).as_str()).unwrap()
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
