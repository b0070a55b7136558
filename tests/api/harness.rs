//! Test fixtures: a database per test, the app on port 0, and a TCP proxy that can cut the
//! app off from Postgres for real.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use contextd::config::{Secret, Settings};
use contextd::startup::App;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// The `contextd` binary, with only the environment a test gives it.
pub fn contextd() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_contextd"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "CONTEXTD_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/context.yaml"),
        )
        .env("RUST_LOG", "info");
    command
}

/// The Postgres server the tests use: `CONTEXTD_TEST_DATABASE_URL` (as `scripts/test.sh` sets
/// it), else the local default. It must name a database we can connect to for admin work.
pub fn admin_url() -> String {
    std::env::var("CONTEXTD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The Redis the tests use, as `scripts/test.sh` sets it.
pub fn redis_url() -> String {
    std::env::var("CONTEXTD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn url_for(database: &str) -> String {
    let admin = admin_url();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("the admin URL names a database");
    format!("{base}/{database}")
}

fn host_port() -> (String, u16) {
    let config: tokio_postgres::Config = admin_url().parse().expect("a valid admin URL");
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => "127.0.0.1".to_owned(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

async fn admin() -> tokio_postgres::Client {
    connect(&admin_url()).await
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach Postgres for the tests at {url}: {e}. Run scripts/test.sh, which starts one."));
    tokio::spawn(connection);
    client
}

/// The template's name carries a hash of the schema, so a schema change makes a new one.
fn template_name() -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in include_str!("../../schema.sql").bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("contextd_tpl_{hash:016x}")
}

/// Creates the template once per schema, whichever test process gets there first.
async fn ensure_template() -> String {
    let name = template_name();
    let admin = admin().await;
    admin
        .execute("SELECT pg_advisory_lock(7461636)", &[])
        .await
        .unwrap();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    if !exists {
        // Templates of older schemas are of no further use.
        let stale = admin
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'contextd_tpl_%' AND datname <> $1",
                &[&name],
            )
            .await
            .unwrap();
        for row in stale {
            let old: String = row.get(0);
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{old}\" WITH (FORCE)"))
                .await;
        }
        // The app creates the database and migrates it, exactly as in production.
        let mut settings = Settings::default();
        settings.database.url = Some(Secret::new(url_for(&name)));
        contextd::startup::open_store(&settings)
            .await
            .expect("migrating the template");
    }
    admin
        .execute("SELECT pg_advisory_unlock(7461636)", &[])
        .await
        .unwrap();
    name
}

/// A store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// The name `/readyz` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// What a test runs on: a store, and the cache in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub backend: Backend,
    /// Redis is configured (with a key prefix of the test's own): invalidation, and L2 if on.
    pub redis: bool,
    /// `cache.l2.enabled`.
    pub l2: bool,
}

impl Setup {
    /// Postgres with every layer: L1, L2 (Redis), L3 (the cache table).
    pub const POSTGRES: Setup = Setup {
        backend: Backend::Postgres,
        redis: true,
        l2: true,
    };
    /// Postgres with Redis for invalidation only (`cache.l2.enabled: false`): L1 and L3.
    pub const POSTGRES_L2_OFF: Setup = Setup {
        backend: Backend::Postgres,
        redis: true,
        l2: false,
    };
    /// The zero-service default: SQLite, L1 only.
    pub const SQLITE: Setup = Setup {
        backend: Backend::Sqlite,
        redis: false,
        l2: false,
    };
}

/// Makes each listed `async fn name(store: Setup)` three tests: `name::postgres` (every cache
/// layer), `name::postgres_l2_off` (no Redis L2) and `name::sqlite` (no services at all). One
/// suite, run on both stores, with the cache on and off.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::harness::Setup::POSTGRES).await
                }

                #[tokio::test]
                async fn postgres_l2_off() {
                    super::$name($crate::harness::Setup::POSTGRES_L2_OFF).await
                }

                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::harness::Setup::SQLITE).await
                }
            }
        )*
    };
}

/// Points the settings at the tests' Redis, under a key prefix of their own.
pub fn use_redis(settings: &mut Settings, key_prefix: &str) {
    settings.redis.url = Some(Secret::new(redis_url()));
    settings.cache.l2.key_prefix = key_prefix.to_owned();
}

/// A database of one's own, dropped (or deleted) at the end of the test.
pub struct TestDb {
    pub backend: Backend,
    /// The Postgres database's name, or the SQLite file's folder.
    pub name: String,
}

impl TestDb {
    /// A migrated Postgres database cloned from the template, or a folder for a SQLite file
    /// (which the app creates and migrates when it opens it).
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => Self::migrated().await,
            Backend::Sqlite => Self::fresh(Backend::Sqlite),
        }
    }

    /// A migrated Postgres database, cloned from the template.
    pub async fn migrated() -> Self {
        let template = ensure_template().await;
        let name = format!("contextd_test_{}", uuid_simple());
        let admin = admin().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let sql = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"");
            match admin.batch_execute(&sql).await {
                Ok(()) => break,
                // Another clone of the template is in progress: take turns.
                Err(_) if attempts < 50 => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cloning the template: {e}"),
            }
        }
        Self {
            backend: Backend::Postgres,
            name,
        }
    }

    /// A database that does not exist yet: the app creates it.
    pub fn fresh(backend: Backend) -> Self {
        let name = match backend {
            Backend::Postgres => format!("contextd_test_{}", uuid_simple()),
            Backend::Sqlite => std::env::temp_dir()
                .join(format!("contextd_test_{}", uuid_simple()))
                .to_string_lossy()
                .into_owned(),
        };
        Self { backend, name }
    }

    pub fn url(&self) -> String {
        match self.backend {
            Backend::Postgres => url_for(&self.name),
            Backend::Sqlite => format!("sqlite:{}/contextd.db", self.name),
        }
    }

    /// A Postgres connection to this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        assert_eq!(self.backend, Backend::Postgres);
        connect(&self.url()).await
    }

    /// Runs `sql` directly on the database; each row's columns as JSON values.
    pub async fn query(&self, sql: &str) -> Vec<Vec<Value>> {
        match self.backend {
            Backend::Postgres => {
                let rows = self.client().await.query(sql, &[]).await.unwrap();
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|i| {
                                use tokio_postgres::types::Type;
                                match *row.columns()[i].type_() {
                                    Type::INT8 => json!(row.get::<_, Option<i64>>(i)),
                                    Type::INT4 => json!(row.get::<_, Option<i32>>(i)),
                                    Type::BOOL => json!(row.get::<_, Option<bool>>(i)),
                                    _ => json!(row.get::<_, Option<String>>(i)),
                                }
                            })
                            .collect()
                    })
                    .collect()
            }
            Backend::Sqlite => {
                let path = format!("{}/contextd.db", self.name);
                let conn = rusqlite::Connection::open(path).unwrap();
                let mut statement = conn.prepare(sql).unwrap();
                let columns = statement.column_count();
                statement
                    .query_map([], |row| {
                        Ok((0..columns)
                            .map(|i| match row.get_ref(i).unwrap() {
                                rusqlite::types::ValueRef::Null => Value::Null,
                                rusqlite::types::ValueRef::Integer(n) => json!(n),
                                rusqlite::types::ValueRef::Real(x) => json!(x),
                                rusqlite::types::ValueRef::Text(t) => {
                                    json!(String::from_utf8_lossy(t))
                                }
                                rusqlite::types::ValueRef::Blob(_) => json!("<blob>"),
                            })
                            .collect())
                    })
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
        }
    }

    /// The one number `sql` selects.
    pub async fn scalar(&self, sql: &str) -> i64 {
        self.query(sql).await[0][0].as_i64().unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.backend == Backend::Sqlite {
            let _ = std::fs::remove_dir_all(&self.name);
            return;
        }
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on; use a thread of
        // its own and wait for it, so the database is gone when the test ends.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

fn uuid_simple() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}_{}_{n}", nanos, std::process::id())
}

/// The real app, serving on a free port.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub db: Arc<TestDb>,
    pub settings: Settings,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// The app with default settings on a database of its own.
    pub async fn spawn(setup: Setup) -> Self {
        Self::spawn_with(setup, |_| {}).await
    }

    /// The app with settings changed by `configure`.
    pub async fn spawn_with(setup: Setup, configure: impl FnOnce(&mut Settings)) -> Self {
        let db = Arc::new(TestDb::new(setup.backend).await);
        let mut settings = Self::settings_for(&db.url());
        if setup.redis {
            use_redis(&mut settings, &format!("test:{}:", uuid_simple()));
        }
        settings.cache.l2.enabled = setup.l2;
        configure(&mut settings);
        Self::start(db, settings).await
    }

    pub fn settings_for(database_url: &str) -> Settings {
        let mut settings = Settings::default();
        settings.database.url = Some(Secret::new(database_url.to_owned()));
        settings.database.pool_size = 4;
        settings.database.connect_timeout_seconds = 2;
        settings.server.bind = "127.0.0.1:0".parse().unwrap();
        settings.vector.dimensions = 4;
        settings
    }

    pub async fn start(db: Arc<TestDb>, settings: Settings) -> Self {
        contextd::telemetry::init("warn");
        let app = App::build(&settings).await.expect("the app starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            base,
            http: reqwest::Client::new(),
            db,
            settings,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Stops the server (gracefully) and starts a new one on the same database.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let db = self.db.clone();
        let settings = self.settings.clone();
        drop(self);
        Self::start(db, settings).await
    }

    /// Asks the server to stop and waits until it has.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// Begins a graceful stop without waiting for it.
    pub fn begin_stop(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.take().expect("the server runs")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn put(&self, id: &str, body: Value) -> Response {
        self.http
            .put(self.url(&format!("/contexts/{id}")))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.http.delete(self.url(path)).send().await.unwrap()
    }

    /// PUTs `data` (source `mcp`) and asserts it was stored; returns the resource.
    pub async fn put_data(&self, id: &str, data: Value) -> Value {
        let response = self.put(id, json!({"data": data, "source": "mcp"})).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "PUT {id}: {status} {body}");
        body
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Asserts a problem+json answer with `status`, and returns its body.
pub async fn problem(response: Response, status: StatusCode) -> Value {
    let got = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.text().await.unwrap();
    assert_eq!(got, status, "body: {body}");
    assert_eq!(content_type, "application/problem+json", "body: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], status.as_u16(), "{body}");
    for member in ["type", "title", "detail"] {
        assert!(body[member].is_string(), "problem without {member}: {body}");
    }
    body
}

/// A TCP proxy to Postgres that a test can cut (connections dropped, new ones refused),
/// blackhole (connections kept open, nothing forwarded either way, as when a network drops
/// packets) and restore, to take the store down for real.
pub struct PgProxy {
    pub port: u16,
    state: Arc<ProxyState>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    up: AtomicBool,
    blackholed: AtomicBool,
    cut: Notify,
    /// Woken on every change of mode.
    changed: Notify,
}

impl PgProxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        state.up.store(true, Ordering::SeqCst);
        let (host, pg_port) = host_port();
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !state.up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = format!("{host}:{pg_port}");
                    tokio::spawn(proxy_connection(inbound, target, state.clone()));
                }
            })
        };
        Self { port, state, task }
    }

    /// A database URL that goes through the proxy.
    pub fn url_for(&self, database: &str) -> String {
        let admin: tokio_postgres::Config = admin_url().parse().unwrap();
        let user = admin.get_user().unwrap_or("postgres");
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        self.state.cut.notify_waiters();
    }

    /// Keeps every connection, and accepts new ones, but forwards nothing.
    pub fn blackhole(&self) {
        self.state.blackholed.store(true, Ordering::SeqCst);
        self.state.changed.notify_waiters();
    }

    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
        self.state.blackholed.store(false, Ordering::SeqCst);
        self.state.changed.notify_waiters();
    }
}

/// Forwards one connection until the proxy cuts it; while blackholed, holds it silent.
async fn proxy_connection(mut inbound: TcpStream, target: String, state: Arc<ProxyState>) {
    let blackholed = || state.blackholed.load(Ordering::SeqCst);
    while blackholed() {
        state.changed.notified().await;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    loop {
        let changed = state.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if blackholed() {
            // Hold both sockets open, read nothing, send nothing.
            changed.await;
            continue;
        }
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
            _ = state.cut.notified() => return,
            _ = changed => {}
        }
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A webhook receiver on port 0 that records every request and can be told to fail (500) its
/// next N requests.
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct ReceiverState {
    requests: std::sync::Mutex<Vec<Received>>,
    fail_next: std::sync::atomic::AtomicUsize,
}

/// One request the receiver got, and whether it answered 2xx.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Vec<u8>,
    pub signature: Option<String>,
    pub accepted: bool,
}

impl Received {
    /// The `changes` of the body.
    pub fn changes(&self) -> Vec<Value> {
        let body: Value = serde_json::from_slice(&self.body).unwrap();
        body["changes"].as_array().unwrap().clone()
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post({
                let state = state.clone();
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let state = state.clone();
                    async move {
                        let fail = state
                            .fail_next
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        state.requests.lock().unwrap().push(Received {
                            body: body.to_vec(),
                            signature: headers
                                .get("x-contextd-signature")
                                .map(|v| v.to_str().unwrap().to_owned()),
                            accepted: !fail,
                        });
                        if fail {
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            axum::http::StatusCode::NO_CONTENT
                        }
                    }
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { url, state, task }
    }

    /// Answer the next `n` requests with 500.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The changes of the accepted requests, in the order they arrived.
    pub fn accepted_changes(&self) -> Vec<Value> {
        self.received()
            .iter()
            .filter(|r| r.accepted)
            .flat_map(Received::changes)
            .collect()
    }

    /// Waits until at least `n` changes were accepted.
    pub async fn wait_for(&self, n: usize, limit: std::time::Duration) -> Vec<Value> {
        let until = std::time::Instant::now() + limit;
        loop {
            let changes = self.accepted_changes();
            if changes.len() >= n {
                return changes;
            }
            assert!(
                std::time::Instant::now() < until,
                "only {} of {n} changes arrived within {limit:?}",
                changes.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Python that has the test tools (`standardwebhooks`): `CONTEXTD_TEST_PYTHON`, as
/// `scripts/test.sh` sets it, else the venv it makes under `target/`.
pub fn test_python() -> String {
    std::env::var("CONTEXTD_TEST_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-venv/bin/python").to_owned()
    })
}

/// A webhook receiver that verifies pushes with Standard Webhooks' reference library
/// (`tests/support/standard_webhooks_receiver.py`), answering 500 to its first `fail_first`
/// verified pushes.
pub struct StandardReceiver {
    pub url: String,
    child: std::process::Child,
    records: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl StandardReceiver {
    pub fn start(secret: &str, fail_first: usize) -> Self {
        use std::io::BufRead;
        let python = test_python();
        let mut child = std::process::Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/standard_webhooks_receiver.py"
            ))
            .arg(secret)
            .arg(fail_first.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {python}: {e}. Run scripts/test.sh, which installs the test tools."
                )
            });
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next()
            .expect("the receiver printed its port")
            .unwrap();
        let port = first
            .strip_prefix("port ")
            .expect("`port N` first")
            .to_owned();
        let records = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = records.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            child,
            records,
        }
    }

    /// What the receiver saw of each request so far.
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until `n` pushes were verified and accepted.
    pub async fn wait_for_accepted(&self, n: usize, limit: std::time::Duration) -> Vec<Value> {
        let until = std::time::Instant::now() + limit;
        loop {
            let accepted: Vec<Value> = self
                .records()
                .into_iter()
                .filter(|r| r["status"] == 204)
                .collect();
            if accepted.len() >= n {
                return accepted;
            }
            assert!(
                std::time::Instant::now() < until,
                "only {} of {n} pushes were accepted: {:?}",
                accepted.len(),
                self.records()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for StandardReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample `name_and_labels` (exactly, labels as rendered) in a Prometheus
/// text exposition.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}
