//! The three-way merge of top-level keys behind `?on_conflict=merge`.

use std::collections::{BTreeMap, BTreeSet};

use super::JsonObject;

/// Merges `ours` (the write being made) into `theirs` (the current version), both descended from
/// `base` (the version the writer read, named by `If-Match`).
///
/// Per top-level key: a key changed on one side only (added, replaced or removed) takes that
/// side's value; a key changed the same way on both sides takes it; a key changed differently
/// on both sides is a conflict. Conflicting keys come back sorted, so the answer is stable.
pub fn three_way_merge(
    base: &JsonObject,
    theirs: &JsonObject,
    ours: &JsonObject,
) -> Result<JsonObject, Vec<String>> {
    let (base, theirs_members, ours_members) = (members(base), members(theirs), members(ours));
    let keys: BTreeSet<&String> = base
        .keys()
        .chain(theirs_members.keys())
        .chain(ours_members.keys())
        .collect();

    let mut merged = Vec::new();
    let mut conflicts = Vec::new();
    for key in keys {
        // Canonical text: equal values have equal text.
        let (b, t, o) = (
            base.get(key),
            theirs_members.get(key),
            ours_members.get(key),
        );
        let value = if t == o || o == b {
            t
        } else if t == b {
            o
        } else {
            conflicts.push(key.clone());
            continue;
        };
        if let Some(value) = value {
            merged.push((key.as_str(), *value));
        }
    }

    if conflicts.is_empty() {
        Ok(JsonObject::from_members(merged))
    } else {
        Err(conflicts)
    }
}

/// An object's top-level members: key -> canonical text of the value.
fn members(object: &JsonObject) -> BTreeMap<String, &str> {
    object
        .members()
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.get()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn object(value: Value) -> JsonObject {
        JsonObject::from_value(&value).unwrap()
    }

    fn merge(base: Value, theirs: Value, ours: Value) -> Result<Value, Vec<String>> {
        three_way_merge(&object(base), &object(theirs), &object(ours))
            .map(|merged| serde_json::from_str(merged.as_str()).unwrap())
    }

    #[test]
    fn keys_changed_on_different_sides_are_both_kept() {
        let merged = merge(
            json!({"a": 1, "b": 1}),
            json!({"a": 2, "b": 1}),
            json!({"a": 1, "b": 3}),
        );
        assert_eq!(merged, Ok(json!({"a": 2, "b": 3})));
    }

    #[test]
    fn keys_added_on_each_side_are_both_kept() {
        let merged = merge(json!({}), json!({"t": true}), json!({"o": true}));
        assert_eq!(merged, Ok(json!({"t": true, "o": true})));
    }

    #[test]
    fn a_key_removed_on_one_side_and_untouched_on_the_other_is_removed() {
        assert_eq!(
            merge(
                json!({"a": 1, "b": 2}),
                json!({"b": 2}),
                json!({"a": 1, "b": 2})
            ),
            Ok(json!({"b": 2}))
        );
        assert_eq!(
            merge(
                json!({"a": 1, "b": 2}),
                json!({"a": 1, "b": 2}),
                json!({"b": 2})
            ),
            Ok(json!({"b": 2}))
        );
    }

    #[test]
    fn the_same_change_on_both_sides_is_not_a_conflict() {
        assert_eq!(
            merge(json!({"a": 1}), json!({"a": 5}), json!({"a": 5})),
            Ok(json!({"a": 5}))
        );
        assert_eq!(merge(json!({"a": 1}), json!({}), json!({})), Ok(json!({})));
    }

    #[test]
    fn different_changes_to_one_key_are_a_conflict_naming_it() {
        let merged = merge(
            json!({"a": 1, "z": 1, "k": 0}),
            json!({"a": 2, "z": 2, "k": 1}),
            json!({"a": 3, "z": 3, "k": 0}),
        );
        assert_eq!(merged, Err(vec!["a".to_owned(), "z".to_owned()]));
    }

    #[test]
    fn a_removal_against_a_change_is_a_conflict() {
        assert_eq!(
            merge(json!({"a": 1}), json!({}), json!({"a": 2})),
            Err(vec!["a".to_owned()])
        );
        assert_eq!(
            merge(json!({"a": 1}), json!({"a": 2}), json!({})),
            Err(vec!["a".to_owned()])
        );
    }

    #[test]
    fn nested_objects_are_compared_whole_not_merged() {
        let merged = merge(
            json!({"o": {"x": 1, "y": 1}}),
            json!({"o": {"x": 2, "y": 1}}),
            json!({"o": {"x": 1, "y": 2}}),
        );
        assert_eq!(merged, Err(vec!["o".to_owned()]));
    }

    #[test]
    fn with_no_concurrent_change_ours_wins_entirely() {
        let base = json!({"a": 1, "b": [1, 2]});
        assert_eq!(
            merge(base.clone(), base, json!({"a": 9})),
            Ok(json!({"a": 9}))
        );
    }
}
