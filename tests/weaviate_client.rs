//! `WeaviateIndex` against the fake Weaviate of `tests/common/weaviate_fake.rs`, which answers as
//! `shared/weaviate/CONTRACT.md` documents and checks every body against Weaviate's spec. Each
//! test ends by asserting that no request broke the spec.

#[path = "common/weaviate_fake.rs"]
mod weaviate_fake;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use contextd::config::{Secret, WeaviateSettings};
use contextd::domain::{ContextId, JsonObject, Source};
use contextd::vector::weaviate::{RetryPolicy, WeaviateIndex, class_definition, object_id};
use contextd::vector::{Hit, SearchQuery, VectorEntry, VectorError, VectorIndex};
use serde_json::{Value, json};
use weaviate_fake::FakeWeaviate;

const CLASS: &str = "FactoryContext";

/// Fast retries, so the failure tests take milliseconds.
const FAST: RetryPolicy = RetryPolicy {
    attempts: 4,
    initial_backoff: Duration::from_millis(2),
    max_backoff: Duration::from_millis(10),
};

fn settings(fake: &FakeWeaviate, api_key: Option<&str>) -> WeaviateSettings {
    WeaviateSettings {
        url: Some(fake.url()),
        api_key: api_key.map(|k| Secret::new(k.to_owned())),
        class_name: CLASS.to_owned(),
        timeout_ms: 2_000,
    }
}

fn index(fake: &FakeWeaviate, dimensions: usize) -> WeaviateIndex {
    WeaviateIndex::new(&settings(fake, None), dimensions)
        .unwrap()
        .with_retry_policy(FAST)
}

async fn prepared(fake: &FakeWeaviate, dimensions: usize) -> WeaviateIndex {
    let index = index(fake, dimensions);
    index.prepare().await.unwrap();
    index
}

fn id(raw: &str) -> ContextId {
    ContextId::parse(raw).unwrap()
}

fn entry(raw: &str, vector: &[f32]) -> VectorEntry {
    let data = JsonObject::from_value(&json!({"name": raw})).unwrap();
    VectorEntry {
        id: id(raw),
        version: 1,
        vector: vector.to_vec(),
        source: Source::Factory,
        parent_id: None,
        data,
        metadata: JsonObject::empty(),
        updated_at: Utc.with_ymd_and_hms(2026, 8, 20, 10, 0, 0).unwrap(),
    }
}

fn near(vector: &[f32], min_certainty: f64) -> SearchQuery {
    SearchQuery {
        vector: vector.to_vec(),
        limit: 10,
        min_certainty,
        source: None,
        parent_id: None,
        visible: contextd::domain::Visible::to(&contextd::domain::Principal::system()),
    }
}

fn ids(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

fn count(fake: &FakeWeaviate, method: &str, path: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|(m, p, _)| m == method && p == path)
        .count()
}

fn bodies(fake: &FakeWeaviate, method: &str, path: &str) -> Vec<Value> {
    fake.requests()
        .into_iter()
        .filter(|(m, p, _)| m == method && p == path)
        .map(|(_, _, body)| body)
        .collect()
}

fn assert_no_violations(fake: &FakeWeaviate) {
    assert_eq!(fake.violations(), Vec::<String>::new(), "spec violations");
}

/// Weaviate's own cosine fixture (CONTRACT §7.1).
async fn with_cosine_fixture(fake: &FakeWeaviate) -> WeaviateIndex {
    let index = prepared(fake, 2).await;
    index
        .upsert(vec![
            entry("same", &[0.7, 0.3]),
            entry("double", &[1.4, 0.6]),
            entry("diagonal", &[1.0, 1.0]),
            entry("opposite", &[-0.7, -0.3]),
        ])
        .await
        .unwrap();
    index
}

// ----------------------------------------------------------------------------------------------
// Class bootstrap

#[tokio::test]
async fn prepare_creates_the_contracts_class_when_it_is_absent() {
    let fake = FakeWeaviate::start().await;
    let index = index(&fake, 2);
    assert_eq!(index.backend(), "weaviate");
    index.prepare().await.unwrap();

    let requests: Vec<(String, String)> = fake
        .requests()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    assert_eq!(
        requests,
        vec![
            ("GET".into(), "/v1/schema/FactoryContext".into()),
            ("POST".into(), "/v1/schema".into()),
        ]
    );
    assert_eq!(
        bodies(&fake, "POST", "/v1/schema")[0],
        class_definition(CLASS)
    );
    let class = fake.class(CLASS).unwrap();
    assert_eq!(class["vectorizer"], "none");
    assert_eq!(class["vectorIndexConfig"]["distance"], "cosine");
    assert_eq!(class["properties"].as_array().unwrap().len(), 6);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn prepare_only_reads_a_class_that_already_fits() {
    let fake = FakeWeaviate::start().await;
    prepared(&fake, 2).await;
    fake.clear_requests();
    index(&fake, 2).prepare().await.unwrap();
    assert_eq!(count(&fake, "GET", "/v1/schema/FactoryContext"), 1);
    assert_eq!(fake.requests().len(), 1);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn two_instances_preparing_at_once_both_succeed_and_one_class_is_created() {
    let fake = FakeWeaviate::start().await;
    // Both reads see no class, so both create it: one gets 200, the other 422 "already exists".
    fake.sync_schema_reads(2);
    let (a, b) = (index(&fake, 2), index(&fake, 2));
    let (first, second) = tokio::join!(a.prepare(), b.prepare());
    first.unwrap();
    second.unwrap();
    assert_eq!(count(&fake, "POST", "/v1/schema"), 2);
    // The loser read the class again, and verified it.
    assert_eq!(count(&fake, "GET", "/v1/schema/FactoryContext"), 3);
    assert!(fake.class(CLASS).is_some());
    assert_no_violations(&fake);
}

#[tokio::test]
async fn an_existing_class_with_another_distance_is_a_clear_error_and_is_left_alone() {
    let fake = FakeWeaviate::start().await;
    let mut wrong = class_definition(CLASS);
    wrong["vectorIndexConfig"]["distance"] = json!("dot");
    let created = reqwest::Client::new()
        .post(format!("{}/v1/schema", fake.url()))
        .json(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);

    let error = index(&fake, 2).prepare().await.unwrap_err();
    let VectorError::Rejected(message) = &error else {
        panic!("{error:?}")
    };
    assert!(
        message.contains("vectorIndexConfig.distance is \"dot\""),
        "{message}"
    );
    assert!(message.contains("never alters or deletes"), "{message}");
    assert_eq!(
        fake.class(CLASS).unwrap()["vectorIndexConfig"]["distance"],
        "dot"
    );
    assert!(fake.requests().iter().all(|(m, _, _)| m != "DELETE"));
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_class_whose_name_differs_only_in_case_is_a_clear_error() {
    let fake = FakeWeaviate::start().await;
    let created = reqwest::Client::new()
        .post(format!("{}/v1/schema", fake.url()))
        .json(&class_definition("FACTORYCONTEXT"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let error = index(&fake, 2).prepare().await.unwrap_err();
    let VectorError::Rejected(message) = &error else {
        panic!("{error:?}")
    };
    assert!(message.contains("found similar class"), "{message}");
    assert_no_violations(&fake);
}

// ----------------------------------------------------------------------------------------------
// Upsert and search

#[tokio::test]
async fn hits_come_in_cosine_order_with_weaviates_certainty_and_distance() {
    let fake = FakeWeaviate::start().await;
    let index = with_cosine_fixture(&fake).await;
    let hits = index.search(&near(&[0.7, 0.3], 0.0)).await.unwrap();

    // [0.7,0.3] and [1.4,0.6] point the same way: both at distance 0, in either order.
    let mut first_two = ids(&hits[..2]);
    first_two.sort();
    assert_eq!(first_two, ["double", "same"]);
    assert_eq!(ids(&hits[2..]), ["diagonal", "opposite"]);
    let expected = [
        (1.0, 0.0),
        (1.0, 0.0),
        (0.964_238_3, 0.071_523_3),
        (0.0, 2.0),
    ];
    for (hit, (certainty, distance)) in hits.iter().zip(expected) {
        assert!((hit.certainty - certainty).abs() < 1e-6, "{hit:?}");
        assert!((hit.distance - distance).abs() < 1e-6, "{hit:?}");
    }
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_certainty_of_0_95_drops_the_opposite_vector_and_0_97_also_the_diagonal() {
    let fake = FakeWeaviate::start().await;
    let index = with_cosine_fixture(&fake).await;
    let at_95 = index.search(&near(&[0.7, 0.3], 0.95)).await.unwrap();
    assert_eq!(at_95.len(), 3, "{at_95:?}");
    assert_eq!(at_95[2].id.as_str(), "diagonal");
    let at_97 = index.search(&near(&[0.7, 0.3], 0.97)).await.unwrap();
    let mut left = ids(&at_97);
    left.sort();
    assert_eq!(left, ["double", "same"]);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn the_query_carries_the_vector_as_a_literal_and_certainty_only_when_set() {
    let fake = FakeWeaviate::start().await;
    let index = with_cosine_fixture(&fake).await;
    index.search(&near(&[0.7, 0.3], 0.0)).await.unwrap();
    index.search(&near(&[0.7, 0.3], 0.95)).await.unwrap();
    let queries: Vec<String> = bodies(&fake, "POST", "/v1/graphql")
        .iter()
        .map(|b| b["query"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        queries[0],
        "{ Get { FactoryContext(nearVector: {vector: [0.7, 0.3]}, limit: 10) \
         { contextId _additional { certainty distance } } } }"
    );
    assert!(
        queries[1].contains("{vector: [0.7, 0.3], certainty: 0.95}"),
        "{}",
        queries[1]
    );
    assert_no_violations(&fake);
}

#[tokio::test]
async fn the_limit_caps_the_hits() {
    let fake = FakeWeaviate::start().await;
    let index = with_cosine_fixture(&fake).await;
    let mut query = near(&[1.0, 1.0], 0.0);
    query.limit = 1;
    assert_eq!(ids(&index.search(&query).await.unwrap()), ["diagonal"]);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn search_filters_on_source_on_parent_id_and_on_both() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    let mut child_mcp = entry("child_mcp", &[1.0, 0.0]);
    child_mcp.source = Source::Mcp;
    child_mcp.parent_id = Some(id("root"));
    let mut child_factory = entry("child_factory", &[0.9, 0.1]);
    child_factory.parent_id = Some(id("root"));
    let mut other_mcp = entry("other_mcp", &[0.8, 0.2]);
    other_mcp.source = Source::Mcp;
    index
        .upsert(vec![
            entry("root", &[0.7, 0.3]),
            child_mcp,
            child_factory,
            other_mcp,
        ])
        .await
        .unwrap();

    let mut query = near(&[1.0, 0.0], 0.0);
    query.source = Some(Source::Mcp);
    assert_eq!(
        ids(&index.search(&query).await.unwrap()),
        ["child_mcp", "other_mcp"]
    );

    query.source = None;
    query.parent_id = Some(id("root"));
    assert_eq!(
        ids(&index.search(&query).await.unwrap()),
        ["child_mcp", "child_factory"]
    );

    query.source = Some(Source::Factory);
    assert_eq!(ids(&index.search(&query).await.unwrap()), ["child_factory"]);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_parent_filter_does_not_match_a_look_alike_id() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    let mut underscore = entry("a", &[1.0, 0.0]);
    underscore.parent_id = Some(id("ctx_1"));
    let mut dash = entry("b", &[1.0, 0.0]);
    dash.parent_id = Some(id("ctx-1"));
    index.upsert(vec![underscore, dash]).await.unwrap();
    let mut query = near(&[1.0, 0.0], 0.0);
    query.parent_id = Some(id("ctx_1"));
    // `field` tokenization: with `word`, ctx_1 and ctx-1 would both be the words "ctx" and "1".
    assert_eq!(ids(&index.search(&query).await.unwrap()), ["a"]);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn an_object_holds_the_contracts_properties_under_the_uuid5_of_its_id() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    let mut e = entry("ctx_123", &[0.7, 0.3]);
    e.parent_id = Some(id("ctx_1"));
    e.metadata = JsonObject::from_value(&json!({"team": "a"})).unwrap();
    index.upsert(vec![e]).await.unwrap();

    let stored = fake
        .stored_object("65f31481-1306-5c03-9aaf-fd7694153e8f")
        .expect("stored under the contract's uuid");
    assert_eq!(
        stored["properties"],
        json!({"contextId": "ctx_123", "content": "ctx_123", "metadata": "{\"team\":\"a\"}",
               "timestamp": "2026-08-20T10:00:00Z", "source": "factory", "parentId": "ctx_1"})
    );
    let vector: Vec<f64> = serde_json::from_value(stored["vector"].clone()).unwrap();
    assert_eq!(vector, [0.7, 0.3]);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_second_upsert_replaces_the_vector() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    index
        .upsert(vec![entry("moving", &[1.0, 0.0])])
        .await
        .unwrap();
    index
        .upsert(vec![entry("moving", &[0.0, 1.0])])
        .await
        .unwrap();
    assert_eq!(fake.objects(), 1);
    let hits = index.search(&near(&[0.0, 1.0], 0.99)).await.unwrap();
    assert_eq!(ids(&hits), ["moving"]);
    assert!(
        index
            .search(&near(&[1.0, 0.0], 0.99))
            .await
            .unwrap()
            .is_empty()
    );
    assert_no_violations(&fake);
}

#[tokio::test]
async fn an_id_given_twice_in_one_upsert_keeps_the_last_vector() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    index
        .upsert(vec![
            entry("twice", &[1.0, 0.0]),
            entry("twice", &[0.0, 1.0]),
        ])
        .await
        .unwrap();
    assert_eq!(
        bodies(&fake, "POST", "/v1/batch/objects")[0]["objects"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let stored = fake
        .stored_object(&object_id(&id("twice")).to_string())
        .unwrap();
    assert_eq!(stored["vector"], json!([0.0, 1.0]));
    assert_no_violations(&fake);
}

#[tokio::test]
async fn large_upserts_are_sent_in_batches_of_100() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    let entries: Vec<VectorEntry> = (0..250)
        .map(|i| entry(&format!("ctx_{i}"), &[1.0, i as f32]))
        .collect();
    index.upsert(entries).await.unwrap();
    let sizes: Vec<usize> = bodies(&fake, "POST", "/v1/batch/objects")
        .iter()
        .map(|b| b["objects"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(fake.objects(), 250);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn an_empty_upsert_or_delete_sends_nothing() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    fake.clear_requests();
    index.upsert(Vec::new()).await.unwrap();
    index.delete(Vec::new()).await.unwrap();
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn searching_a_class_without_objects_finds_nothing() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    assert!(
        index
            .search(&near(&[1.0, 0.0], 0.0))
            .await
            .unwrap()
            .is_empty()
    );
    assert_no_violations(&fake);
}

// ----------------------------------------------------------------------------------------------
// Delete

#[tokio::test]
async fn deleting_one_context_deletes_its_object_by_uuid_and_a_missing_one_is_fine() {
    let fake = FakeWeaviate::start().await;
    let index = with_cosine_fixture(&fake).await;
    index.delete(vec![id("same")]).await.unwrap();
    let path = format!("/v1/objects/FactoryContext/{}", object_id(&id("same")));
    assert_eq!(count(&fake, "DELETE", &path), 1);
    assert_eq!(fake.objects(), 3);
    index.delete(vec![id("never_written")]).await.unwrap();
    let hits = index.search(&near(&[0.7, 0.3], 0.0)).await.unwrap();
    assert!(!ids(&hits).contains(&"same"));
    assert_no_violations(&fake);
}

#[tokio::test]
async fn deleting_many_contexts_is_one_batch_delete_on_context_id() {
    let fake = FakeWeaviate::start().await;
    let index = with_cosine_fixture(&fake).await;
    index
        .delete(vec![id("same"), id("double"), id("never_written")])
        .await
        .unwrap();
    let deletes = bodies(&fake, "DELETE", "/v1/batch/objects");
    assert_eq!(deletes.len(), 1);
    assert_eq!(
        deletes[0]["match"]["where"],
        json!({"path": ["contextId"], "operator": "ContainsAny", "valueTextArray": ["same", "double", "never_written"]})
    );
    assert_eq!(fake.objects(), 2);
    let hits = index.search(&near(&[0.7, 0.3], 0.0)).await.unwrap();
    assert_eq!(ids(&hits), ["diagonal", "opposite"]);
    assert_no_violations(&fake);
}

// ----------------------------------------------------------------------------------------------
// Failures and retries

#[tokio::test]
async fn failed_batch_items_are_sent_again_alone_and_then_succeed() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    fake.fail_next_items(1, "cannot reach enough replicas");
    index
        .upsert(vec![
            entry("a", &[1.0, 0.0]),
            entry("b", &[0.0, 1.0]),
            entry("c", &[1.0, 1.0]),
        ])
        .await
        .unwrap();
    let batches = bodies(&fake, "POST", "/v1/batch/objects");
    assert_eq!(batches.len(), 2);
    let resent = batches[1]["objects"].as_array().unwrap();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0]["properties"]["contextId"], "a");
    assert_eq!(fake.objects(), 3);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn batch_items_that_keep_failing_end_as_unavailable() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    fake.fail_next_items(100, "cannot reach enough replicas");
    let error = index
        .upsert(vec![entry("a", &[1.0, 0.0])])
        .await
        .unwrap_err();
    assert!(matches!(error, VectorError::Unavailable(_)), "{error:?}");
    assert_eq!(count(&fake, "POST", "/v1/batch/objects"), 3);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_vector_whose_length_differs_from_the_class_is_rejected_without_retry() {
    let fake = FakeWeaviate::start().await;
    prepared(&fake, 3)
        .await
        .upsert(vec![entry("three", &[1.0, 2.0, 3.0])])
        .await
        .unwrap();
    fake.clear_requests();
    // Another instance configured with 2 dimensions: the server refuses the object itself.
    let error = index(&fake, 2)
        .upsert(vec![entry("two", &[1.0, 2.0])])
        .await
        .unwrap_err();
    let VectorError::Rejected(message) = &error else {
        panic!("{error:?}")
    };
    assert!(message.contains("vector with length 2"), "{message}");
    assert!(message.contains("two"), "{message}");
    assert_eq!(count(&fake, "POST", "/v1/batch/objects"), 1);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_vector_whose_length_differs_from_the_index_is_rejected_before_any_request() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    fake.clear_requests();
    let upsert = index.upsert(vec![entry("a", &[1.0, 2.0, 3.0])]).await;
    assert!(
        matches!(upsert, Err(VectorError::Rejected(_))),
        "{upsert:?}"
    );
    let search = index.search(&near(&[1.0], 0.0)).await;
    assert!(
        matches!(search, Err(VectorError::Rejected(_))),
        "{search:?}"
    );
    let nan = index.search(&near(&[1.0, f32::NAN], 0.0)).await;
    assert!(matches!(nan, Err(VectorError::Rejected(_))), "{nan:?}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_graphql_error_answered_with_http_200_is_rejected() {
    let fake = FakeWeaviate::start().await;
    let two = prepared(&fake, 2).await;
    two.upsert(vec![entry("a", &[1.0, 0.0])]).await.unwrap();
    // An index that does not check dimensions itself: the server's storage layer refuses.
    let unchecked = index(&fake, 0);
    let error = unchecked
        .search(&near(&[1.0, 0.0, 0.0], 0.0))
        .await
        .unwrap_err();
    let VectorError::Rejected(message) = &error else {
        panic!("{error:?}")
    };
    assert!(message.contains("vector lengths don't match"), "{message}");
    assert_eq!(count(&fake, "POST", "/v1/graphql"), 1);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn server_errors_and_429_are_retried_until_they_pass() {
    let fake = FakeWeaviate::start().await;
    let index = with_cosine_fixture(&fake).await;

    fake.fail_next(2, 503);
    assert_eq!(
        index.search(&near(&[0.7, 0.3], 0.0)).await.unwrap().len(),
        4
    );
    assert_eq!(count(&fake, "POST", "/v1/graphql"), 3);

    fake.fail_next(1, 429);
    index
        .upsert(vec![entry("late", &[0.0, 1.0])])
        .await
        .unwrap();
    assert_eq!(fake.objects(), 5);

    fake.fail_next(3, 500);
    index.delete(vec![id("late")]).await.unwrap();
    assert_eq!(fake.objects(), 4);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_server_error_that_persists_is_unavailable_after_the_retries() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    fake.clear_requests();
    fake.fail_next(100, 500);
    let error = index.search(&near(&[1.0, 0.0], 0.0)).await.unwrap_err();
    assert!(matches!(error, VectorError::Unavailable(_)), "{error:?}");
    assert_eq!(fake.requests().len(), FAST.attempts as usize);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable_and_usable_again_when_back() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    fake.set_down(true);
    // The pooled connection gets 503 and `Connection: close`; every later one is cut at once.
    assert!(matches!(
        index.ping().await,
        Err(VectorError::Unavailable(_))
    ));
    fake.clear_requests();
    assert!(matches!(
        index.upsert(vec![entry("a", &[1.0, 0.0])]).await,
        Err(VectorError::Unavailable(_))
    ));
    assert!(matches!(
        index.search(&near(&[1.0, 0.0], 0.0)).await,
        Err(VectorError::Unavailable(_))
    ));
    assert!(matches!(
        index.prepare().await,
        Err(VectorError::Unavailable(_))
    ));
    assert!(fake.requests().is_empty(), "no request got through");
    fake.set_down(false);
    index.ping().await.unwrap();
    index.upsert(vec![entry("a", &[1.0, 0.0])]).await.unwrap();
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_server_that_is_not_listening_is_unavailable() {
    // A port that was just free: connecting to it is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = WeaviateSettings {
        url: Some(format!("http://127.0.0.1:{port}")),
        timeout_ms: 500,
        ..WeaviateSettings::default()
    };
    let index = WeaviateIndex::new(&settings, 2)
        .unwrap()
        .with_retry_policy(FAST);
    assert!(matches!(
        index.prepare().await,
        Err(VectorError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_4xx_is_rejected_without_retry() {
    let fake = FakeWeaviate::start().await;
    let index = prepared(&fake, 2).await;
    fake.clear_requests();
    fake.fail_next(1, 422);
    let error = index
        .upsert(vec![entry("a", &[1.0, 0.0])])
        .await
        .unwrap_err();
    let VectorError::Rejected(message) = &error else {
        panic!("{error:?}")
    };
    assert!(
        message.contains("422") && message.contains("fake: injected failure"),
        "{message}"
    );
    assert_eq!(fake.requests().len(), 1);
    assert_no_violations(&fake);
}

// ----------------------------------------------------------------------------------------------
// Auth, readiness, meta

#[tokio::test]
async fn the_api_key_goes_out_as_a_bearer_token() {
    let fake = FakeWeaviate::start().await;
    fake.require_api_key(Some("k-123".into()));
    let index = WeaviateIndex::new(&settings(&fake, Some("k-123")), 2)
        .unwrap()
        .with_retry_policy(FAST);
    index.prepare().await.unwrap();
    index.upsert(vec![entry("a", &[1.0, 0.0])]).await.unwrap();
    assert_eq!(
        index.search(&near(&[1.0, 0.0], 0.0)).await.unwrap().len(),
        1
    );
    index.delete(vec![id("a")]).await.unwrap();
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_wrong_or_missing_api_key_is_rejected_with_a_hint() {
    let fake = FakeWeaviate::start().await;
    fake.require_api_key(Some("k-123".into()));
    for key in [Some("wrong"), None] {
        let index = WeaviateIndex::new(&settings(&fake, key), 2)
            .unwrap()
            .with_retry_policy(FAST);
        let error = index.prepare().await.unwrap_err();
        let VectorError::Rejected(message) = &error else {
            panic!("{error:?}")
        };
        assert!(
            message.contains("401") && message.contains("api_key"),
            "{message}"
        );
        assert!(
            !message.contains("wrong"),
            "the key must not be echoed: {message}"
        );
    }
    assert_no_violations(&fake);
}

#[tokio::test]
async fn ping_asks_the_exact_ready_path_and_needs_no_key() {
    let fake = FakeWeaviate::start().await;
    fake.require_api_key(Some("k-123".into()));
    index(&fake, 2).ping().await.unwrap();
    assert_eq!(
        fake.requests(),
        vec![(
            "GET".to_owned(),
            "/v1/.well-known/ready".to_owned(),
            Value::Null
        )]
    );
    fake.fail_next(1, 503);
    assert!(matches!(
        index(&fake, 2).ping().await,
        Err(VectorError::Unavailable(_))
    ));
    assert_no_violations(&fake);
}

#[tokio::test]
async fn the_server_version_comes_from_meta() {
    let fake = FakeWeaviate::start().await;
    assert_eq!(index(&fake, 2).server_version().await.unwrap(), "1.39.0");
    assert_no_violations(&fake);
}

// ----------------------------------------------------------------------------------------------
// The fake itself: it must catch what it is there to catch

/// A request to the fake by hand; a `Null` body sends none.
async fn raw(
    fake: &FakeWeaviate,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{}/v1{path}", fake.url()));
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_fake_refuses_and_records_a_body_that_breaks_the_spec() {
    let fake = FakeWeaviate::start().await;
    prepared(&fake, 2).await;
    let (status, body) = raw(
        &fake,
        reqwest::Method::POST,
        "/batch/objects",
        json!({"objects": [{"class": CLASS, "id": "not-a-uuid", "vector": ["x"]}]}),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["code"], 601);
    let violations = fake.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains("body.objects.0.id"),
        "{violations:?}"
    );
    assert!(
        violations[0].contains("body.objects.0.vector.0"),
        "{violations:?}"
    );

    let (status, _) = raw(
        &fake,
        reqwest::Method::DELETE,
        "/batch/objects",
        json!({"match": {"class": CLASS, "where": {"operator": "Sometimes", "path": ["contextId"]}}}),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(fake.violations().len(), 2);
}

#[tokio::test]
async fn the_fake_answers_a_malformed_query_with_errors_and_http_200() {
    let fake = FakeWeaviate::start().await;
    prepared(&fake, 2).await;
    let (status, body) = raw(
        &fake,
        reqwest::Method::POST,
        "/graphql",
        json!({"query": "{ Get { FactoryContext("}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.get("data").is_none(), "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Syntax Error"),
        "{body}"
    );

    let both = "{ Get { FactoryContext(nearVector: {vector: [1, 0], certainty: 0.5, distance: 0.2}) { contextId } } }";
    let (status, body) = raw(
        &fake,
        reqwest::Method::POST,
        "/graphql",
        json!({"query": both}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["Get"]["FactoryContext"], Value::Null);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cannot provide distance and certainty")
    );

    let quoted = r#"{ Get { FactoryContext(where: {path: ["source"], operator: "Equal", valueText: "mcp"}) { contextId } } }"#;
    let (_, body) = raw(
        &fake,
        reqwest::Method::POST,
        "/graphql",
        json!({"query": quoted}),
    )
    .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("WhereOperatorEnum"),
        "{body}"
    );

    let (status, body) = raw(
        &fake,
        reqwest::Method::POST,
        "/graphql",
        json!({"query": ""}),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"][0]["message"], "query cannot be empty");
    assert_no_violations(&fake);
}

#[tokio::test]
async fn the_fake_answers_the_contracts_schema_and_object_errors() {
    let fake = FakeWeaviate::start().await;
    let object_class =
        json!({"class": "Other", "properties": [{"name": "meta", "dataType": ["object"]}]});
    let (status, body) = raw(&fake, reqwest::Method::POST, "/schema", object_class).await;
    assert_eq!(status, 422);
    assert!(
        body["error"][0]["message"]
            .as_str()
            .unwrap()
            .contains("At least one nested property is required")
    );

    prepared(&fake, 2).await;
    let (status, body) = raw(
        &fake,
        reqwest::Method::POST,
        "/schema",
        class_definition(CLASS),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        body["error"][0]["message"],
        "class name FactoryContext already exists"
    );

    let bad_date = json!({"objects": [{"class": CLASS, "id": object_id(&id("ctx_456")).to_string(),
        "properties": {"contextId": "ctx_456", "metadata": "{}", "timestamp": "yesterday"}, "vector": [1, 1]}]});
    let (status, body) = raw(&fake, reqwest::Method::POST, "/batch/objects", bad_date).await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["result"]["status"], "FAILED");
    assert!(
        body[0]["result"]["errors"]["error"][0]["message"]
            .as_str()
            .unwrap()
            .contains("requires a string with a RFC3339 formatted date")
    );

    let unknown = format!("/objects/{CLASS}/{}", object_id(&id("nobody")));
    let (status, _) = raw(
        &fake,
        reqwest::Method::PUT,
        &unknown,
        json!({"class": CLASS, "vector": [1, 0]}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = raw(
        &fake,
        reqwest::Method::DELETE,
        &format!("/objects/{CLASS}/abc"),
        Value::Null,
    )
    .await;
    assert_eq!((status, body["code"].as_i64()), (422, Some(601)));
    assert_no_violations(&fake);
}

#[test]
fn the_vendored_spec_is_weaviates_own_byte_for_byte() {
    use sha2::Digest;
    let spec = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/common/weaviate/openapi-schema.json"
    ))
    .unwrap();
    // The sha256 that tests/common/weaviate/SOURCE.md gives for Weaviate v1.39.0's spec.
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&spec)),
        "89ff24334838706580dc88d03e84ef8901237c65439b69177118ae96aab2e811"
    );
}
