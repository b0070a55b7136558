//! Redis beyond the plain local server: a real Redis Cluster, TLS, and what an operator sees
//! when Redis refuses contextd. (Redis only: these tests run on Postgres, the store of
//! many instances.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use contextd::config::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, TestDb};
use crate::redis_servers::{RedisCluster, TlsRedis};

async fn ready_redis(app: &TestApp) -> Value {
    let body: Value = app.get("/readyz").await.json().await.unwrap();
    body["checks"]["redis"].clone()
}

/// Two instances on one Postgres and one Redis Cluster: L2 entries spread over the nodes,
/// and a write on one instance is what the other serves next, at once.
#[tokio::test]
async fn two_instances_on_a_redis_cluster_stay_coherent() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let mut settings = TestApp::settings_for(&db.url());
    settings.redis.url = Some(Secret::new(cluster.seed_url()));
    settings.redis.cluster = true;
    settings.cache.l2.key_prefix = format!("test:cluster:{}:", std::process::id());
    let a = TestApp::start(db.clone(), settings.clone()).await;
    let b = TestApp::start(db, settings.clone()).await;
    assert_eq!(ready_redis(&a).await, "ok");
    for n in 0..12 {
        a.put_data(&format!("k{n}"), json!({"v": 1})).await;
        let read: Value = b
            .get(&format!("/contexts/k{n}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(read["version"], 1);
    }
    // B holds k0 in its L1 now; A writes it again: B must not serve the old version.
    a.put_data("k0", json!({"v": 2})).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let read: Value = b.get("/contexts/k0").await.json().await.unwrap();
        if read["version"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "B kept serving version 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let prefix = settings.cache.l2.key_prefix.clone();
    let spread = tokio::task::spawn_blocking(move || {
        let spread = cluster.keys_per_node(&format!("{prefix}*"));
        drop(cluster);
        spread
    })
    .await
    .unwrap();
    assert!(
        spread.iter().filter(|n| **n > 0).count() >= 2,
        "every key on one node: {spread:?}"
    );
}

/// A cluster node given as a plain Redis (`redis.cluster` off): PING works, every key
/// command is MOVED. `/readyz` says so rather than `ok`; requests go on without L2.
#[tokio::test]
async fn a_cluster_taken_for_a_plain_redis_shows_redis_degraded() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let app = TestApp::spawn_with(crate::harness::Setup::POSTGRES, |s| {
        s.redis.url = Some(Secret::new(cluster.seed_url()));
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while ready_redis(&app).await != "degraded" {
        assert!(Instant::now() < deadline, "readyz never saw Redis failing");
        // Commands that fail open the breaker.
        n += 1;
        app.put_data(&format!("m{n}"), json!({"n": n})).await;
        let _ = app.get(&format!("/contexts/m{n}")).await;
    }
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    drop(cluster);
}

/// `rediss://` with the CA in `redis.tls_ca_file`: the app uses Redis over TLS.
#[tokio::test]
async fn the_app_uses_redis_over_tls_with_a_ca_file() {
    let server = tokio::task::spawn_blocking(TlsRedis::start).await.unwrap();
    let app = TestApp::spawn_with(crate::harness::Setup::POSTGRES, |s| {
        s.redis.url = Some(Secret::new(server.url()));
        s.redis.tls_ca_file = Some(server.ca_file());
    })
    .await;
    assert_eq!(ready_redis(&app).await, "ok");
    app.put_data("tls", json!({"over": "tls"})).await;
    let keys = server.cli(&["--scan", "--pattern", "*tls*"]);
    assert!(keys.text().contains("context:{tls}"), "{}", keys.text());
}

/// The real binary with a wrong Redis password: it serves, `/readyz` says Redis is down, and
/// the log says once, at warn, in Redis's own words, why (never the password).
#[tokio::test]
async fn a_wrong_redis_password_is_logged_once_in_redis_words_and_only_degrades() {
    use std::io::{BufRead, BufReader};
    let server = tokio::task::spawn_blocking(|| TlsRedis::start_with_password("app", "right"))
        .await
        .unwrap();
    let wrong = server
        .url_with_credentials()
        .replacen(":right@", ":hunter2@", 1);
    let dir = std::env::temp_dir().join(format!("contextd-wrongpass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = crate::harness::contextd()
        .arg("serve")
        .env("DATABASE_URL", format!("sqlite:{}/c.db", dir.display()))
        .env("REDIS_URL", &wrong)
        .env("CONTEXTD__REDIS__TLS_CA_FILE", server.ca_file())
        .env("CONTEXTD__SERVER__BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn,contextd=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, log) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut seen = Vec::new();
    let addr = loop {
        let line = log
            .recv_timeout(Duration::from_secs(20))
            .expect("the server never listened");
        seen.push(line.clone());
        if let Some((_, addr)) = line.split_once("listening on http://") {
            break addr.trim().to_owned();
        }
    };
    // It listens before the store is open: ask once it is ready (200, Redis down or not).
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready: Value = loop {
        let response = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
        if response.status() == StatusCode::OK {
            break response.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ready["checks"]["redis"], "down", "{ready}");
    // fred retries every couple of seconds; each retry is refused again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    seen.extend(log.try_iter());
    let _ = std::fs::remove_dir_all(&dir);
    let text = seen.join("\n");
    let refusals: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("Redis refused contextd's connection"))
        .collect();
    assert_eq!(refusals.len(), 1, "{text}");
    assert!(refusals[0].contains("WARN"), "{text}");
    assert!(refusals[0].contains("WRONGPASS"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "the password reached the log:\n{text}"
    );
}
