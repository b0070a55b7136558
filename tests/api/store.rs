//! The store traits on their own, on both backends: the rules each backend writes in its own
//! SQL (a key's first revocation wins, the bootstrap key lifts one, an indexer's cursor never
//! moves back) and the decisions every backend maps the same way.

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use contextd::domain::{ContextId, Refusal, Role};
use contextd::store::{ApiKeyRecord, Decision, ServerEmbedding, Store, StoreError, WriteOutcome};

use crate::harness::{Backend, TestApp, TestDb};

/// A store of its own on `backend`, opened as `contextd serve` opens it.
async fn store_on(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend).await;
    let store = contextd::startup::open_store(&TestApp::settings_for(&db.url()))
        .await
        .expect("the store opens");
    (db, store)
}

fn key(id: &str, hash: u8) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.to_owned(),
        name: format!("key {id}"),
        role: Role::Write,
        prefix: Some("team-a:".to_owned()),
        key_hash: [hash; 32],
        created_at: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
        last_used_at: None,
        revoked_at: None,
    }
}

async fn the_first_revocation_wins_and_the_bootstrap_key_lifts_one(backend: Backend) {
    let (_db, store) = store_on(backend).await;
    store.insert_key(&key("key_a", 1)).await.unwrap();
    let first = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
    let revoked = store.revoke_key("key_a", first).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(first));
    let again = store
        .revoke_key("key_a", first + Duration::days(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at, Some(first), "the first revocation stands");
    assert!(store.revoke_key("key_none", first).await.unwrap().is_none());

    // The bootstrap key, made sure of at start, is active again, with the role it is given.
    let mut bootstrap = key("key_a", 1);
    bootstrap.role = Role::Admin;
    bootstrap.prefix = None;
    store.ensure_key(&bootstrap).await.unwrap();
    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].revoked_at, None);
    assert_eq!(
        (keys[0].role, keys[0].prefix.as_deref()),
        (Role::Admin, None)
    );
}

async fn an_indexer_cursor_never_moves_back(backend: Backend) {
    let (_db, store) = store_on(backend).await;
    assert_eq!(store.indexer_cursor("vector:test").await.unwrap(), 0);
    store.set_indexer_cursor("vector:test", 5).await.unwrap();
    store.set_indexer_cursor("vector:test", 3).await.unwrap();
    assert_eq!(store.indexer_cursor("vector:test").await.unwrap(), 5);
    store.set_indexer_cursor("vector:test", 8).await.unwrap();
    assert_eq!(store.indexer_cursor("vector:test").await.unwrap(), 8);
    assert_eq!(store.indexer_cursor("vector:other").await.unwrap(), 0);
}

async fn a_refusal_stores_nothing_and_unchanged_needs_a_context(backend: Backend) {
    let (_db, store) = store_on(backend).await;
    let id = ContextId::parse("ctx_rules").unwrap();
    let refused = store
        .write(
            &id,
            None,
            Box::new(|view| {
                assert!(view.current.is_none());
                Decision::Refuse(Refusal::NotFound)
            }),
        )
        .await
        .unwrap();
    assert!(matches!(refused, WriteOutcome::Refused(Refusal::NotFound)));
    assert!(store.get(&id).await.unwrap().is_none());
    assert_eq!(
        store.latest_seq().await.unwrap(),
        0,
        "no change in the outbox"
    );
    // The rules cannot call a context that does not exist unchanged: a bug, said as one.
    let unchanged = store
        .write(&id, None, Box::new(|_| Decision::Unchanged))
        .await;
    assert!(
        matches!(unchanged, Err(StoreError::Internal(_))),
        "{unchanged:?}"
    );
}

/// The server's embeddings in each backend's SQL: stored only for the current version of a
/// context without a client's embedding, read back with what made them, listed as missing
/// when stale (another version, model or length), and removed by length.
async fn a_server_embedding_lands_only_on_a_current_version_without_a_clients(backend: Backend) {
    let setup = match backend {
        Backend::Postgres => crate::harness::Setup::POSTGRES_L2_OFF,
        Backend::Sqlite => crate::harness::Setup::SQLITE,
    };
    let mut app = TestApp::spawn(setup).await;
    app.put_data("plain", serde_json::json!({"t": "pump"}))
        .await;
    app.put_data("moved", serde_json::json!({"t": "one"})).await;
    app.put_data("moved", serde_json::json!({"t": "two"})).await;
    let response = app
        .put(
            "client",
            serde_json::json!({"data": {"t": "x"}, "source": "mcp", "embedding": [1, 0, 0, 0]}),
        )
        .await;
    assert!(response.status().is_success());
    app.stop().await;
    let store = contextd::startup::open_store(&app.settings).await.unwrap();
    let id = |raw: &str| ContextId::parse(raw).unwrap();
    let missing = store.unembedded("m", 4, None, 10).await.unwrap();
    assert_eq!(missing, [id("moved"), id("plain")]);

    let made = |raw: &str, version: i64| ServerEmbedding {
        id: id(raw),
        version,
        model: "m".to_owned(),
        text_sha256: [7; 32],
        vector: vec![0.0, 1.0, 0.0, 0.0],
    };
    // `moved` is at version 2 and `client` has its own: only `plain` takes one.
    let stored = store
        .put_server_embeddings(&[made("plain", 1), made("moved", 1), made("client", 1)])
        .await
        .unwrap();
    assert_eq!(stored, [id("plain")]);
    let plain = store.get(&id("plain")).await.unwrap().unwrap();
    assert_eq!(plain.server_embedding, Some(vec![0.0, 1.0, 0.0, 0.0]));
    assert_eq!(
        plain.embedding_source(),
        Some(contextd::domain::EmbeddingSource::Server)
    );
    let client = store.get(&id("client")).await.unwrap().unwrap();
    assert_eq!(client.server_embedding, None);
    assert_eq!(
        store
            .server_embeddings(&[id("plain"), id("moved")])
            .await
            .unwrap(),
        [made("plain", 1)]
    );
    assert_eq!(
        store.unembedded("m", 4, None, 10).await.unwrap(),
        [id("moved")]
    );
    // Made by another model, or of another length: to be made again.
    assert_eq!(
        store.unembedded("other", 4, None, 10).await.unwrap(),
        [id("moved"), id("plain")]
    );
    assert_eq!(
        store.unembedded("m", 8, Some("moved"), 10).await.unwrap(),
        [id("plain")]
    );
    assert_eq!(store.drop_server_embeddings(4).await.unwrap(), 0);
    assert_eq!(store.drop_server_embeddings(8).await.unwrap(), 1);
    assert_eq!(
        store
            .get(&id("plain"))
            .await
            .unwrap()
            .unwrap()
            .server_embedding,
        None
    );
}

/// Each listed `async fn name(backend: Backend)` as `name::postgres` and `name::sqlite`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn postgres() {
                    super::$name(crate::harness::Backend::Postgres).await
                }

                #[tokio::test]
                async fn sqlite() {
                    super::$name(crate::harness::Backend::Sqlite).await
                }
            }
        )*
    };
}

on_both_backends!(
    the_first_revocation_wins_and_the_bootstrap_key_lifts_one,
    an_indexer_cursor_never_moves_back,
    a_refusal_stores_nothing_and_unchanged_needs_a_context,
    a_server_embedding_lands_only_on_a_current_version_without_a_clients,
);

/// Rows of both tables one execution of `sql` reads (returned, or read and filtered out),
/// under the generic plan Postgres switches a prepared statement to after five executions, on
/// ANALYZEd tables; and the execution time in ms.
async fn rows_read_by_generic_plan(
    client: &tokio_postgres::Client,
    sql: &str,
    args: &str,
) -> (u64, f64) {
    client
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; DEALLOCATE ALL; PREPARE page AS {sql}"
        ))
        .await
        .unwrap();
    let row = client
        .query_one(
            &format!("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE page({args})"),
            &[],
        )
        .await
        .unwrap();
    let plan: serde_json::Value = row.get(0);
    fn walk(node: &serde_json::Value, rows: &mut u64) {
        let on_a_table = ["Relation Name", "Index Name"].iter().any(|field| {
            node[field].as_str().is_some_and(|name| {
                name.starts_with("factory_context_versions")
                    || name.starts_with("factory_context_metadata")
            })
        });
        if on_a_table {
            let count = |field: &str| node[field].as_u64().unwrap_or(0);
            *rows += (count("Actual Rows") + count("Rows Removed by Filter"))
                * node["Actual Loops"].as_u64().unwrap_or(1);
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, rows);
        }
    }
    let mut rows = 0;
    walk(&plan[0]["Plan"], &mut rows);
    (rows, plan[0]["Execution Time"].as_f64().unwrap())
}

/// The contexts the plan tests page through: `ctx_000001` .. `ctx_030000` (every other one
/// from `factory`, every third one a child of `p`), then 300 under the prefix `a:`, which sort
/// before all of them. Each about 1 KB.
const PLAN_CONTEXTS: usize = 30_000;
const PLAN_PREFIXED: usize = 300;

/// Each shape of filter the list has, its parameters before the cursor (as SQL literals), and
/// cursors near the start, the middle and the end of what it lists.
fn plan_cases() -> Vec<(
    contextd::store::ListShape,
    Vec<&'static str>,
    [&'static str; 3],
)> {
    use contextd::store::ListShape;
    let after = ListShape {
        after: true,
        ..Default::default()
    };
    let everywhere = ["ctx_000010", "ctx_015000", "ctx_029800"];
    vec![
        (after, vec![], everywhere),
        (
            ListShape {
                source: true,
                ..after
            },
            vec!["'factory'"],
            everywhere,
        ),
        (
            ListShape {
                parent: true,
                ..after
            },
            vec!["'p'"],
            everywhere,
        ),
        // A key's prefix: its last page must not read on through the ids after the prefix.
        (
            ListShape {
                prefix: true,
                ..after
            },
            vec!["'a:'", "'a;'"],
            ["a:000010", "a:000150", "a:000290"],
        ),
        (
            ListShape {
                source: true,
                prefix: true,
                ..after
            },
            vec!["'factory'", "'a:'", "'a;'"],
            ["a:000010", "a:000150", "a:000290"],
        ),
    ]
}

/// The reported fault: paging through a large, ANALYZEd store read every version before the
/// cursor (a merge join under the generic plan), so the last pages of a million contexts took
/// seconds. On these 30,000 contexts of about 1 KB the old statement read 29,900 versions for
/// the last page; and a key's prefix was a filter, so its last page read every id after it.
/// A page must read its own rows only, wherever the cursor is, for every shape of filter.
#[tokio::test]
async fn a_page_of_the_list_reads_only_its_own_rows_under_the_generic_plan() {
    let db = TestDb::new(Backend::Postgres).await;
    let client = crate::harness::connect(&db.url()).await;
    client
        .batch_execute(&format!(
            "INSERT INTO factory_context_metadata
                 (context_id, version, source, parent_id, size_bytes, created_at, updated_at)
             SELECT 'ctx_' || lpad(i::text, 6, '0'), 1,
                    CASE WHEN i % 2 = 0 THEN 'factory' ELSE 'mcp' END,
                    CASE WHEN i % 3 = 0 THEN 'p' END, 1000, now(), now()
             FROM generate_series(1, {PLAN_CONTEXTS}) i;
             INSERT INTO factory_context_metadata
                 (context_id, version, source, size_bytes, created_at, updated_at)
             SELECT 'a:' || lpad(i::text, 6, '0'), 1,
                    CASE WHEN i % 2 = 0 THEN 'factory' ELSE 'mcp' END, 1000, now(), now()
             FROM generate_series(1, {PLAN_PREFIXED}) i;
             INSERT INTO factory_context_versions
                 (context_id, version, source, data, change_type, changed_at, size_bytes)
             SELECT context_id, 1, source,
                    jsonb_build_object('text', repeat(md5(context_id), 30)),
                    'create', now(), 1000
             FROM factory_context_metadata;
             ANALYZE factory_context_metadata; ANALYZE factory_context_versions;"
        ))
        .await
        .unwrap();
    for (shape, filters, cursors) in plan_cases() {
        let sql = contextd::store::postgres::list_statement(shape);
        let mut reads = Vec::new();
        for cursor in cursors {
            let mut args = filters.clone();
            let cursor = format!("'{cursor}'");
            args.extend([cursor.as_str(), "100"]);
            let (rows, ms) = rows_read_by_generic_plan(&client, &sql, &args.join(", ")).await;
            reads.push((cursor, rows, ms));
        }
        // A page of 100 heads, their 100 versions, and at most as many heads read and left
        // out by a filter the plan checks row by row (the source's, half of the rows) ...
        assert!(reads[0].1 <= 402, "{shape:?}: {reads:?}");
        // ... and no more at the middle and at the end.
        assert!(
            reads
                .iter()
                .all(|&(_, rows, _)| rows as f64 <= 1.5 * reads[0].1 as f64),
            "{shape:?}: a later page read more rows than the first: {reads:?}"
        );
    }
    // The page is the right one, through the store itself.
    let store = contextd::startup::open_store(&TestApp::settings_for(&db.url()))
        .await
        .unwrap();
    let page = store
        .list(
            &contextd::store::ListFilter::default(),
            &contextd::domain::Visible::to(&contextd::domain::Principal::system()),
            Some("ctx_029950"),
            100,
        )
        .await
        .unwrap();
    let ids: Vec<&str> = page.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 50);
    assert_eq!((ids[0], ids[49]), ("ctx_029951", "ctx_030000"));
    assert!(page.iter().all(|s| s.version == 1));
}

/// SQLite the same way: on the same contexts, ANALYZEd, a late page of each shape costs no more
/// than an early one, counted in the virtual machine steps SQLite itself reports for the
/// statement (a scan that reads rows before or after the page shows as steps per row).
#[tokio::test]
async fn a_page_of_the_list_reads_only_its_own_rows_on_sqlite() {
    use rusqlite::types::Value as Sql;
    let (db, store) = store_on(Backend::Sqlite).await;
    drop(store);
    let path = db.url().trim_start_matches("sqlite:").to_owned();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {PLAN_CONTEXTS})
         INSERT INTO factory_context_metadata
             (context_id, version, source, parent_id, size_bytes, created_at, updated_at)
         SELECT printf('ctx_%06d', i), 1, CASE WHEN i % 2 = 0 THEN 'factory' ELSE 'mcp' END,
                CASE WHEN i % 3 = 0 THEN 'p' END, 1000, '2026-12-01T00:00:00Z',
                '2026-12-01T00:00:00Z'
         FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {PLAN_PREFIXED})
         INSERT INTO factory_context_metadata
             (context_id, version, source, size_bytes, created_at, updated_at)
         SELECT printf('a:%06d', i), 1, CASE WHEN i % 2 = 0 THEN 'factory' ELSE 'mcp' END,
                1000, '2026-12-01T00:00:00Z', '2026-12-01T00:00:00Z'
         FROM n;
         INSERT INTO factory_context_versions
             (context_id, version, source, data, change_type, changed_at, size_bytes)
         SELECT context_id, 1, source, json_object('text', printf('%.1000c', 'x')), 'create',
                '2026-12-01T00:00:00Z', 1000
         FROM factory_context_metadata;
         ANALYZE;"
    ))
    .unwrap();
    // Rows, steps and the plan of one page.
    let steps = |sql: &str, params: Vec<Sql>| -> (usize, i32, String) {
        let params_again = params.clone();
        let mut statement = conn.prepare(sql).unwrap();
        let rows = statement
            .query_map(rusqlite::params_from_iter(params), |_| Ok(()))
            .unwrap()
            .count();
        let steps = statement.get_status(rusqlite::StatementStatus::VmStep);
        drop(statement);
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(params_again), |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (rows, steps, plan.join("; "))
    };
    let literal = |raw: &str| Sql::Text(raw.trim_matches('\'').to_owned());
    for (shape, filters, cursors) in plan_cases() {
        let sql = contextd::store::sqlite::list_statement(shape);
        let mut costs = Vec::new();
        for cursor in cursors {
            let mut params: Vec<Sql> = filters.iter().map(|f| literal(f)).collect();
            params.extend([Sql::Text(cursor.to_owned()), Sql::Integer(100)]);
            let (rows, steps, plan) = steps(&sql, params);
            assert!(
                rows > 0,
                "{shape:?} after {cursor}: an empty page proves nothing"
            );
            costs.push((cursor, rows, steps, plan));
        }
        // (Later pages of a prefix hold fewer rows, never more steps.)
        assert!(
            costs
                .iter()
                .all(|(_, _, steps, _)| *steps as f64 <= 1.5 * costs[0].2 as f64),
            "{shape:?}: a later page took more steps than the first: {costs:?}"
        );
    }
}

/// What one context of about 1 KB (one version, just written) costs on disk: the version row,
/// the head, the outbox row and, on Postgres, the L3 record; indexes included. The reported
/// fault: 3.4-3.9 KB on Postgres (a second, uncompressed copy in L3) and 4.7 KB on SQLite
/// (versions in a WITHOUT ROWID table, whose rows over about 1,000 bytes spill into an
/// overflow page of 4 KB each).
async fn a_context_of_one_kilobyte_takes_at_most_two_and_a_half_on_disk(backend: Backend) {
    let setup = match backend {
        Backend::Postgres => crate::harness::Setup::POSTGRES_L2_OFF,
        Backend::Sqlite => crate::harness::Setup::SQLITE,
    };
    // A batch of a thousand writes is one transaction: on a machine busy with the rest of the
    // suite it may take longer than the tests' usual 2 s store deadline. This test is about
    // bytes on disk, not latency.
    let app = TestApp::spawn_with(setup, |s| s.database.connect_timeout_seconds = 15).await;
    // Notes of an agent: sentences over a vocabulary of a few hundred words, about 1 KB each.
    let words: Vec<String> = (0..400)
        .map(|i| format!("w{:x}ord", i * 7919 % 4093))
        .collect();
    let mut seed = 7u64;
    let mut word = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        words[(seed >> 33) as usize % words.len()].clone()
    };
    let mut load = async |batch: usize| {
        let contexts: Vec<serde_json::Value> = (0..1000)
            .map(|i| {
                let mut note = |n: usize| (0..n).map(|_| word()).collect::<Vec<_>>().join(" ");
                let (summary, body) = (note(20), note(100));
                serde_json::json!({
                    "id": format!("c{batch}_{i:04}"),
                    "data": {"summary": summary, "body": body, "step": i},
                    "metadata": {"agent": "planner"},
                })
            })
            .collect();
        let response = app
            .post("/sync/factory", serde_json::json!({ "contexts": contexts }))
            .await;
        let status = response.status();
        assert_eq!(status, 200, "{}", response.text().await.unwrap());
        // Until the change feed holds every change (Postgres numbers them after commit).
        let last = (batch + 1) * 1000;
        for _ in 0..200 {
            let feed: serde_json::Value = app
                .get(&format!("/sync/factory/changes?since={}&limit=1", last - 1))
                .await
                .json()
                .await
                .unwrap();
            if !feed["changes"].as_array().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the change feed never reached {last}");
    };
    let bytes = async || -> u64 {
        match backend {
            Backend::Postgres => {
                let rows = app
                    .db
                    .query(
                        "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = current_schema() AND c.relkind = 'r'",
                    )
                    .await;
                rows[0][0].as_u64().unwrap()
            }
            Backend::Sqlite => {
                let path = app.db.url().trim_start_matches("sqlite:").to_owned();
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                    .unwrap();
                let pragma = |name: &str| -> u64 {
                    conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
                        .unwrap()
                };
                (pragma("page_count") - pragma("freelist_count")) * pragma("page_size")
            }
        }
    };
    // What the tables cost once they hold some rows, then what 2,000 more add.
    load(0).await;
    let before = bytes().await;
    load(1).await;
    load(2).await;
    let per_context = (bytes().await - before) / 2_000;
    assert!(
        per_context <= 2_560,
        "{per_context} bytes on disk per context of about 1 KB"
    );
}

on_both_backends!(a_context_of_one_kilobyte_takes_at_most_two_and_a_half_on_disk);
