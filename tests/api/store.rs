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
