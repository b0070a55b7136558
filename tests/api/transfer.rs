//! `contextd export` / `contextd import`: moving data between stores with nothing lost.

use std::io::Write;
use std::process::{Output, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Setup, TestApp, TestDb, contextd};

fn export(db: &TestDb) -> String {
    let output = contextd()
        .arg("export")
        .env("DATABASE_URL", db.url())
        .env("CONTEXTD__VECTOR__DIMENSIONS", "4")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn import(db: &TestDb, lines: &str) -> Output {
    let mut child = contextd()
        .arg("import")
        .env("DATABASE_URL", db.url())
        .env("CONTEXTD__VECTOR__DIMENSIONS", "4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn import_ok(db: &TestDb, lines: &str) -> String {
    let output = import(db, lines);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

/// A store with history worth moving: pruned versions, a restore, an embedding, a parent,
/// metadata, who changed what, and a deleted context that must not travel.
async fn populated(store: Setup) -> TestApp {
    let app = TestApp::spawn_with(store, |s| s.versions.retention = 3).await;
    for n in 1..=4 {
        app.put(
            "a",
            json!({"data": {"n": n, "big": 1.7976931348623157e308}, "source": "mcp",
                   "metadata": {"step": n}, "changed_by": format!("agent-{n}"),
                   "embedding": [n as f64, 0.5, -0.25, 1e-30]}),
        )
        .await;
    }
    app.post(
        "/contexts/a/versions/3/restore",
        json!({"changed_by": "ops"}),
    )
    .await;
    app.put(
        "b",
        json!({"data": {"child": true}, "source": "factory", "parent_id": "a"}),
    )
    .await;
    app.put_data("gone", json!({})).await;
    app.delete("/contexts/gone").await;
    app
}

/// Across both stores by nature, so one test.
#[tokio::test]
async fn a_round_trip_sqlite_postgres_sqlite_loses_nothing() {
    let origin = populated(Setup::SQLITE).await;
    let first = export(&origin.db);
    assert_eq!(first.lines().count(), 2, "{first}");
    assert!(!first.contains("\"gone\""));

    let postgres = TestDb::new(Backend::Postgres).await;
    import_ok(&postgres, &first);
    let second = export(&postgres);
    assert_eq!(second, first, "Postgres changed something");

    let sqlite = TestDb::fresh(Backend::Sqlite);
    import_ok(&sqlite, &second);
    let third = export(&sqlite);
    assert_eq!(third, first, "SQLite changed something");

    // And what the API serves is the same, times included.
    let settings = TestApp::settings_for(&sqlite.url());
    let copy = TestApp::start(std::sync::Arc::new(sqlite), settings).await;
    for path in [
        "/contexts/a?include=embedding",
        "/contexts/b",
        "/contexts/a/versions",
        "/contexts/a/versions/5",
    ] {
        let original: Value = origin.get(path).await.json().await.unwrap();
        let moved: Value = copy.get(path).await.json().await.unwrap();
        assert_eq!(moved, original, "{path}");
    }
    assert_eq!(
        copy.get("/contexts/a/versions/2").await.status(),
        StatusCode::GONE
    );
    assert_eq!(
        copy.get("/contexts/gone").await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn importing_twice_changes_nothing(store: Setup) {
    let origin = populated(Setup::SQLITE).await;
    let lines = export(&origin.db);
    let target = TestApp::spawn(store).await;
    // The target already holds a different `a`: the import replaces it.
    target.put_data("a", json!({"other": true})).await;

    let log = import_ok(&target.db, &lines);
    assert!(
        log.contains("imported=2") && log.contains("unchanged=0"),
        "{log}"
    );
    let outbox = target
        .db
        .scalar("SELECT count(*) FROM factory_sync_outbox")
        .await;
    let exported = export(&target.db);

    let log = import_ok(&target.db, &lines);
    assert!(
        log.contains("imported=0") && log.contains("unchanged=2"),
        "{log}"
    );
    assert_eq!(
        target
            .db
            .scalar("SELECT count(*) FROM factory_sync_outbox")
            .await,
        outbox
    );
    assert_eq!(export(&target.db), exported);
    assert_eq!(exported, lines);
}

async fn a_bad_line_is_named_and_nothing_is_imported(store: Setup) {
    let origin = populated(Setup::SQLITE).await;
    let good = export(&origin.db);
    let first_line = good.lines().next().unwrap();
    let target = TestDb::new(store.backend).await;
    // Make sure the target is migrated (a fresh SQLite file is made by the first command).
    export(&target);

    let cases = [
        (format!("{first_line}\n{{\"context_id\": \"x\"\n"), "line 2"),
        (format!("{first_line}\n\n[1, 2]\n"), "line 3"),
        (
            first_line
                .replacen("\"data\":{", "\"data\":[{", 1)
                .replacen("},\"metadata\"", "}],\"metadata\"", 1),
            "line 1",
        ),
        (format!("{first_line}\n{first_line}\n"), "line 2"),
        (
            first_line.replacen("\"context_id\":\"a\"", "\"context_id\":\"bad id\"", 1),
            "line 1",
        ),
    ];
    for (input, named) in cases {
        let output = import(&target, &input);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted: {input}");
        assert!(stderr.contains(named), "{named} not in: {stderr}");
        assert_eq!(
            target
                .scalar("SELECT count(*) FROM factory_context_metadata")
                .await,
            0,
            "something was imported from: {input}"
        );
    }
}

/// The reported fault: above about 10,000 contexts an import into a default Postgres
/// (`max_locks_per_transaction` 64) stopped with "out of shared memory" and stored nothing,
/// because the whole file was one transaction locking every context. It commits in batches
/// now; a second run finishes what a first left and changes nothing already done.
async fn a_large_import_commits_in_batches_and_a_second_run_changes_nothing(store: Setup) {
    const CONTEXTS: usize = 12_000;
    let origin = populated(Setup::SQLITE).await;
    let exported = export(&origin.db);
    let line = exported.lines().next().unwrap();
    assert!(line.contains("\"context_id\":\"a\""), "{line}");
    let input: String = (0..CONTEXTS)
        .map(|n| {
            line.replacen(
                "\"context_id\":\"a\"",
                &format!("\"context_id\":\"big_{n:05}\""),
                1,
            ) + "\n"
        })
        .collect();
    let target = TestDb::new(store.backend).await;
    let log = import_ok(&target, &input);
    assert!(log.contains(&format!("imported={CONTEXTS}")), "{log}");
    assert_eq!(
        target
            .scalar("SELECT count(*) FROM factory_context_metadata")
            .await,
        CONTEXTS as i64
    );
    let log = import_ok(&target, &input);
    assert!(
        log.contains("imported=0") && log.contains(&format!("unchanged={CONTEXTS}")),
        "{log}"
    );
}

crate::on_both_stores!(
    a_large_import_commits_in_batches_and_a_second_run_changes_nothing,
    importing_twice_changes_nothing,
    a_bad_line_is_named_and_nothing_is_imported,
);
