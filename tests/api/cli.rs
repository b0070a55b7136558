//! The `contextd` binary itself: its commands, its start-up errors, its log, its signals.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Setup, TestDb, contextd};

#[test]
fn openapi_prints_the_committed_document() {
    let output = contextd().arg("openapi").output().unwrap();
    assert!(output.status.success());
    let committed =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json")).unwrap();
    assert!(
        output.stdout == committed,
        "`contextd openapi` differs from openapi/openapi.json"
    );
}

#[test]
fn an_unknown_config_key_stops_start_up_naming_it() {
    let output = contextd()
        .arg("serve")
        .env("CONTEXTD__VERSIONS__RETENTON", "5")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CONTEXTD__VERSIONS__RETENTON"), "{stderr}");
    assert!(stderr.contains("versions.retenton"), "{stderr}");
}

#[test]
fn a_bad_value_in_the_config_file_stops_start_up_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("contextd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "limits:\n  max_context_bytes: lots\n").unwrap();
    let output = contextd()
        .arg("--config")
        .arg(&file)
        .arg("serve")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits.max_context_bytes"), "{stderr}");
}

async fn migrate_creates_and_migrates_a_new_database_then_exits(store: Setup) {
    let db = TestDb::fresh(store.backend);
    let output = contextd()
        .arg("migrate")
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let applied = db
        .scalar("SELECT count(*) FROM contextd_schema_migrations")
        .await;
    let sections = include_str!("../../schema.sql")
        .lines()
        .filter(|line| line.starts_with("-- migration: "))
        .count() as i64;
    assert_eq!(applied, sections, "every migration of schema.sql, once");
}

/// Postgres only: the password in question is a Postgres URL's.
#[tokio::test]
async fn serve_logs_where_it_listens_keeps_the_password_out_of_its_log_and_stops_on_sigterm() {
    let db = TestDb::migrated().await;
    // Local Postgres trusts the connection, so the password is never checked: only logged, or not.
    let url = db.url().replacen("://postgres@", "://postgres:hunter2@", 1);
    assert!(
        url.contains("hunter2"),
        "the admin URL is not postgres@: {url}"
    );
    let mut child = contextd()
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("CONTEXTD__SERVER__BIND", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut log = Vec::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the log ended before `listening on`")
            .unwrap();
        log.push(line.clone());
        if let Some((_, addr)) = line.split_once("listening on http://") {
            break addr.trim().to_owned();
        }
    };
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "contextd ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    log.extend(lines.map_while(Result::ok));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let log = log.join("\n") + &stdout;
    assert!(
        !log.contains("hunter2"),
        "the password leaked into the log:\n{log}"
    );
    assert!(
        log.contains("postgres:***@"),
        "the store's URL is logged, redacted:\n{log}"
    );
    assert!(log.contains("stopped"), "{log}");
}

/// A supervisor that stops reading the log and sends SIGTERM the moment `serve` says it
/// listens: the signal is already handled (a clean stop, not the default kill), and a log line
/// that cannot be written (stderr is a closed pipe) is dropped rather than a panic that left
/// the server hanging half stopped.
#[test]
fn serve_stops_cleanly_on_sigterm_at_once_with_its_log_pipe_closed() {
    let dir = std::env::temp_dir().join(format!("contextd-cli-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = contextd()
        .arg("serve")
        .current_dir(&dir)
        .env("CONTEXTD__SERVER__BIND", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while !lines
        .next()
        .expect("the log ended before `listening on`")
        .unwrap()
        .contains("listening on http://")
    {}
    drop(lines);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("contextd did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success(), "{status}");
}

/// With no DATABASE_URL at all, `serve` makes `data/contextd.db` in its working directory.
#[test]
fn serve_with_no_database_url_uses_sqlite_in_data_and_says_so() {
    let dir = std::env::temp_dir().join(format!("contextd-cli-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = contextd()
        .arg("serve")
        .current_dir(&dir)
        .env("CONTEXTD__SERVER__BIND", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        // It listens at once, and says `ready` once the store is open.
        let ready = line.ends_with(" ready");
        log.push(line);
        if ready {
            break;
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let exists = dir.join("data/contextd.db").exists();
    std::fs::remove_dir_all(&dir).unwrap();
    let log = log.join("\n");
    assert!(log.contains("DATABASE_URL is not set"), "{log}");
    assert!(log.contains("data/contextd.db"), "{log}");
    assert!(exists, "no data/contextd.db was made");
}

crate::on_both_stores!(migrate_creates_and_migrates_a_new_database_then_exits);

/// Start-up before Postgres is there (compose, Kubernetes): the binary listens at once,
/// answers /healthz 200 and /readyz 503 while it retries, serves once Postgres answers, and
/// gives up with a message after `database.startup_timeout_seconds`.
#[tokio::test]
async fn serve_waits_for_a_postgres_that_comes_up_later_and_answers_meanwhile() {
    let db = crate::harness::TestDb::migrated().await;
    let proxy = crate::harness::PgProxy::start().await;
    proxy.cut();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = contextd()
        .arg("serve")
        .env("DATABASE_URL", proxy.url_for(&db.name))
        .env("CONTEXTD__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("CONTEXTD__DATABASE__CONNECT_TIMEOUT_SECONDS", "1")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        reqwest::StatusCode::OK
    );
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let put = http
        .put(format!("{base}/contexts/early"))
        .json(&serde_json::json!({"data": {}, "source": "mcp"}))
        .send()
        .await
        .unwrap();
    crate::harness::problem(put, reqwest::StatusCode::SERVICE_UNAVAILABLE).await;

    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        if ready.status() == reqwest::StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let put = http
        .put(format!("{base}/contexts/late"))
        .json(&serde_json::json!({"data": {}, "source": "mcp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), reqwest::StatusCode::CREATED);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn serve_gives_up_on_an_unreachable_postgres_after_the_startup_timeout() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let started = std::time::Instant::now();
    let output = contextd()
        .arg("serve")
        .env(
            "DATABASE_URL",
            format!("postgres://u:hunter2@127.0.0.1:{dead_port}/db"),
        )
        .env("CONTEXTD__SERVER__BIND", "127.0.0.1:0")
        .env("CONTEXTD__DATABASE__STARTUP_TIMEOUT_SECONDS", "2")
        .output()
        .unwrap();
    let took = started.elapsed();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{log}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert!(log.contains("not reachable yet; retrying"), "{log}");
    assert!(log.contains("gave up after"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}
