//! The harness the benches share, written once here instead of once per bench.
//!
//! Each bench includes it with `mod common;`. Cargo builds only `benches/*.rs` and
//! `benches/*/main.rs` as bench targets, so this directory (no `main.rs`) is a module, not a
//! bench of its own. What it holds:
//!
//! - running as a bench: [`run_as_bench`] (the `--bench` guard of the `harness = false`
//!   benches), [`env_or`] and [`print_knobs`] (parameters from the environment, and their
//!   table), [`DEFAULT_PG`] and [`store_list`] (which databases), [`unique_suffix`] (names for
//!   what one run creates);
//! - [`Server`]: a child `contextd serve` on `127.0.0.1:0`, started with nothing of the
//!   bench's own environment, ready once it logs `listening on` and then `ready`, its
//!   stderr drained for its whole life, stopped when dropped; [`Database`] and [`TempDir`], what the servers' stores
//!   leave behind, removed when dropped; [`http_client`], [`bench_runtime`] and
//!   [`metrics_summary`], the client side of the HTTP benches;
//! - statistics: [`percentile`] (nearest rank), [`Spread`] (a sorted sample), [`signed_ms`];
//! - data: [`SplitMix64`], [`zipf_trace`] and [`distinct`] (the Zipf traces), [`pad`] (filler
//!   of a context's `data`), [`cached_context`] (an L1 entry).
//!
//! Every bench uses a part of it, so what one does not use is not dead code.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{TimeZone, Utc};
use contextd::cache::CachedContext;
use contextd::domain::{Content, Context, ContextId, JsonObject, Source};
use serde_json::Value;

/// The release binary the server benches start.
pub const BIN: &str = env!("CARGO_BIN_EXE_contextd");

/// The Postgres server the benches use by default (a URL without a database name).
pub const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432";

/// How long a server may take from spawn to `listening on` (it creates and migrates the
/// database on its first start).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Running as a bench, and its parameters.

/// Whether the binary runs as a bench. `cargo bench` passes --bench; `cargo test
/// --all-targets` runs it without, and a benchmark is not a test: then it says how to run
/// `name` and the bench should return.
pub fn run_as_bench(name: &str) -> bool {
    let bench = std::env::args().any(|arg| arg == "--bench");
    if !bench {
        println!("{name}: a benchmark; run it with `cargo bench --bench {name}`");
    }
    bench
}

/// `name` parsed from the environment (trimmed), or `default` when it is not set; a value
/// that does not parse is a panic.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={raw:?} does not parse")),
        Err(_) => default,
    }
}

/// The knob table: `(variable, value, default)` rows under a header, then a blank line.
pub fn print_knobs(rows: &[(&str, String, &str)]) {
    println!("{:<24} {:<36} default", "knob (env)", "value");
    for (name, value, default) in rows {
        println!("{name:<24} {value:<36} {default}");
    }
    println!();
}

/// The stores of a comma-separated list (`postgres,sqlite`), trimmed and in lower case.
pub fn store_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The process id and the clock's nanoseconds, for the names of the databases, directories
/// and keys one run creates.
pub fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    format!("{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

// ---------------------------------------------------------------------------------------------
// Child servers, the database and the SQLite directory, each cleaned up on drop.

/// What becomes of a server's log lines (its stderr).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// Kept: the last lines for the panics of [`Server`], and the warning and error lines
    /// logged before the bench stopped it, printed when it is dropped.
    AtExit,
    /// Also every line but `INFO` ones on the bench's stderr as it comes, tagged with the
    /// server's name.
    Live,
}

/// A running `contextd serve`; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    name: String,
    child: Child,
    base: String,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Warning and error lines logged before the bench stopped the server ([`Logs::AtExit`]).
    problems: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
}

/// The address in `... listening on http://127.0.0.1:PORT`.
fn listen_address(line: &str) -> Option<String> {
    let rest = &line[line.find("listening on http://")? + "listening on http://".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    (!addr.is_empty()).then_some(addr)
}

impl Server {
    /// Starts `contextd serve` bound to `127.0.0.1:0` and returns once it logs the address it
    /// listens on. `configure` sets its environment (`DATABASE_URL`, `RUST_LOG`, the settings
    /// the bench needs): nothing from the bench's own reaches it, and no config file either,
    /// as it runs in a directory without `config/context.yaml`.
    pub fn start(name: &str, logs: Logs, configure: impl FnOnce(&mut Command)) -> Server {
        let mut command = Command::new(BIN);
        command.arg("serve");
        for (key, _) in std::env::vars_os() {
            if let Some(key) = key.to_str()
                && (key.starts_with("CONTEXTD")
                    || ["DATABASE_URL", "REDIS_URL", "RUST_LOG"].contains(&key))
            {
                command.env_remove(key);
            }
        }
        command
            .current_dir(std::env::temp_dir())
            .env("CONTEXTD__SERVER__BIND", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));

        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let (tail, problems, stopping) = (tail.clone(), problems.clone(), stopping.clone());
            let tag = name.to_owned();
            // Drains stderr for the process's whole life, so that it never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut ready_tx = Some(ready_tx);
                let mut listening = None;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    // It listens at once, then opens its store: ready once it says so.
                    if ready_tx.is_some() && listening.is_none() {
                        listening = listen_address(&line);
                    }
                    if ready_tx.is_some() && line.trim_end().ends_with(" ready") {
                        if let Some(addr) = listening.take() {
                            let _ = ready_tx.take().expect("checked").send(addr);
                        }
                    } else if logs == Logs::Live {
                        if !line.contains(" INFO ") {
                            eprintln!("[{tag} server] {line}");
                        }
                    } else if (line.contains("WARN") || line.contains("ERROR"))
                        && !stopping.load(Ordering::Relaxed)
                    {
                        let mut problems = problems.lock().unwrap();
                        if problems.len() < 20 {
                            problems.push(line.clone());
                        }
                    }
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == 40 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        let mut server = Server {
            name: name.to_owned(),
            child,
            base: String::new(),
            tail,
            problems,
            stopping,
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => server.base = format!("http://{addr}"),
            Err(_) => {
                // The log ended (the process is exiting) or the time is up: its status, if
                // it has one within a moment.
                let until = Instant::now() + Duration::from_secs(2);
                let mut status = None;
                while status.is_none() && Instant::now() < until {
                    status = server.child.try_wait().ok().flatten();
                    std::thread::sleep(Duration::from_millis(20));
                }
                panic!(
                    "server {} did not report `listening on` and `ready` (waited at most \
                     {START_TIMEOUT:?}; exit status: {status:?}); its last log lines:\n{}",
                    server.name,
                    server.log_tail()
                );
            }
        }
        server
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The last 40 lines it logged.
    pub fn log_tail(&self) -> String {
        let tail = self.tail.lock().unwrap();
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Polls `/readyz` until it answers 200: the store is open and every route serves
    /// (`/healthz` answers from the first moment, while the server is still starting).
    pub async fn wait_ready(&mut self, client: &reqwest::Client) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = client.get(self.url("/readyz")).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                let _ = response.bytes().await;
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "server {} exited ({status}); its last log lines:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < until,
                "server {} is not ready (/readyz); its last log lines:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill")
                .args(["-TERM", &pid])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let problems = self.problems.lock().unwrap();
        if !problems.is_empty() {
            eprintln!(
                "note: server {} logged {} warning/error line(s){}:",
                self.name,
                problems.len(),
                if problems.len() == 20 {
                    " (first 20)"
                } else {
                    ""
                }
            );
            for line in problems.iter() {
                eprintln!("  {line}");
            }
        }
    }
}

/// A fresh Postgres database the servers create; dropped (with its connections) when this is.
pub struct Database {
    admin_url: String,
    name: String,
}

impl Database {
    /// Database `name` on the server `pg` (a URL without a database name), and the
    /// `DATABASE_URL` that uses it.
    pub fn new(pg: &str, name: String) -> (Database, String) {
        let pg = pg.trim_end_matches('/');
        let url = format!("{pg}/{name}");
        let admin_url = format!("{pg}/postgres");
        (Database { admin_url, name }, url)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // A thread of its own: drop may run inside the bench's runtime, which cannot block.
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => println!("dropped database {}", self.name),
            Ok(Err(e)) => eprintln!("could not drop database {}: {e}", self.name),
            Err(_) => eprintln!("could not drop database {}: the thread panicked", self.name),
        }
    }
}

/// A directory (a SQLite database's), created by [`TempDir::new`] and removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `name` in the system's temporary directory, created.
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => println!("removed {}", self.0.display()),
            Err(e) => eprintln!("could not remove {}: {e}", self.0.display()),
        }
    }
}

/// The HTTP benches' runtime: two worker threads, as the machine they are measured on.
pub fn bench_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A keep-alive HTTP client (the crate's reqwest).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// `GET /metrics/summary`, checked for a 200.
pub async fn metrics_summary(client: &reqwest::Client, server: &Server) -> Value {
    let url = server.url("/metrics/summary");
    let response = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// The nearest-rank percentile `p` (0 to 100; 100 is the max) of `sorted`, which is not empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let n = sorted.len();
    assert!(n > 0, "no samples");
    sorted[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1]
}

/// A sample, sorted, never empty.
pub struct Spread(Vec<f64>);

impl Spread {
    /// `values` sorted; `None` when there are none.
    pub fn of(mut values: Vec<f64>) -> Option<Spread> {
        values.sort_by(f64::total_cmp);
        (!values.is_empty()).then_some(Spread(values))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The nearest-rank percentile `p` (100: the max).
    pub fn pct(&self, p: f64) -> f64 {
        percentile(&self.0, p)
    }

    pub fn max(&self) -> f64 {
        self.0[self.0.len() - 1]
    }

    pub fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }
}

/// `later − earlier` in milliseconds, negative when `later` came first.
pub fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(earlier.duration_since(later).as_secs_f64() * 1e3),
    }
}

// ---------------------------------------------------------------------------------------------
// Data.

/// splitmix64: small, fast, and good enough to drive a sampler.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// `requests` ranks in `0..keys` (0 the most popular), P(rank k) ∝ 1 / (k + 1)^s, drawn by
/// inverse CDF: a uniform draw located by binary search in the cumulative weights.
pub fn zipf_trace(keys: usize, requests: usize, s: f64, seed: u64) -> Vec<u32> {
    let mut cumulative = Vec::with_capacity(keys);
    let mut total = 0.0f64;
    for k in 1..=keys {
        total += (k as f64).powf(-s);
        cumulative.push(total);
    }
    let mut rng = SplitMix64(seed);
    (0..requests)
        .map(|_| {
            let u = rng.next_f64() * total;
            cumulative.partition_point(|&c| c <= u).min(keys - 1) as u32
        })
        .collect()
}

/// How many distinct ranks (each below `keys`) `trace` requests.
pub fn distinct(trace: &[u32], keys: usize) -> usize {
    let mut seen = vec![false; keys];
    trace
        .iter()
        .filter(|&&r| !std::mem::replace(&mut seen[r as usize], true))
        .count()
}

/// `len` characters of filler unique to `n`, for the `data` of a context written.
pub fn pad(n: usize, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|i| ALPHABET[(i * 7 + n * 13) % ALPHABET.len()] as char)
        .collect()
}

/// An L1 entry: version 1 of context `id` from MCP, created and updated at one fixed time.
pub fn cached_context(id: ContextId, data: Value, metadata: Value) -> Arc<CachedContext> {
    let created_at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let object = |value: Value| JsonObject::from_value(&value).unwrap();
    let content = Content {
        source: Source::Mcp,
        parent_id: None,
        data: object(data),
        metadata: object(metadata),
        embedding: None,
    };
    let size_bytes = content.size_bytes() as i64;
    Arc::new(CachedContext::new(Context {
        id,
        version: 1,
        content,
        created_at,
        updated_at: created_at,
        size_bytes,
        server_embedding: None,
    }))
}
