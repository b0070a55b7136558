//! What the auth layer adds to one request, measured in process: the real `authenticate`
//! middleware in front of a handler that does nothing, with auth off (the system principal)
//! and with auth on and a verified key (bearer parse, SHA-256, the cache of verified keys).
//!
//! `cargo bench --bench auth_layer`. The difference of the two is the per-request cost of auth;
//! `bench/auth.sh` puts it beside a whole hot GET over HTTP, where the machine's noise (about
//! ±10% between rounds here) hides anything under a few percent.

use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use contextd::auth::keys::ApiKey;
use contextd::auth::{Authenticator, authenticate};
use contextd::config::{AuthMode, Secret, Settings};
use contextd::metrics::Metrics;
use contextd::store::{SqliteStore, Store};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

/// A router with nothing but the auth layer and an empty handler, and the key it takes.
fn app(
    runtime: &tokio::runtime::Runtime,
    mode: AuthMode,
    dir: &std::path::Path,
) -> (Router, String) {
    let key = ApiKey::generate().expect("a key");
    let mut settings = Settings::default();
    settings.auth.mode = mode;
    settings.auth.bootstrap_key = Some(Secret::new(key.expose().to_owned()));
    let store: Arc<dyn Store> = runtime.block_on(async {
        let store = SqliteStore::open(&dir.join(format!("{mode:?}.db")))
            .await
            .expect("the store opens");
        contextd::auth::ensure_bootstrap_key(&settings, &store)
            .await
            .expect("the key is stored");
        Arc::new(store)
    });
    let auth = Arc::new(Authenticator::new(
        &settings,
        store,
        Arc::new(Metrics::new()),
    ));
    runtime.block_on(auth.load()).expect("the keys load");
    let router = Router::new()
        .route("/contexts/hot", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(auth, authenticate));
    (router, key.expose().to_owned())
}

fn request(key: Option<&str>) -> Request<Body> {
    let mut request = Request::get("/contexts/hot");
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    request.body(Body::empty()).expect("a request")
}

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = std::env::temp_dir().join(format!("contextd-auth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let (off, _) = app(&runtime, AuthMode::Off, &dir);
    let (on, key) = app(&runtime, AuthMode::On, &dir);
    // Keys are held in memory from the start: the first request costs what the others do.
    let first = runtime
        .block_on(on.clone().oneshot(request(Some(&key))))
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);

    let mut group = c.benchmark_group("auth_layer");
    group.bench_function("off", |b| {
        b.iter(|| {
            let response = runtime
                .block_on(off.clone().oneshot(request(None)))
                .unwrap();
            black_box(response.status())
        })
    });
    group.bench_function("on, verified key", |b| {
        b.iter(|| {
            let response = runtime
                .block_on(on.clone().oneshot(request(Some(&key))))
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            black_box(response.status())
        })
    });
    group.bench_function("on, no key (401)", |b| {
        b.iter(|| {
            let response = runtime.block_on(on.clone().oneshot(request(None))).unwrap();
            black_box(response.status())
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, layer);
criterion_main!(benches);
