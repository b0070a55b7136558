//! Operations: health, readiness (with the store cut off for real), metrics, OpenAPI, Swagger UI.

use std::sync::Arc;

use contextd::config::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{PgProxy, Setup, TestApp, TestDb, problem, redis_url};

async fn healthz_answers_ok(store: Setup) {
    let app = TestApp::spawn(store).await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
}

async fn readyz_reports_the_store_and_redis_disabled_unless_configured(store: Setup) {
    let app = TestApp::spawn(store).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({
            "status": "ok",
            "store": store.backend.name(),
            "checks": {
                "store": "ok",
                "redis": if store.redis { "ok" } else { "disabled" },
                "vector": "ok",
                "embedder": "disabled"
            },
            "vector": {"backend": "embedded", "backlog": 0}
        })
    );
}

async fn readyz_reports_a_live_redis_ok_and_a_dead_one_degraded_but_ready(store: Setup) {
    let app = TestApp::spawn_with(store, |s| s.redis.url = Some(Secret::new(redis_url()))).await;
    let body: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(body["checks"]["redis"], "ok", "{body}");

    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("redis://127.0.0.1:{}", dead.local_addr().unwrap().port());
    drop(dead);
    let app = TestApp::spawn_with(store, |s| s.redis.url = Some(Secret::new(dead_url))).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["redis"], "down");
    assert_eq!(body["checks"]["store"], "ok");
}

/// Postgres only: the store is cut off by cutting its TCP connections, and an embedded SQLite
/// file has none.
#[tokio::test]
async fn with_the_store_cut_off_writes_and_readyz_answer_503_cached_reads_still_work_and_all_recovers()
 {
    let db = Arc::new(TestDb::migrated().await);
    let proxy = PgProxy::start().await;
    let settings = TestApp::settings_for(&proxy.url_for(&db.name));
    let app = TestApp::start(db, settings).await;
    app.put_data("cached", json!({"a": 1})).await;

    proxy.cut();
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers().contains_key("retry-after"));
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "down");
    assert_eq!(body["checks"]["store"], "down");

    let write = app.put("other", json!({"data": {}, "source": "mcp"})).await;
    assert!(write.headers().contains_key("retry-after"));
    problem(write, StatusCode::SERVICE_UNAVAILABLE).await;
    problem(
        app.get("/contexts/uncached").await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    // The process still serves, and what L1 holds is still served.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    let cached = app.get("/contexts/cached").await;
    assert_eq!(cached.status(), StatusCode::OK);
    assert_eq!(
        cached.json::<Value>().await.unwrap()["data"],
        json!({"a": 1})
    );

    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if app.get("/readyz").await.status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "readyz never recovered");
    assert_eq!(
        app.put("other", json!({"data": {}, "source": "mcp"}))
            .await
            .status(),
        StatusCode::CREATED
    );
}

async fn metrics_text(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

async fn metrics_count_requests_by_route_template_never_by_raw_path(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("secret-id-1", json!({})).await;
    app.put_data("secret-id-2", json!({})).await;
    app.get("/contexts/secret-id-1").await;
    app.get("/no/such/route").await;

    let text = metrics_text(&app).await;
    assert!(!text.contains("secret-id"), "an id leaked into a label");
    assert!(
        !text.contains("/no/such/route"),
        "a raw path leaked into a label"
    );
    assert_eq!(
        crate::harness::metric(
            &text,
            r#"contextd_http_requests_total{method="PUT",route="/contexts/{id}",status="201"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        crate::harness::metric(
            &text,
            r#"contextd_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains(
        "contextd_http_request_duration_seconds_bucket{method=\"GET\",route=\"/contexts/{id}\""
    ));
}

async fn metrics_gauge_contexts_and_kept_versions(store: Setup) {
    let app = TestApp::spawn_with(store, |s| s.versions.retention = 2).await;
    for n in 0..3 {
        app.put_data("a", json!({"n": n})).await;
    }
    app.put_data("b", json!({})).await;
    let text = metrics_text(&app).await;
    assert_eq!(
        crate::harness::metric(&text, "contextd_contexts"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        crate::harness::metric(&text, "contextd_context_versions"),
        Some(3.0),
        "{text}"
    );
}

/// Postgres only (the proxy): a scrape asks the store nothing, so it answers with the store
/// cut off, and its counts follow this instance's writes and deletes at once.
#[tokio::test]
async fn metrics_come_from_running_counts_without_a_query_per_scrape() {
    let db = Arc::new(TestDb::new(crate::harness::Backend::Postgres).await);
    let proxy = PgProxy::start().await;
    let settings = TestApp::settings_for(&proxy.url_for(&db.name));
    let app = TestApp::start(db, settings).await;
    for id in ["a", "b", "c"] {
        app.put_data(id, json!({"v": 1})).await;
    }
    app.put_data("a", json!({"v": 2})).await;
    assert_eq!(
        app.delete("/contexts/b").await.status(),
        StatusCode::NO_CONTENT
    );
    proxy.cut();
    let started = std::time::Instant::now();
    let text = metrics_text(&app).await;
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
    assert_eq!(
        crate::harness::metric(&text, "contextd_contexts"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        crate::harness::metric(&text, "contextd_context_versions"),
        Some(3.0),
        "{text}"
    );
    let summary = app.get("/metrics/summary").await;
    assert_eq!(summary.status(), StatusCode::OK);
    let summary: Value = summary.json().await.unwrap();
    assert_eq!(summary["contexts"]["total"], 2, "{summary}");
}

async fn metrics_show_the_build_the_process_the_pool_and_redis(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("a", json!({"v": 1})).await;
    let text = metrics_text(&app).await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        crate::harness::metric(
            &text,
            &format!("contextd_build_info{{version=\"{version}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    let rss = crate::harness::metric(&text, "process_resident_memory_bytes").expect("RSS");
    assert!((1e6..1e11).contains(&rss), "{rss}");
    let fds = crate::harness::metric(&text, "process_open_fds").expect("open fds");
    let max_fds = crate::harness::metric(&text, "process_max_fds").expect("max fds");
    assert!(fds >= 3.0 && fds < max_fds, "{fds} of {max_fds}");
    assert!(crate::harness::metric(&text, "process_cpu_seconds_total").expect("cpu") > 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = crate::harness::metric(&text, "process_start_time_seconds").expect("start time");
    assert!(now - started >= 0.0 && now - started < 3600.0, "{started}");
    assert_eq!(
        crate::harness::metric(&text, "contextd_store_up"),
        Some(1.0),
        "{text}"
    );
    assert!(
        crate::harness::metric(&text, "contextd_vector_backlog").is_some(),
        "{text}"
    );
    assert!(
        crate::harness::metric(&text, "contextd_embedding_queue").is_some(),
        "{text}"
    );
    match store.backend {
        crate::harness::Backend::Postgres => {
            let size = crate::harness::metric(&text, "contextd_db_pool_size").expect("pool size");
            assert_eq!(size, app.settings.database.pool_size as f64);
            let in_use =
                crate::harness::metric(&text, "contextd_db_pool_connections{state=\"in_use\"}");
            let idle =
                crate::harness::metric(&text, "contextd_db_pool_connections{state=\"idle\"}");
            let open = in_use.expect("in use") + idle.expect("idle");
            assert!(open >= 1.0 && open <= size, "{text}");
            assert_eq!(
                crate::harness::metric(&text, "contextd_db_pool_waiting"),
                Some(0.0)
            );
        }
        crate::harness::Backend::Sqlite => {
            assert!(
                !text.contains("contextd_db_pool"),
                "no pool to show: {text}"
            );
        }
    }
    if store == Setup::POSTGRES {
        // Everything is on: the families are exactly those docker/metrics.txt lists (which the
        // dashboard's and the alerts' expressions are checked against).
        let exported: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .map(str::to_owned)
            .collect();
        let listed: std::collections::BTreeSet<String> =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/metrics.txt"))
                .unwrap()
                .lines()
                .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
                .filter(|line| !line.starts_with("up "))
                .map(str::to_owned)
                .collect();
        assert_eq!(
            exported, listed,
            "docker/metrics.txt is out of step with /metrics"
        );
    }
    if store.redis {
        assert_eq!(
            crate::harness::metric(&text, "contextd_redis_up"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            crate::harness::metric(&text, "contextd_redis_breaker_open"),
            Some(0.0)
        );
    } else {
        assert!(
            !text.contains("contextd_redis_"),
            "no Redis to show: {text}"
        );
    }
}

/// `contextd_store_up` follows the store without making a scrape wait for it.
#[tokio::test]
async fn store_up_falls_when_postgres_stops_answering_and_scrapes_stay_fast() {
    let db = Arc::new(TestDb::new(crate::harness::Backend::Postgres).await);
    let proxy = PgProxy::start().await;
    let settings = TestApp::settings_for(&proxy.url_for(&db.name));
    let app = TestApp::start(db, settings).await;
    assert_eq!(
        crate::harness::metric(&metrics_text(&app).await, "contextd_store_up"),
        Some(1.0)
    );
    proxy.cut();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let started = std::time::Instant::now();
        let text = metrics_text(&app).await;
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        if crate::harness::metric(&text, "contextd_store_up") == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store_up stayed 1: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    proxy.restore();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while crate::harness::metric(&metrics_text(&app).await, "contextd_store_up") != Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "store_up stayed 0");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn metrics_pass_promtool_check_metrics(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("a", json!({})).await;
    app.get("/contexts/a").await;
    let text = metrics_text(&app).await;

    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian package `prometheus`; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn the_served_openapi_document_is_the_committed_one(store: Setup) {
    let app = TestApp::spawn(store).await;
    let served = app.get("/openapi.json").await.text().await.unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json is committed");
    assert!(
        served == committed,
        "openapi/openapi.json is stale: run `cargo run -- openapi --output openapi/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();

    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/contexts",
        "/contexts/{id}",
        "/contexts/{id}/versions",
        "/contexts/{id}/versions/{n}",
        "/contexts/{id}/versions/{n}/restore",
        "/healthz",
        "/readyz",
        "/metrics",
        "/metrics/summary",
        "/cache/warm",
        "/contexts/merge",
        "/sync/factory",
        "/sync/factory/{id}",
        "/sync/factory/changes",
        "/contexts/search",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
}

async fn swagger_ui_is_served_with_its_assets_and_no_internet(store: Setup) {
    let app = TestApp::spawn(store).await;
    let page = app.get("/swagger-ui/").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        let response = app.get(&format!("/swagger-ui/{asset}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("https://unpkg.com"),
            "{asset} loads from the internet"
        );
    }
    let initializer = app
        .get("/swagger-ui/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(initializer.contains("/openapi.json"), "{initializer}");
}

crate::on_both_stores!(
    healthz_answers_ok,
    readyz_reports_the_store_and_redis_disabled_unless_configured,
    readyz_reports_a_live_redis_ok_and_a_dead_one_degraded_but_ready,
    metrics_count_requests_by_route_template_never_by_raw_path,
    metrics_gauge_contexts_and_kept_versions,
    metrics_pass_promtool_check_metrics,
    metrics_show_the_build_the_process_the_pool_and_redis,
    the_served_openapi_document_is_the_committed_one,
    swagger_ui_is_served_with_its_assets_and_no_internet,
);
