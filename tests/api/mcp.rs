//! `/mcp` driven by rmcp's own client over Streamable HTTP: revision 2026-07-28 (discovery,
//! stateless requests, `subscriptions/listen`) and the 2025 revisions (`initialize`, a session,
//! `resources/subscribe`).

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion, ReadResourceRequestParams, ResourceContents, ResourceUpdatedNotificationParam,
    ServerNotification, SubscribeRequestParams, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RunningService, Subscription};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::harness::{Backend, Setup, TestApp, TestDb, problem, use_redis};

/// How long a notification may take before the test gives up; the contract's bound is 1 s,
/// measured by `benches/mcp.rs`, and a loaded CI machine must not fail on timing.
const PATIENCE: Duration = Duration::from_secs(10);

/// rmcp's Streamable HTTP client transport (over its own reqwest) to the app's `/mcp`.
macro_rules! transport {
    ($app:expr) => {
        StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(
            $app.url("/mcp"),
        ))
    };
}

/// A client on revision 2026-07-28: `server/discover`, then self-contained requests.
async fn modern(app: &TestApp) -> RunningService<RoleClient, ClientConfig> {
    ClientConfig::default()
        .serve_with_lifecycle(
            transport!(app),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("the client discovers the server")
}

/// A 2025 client: `initialize` opens a session; resource updates arrive on `updates`.
#[derive(Clone)]
struct LegacyClient {
    version: ProtocolVersion,
    updates: mpsc::UnboundedSender<String>,
}

impl ClientHandler for LegacyClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("contextd-tests", "1"),
        )
        .with_protocol_version(self.version.clone())
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.updates.send(params.uri);
    }
}

async fn legacy(
    app: &TestApp,
    version: ProtocolVersion,
) -> (
    RunningService<RoleClient, LegacyClient>,
    mpsc::UnboundedReceiver<String>,
) {
    let (updates, received) = mpsc::unbounded_channel();
    let client = LegacyClient { version, updates }
        .serve(transport!(app))
        .await
        .expect("the client initializes");
    (client, received)
}

async fn call(
    client: &RunningService<RoleClient, impl ClientHandler>,
    tool: &'static str,
    arguments: Value,
) -> CallToolResult {
    let Value::Object(arguments) = arguments else {
        panic!("tool arguments are an object");
    };
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(arguments))
        .await
        .unwrap_or_else(|e| panic!("{tool} answers with a tool result: {e}"))
}

/// The structured result of a successful call, checked against its text.
fn ok(result: CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let structured = result
        .structured_content
        .clone()
        .expect("structuredContent");
    let text = &result.content[0].as_text().expect("a text block").text;
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), structured);
    structured
}

/// The problem+json of a refused call, with the given status.
fn refused(result: CallToolResult, status: u16) -> Value {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let text = &result.content[0].as_text().expect("a text block").text;
    let problem: Value = serde_json::from_str(text).expect("the text is problem+json");
    assert_eq!(problem["status"], status, "{problem}");
    assert!(problem["type"].as_str().is_some() && problem["detail"].as_str().is_some());
    problem
}

async fn the_seven_tools_are_listed_with_object_schemas(store: Setup) {
    let app = TestApp::spawn(store).await;
    let client = modern(&app).await;
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "context_history",
            "delete_context",
            "get_context",
            "list_contexts",
            "merge_contexts",
            "put_context",
            "search_contexts"
        ]
    );
    for tool in &tools {
        assert_eq!(tool.input_schema["type"], "object", "{}", tool.name);
        assert!(tool.description.as_deref().is_some_and(|d| d.len() > 40));
    }
    let put = tools.iter().find(|t| t.name == "put_context").unwrap();
    let required = put.input_schema["required"].as_array().unwrap();
    assert!(required.contains(&json!("context_id")) && required.contains(&json!("data")));
    assert!(put.input_schema["properties"]["expected_version"].is_object());
    let merge = tools.iter().find(|t| t.name == "merge_contexts").unwrap();
    assert!(merge.input_schema["properties"]["context_ids"].is_object());
}

async fn tools_return_the_rest_bodies(store: Setup) {
    let app = TestApp::spawn(store).await;
    let client = modern(&app).await;

    let created = ok(call(
        &client,
        "put_context",
        json!({"context_id": "m1", "data": {"a": 1}}),
    )
    .await);
    assert_eq!(created["version"], 1);
    assert_eq!(created["source"], "mcp");
    let rest: Value = app.get("/contexts/m1").await.json().await.unwrap();
    assert_eq!(created, rest);
    assert_eq!(
        ok(call(&client, "get_context", json!({"context_id": "m1"})).await),
        rest
    );

    let updated = ok(call(
        &client,
        "put_context",
        json!({"context_id": "m1", "data": {"a": 2}, "metadata": {"k": "v"},
               "expected_version": 1, "changed_by": "agent-7"}),
    )
    .await);
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["metadata"], json!({"k": "v"}));
    let first = ok(call(
        &client,
        "get_context",
        json!({"context_id": "m1", "version": 1}),
    )
    .await);
    assert_eq!(first["data"], json!({"a": 1}));

    let history = ok(call(&client, "context_history", json!({"context_id": "m1"})).await);
    let rest: Value = app.get("/contexts/m1/versions").await.json().await.unwrap();
    assert_eq!(history, rest);
    assert_eq!(history["items"][0]["changed_by"], "agent-7");

    app.put_data("m2", json!({"b": 1})).await;
    let listed = ok(call(&client, "list_contexts", json!({"limit": 1})).await);
    let rest: Value = app.get("/contexts?limit=1").await.json().await.unwrap();
    assert_eq!(listed, rest);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let next = ok(call(
        &client,
        "list_contexts",
        json!({"limit": 1, "cursor": listed["next_cursor"]}),
    )
    .await);
    assert_eq!(next["items"][0]["context_id"], "m2");
    let factory_only = ok(call(&client, "list_contexts", json!({"source": "factory"})).await);
    assert_eq!(factory_only["items"], json!([]));
    let mcp_only = ok(call(&client, "list_contexts", json!({"source": "mcp"})).await);
    assert_eq!(mcp_only["items"].as_array().unwrap().len(), 2);

    let merged = ok(call(
        &client,
        "merge_contexts",
        json!({"context_ids": ["m1", "m2"], "strategy": "union", "target_id": "both"}),
    )
    .await);
    assert_eq!(merged["context_id"], "both");
    assert_eq!(merged["data"], json!({"a": 2, "b": 1}));
    assert_eq!(merged["parent_id"], "m1");

    ok(call(
        &client,
        "put_context",
        json!({"context_id": "near", "data": {}, "embedding": [1.0, 0.0, 0.0, 0.0]}),
    )
    .await);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let found = loop {
        let found = ok(call(
            &client,
            "search_contexts",
            json!({"vector": [1.0, 0.1, 0.0, 0.0], "limit": 3}),
        )
        .await);
        if !found["results"].as_array().unwrap().is_empty()
            || tokio::time::Instant::now() > deadline
        {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(found["results"][0]["context_id"], "near");
    assert!(found["results"][0]["score"].as_f64().unwrap() > 0.9);
    assert_eq!(found["results"][0]["matched"], json!(["vector"]));
    // By words, with no vector at all: an agent needs none.
    ok(call(
        &client,
        "put_context",
        json!({"context_id": "notes", "data": {"text": "the staging deploy failed on Tuesday"}}),
    )
    .await);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let by_words = loop {
        let found = ok(call(
            &client,
            "search_contexts",
            json!({"query": "deploy staging"}),
        )
        .await);
        if !found["results"].as_array().unwrap().is_empty()
            || tokio::time::Instant::now() > deadline
        {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(by_words["results"][0]["context_id"], "notes", "{by_words}");
    assert_eq!(by_words["results"][0]["matched"], json!(["keyword"]));
    assert_eq!(by_words["results"][0]["score"], 1.0);

    let deleted = ok(call(&client, "delete_context", json!({"context_id": "m2"})).await);
    assert_eq!(deleted, json!({"context_id": "m2", "deleted": true}));
    problem(app.get("/contexts/m2").await, StatusCode::NOT_FOUND).await;
}

async fn a_refusal_is_an_error_result_with_the_problem_and_no_change(store: Setup) {
    let app = TestApp::spawn(store).await;
    let client = modern(&app).await;
    app.put_data("r", json!({"v": 1})).await;
    app.put_data("r", json!({"v": 2})).await;

    let stale = refused(
        call(
            &client,
            "put_context",
            json!({"context_id": "r", "data": {"v": 9}, "expected_version": 1}),
        )
        .await,
        412,
    );
    assert_eq!(stale["current_version"], 2);
    let rest: Value = app.get("/contexts/r").await.json().await.unwrap();
    assert_eq!(rest["data"], json!({"v": 2}), "nothing was written");

    refused(
        call(&client, "get_context", json!({"context_id": "nope"})).await,
        404,
    );
    refused(
        call(&client, "get_context", json!({"context_id": "bad id!"})).await,
        422,
    );
    refused(
        call(
            &client,
            "merge_contexts",
            json!({"context_ids": ["r", "ghost"], "strategy": "union"}),
        )
        .await,
        404,
    );
    refused(
        call(
            &client,
            "merge_contexts",
            json!({"context_ids": ["r", "r"], "strategy": "sideways"}),
        )
        .await,
        422,
    );
    refused(
        call(&client, "search_contexts", json!({"vector": [1.0, 2.0]})).await,
        422,
    );
    refused(
        call(&client, "list_contexts", json!({"limit": 0})).await,
        422,
    );
    refused(
        call(&client, "delete_context", json!({"context_id": "nope"})).await,
        404,
    );
    let big = "x".repeat(app.settings.limits.max_context_bytes);
    let too_large = refused(
        call(
            &client,
            "put_context",
            json!({"context_id": "big", "data": {"x": big}}),
        )
        .await,
        413,
    );
    assert_eq!(too_large["limit"], app.settings.limits.max_context_bytes);
    problem(app.get("/contexts/big").await, StatusCode::NOT_FOUND).await;

    // Not refusals but protocol errors: no such tool, arguments that miss the schema.
    assert!(
        client
            .call_tool(CallToolRequestParams::new("drop_everything"))
            .await
            .is_err()
    );
    for off_schema in [
        json!({"context_id": "r"}),
        json!({"context_id": "r", "data": [1, 2]}),
    ] {
        let Value::Object(arguments) = off_schema else {
            unreachable!()
        };
        let answer = client
            .call_tool(CallToolRequestParams::new("put_context").with_arguments(arguments))
            .await;
        assert!(answer.is_err(), "{answer:?}");
    }
    let rest: Value = app.get("/contexts/r").await.json().await.unwrap();
    assert_eq!(rest["version"], 2, "nothing was written");
}

async fn resources_page_through_every_context_and_read_from_the_cache(store: Setup) {
    let app = TestApp::spawn(store).await;
    let batch: Vec<Value> = (0..150)
        .map(|i| json!({"id": format!("res{i:03}"), "data": {"i": i}}))
        .collect();
    let response = app.post("/sync/factory", json!({"contexts": batch})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (client, _) = legacy(&app, ProtocolVersion::V_2025_11_25).await;

    let first = client.list_resources(None).await.unwrap();
    assert_eq!(first.resources.len(), 100);
    assert!(first.next_cursor.is_some());
    let all = client.list_all_resources().await.unwrap();
    let uris: Vec<&str> = all.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris.len(), 150);
    assert_eq!(uris[0], "context://res000");
    assert_eq!(uris[149], "context://res149");
    assert!(
        all.iter()
            .all(|r| r.mime_type.as_deref() == Some("application/json"))
    );
    let templates = client.list_all_resource_templates().await.unwrap();
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0].uri_template, "context://{context_id}");

    let hits_before = l1_hits(&app).await;
    for _ in 0..2 {
        let read = client
            .read_resource(ReadResourceRequestParams::new("context://res007"))
            .await
            .unwrap();
        let ResourceContents::TextResourceContents {
            uri,
            mime_type,
            text,
            ..
        } = &read.contents[0]
        else {
            panic!("a text resource");
        };
        assert_eq!(uri, "context://res007");
        assert_eq!(mime_type.as_deref(), Some("application/json"));
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            json!({"i": 7})
        );
    }
    assert!(l1_hits(&app).await > hits_before, "the second read hit L1");
    assert!(
        client
            .read_resource(ReadResourceRequestParams::new("context://ghost"))
            .await
            .is_err()
    );
    assert!(
        client
            .read_resource(ReadResourceRequestParams::new("file:///etc/passwd"))
            .await
            .is_err()
    );
}

async fn l1_hits(app: &TestApp) -> i64 {
    let summary: Value = app.get("/metrics/summary").await.json().await.unwrap();
    summary["cache"]["l1"]["hits"].as_i64().unwrap()
}

async fn next_update(subscription: &mut Subscription) -> String {
    let notification = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("a notification within the patience")
        .expect("the stream is healthy")
        .expect("the stream is open");
    let ServerNotification::ResourceUpdatedNotification(update) = notification else {
        panic!("a resource update, not {notification:?}");
    };
    update.params.uri
}

async fn listening(
    client: &RunningService<RoleClient, ClientConfig>,
    uris: &[&str],
) -> Subscription {
    let subscription = client
        .listen(
            SubscriptionFilter::builder()
                .resource_subscriptions(uris.iter().copied())
                .build(),
        )
        .await
        .expect("the server accepts the subscription");
    assert_eq!(
        subscription
            .acknowledged()
            .resource_subscriptions
            .as_deref(),
        Some(&uris.iter().map(|u| u.to_string()).collect::<Vec<_>>()[..])
    );
    subscription
}

async fn a_listener_hears_every_kind_of_change(store: Setup) {
    let app = TestApp::spawn(store).await;
    let client = modern(&app).await;
    app.put_data("s", json!({"n": 1})).await;
    app.put_data("other", json!({"n": 1})).await;
    let mut subscription = listening(&client, &["context://s"]).await;

    app.put_data("other", json!({"n": 2})).await;
    app.put_data("s", json!({"n": 2})).await;
    assert_eq!(
        next_update(&mut subscription).await,
        "context://s",
        "REST PUT"
    );

    ok(call(
        &client,
        "put_context",
        json!({"context_id": "s", "data": {"n": 3}}),
    )
    .await);
    assert_eq!(next_update(&mut subscription).await, "context://s", "MCP");

    let merged = app
        .post(
            "/contexts/merge",
            json!({"context_ids": ["other", "s"], "strategy": "union", "target_id": "s"}),
        )
        .await;
    assert_eq!(merged.status(), StatusCode::OK);
    assert_eq!(next_update(&mut subscription).await, "context://s", "merge");

    let restored = app.post("/contexts/s/versions/1/restore", json!({})).await;
    assert_eq!(restored.status(), StatusCode::OK);
    assert_eq!(
        next_update(&mut subscription).await,
        "context://s",
        "restore"
    );

    let synced = app
        .post(
            "/sync/factory",
            json!({"id": "s", "data": {"from": "factory"}}),
        )
        .await;
    assert_eq!(synced.status(), StatusCode::OK);
    assert_eq!(next_update(&mut subscription).await, "context://s", "sync");

    assert_eq!(
        app.delete("/contexts/s").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        next_update(&mut subscription).await,
        "context://s",
        "delete"
    );

    // Nothing about `other` ever arrived: only subscribed URIs are sent.
    subscription.cancel().await.unwrap();
}

async fn a_2025_session_subscriber_hears_changes(store: Setup) {
    let app = TestApp::spawn(store).await;
    for version in [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25] {
        let (client, mut updates) = legacy(&app, version.clone()).await;
        assert_eq!(
            client.peer_info().unwrap().protocol_version,
            version,
            "negotiated through initialize"
        );
        #[allow(deprecated)]
        client
            .subscribe(SubscribeRequestParams::new("context://legacy"))
            .await
            .unwrap();
        app.put_data("unrelated", json!({"v": version.to_string()}))
            .await;
        app.put_data("legacy", json!({"v": version.to_string()}))
            .await;
        let uri = tokio::time::timeout(PATIENCE, updates.recv())
            .await
            .expect("an update within the patience")
            .unwrap();
        assert_eq!(uri, "context://legacy");
        // Tools work in the session too.
        let read = ok(call(&client, "get_context", json!({"context_id": "legacy"})).await);
        assert_eq!(read["data"]["v"], version.to_string());
        client.cancel().await.unwrap();
    }
}

/// Postgres only: two instances share a database, and the commit signal of one reaches the
/// subscribers of the other through `LISTEN/NOTIFY`.
#[tokio::test]
async fn a_write_on_another_instance_reaches_the_subscriber() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let mut settings = TestApp::settings_for(&db.url());
    use_redis(&mut settings, &format!("test:mcp:{}:", std::process::id()));
    let a = TestApp::start(db.clone(), settings.clone()).await;
    let b = TestApp::start(db, settings).await;
    let client = modern(&a).await;
    let mut subscription = listening(&client, &["context://shared"]).await;
    b.put_data("shared", json!({"from": "b"})).await;
    assert_eq!(next_update(&mut subscription).await, "context://shared");
    let (legacy_client, mut updates) = legacy(&a, ProtocolVersion::V_2025_11_25).await;
    #[allow(deprecated)]
    legacy_client
        .subscribe(SubscribeRequestParams::new("context://shared"))
        .await
        .unwrap();
    assert_eq!(
        b.delete("/contexts/shared").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(next_update(&mut subscription).await, "context://shared");
    let uri = tokio::time::timeout(PATIENCE, updates.recv())
        .await
        .unwrap();
    assert_eq!(uri.as_deref(), Some("context://shared"));
}

async fn metrics_count_sessions_and_tool_calls_by_tool_and_outcome(store: Setup) {
    let app = TestApp::spawn(store).await;
    let scrape = || async { app.get("/metrics").await.text().await.unwrap() };
    let before = scrape().await;
    assert_eq!(
        crate::harness::metric(&before, "contextd_mcp_sessions"),
        Some(0.0),
        "{before}"
    );
    for outcome in ["ok", "error", "invalid"] {
        let series =
            format!("contextd_mcp_tool_calls_total{{outcome=\"{outcome}\",tool=\"get_context\"}}");
        assert_eq!(
            crate::harness::metric(&before, &series),
            Some(0.0),
            "{series} shows at 0: {before}"
        );
    }
    let (client, _updates) = legacy(&app, ProtocolVersion::V_2025_06_18).await;
    ok(call(
        &client,
        "put_context",
        json!({"context_id": "m", "data": {"v": 1}}),
    )
    .await);
    ok(call(&client, "get_context", json!({"context_id": "m"})).await);
    refused(
        call(&client, "get_context", json!({"context_id": "nope"})).await,
        404,
    );
    let bad = client
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await;
    assert!(bad.is_err(), "{bad:?}");
    let text = scrape().await;
    assert_eq!(
        crate::harness::metric(&text, "contextd_mcp_sessions"),
        Some(1.0),
        "{text}"
    );
    for (tool, outcome, calls) in [
        ("put_context", "ok", 1.0),
        ("get_context", "ok", 1.0),
        ("get_context", "error", 1.0),
        ("unknown", "invalid", 1.0),
        ("search_contexts", "ok", 0.0),
    ] {
        let series =
            format!("contextd_mcp_tool_calls_total{{outcome=\"{outcome}\",tool=\"{tool}\"}}");
        assert_eq!(
            crate::harness::metric(&text, &series),
            Some(calls),
            "{series}: {text}"
        );
    }
    client.cancel().await.unwrap();
}

async fn sessions_are_bounded_and_refused_with_503(store: Setup) {
    let app = TestApp::spawn_with(store, |s| s.mcp.max_sessions = 1).await;
    let (first, _) = legacy(&app, ProtocolVersion::V_2025_11_25).await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "curl", "version": "1"}}});
    let refused = app
        .http
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    let body = problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("mcp.max_sessions")
    );
    // Stateless requests need no session and still pass.
    let client = modern(&app).await;
    ok(call(&client, "list_contexts", json!({})).await);
    first.cancel().await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = app
            .http
            .post(app.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed session freed its place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of an `initialize`, with `padding` bytes of client description.
fn initialize_body(padding: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "curl", "version": "1", "title": "x".repeat(padding)}}}))
    .unwrap()
}

async fn the_session_bound_holds_for_a_chunked_or_large_initialize(store: Setup) {
    let app = TestApp::spawn_with(store, |s| s.mcp.max_sessions = 1).await;
    let (first, _) = legacy(&app, ProtocolVersion::V_2025_11_25).await;
    let chunked = |body: Vec<u8>| {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(7).map(|c| Ok(c.to_vec())).collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };
    for body in [
        chunked(initialize_body(0)),
        reqwest::Body::from(initialize_body(100 * 1024)),
        chunked(initialize_body(100 * 1024)),
    ] {
        let refused = app
            .http
            .post(app.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    }
    first.cancel().await.unwrap();
}

/// A session opened by hand: its id.
async fn raw_session(app: &TestApp) -> String {
    let opened = app
        .http
        .post(app.url("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize_body(0))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), StatusCode::OK);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let initialized = app
        .http
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert!(
        initialized.status().is_success(),
        "{}",
        initialized.status()
    );
    session
}

async fn get_stream(app: &TestApp, session: &str) -> reqwest::Response {
    app.http
        .get(app.url("/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap()
}

async fn streams_are_bounded_per_session_and_in_total(store: Setup) {
    let app = TestApp::spawn_with(store, |s| {
        s.mcp.max_streams_per_session = 2;
        s.mcp.max_streams = 3;
    })
    .await;
    let (a, b) = (raw_session(&app).await, raw_session(&app).await);
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = get_stream(&app, &a).await;
        assert_eq!(stream.status(), StatusCode::OK);
        held.push(stream);
    }
    let refused = problem(get_stream(&app, &a).await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("mcp.max_streams_per_session"),
        "{refused}"
    );
    let third = get_stream(&app, &b).await;
    assert_eq!(third.status(), StatusCode::OK);
    let refused = problem(get_stream(&app, &b).await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("mcp.max_streams)"),
        "{refused}"
    );
    // A closed stream gives its place back.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while get_stream(&app, &a).await.status() != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn discovery_answers_a_plain_post(store: Setup) {
    let app = TestApp::spawn(store).await;
    let response = app
        .http
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "server/discover")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "curl", "version": "1"}}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let message: Value = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .find_map(|data| serde_json::from_str(data.trim()).ok())
        .unwrap_or_else(|| serde_json::from_str(&text).expect("JSON or an SSE event"));
    let result = &message["result"];
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "contextd"
    );
    let versions = result["supportedVersions"].as_array().unwrap();
    for v in ["2025-06-18", "2025-11-25", "2026-07-28"] {
        assert!(versions.contains(&json!(v)), "{v}");
    }
    assert_eq!(result["capabilities"]["resources"]["subscribe"], true);
}

async fn shutdown_ends_open_streams_at_once(store: Setup) {
    let mut app = TestApp::spawn_with(store, |s| s.server.shutdown_grace_seconds = 60).await;
    let client = modern(&app).await;
    let mut subscription = listening(&client, &["context://x"]).await;
    let (_legacy, _) = legacy(&app, ProtocolVersion::V_2025_11_25).await;
    let stopping = app.begin_stop();
    let stopped = tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("open MCP streams do not hold the shutdown for the grace period");
    stopped.unwrap().unwrap();
    let end = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .unwrap();
    assert!(!matches!(end, Ok(Some(_))), "the stream ended: {end:?}");
}

crate::on_both_stores!(
    the_seven_tools_are_listed_with_object_schemas,
    tools_return_the_rest_bodies,
    a_refusal_is_an_error_result_with_the_problem_and_no_change,
    resources_page_through_every_context_and_read_from_the_cache,
    a_listener_hears_every_kind_of_change,
    a_2025_session_subscriber_hears_changes,
    metrics_count_sessions_and_tool_calls_by_tool_and_outcome,
    sessions_are_bounded_and_refused_with_503,
    the_session_bound_holds_for_a_chunked_or_large_initialize,
    streams_are_bounded_per_session_and_in_total,
    discovery_answers_a_plain_post,
    shutdown_ends_open_streams_at_once,
);
