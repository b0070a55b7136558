//! Sick stores (DESIGN.md, "Failure rules"): a Postgres that stops answering, a store that
//! refuses writes. Each is made sick for real: a proxy that drops every packet, a database set
//! read-only, a SQLite file on a disk that is full.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, PgProxy, TestApp, TestDb, admin_url, connect, problem};

/// Postgres only: the blackhole is a TCP proxy between the app and Postgres.
#[tokio::test]
async fn a_blackholed_postgres_answers_503_within_the_connect_timeout_and_recovers() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let proxy = PgProxy::start().await;
    // The harness sets database.connect_timeout_seconds to 2.
    let settings = TestApp::settings_for(&proxy.url_for(&db.name));
    let timeout = Duration::from_secs(settings.database.connect_timeout_seconds);
    let app = TestApp::start(db, settings).await;
    app.put_data("cached", json!({"a": 1})).await;

    proxy.blackhole();
    let started = Instant::now();
    let write = app.put("lost", json!({"data": {}, "source": "mcp"})).await;
    let took = started.elapsed();
    assert!(write.headers().contains_key("retry-after"));
    problem(write, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(took < timeout + Duration::from_secs(2), "{took:?}");

    let started = Instant::now();
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < timeout + Duration::from_secs(2));
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["store"], "down");
    // Health and cached reads do not wait on the store.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/contexts/cached").await.status(), StatusCode::OK);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = app.put("after", json!({"data": {}, "source": "mcp"})).await;
        if response.status() == StatusCode::CREATED {
            break;
        }
        assert!(Instant::now() < deadline, "writes never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    problem(app.get("/contexts/lost").await, StatusCode::NOT_FOUND).await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

/// Ends every connection the app holds to `database`, so the next ones see its new settings.
async fn reconnect(database: &str) {
    let admin = connect(&admin_url()).await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&database],
        )
        .await
        .unwrap();
}

async fn ready_store(app: &TestApp) -> Value {
    let body: Value = app.get("/readyz").await.json().await.unwrap();
    body["checks"]["store"].clone()
}

/// Postgres only: a read-only database (a standby, `default_transaction_read_only`).
#[tokio::test]
async fn a_read_only_postgres_refuses_writes_with_503_serves_reads_and_readyz_says_degraded() {
    let app = TestApp::spawn(crate::harness::Setup::POSTGRES_L2_OFF).await;
    app.put_data("kept", json!({"v": 1})).await;
    let admin = connect(&admin_url()).await;
    let name = app.db.name.clone();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" SET default_transaction_read_only = on"
        ))
        .await
        .unwrap();
    reconnect(&name).await;

    // (The first write may meet a connection that was just ended: 503 as well, but not yet
    // the refusal.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let write = app
            .put("kept", json!({"data": {"v": 2}, "source": "mcp"}))
            .await;
        let body = problem(write, StatusCode::SERVICE_UNAVAILABLE).await;
        if body["detail"].as_str().unwrap().contains("refuses writes") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes were never refused: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready_store(&app).await, "degraded");
    let read: Value = app.get("/contexts/kept").await.json().await.unwrap();
    assert_eq!(read["data"], json!({"v": 1}));

    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" RESET default_transaction_read_only"
        ))
        .await
        .unwrap();
    reconnect(&name).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let write = app
            .put("kept", json!({"data": {"v": 2}, "source": "mcp"}))
            .await;
        if write.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "writes never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready_store(&app).await, "ok");
}

/// A tmpfs of `bytes`, mounted for the test and unmounted after.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(bytes: usize) -> Self {
        let path = std::env::temp_dir().join(format!(
            "contextd-small-disk-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (the full-disk test runs as root, as scripts/test.sh does)",
            path.display()
        );
        Self { path }
    }

    /// Fills the disk but for `spare` bytes.
    fn fill(&self, spare: u64) {
        let stat = nix_free_bytes(&self.path);
        let filler = stat.saturating_sub(spare);
        let mut file = std::fs::File::create(self.path.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut left = filler;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if std::io::Write::write_all(&mut file, &chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = file.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

/// Free bytes of the filesystem holding `path`, from `df`.
fn nix_free_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// SQLite only: the file on a disk that fills up.
#[tokio::test]
async fn a_full_disk_refuses_writes_with_503_keeps_reads_and_readyz_says_degraded() {
    let disk = SmallDisk::mount(8 << 20);
    let url = format!("sqlite:{}/contextd.db", disk.path.display());
    let db = Arc::new(TestDb::fresh(Backend::Sqlite));
    let app = TestApp::start(db, TestApp::settings_for(&url)).await;
    app.put_data("kept", json!({"v": 1})).await;
    disk.fill(16 * 1024);

    let big = "x".repeat(1 << 20);
    let write = app
        .put("big", json!({"data": {"blob": big}, "source": "mcp"}))
        .await;
    let body = problem(write, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        body["detail"].as_str().unwrap().contains("refuses writes"),
        "{body}"
    );
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    assert_eq!(ready_store(&app).await, "degraded");
    problem(app.get("/contexts/big").await, StatusCode::NOT_FOUND).await;
    let read: Value = app.get("/contexts/kept").await.json().await.unwrap();
    assert_eq!(read["data"], json!({"v": 1}));

    disk.free();
    let write = app
        .put(
            "big",
            json!({"data": {"blob": "small now"}, "source": "mcp"}),
        )
        .await;
    assert_eq!(write.status(), StatusCode::CREATED);
    assert_eq!(ready_store(&app).await, "ok");
}
