//! The store traits on their own, on both backends: the rules each backend writes in its own
//! SQL (a key's first revocation wins, the bootstrap key lifts one, an indexer's cursor never
//! moves back) and the decisions every backend maps the same way.

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use contextd::domain::{ContextId, Refusal, Role};
use contextd::store::{ApiKeyRecord, Decision, Store, StoreError, WriteOutcome};

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
);

/// Rows of `factory_context_versions` one execution of `sql` reads, under the generic plan
/// Postgres switches a prepared statement to after five executions, on ANALYZEd tables.
async fn versions_read_by_generic_plan(
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
        if node["Relation Name"] == "factory_context_versions"
            || node["Index Name"]
                .as_str()
                .is_some_and(|name| name.starts_with("factory_context_versions"))
        {
            *rows += node["Actual Rows"].as_u64().unwrap_or(0)
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

/// The reported fault: paging through a large, ANALYZEd store read every version before the
/// cursor (a merge join under the generic plan), so the last pages of a million contexts took
/// seconds. On these 30,000 contexts of about 1 KB the old statement read 29,900 versions for
/// the last page. A page must read its own rows only, wherever the cursor is.
#[tokio::test]
async fn a_page_of_the_list_reads_only_its_own_versions_under_the_generic_plan() {
    const CONTEXTS: usize = 30_000;
    let db = TestDb::new(Backend::Postgres).await;
    let client = crate::harness::connect(&db.url()).await;
    client
        .batch_execute(&format!(
            "INSERT INTO factory_context_metadata
                 (context_id, version, source, size_bytes, created_at, updated_at)
             SELECT 'ctx_' || lpad(i::text, 6, '0'), 1, 'mcp', 1000, now(), now()
             FROM generate_series(1, {CONTEXTS}) i;
             INSERT INTO factory_context_versions
                 (context_id, version, source, data, change_type, changed_at, size_bytes)
             SELECT context_id, 1, 'mcp', jsonb_build_object('text', repeat(md5(context_id), 30)),
                    'create', now(), 1000
             FROM factory_context_metadata;
             ANALYZE factory_context_metadata; ANALYZE factory_context_versions;"
        ))
        .await
        .unwrap();
    let sql = contextd::store::postgres::list_statement(contextd::store::postgres::ListShape {
        after: true,
        ..Default::default()
    });
    for cursor in ["ctx_000010", "ctx_015000", "ctx_029800"] {
        let (rows, ms) =
            versions_read_by_generic_plan(&client, &sql, &format!("'{cursor}', 100")).await;
        assert!(
            rows <= 100,
            "a page after {cursor} read {rows} versions ({ms} ms)"
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
