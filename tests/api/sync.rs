//! Sync with Factory AI: ingest statuses and atomic batches, the Factory-format read, the change
//! feed's paging, and the webhook push (order after failures, signature, one delivery per change
//! with two instances pushing, and writes never waiting on it).

use std::sync::Arc;
use std::time::Duration;

use contextd::config::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Receiver, Setup, StandardReceiver, TestApp, TestDb, problem};

async fn ingest(app: &TestApp, body: Value) -> Vec<Value> {
    let response = app.post("/sync/factory", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["results"].as_array().unwrap().clone()
}

fn status(result: &Value) -> (&str, i64) {
    (
        result["status"].as_str().unwrap(),
        result["version"].as_i64().unwrap(),
    )
}

async fn ingest_answers_created_unchanged_updated_and_skipped_stale(store: Setup) {
    let app = TestApp::spawn(store).await;
    let item = |data: Value, ts: &str| json!({"id": "f1", "data": data, "metadata": {"m": 1}, "timestamp": ts});
    let first = ingest(&app, item(json!({"a": 1}), "2026-01-01T00:00:10Z")).await;
    assert_eq!(first[0]["id"], "f1");
    assert_eq!(status(&first[0]), ("created", 1));
    // The same content is unchanged, whatever its timestamp (decided first).
    let same = ingest(&app, item(json!({"a": 1}), "2020-01-01T00:00:00Z")).await;
    assert_eq!(status(&same[0]), ("unchanged", 1));
    let newer = ingest(&app, item(json!({"a": 2}), "2026-01-01T00:00:20Z")).await;
    assert_eq!(status(&newer[0]), ("updated", 2));
    let older = ingest(&app, item(json!({"a": 3}), "2026-01-01T00:00:15Z")).await;
    assert_eq!(status(&older[0]), ("skipped_stale", 2));

    let stored: Value = app.get("/contexts/f1").await.json().await.unwrap();
    assert_eq!(stored["source"], "factory");
    assert_eq!(stored["data"], json!({"a": 2}));
    assert_eq!(stored["metadata"], json!({"m": 1}));
    let history: Value = app.get("/contexts/f1/versions").await.json().await.unwrap();
    assert_eq!(history["items"][0]["change_type"], "sync");
}

async fn staleness_falls_back_to_updated_at_and_no_timestamp_is_never_stale(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put("r", json!({"data": {"from": "rest"}, "source": "mcp"}))
        .await;
    let past = json!({"id": "r", "data": {"from": "factory"}, "timestamp": "2020-01-01T00:00:00Z"});
    assert_eq!(status(&ingest(&app, past).await[0]), ("skipped_stale", 1));
    let untimed = json!({"id": "r", "data": {"from": "factory"}});
    assert_eq!(status(&ingest(&app, untimed).await[0]), ("updated", 2));
}

async fn a_batch_is_stored_in_order_with_a_status_each(store: Setup) {
    let app = TestApp::spawn(store).await;
    let results = ingest(
        &app,
        json!({"contexts": [
            {"id": "b1", "data": {"n": 1}},
            {"data": {"generated": true}},
            {"id": "b1", "data": {"n": 2}},
            {"id": "b2", "data": {}, "embedding": [1.0, 0.0, 0.0, 0.0]},
        ]}),
    )
    .await;
    let statuses: Vec<(&str, i64)> = results.iter().map(status).collect();
    assert_eq!(
        statuses,
        [
            ("created", 1),
            ("created", 1),
            ("updated", 2),
            ("created", 1)
        ]
    );
    let generated = results[1]["id"].as_str().unwrap();
    assert!(generated.starts_with("ctx_"), "{generated}");
    let b2: Value = app.get("/contexts/b2").await.json().await.unwrap();
    assert_eq!(b2["has_embedding"], true);
}

async fn one_bad_item_refuses_the_batch_naming_its_index_and_stores_nothing(store: Setup) {
    let app = TestApp::spawn(store).await;
    let cases = [
        (json!({"id": "x2", "data": [1]}), "contexts[1]"),
        (json!({"id": "bad id", "data": {}}), "contexts[1]"),
        (
            json!({"id": "x2", "data": {}, "timestamp": "yesterday"}),
            "contexts[1]",
        ),
        (
            json!({"id": "x2", "data": {}, "embedding": [1.0]}),
            "contexts[1]",
        ),
        (
            json!({"id": "x2", "data": {}, "metadata": "m"}),
            "contexts[1]",
        ),
    ];
    for (bad, named) in cases {
        let body = json!({"contexts": [{"id": "x1", "data": {}}, bad, {"id": "x3", "data": {}}]});
        let problem = problem(
            app.post("/sync/factory", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(named), "{named} not in {detail}");
    }
    for id in ["x1", "x2", "x3"] {
        problem(
            app.get(&format!("/contexts/{id}")).await,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("m{i}"), "data": {}}))
        .collect();
    for body in [
        json!({"contexts": []}),
        json!({"contexts": too_many}),
        json!([1]),
    ] {
        problem(
            app.post("/sync/factory", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
}

async fn the_factory_read_gives_updated_at_as_timestamp(store: Setup) {
    let app = TestApp::spawn(store).await;
    let written = app.put_data("f", json!({"a": 1})).await;
    let response = app.get("/sync/factory/f").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"id": "f", "data": {"a": 1}, "metadata": {}, "version": 1,
               "timestamp": written["updated_at"]})
    );
    problem(app.get("/sync/factory/nope").await, StatusCode::NOT_FOUND).await;
}

/// Every change of the feed, paging by `next_since` with `limit`.
async fn whole_feed(app: &TestApp, limit: usize) -> Vec<Value> {
    let mut since = 0;
    let mut all = Vec::new();
    loop {
        let page: Value = app
            .get(&format!(
                "/sync/factory/changes?since={since}&limit={limit}"
            ))
            .await
            .json()
            .await
            .unwrap();
        let changes = page["changes"].as_array().unwrap().clone();
        let next = page["next_since"].as_i64().unwrap();
        if changes.is_empty() {
            assert_eq!(next, since);
            return all;
        }
        assert!(changes.len() <= limit);
        since = next;
        all.extend(changes);
    }
}

async fn the_change_feed_pages_in_commit_order_without_gaps_or_repeats(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("a", json!({"n": 1})).await;
    app.put_data("b", json!({"n": 1})).await;
    app.put_data("a", json!({"n": 2})).await;
    app.delete("/contexts/b").await;
    ingest(&app, json!({"id": "f", "data": {"n": 1}})).await;

    let feed = whole_feed(&app, 2).await;
    let summary: Vec<(String, i64, String)> = feed
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["version"].as_i64().unwrap(),
                c["op"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a".into(), 1, "upsert".into()),
            ("b".into(), 1, "upsert".into()),
            ("a".into(), 2, "upsert".into()),
            ("b".into(), 1, "delete".into()),
            ("f".into(), 1, "upsert".into()),
        ]
    );
    let seqs: Vec<i64> = feed.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Upserts carry their version in Factory format; the deleted one's content is gone.
    assert_eq!(
        feed[2]["context"],
        json!({"id": "a", "data": {"n": 2}, "metadata": {}, "version": 2,
               "timestamp": feed[2]["context"]["timestamp"]})
    );
    assert!(feed[1].get("context").is_none() && feed[3].get("context").is_none());
    // Past the end: empty, and next_since stays.
    let last = *seqs.last().unwrap();
    let page: Value = app
        .get(&format!("/sync/factory/changes?since={last}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page, json!({"changes": [], "next_since": last}));
    for bad in ["since=-1", "since=x", "since=", "limit=0", "limit=1001"] {
        problem(
            app.get(&format!("/sync/factory/changes?{bad}")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
}

async fn a_recreated_context_never_shows_its_predecessors_content_in_the_feed(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("c", json!({"life": 1})).await;
    app.delete("/contexts/c").await;
    app.put_data("c", json!({"life": 2})).await;
    let feed = whole_feed(&app, 100).await;
    assert_eq!(feed.len(), 3);
    assert!(feed[0].get("context").is_none(), "{}", feed[0]);
    assert_eq!(feed[2]["context"]["data"], json!({"life": 2}));
}

#[tokio::test]
async fn concurrent_writers_leave_a_feed_numbered_without_gaps() {
    let app = Arc::new(TestApp::spawn(Setup::POSTGRES).await);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let app = app.clone();
        writers.spawn(async move {
            for i in 0..15 {
                app.put_data(&format!("w{w}"), json!({"i": i})).await;
            }
        });
    }
    // Read the feed while they write: a page must never skip a change that commits later.
    // Each read runs the sequencer, so three readers also prove that sequencers running at
    // once never hand out one number twice.
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut since = 0;
                let mut seen = Vec::new();
                while seen.len() < 120 {
                    let response = app
                        .get(&format!("/sync/factory/changes?since={since}&limit=7"))
                        .await;
                    assert_eq!(response.status(), StatusCode::OK);
                    let page: Value = response.json().await.unwrap();
                    for change in page["changes"].as_array().unwrap() {
                        seen.push(change["seq"].as_i64().unwrap());
                    }
                    since = page["next_since"].as_i64().unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen
            })
        })
        .collect();
    while let Some(result) = writers.join_next().await {
        result.unwrap();
    }
    for reader in readers {
        let seen = tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .expect("the reader saw every change")
            .unwrap();
        assert_eq!(seen, (1..=120).collect::<Vec<i64>>());
    }
}

async fn with_webhook(store: Setup, receiver: &Receiver, secret: Option<&str>) -> TestApp {
    let url = receiver.url.clone();
    let secret = secret.map(|s| Secret::new(s.to_owned()));
    TestApp::spawn_with(store, move |s| {
        s.sync.factory.webhook_url = Some(url);
        s.sync.factory.secret = secret;
        s.sync.factory.retry_initial_ms = 20;
        s.sync.factory.retry_max_ms = 200;
    })
    .await
}

async fn every_change_is_pushed_in_order_and_signed(store: Setup) {
    let receiver = Receiver::start().await;
    let app = with_webhook(store, &receiver, Some("s3cret")).await;
    app.put_data("a", json!({"n": 1})).await;
    app.put_data("a", json!({"n": 2})).await;
    // Pushed before the delete, the upserts still carry their content.
    receiver.wait_for(2, Duration::from_secs(10)).await;
    app.delete("/contexts/a").await;
    let changes = receiver.wait_for(3, Duration::from_secs(10)).await;
    let ops: Vec<(&str, i64, &str)> = changes
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap(),
                c["version"].as_i64().unwrap(),
                c["op"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [("a", 1, "upsert"), ("a", 2, "upsert"), ("a", 2, "delete")]
    );
    assert_eq!(changes[1]["context"]["data"], json!({"n": 2}));
    for request in receiver.received() {
        let expected = contextd::sync::signature("s3cret", &request.body);
        assert_eq!(request.signature.as_deref(), Some(expected.as_str()));
    }
    let summary: Value = app.get("/metrics/summary").await.json().await.unwrap();
    assert_eq!(summary["sync"]["running"], true);
    assert!(summary["sync"]["last_latency_ms"].as_f64().unwrap() >= 0.0);
}

/// Signed per Standard Webhooks, checked by its reference library: each push verifies (a
/// `whsec_` secret and a plain one), a retry carries the same `webhook-id` with a fresh
/// signature, and the timestamp is the attempt's.
async fn pushes_verify_with_the_standard_webhooks_reference_library(store: Setup) {
    for secret in ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "plain s3cret"] {
        let receiver = StandardReceiver::start(secret, 1);
        let app = TestApp::spawn_with(store, |s| {
            s.sync.factory.webhook_url = Some(receiver.url.clone());
            s.sync.factory.secret = Some(contextd::config::Secret::new(secret.to_owned()));
            s.sync.factory.retry_initial_ms = 20;
            s.sync.factory.retry_max_ms = 200;
        })
        .await;
        app.put_data("signed", json!({"n": 1})).await;
        let accepted = receiver.wait_for_accepted(1, Duration::from_secs(10)).await;
        let records = receiver.records();
        assert!(records.iter().all(|r| r["verified"] == true), "{records:?}");
        let (failed, delivered) = (&records[0], &accepted[0]);
        assert_eq!(failed["status"], 500);
        assert_eq!(failed["id"], delivered["id"], "a retry keeps its id");
        assert_eq!(failed["seqs"], delivered["seqs"]);
        assert!(failed["id"].as_str().unwrap().starts_with("msg_"));
        let now = chrono::Utc::now().timestamp();
        let sent: i64 = delivered["timestamp"].as_str().unwrap().parse().unwrap();
        assert!((now - 60..=now).contains(&sent), "{sent} vs {now}");
    }
    // The reference library does refuse a push signed with another secret.
    let receiver = StandardReceiver::start("the receiver's secret", 0);
    let app = TestApp::spawn_with(store, |s| {
        s.sync.factory.webhook_url = Some(receiver.url.clone());
        s.sync.factory.secret = Some(contextd::config::Secret::new("another".to_owned()));
    })
    .await;
    app.put_data("forged", json!({"n": 1})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while receiver.records().is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing was pushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.records()[0]["verified"], false);
}

async fn a_failing_receiver_gets_everything_in_order_once_it_recovers(store: Setup) {
    let receiver = Receiver::start().await;
    receiver.fail_next(3);
    let app = with_webhook(store, &receiver, None).await;
    for n in 0..5 {
        app.put_data(&format!("k{n}"), json!({"n": n})).await;
    }
    let changes = receiver.wait_for(5, Duration::from_secs(10)).await;
    let seqs: Vec<i64> = changes.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.len(), 5, "delivered more than once: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let requests = receiver.received();
    assert!(requests.iter().filter(|r| !r.accepted).count() == 3);
    // The first delivery that failed is the first one retried: nothing overtook it.
    let first_failed = requests.iter().find(|r| !r.accepted).unwrap().changes();
    assert_eq!(first_failed[0]["seq"], changes[0]["seq"]);
    // No body without signature when no secret is set.
    assert!(requests.iter().all(|r| r.signature.is_none()));
    // The pusher records a delivery once the receiver's answer is back, which may be just
    // after the receiver counted it: wait for the figures to settle.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        let summary: Value = app.get("/metrics/summary").await.json().await.unwrap();
        let settled = metrics.contains("contextd_sync_latency_seconds_count 5")
            && summary["sync"]["pending"] == 0;
        if settled {
            assert!(
                metrics.contains("contextd_sync_delivery_failures_total 3"),
                "{metrics}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pending {}; {metrics}",
            summary["sync"]["pending"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_dead_receiver_never_slows_a_write_and_changes_wait(store: Setup) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", dead.local_addr().unwrap());
    drop(dead);
    let app = TestApp::spawn_with(store, move |s| s.sync.factory.webhook_url = Some(url)).await;
    for n in 0..5 {
        let started = std::time::Instant::now();
        app.put_data("w", json!({"n": n})).await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let summary: Value = app.get("/metrics/summary").await.json().await.unwrap();
    assert_eq!(summary["sync"]["pending"], 5);
}

#[tokio::test]
async fn two_instances_pushing_deliver_each_change_once() {
    let receiver = Receiver::start().await;
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let mut settings = TestApp::settings_for(&db.url());
    settings.sync.factory.webhook_url = Some(receiver.url.clone());
    settings.sync.interval_seconds = 1;
    let a = TestApp::start(db.clone(), settings.clone()).await;
    let b = TestApp::start(db, settings).await;
    for n in 0..40 {
        let app = if n % 2 == 0 { &a } else { &b };
        app.put_data(&format!("k{}", n % 7), json!({"n": n})).await;
    }
    let changes = receiver.wait_for(40, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seqs: Vec<i64> = receiver
        .accepted_changes()
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(changes.len(), 40);
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<i64>>(),
        "duplicates or disorder"
    );
}

crate::on_both_stores!(
    ingest_answers_created_unchanged_updated_and_skipped_stale,
    staleness_falls_back_to_updated_at_and_no_timestamp_is_never_stale,
    a_batch_is_stored_in_order_with_a_status_each,
    one_bad_item_refuses_the_batch_naming_its_index_and_stores_nothing,
    the_factory_read_gives_updated_at_as_timestamp,
    the_change_feed_pages_in_commit_order_without_gaps_or_repeats,
    a_recreated_context_never_shows_its_predecessors_content_in_the_feed,
    every_change_is_pushed_in_order_and_signed,
    a_failing_receiver_gets_everything_in_order_once_it_recovers,
    pushes_verify_with_the_standard_webhooks_reference_library,
    a_dead_receiver_never_slows_a_write_and_changes_wait,
);
