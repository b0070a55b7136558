//! Embeddings stored under other `vector.dimensions`: `serve` still starts (they are left out of
//! search, one warning names the remedy, `/readyz` says the vector check is degraded), and
//! `contextd reindex` drops them so that the next start is clean.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Setup, TestApp, TestDb, contextd, redis_url};

/// The default `vector.dimensions`, which the served binary runs with.
const DEFAULT_DIMENSIONS: usize = 1536;

/// A database (and Redis prefix) where `a` has an embedding of 4 dimensions, `b` none, as an
/// instance with `vector.dimensions: 4` wrote them (and cached them, with Redis L2).
struct Stored {
    db: Arc<TestDb>,
    setup: Setup,
    key_prefix: String,
}

async fn stored_under_four_dimensions(setup: Setup) -> Stored {
    let mut app = TestApp::spawn(setup).await;
    assert_eq!(app.settings.vector.dimensions, 4);
    let response = app
        .put(
            "a",
            json!({"data": {"x": 1}, "source": "factory", "embedding": [1, 0, 0, 0]}),
        )
        .await;
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    app.put_data("b", json!({"y": 2})).await;
    // Read once, so that every cache layer holds `a` with its embedding.
    let read = app.get("/contexts/a?include=embedding").await;
    assert_eq!(read.status(), StatusCode::OK);
    app.stop().await;
    Stored {
        db: app.db.clone(),
        setup,
        key_prefix: app.settings.cache.l2.key_prefix.clone(),
    }
}

impl Stored {
    /// The binary on this store with the default dimensions.
    fn command(&self, command: &str) -> Command {
        let mut cmd = contextd();
        cmd.arg(command)
            .env("DATABASE_URL", self.db.url())
            .env("CONTEXTD__SERVER__BIND", "127.0.0.1:0");
        if self.setup.redis {
            cmd.env("REDIS_URL", redis_url())
                .env("CONTEXTD__CACHE__L2__KEY_PREFIX", &self.key_prefix)
                .env("CONTEXTD__CACHE__L2__ENABLED", self.setup.l2.to_string());
        }
        cmd
    }

    /// `contextd reindex`'s stdout, once it succeeded.
    fn reindex(&self) -> String {
        let output = self.command("reindex").output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `contextd serve`, once `/readyz` answers 200.
    async fn serve(&self) -> Served {
        let mut child = self
            .command("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("listening on http://") {
                    let _ = addr_tx.send(addr.trim().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("serve never listened: {:?}", log.lock().unwrap()));
        let served = Served {
            child,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            log,
        };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = served.http.get(served.url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "never ready: {:?}",
                served.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        served
    }
}

struct Served {
    child: Child,
    base: String,
    http: reqwest::Client,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .request(method, self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// The log lines naming the remedy.
    fn remedy_lines(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("contextd reindex"))
            .cloned()
            .collect()
    }

    /// SIGTERM, and the clean exit it makes.
    fn stop(mut self) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                return;
            }
            assert!(Instant::now() < until, "serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn unit(axis: usize) -> Vec<f32> {
    let mut v = vec![0.0; DEFAULT_DIMENSIONS];
    v[axis] = 1.0;
    v
}

/// The reproduction: an embedding of 4 dimensions under the default 1536 used to stop every
/// start ("the embedding of a has 4 dimensions; the index has 1536").
async fn serve_with_embeddings_of_another_length_serves_them_out_of_search_and_degraded(
    setup: Setup,
) {
    let stored = stored_under_four_dimensions(setup).await;
    let served = stored.serve().await;

    let (status, ready) = served.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["checks"]["vector"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["store"], "ok", "{ready}");
    let remedy = served.remedy_lines();
    assert_eq!(remedy.len(), 1, "one warning naming the remedy: {remedy:?}");
    assert!(remedy[0].contains("1 stored embedding"), "{}", remedy[0]);

    // Search works with the server's own dimensions, and never finds `a`.
    let (status, put) = served
        .send(
            reqwest::Method::PUT,
            "/contexts/c",
            json!({"data": {"z": 3}, "source": "mcp", "embedding": unit(0)}),
        )
        .await;
    assert!(status.is_success(), "{put}");
    let until = Instant::now() + Duration::from_secs(10);
    let results = loop {
        let (status, results) = served
            .send(
                reqwest::Method::POST,
                "/contexts/search",
                json!({"vector": unit(0), "threshold": 0.0}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{results}");
        if !crate::search::ids(&results).is_empty() || Instant::now() > until {
            break results;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(crate::search::ids(&results), ["c"], "{results}");
    // A write of the wrong length is still refused.
    let (status, problem) = served
        .send(
            reqwest::Method::PUT,
            "/contexts/d",
            json!({"data": {}, "source": "mcp", "embedding": [1, 0, 0, 0]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

    // `a` itself is served as stored.
    let (status, a) = served.get("/contexts/a?include=embedding").await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["embedding"], json!([1.0, 0.0, 0.0, 0.0]), "{a}");
    assert_eq!(a["version"], 1);
    // Still degraded: the embedding is still stored.
    assert_eq!(
        served.get("/readyz").await.1["checks"]["vector"],
        "degraded"
    );
    assert_eq!(served.remedy_lines().len(), 1);
    served.stop();
}

async fn reindex_drops_embeddings_of_another_length_and_the_next_start_is_clean(setup: Setup) {
    let stored = stored_under_four_dimensions(setup).await;
    let outbox = "SELECT count(*) FROM factory_sync_outbox";
    let changes_before = stored.db.scalar(outbox).await;

    let first = stored.reindex();
    assert_eq!(
        first.trim(),
        "reindex: 1 embedding of another length dropped (client-supplied), 0 contexts indexed"
    );
    assert_eq!(
        stored.db.scalar(outbox).await,
        changes_before,
        "a drop is no change of the feed"
    );
    let again = stored.reindex();
    assert_eq!(
        again.trim(),
        "reindex: 0 embeddings of another length dropped (client-supplied), 0 contexts indexed"
    );

    let served = stored.serve().await;
    let (status, ready) = served.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["checks"]["vector"], "ok", "{ready}");
    assert!(
        served.remedy_lines().is_empty(),
        "{:?}",
        served.remedy_lines()
    );
    // `a` stays, at its version, without its embedding (no cache layer still has it).
    let (status, a) = served.get("/contexts/a?include=embedding").await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["version"], 1, "{a}");
    assert_eq!(a["data"], json!({"x": 1}), "{a}");
    assert_eq!(a["has_embedding"], false, "{a}");
    assert!(a.get("embedding").is_none_or(Value::is_null), "{a}");
    let (status, b) = served.get("/contexts/b").await;
    assert_eq!((status, &b["data"]), (StatusCode::OK, &json!({"y": 2})));

    // An embedding of the right length is indexed, and counted by the next reindex.
    let (status, put) = served
        .send(
            reqwest::Method::PUT,
            "/contexts/c",
            json!({"data": {}, "source": "mcp", "embedding": unit(1)}),
        )
        .await;
    assert!(status.is_success(), "{put}");
    served.stop();
    assert_eq!(
        stored.reindex().trim(),
        "reindex: 0 embeddings of another length dropped (client-supplied), 1 context indexed"
    );
}

crate::on_both_stores!(
    serve_with_embeddings_of_another_length_serves_them_out_of_search_and_degraded,
    reindex_drops_embeddings_of_another_length_and_the_next_start_is_clean,
);

/// Another instance with other dimensions writes through the same store: the indexer meets its
/// embedding in the outbox, leaves it out without failing, and readiness is degraded exactly as
/// long as it is stored.
async fn the_indexer_skips_embeddings_of_another_length_from_the_outbox(setup: Setup) {
    let app = TestApp::spawn_with(setup, |s| {
        s.vector.dimensions = 8;
        s.sync.interval_seconds = 1;
    })
    .await;
    let mut other_settings = app.settings.clone();
    other_settings.vector.dimensions = 4;
    let other = TestApp::start(app.db.clone(), other_settings).await;
    let vector = |v: &[f32]| json!({"data": {}, "source": "mcp", "embedding": v});
    let readiness = async |app: &TestApp, want: &str| {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let response = app.get("/readyz").await;
            assert_eq!(response.status(), StatusCode::OK);
            let ready: Value = response.json().await.unwrap();
            if ready["checks"]["vector"] == want {
                return;
            }
            assert!(Instant::now() < until, "vector never {want}: {ready}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    readiness(&app, "ok").await;

    let response = other.put("e", vector(&[1.0, 0.0, 0.0, 0.0])).await;
    assert!(response.status().is_success());
    readiness(&app, "degraded").await;

    // The indexer goes on: a right-length embedding written after it is found.
    let response = app
        .put("g", vector(&[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
        .await;
    assert!(response.status().is_success());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let response = app
            .post(
                "/contexts/search",
                json!({"vector": [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "threshold": 0.0}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let results: Value = response.json().await.unwrap();
        if crate::search::ids(&results) == ["g"] {
            break;
        }
        assert!(Instant::now() < until, "g never found: {results}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Gone from the store: no longer degraded.
    let response = other.delete("/contexts/e").await;
    assert!(response.status().is_success());
    readiness(&app, "ok").await;
}

crate::on_both_stores!(the_indexer_skips_embeddings_of_another_length_from_the_outbox);
