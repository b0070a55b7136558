//! MCP against REST, through the real release binary, on Postgres and on SQLite.
//!
//! `cargo bench --bench mcp`. For each store it starts `contextd serve` (`/mcp` on the same
//! port as the REST API), seeds `MCP_BENCH_IDS` contexts of ~1 KB data with REST PUTs, and
//! measures with rmcp's own client over Streamable HTTP:
//!
//! - reads, `tools/call get_context` against REST `GET /contexts/{id}`, in the same run and
//!   interleaved so that all see the same machine state: each round reads one id once by REST
//!   (a keep-alive reqwest client), once by MCP on revision 2026-07-28 (stateless requests)
//!   and once by MCP on 2025-11-25 (an `initialize`d session), the order rotating from round
//!   to round; one client of each kind, sequential (latency, not throughput). Then a second
//!   pass with `MCP_BENCH_CLIENTS` concurrent clients of one kind at a time, for throughput.
//!   Target (issue): MCP within 2x of REST; printed, not enforced.
//! - REST write → notification: `MCP_BENCH_SUBSCRIBED` contexts `w{i}`, each listened to
//!   (2026-07-28 `subscriptions/listen`, one stream and one reading task per context; then a
//!   2025-11-25 session's `resources/subscribe`), and `MCP_BENCH_WRITES` REST PUTs
//!   round-robin over them, each sent only once the previous one's
//!   `notifications/resources/updated` has arrived (the server coalesces a subscriber's
//!   pending updates, so overlapping writes could share one). Per write: `t_send` before the
//!   PUT, `t_ack` once its response is read, and the notification's arrival; it reports
//!   arrival − `t_send` (an upper bound of commit → receipt) and arrival − `t_ack`.
//!   Target (issue): p99 send → receipt ≤ `MCP_BENCH_TARGET_MS`; printed, not enforced.
//!
//! It exits with status 1 when a check fails: a read that is not a 200 / a successful tool
//! result for the id asked, or a notification missing 10 s after its write.
//!
//! Parameters, from the environment (defaults in brackets): `MCP_BENCH_READS` [5000] measured
//! rounds (after 500 unmeasured) and reads per kind of the concurrent pass,
//! `MCP_BENCH_CLIENTS` [4] concurrent clients, `MCP_BENCH_IDS` [100] contexts read,
//! `MCP_BENCH_SUBSCRIBED` [8] contexts listened to, `MCP_BENCH_WRITES` [1000] writes per
//! notification pass, `MCP_BENCH_TARGET_MS` [50] the notification p99 target,
//! `MCP_BENCH_STORES` [postgres,sqlite], `MCP_BENCH_PG` [postgres://postgres@127.0.0.1:5432]
//! server (no database name), `MCP_BENCH_SERVER_LOG` [warn,contextd::startup=info] the
//! servers' `RUST_LOG` (the bench needs the `listening on` line).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
    ResourceUpdatedNotificationParam, ServerNotification, SubscribeRequestParams,
    SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_contextd");

/// How long a server may take from spawn to `listening on` (it creates and migrates the
/// database on its first start).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Unmeasured reads of each kind before the measured ones.
const WARMUP_READS: usize = 500;

/// Unmeasured writes per subscribed context before a notification pass.
const WARMUP_WRITES_PER_ID: usize = 2;

/// How long a notification may take before it counts as missing.
const NOTIFY_DEADLINE: Duration = Duration::from_secs(10);

/// Size of the compact `data` of every context written.
const DATA_BYTES: usize = 1024;

/// The ratio the issue allows MCP over REST.
const RATIO_TARGET: f64 = 2.0;

/// `name` parsed from the environment, or `default` when unset.
fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={raw:?} does not parse")),
        Err(_) => default,
    }
}

/// The bench's parameters (see the module docs).
struct Knobs {
    reads: usize,
    clients: usize,
    ids: usize,
    subscribed: usize,
    writes: usize,
    target_ms: f64,
    stores: Vec<String>,
    pg: String,
    server_log: String,
}

impl Knobs {
    fn from_env() -> Self {
        let stores: String = env_or("MCP_BENCH_STORES", "postgres,sqlite".to_owned());
        let knobs = Self {
            reads: env_or("MCP_BENCH_READS", 5000),
            clients: env_or("MCP_BENCH_CLIENTS", 4),
            ids: env_or("MCP_BENCH_IDS", 100),
            subscribed: env_or("MCP_BENCH_SUBSCRIBED", 8),
            writes: env_or("MCP_BENCH_WRITES", 1000),
            target_ms: env_or("MCP_BENCH_TARGET_MS", 50.0),
            stores: stores
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
            pg: env_or(
                "MCP_BENCH_PG",
                "postgres://postgres@127.0.0.1:5432".to_owned(),
            ),
            server_log: env_or(
                "MCP_BENCH_SERVER_LOG",
                "warn,contextd::startup=info".to_owned(),
            ),
        };
        for (name, value) in [
            ("MCP_BENCH_READS", knobs.reads),
            ("MCP_BENCH_CLIENTS", knobs.clients),
            ("MCP_BENCH_IDS", knobs.ids),
            ("MCP_BENCH_SUBSCRIBED", knobs.subscribed),
            ("MCP_BENCH_WRITES", knobs.writes),
        ] {
            assert!(value > 0, "{name} must be positive");
        }
        for store in &knobs.stores {
            assert!(
                store == "postgres" || store == "sqlite",
                "MCP_BENCH_STORES: {store:?} is neither postgres nor sqlite"
            );
        }
        knobs
    }

    fn print(&self) {
        println!("mcp: {BIN}");
        let rows: [(&str, String, &str); 9] = [
            ("MCP_BENCH_READS", self.reads.to_string(), "5000"),
            ("MCP_BENCH_CLIENTS", self.clients.to_string(), "4"),
            ("MCP_BENCH_IDS", self.ids.to_string(), "100"),
            ("MCP_BENCH_SUBSCRIBED", self.subscribed.to_string(), "8"),
            ("MCP_BENCH_WRITES", self.writes.to_string(), "1000"),
            ("MCP_BENCH_TARGET_MS", self.target_ms.to_string(), "50"),
            ("MCP_BENCH_STORES", self.stores.join(","), "postgres,sqlite"),
            (
                "MCP_BENCH_PG",
                self.pg.clone(),
                "postgres://postgres@127.0.0.1:5432",
            ),
            (
                "MCP_BENCH_SERVER_LOG",
                self.server_log.clone(),
                "warn,contextd::startup=info",
            ),
        ];
        println!("{:<22} {:<36} default", "knob (env)", "value");
        for (name, value, default) in rows {
            println!("{name:<22} {value:<36} {default}");
        }
        println!();
    }
}

// ---------------------------------------------------------------------------------------------
// The child server, the database and the SQLite directory, each cleaned up on drop
// (as in benches/sync_latency.rs).

/// A running `contextd serve`; stopped (SIGTERM, then SIGKILL) when dropped.
struct Server {
    name: String,
    child: Child,
    base: String,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Warning and error lines logged before the bench stopped the server.
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
    fn start(name: &str, database_url: &str, log: &str) -> Server {
        let mut command = Command::new(BIN);
        command.arg("serve");
        // Nothing from the bench's own environment reaches the server's settings, and no
        // config file either: it runs in a directory without `config/context.yaml`.
        for (key, _) in std::env::vars_os() {
            if let Some(key) = key.to_str()
                && (key.starts_with("CONTEXTD")
                    || key == "DATABASE_URL"
                    || key == "REDIS_URL"
                    || key == "RUST_LOG")
            {
                command.env_remove(key);
            }
        }
        command
            .current_dir(std::env::temp_dir())
            .env("DATABASE_URL", database_url)
            .env("CONTEXTD__SERVER__BIND", "127.0.0.1:0")
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));

        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let (tail, problems, stopping) = (tail.clone(), problems.clone(), stopping.clone());
            // Drains stderr for the process's whole life, so that it never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut ready_tx = Some(ready_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if ready_tx.is_some()
                        && let Some(addr) = listen_address(&line)
                    {
                        let _ = ready_tx.take().expect("checked").send(addr);
                    }
                    if (line.contains("WARN") || line.contains("ERROR"))
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
                let status = server.child.try_wait().ok().flatten();
                panic!(
                    "server {} did not report `listening on` within {START_TIMEOUT:?} (exit \
                     status: {status:?}); its last log lines:\n{}",
                    server.name,
                    server.log_tail()
                );
            }
        }
        server
    }

    fn log_tail(&self) -> String {
        let tail = self.tail.lock().unwrap();
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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
                "note: server {} logged {} warning/error line(s) (at most 20 kept):",
                self.name,
                problems.len()
            );
            for line in problems.iter() {
                eprintln!("  {line}");
            }
        }
    }
}

/// The fresh database the Postgres server creates; dropped (with its connections) at the end.
struct Database {
    admin_url: String,
    name: String,
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

/// The directory of the SQLite database; removed at the end.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => println!("removed {}", self.0.display()),
            Err(e) => eprintln!("could not remove {}: {e}", self.0.display()),
        }
    }
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    format!("{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// A 2025-11-25 client: `initialize` opens a session; each `notifications/resources/updated`
/// goes to `updates` with its arrival time.
#[derive(Clone)]
struct SessionClient {
    updates: mpsc::UnboundedSender<(String, Instant)>,
}

impl ClientHandler for SessionClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("contextd-mcp-bench", "1"),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.updates.send((params.uri, Instant::now()));
    }
}

/// rmcp's Streamable HTTP client transport to the server's `/mcp` (a macro: it runs on
/// rmcp's own reqwest, whose client type this crate cannot name).
macro_rules! transport {
    ($server:expr) => {
        StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(
            $server.url("/mcp"),
        ))
    };
}

/// A client on revision 2026-07-28: `server/discover`, then self-contained requests.
async fn stateless(server: &Server) -> RunningService<RoleClient, ClientConfig> {
    ClientConfig::default()
        .serve_with_lifecycle(
            transport!(server),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("the client discovers the server")
}

/// A 2025-11-25 session client whose resource updates go to `updates`.
async fn session(
    server: &Server,
    updates: mpsc::UnboundedSender<(String, Instant)>,
) -> RunningService<RoleClient, SessionClient> {
    SessionClient { updates }
        .serve(transport!(server))
        .await
        .expect("the client initializes")
}

/// The three ways of reading a context.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Rest,
    Stateless,
    Session,
}

const KINDS: [Kind; 3] = [Kind::Rest, Kind::Stateless, Kind::Session];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Rest => "REST GET /contexts/{id}",
            Kind::Stateless => "MCP get_context 2026-07-28",
            Kind::Session => "MCP get_context 2025-11-25",
        }
    }
}

/// One client of one kind.
enum Reader {
    Rest(reqwest::Client, String),
    Stateless(RunningService<RoleClient, ClientConfig>),
    Session(RunningService<RoleClient, SessionClient>),
}

impl Reader {
    async fn new(kind: Kind, server: &Server) -> Reader {
        match kind {
            Kind::Rest => Reader::Rest(http_client(), server.url("/contexts/")),
            Kind::Stateless => Reader::Stateless(stateless(server).await),
            // Nobody listens: this session subscribes to nothing.
            Kind::Session => Reader::Session(session(server, mpsc::unbounded_channel().0).await),
        }
    }

    /// Reads `id` once; its latency, or what was wrong with the answer.
    async fn read(&self, id: &str) -> Result<Duration, String> {
        let call = || {
            let Value::Object(arguments) = json!({"context_id": id}) else {
                unreachable!("an object")
            };
            CallToolRequestParams::new("get_context").with_arguments(arguments)
        };
        let start = Instant::now();
        let (elapsed, result) = match self {
            Reader::Rest(http, prefix) => {
                let response = http
                    .get(format!("{prefix}{id}"))
                    .send()
                    .await
                    .map_err(|e| format!("GET {id}: {e}"))?;
                let status = response.status();
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| format!("GET {id}: {e}"))?;
                let elapsed = start.elapsed();
                if status != reqwest::StatusCode::OK {
                    return Err(format!(
                        "GET {id}: {status} {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                return Ok(elapsed);
            }
            Reader::Stateless(client) => {
                let result = client.call_tool(call()).await;
                (start.elapsed(), result)
            }
            Reader::Session(client) => {
                let result = client.call_tool(call()).await;
                (start.elapsed(), result)
            }
        };
        let result = result.map_err(|e| format!("get_context {id}: {e}"))?;
        let structured = result.structured_content.as_ref();
        if result.is_error == Some(true)
            || structured.and_then(|s| s["context_id"].as_str()) != Some(id)
        {
            return Err(format!("get_context {id}: {result:?}"));
        }
        Ok(elapsed)
    }
}

/// A keep-alive HTTP client of the crate's own reqwest.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// A compact `PUT /contexts/{id}` body with ~`DATA_BYTES` of `data`, unique to `n`.
fn put_body(n: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let pad: String = (0..DATA_BYTES - 40)
        .map(|i| ALPHABET[(i * 7 + n * 13) % ALPHABET.len()] as char)
        .collect();
    serde_json::to_vec(&json!({"data": {"n": n, "pad": pad}, "source": "mcp"}))
        .expect("JSON serializes")
}

/// `PUT /contexts/{id}`: when it went out and when its answer was read.
async fn put(http: &reqwest::Client, server: &Server, id: &str, n: usize) -> (Instant, Instant) {
    let url = server.url(&format!("/contexts/{id}"));
    let body = put_body(n);
    let t_send = Instant::now();
    let response = http
        .put(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let status = response.status();
    let answer = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let t_ack = Instant::now();
    assert!(
        status == reqwest::StatusCode::OK || status == reqwest::StatusCode::CREATED,
        "PUT {url} answered {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    (t_send, t_ack)
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// `later − earlier` in milliseconds, negative when `later` came first.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(earlier.duration_since(later).as_secs_f64() * 1e3),
    }
}

/// Nearest-rank percentiles, max and mean of a sample, in ms.
struct Spread {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

fn spread(mut values: Vec<f64>) -> Spread {
    assert!(!values.is_empty(), "no samples");
    values.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        values[((p / 100.0 * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1]
    };
    Spread {
        n: values.len(),
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max: values[values.len() - 1],
        mean: values.iter().sum::<f64>() / values.len() as f64,
    }
}

/// One row of the read table.
struct ReadRow {
    store: String,
    clients: usize,
    kind: Kind,
    spread: Spread,
    /// Reads per second of wall time (the concurrent pass only).
    throughput: Option<f64>,
}

/// One row of the notification table.
struct NotifyRow {
    store: String,
    path: &'static str,
    round_trip: Spread,
    send_to_receipt: Spread,
    ack_to_receipt: Spread,
    /// Notifications that came for no write waiting for one.
    strays: usize,
}

/// What went wrong for one store.
#[derive(Default)]
struct Failures {
    bad_reads: usize,
    first_bad_read: Option<String>,
    missing_notifications: Vec<String>,
}

impl Failures {
    fn record(&mut self, outcome: Result<Duration, String>) -> Option<f64> {
        match outcome {
            Ok(elapsed) => Some(elapsed.as_secs_f64() * 1e3),
            Err(e) => {
                self.bad_reads += 1;
                self.first_bad_read.get_or_insert(e);
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The passes.

/// Sequential reads, one client of each kind, interleaved round by round; one row per kind.
async fn read_sequential(
    server: &Server,
    ids: &[String],
    knobs: &Knobs,
    f: &mut Failures,
) -> [Vec<f64>; 3] {
    let mut readers = Vec::new();
    for kind in KINDS {
        readers.push(Reader::new(kind, server).await);
    }
    let mut samples: [Vec<f64>; 3] = Default::default();
    for round in 0..WARMUP_READS + knobs.reads {
        let id = &ids[round % ids.len()];
        for j in 0..KINDS.len() {
            let k = (round + j) % KINDS.len();
            let ms = f.record(readers[k].read(id).await);
            if round >= WARMUP_READS {
                samples[k].extend(ms);
            }
        }
    }
    samples
}

/// `knobs.reads` reads by `knobs.clients` concurrent clients of `kind` (after an unmeasured
/// warm-up of `WARMUP_READS`): the latencies and the reads per second.
async fn read_concurrent(
    server: &Server,
    ids: &[String],
    kind: Kind,
    knobs: &Knobs,
    f: &mut Failures,
) -> (Vec<f64>, f64) {
    let clients = knobs.clients;
    let mut readers = Vec::new();
    for _ in 0..clients {
        readers.push(Reader::new(kind, server).await);
    }
    // Client `c` reads ids `c, c + clients, ...` of `0..total`, all on this task (the work is
    // I/O: the runtime's threads drive the connections).
    let pass = |total: usize| {
        futures_util::future::join_all(readers.iter().enumerate().map(
            move |(c, reader)| async move {
                let mut outcomes = Vec::new();
                for n in (c..total).step_by(clients) {
                    outcomes.push(reader.read(&ids[n % ids.len()]).await);
                }
                outcomes
            },
        ))
    };
    for outcome in pass(WARMUP_READS).await.into_iter().flatten() {
        f.record(outcome);
    }
    let start = Instant::now();
    let outcomes = pass(knobs.reads).await;
    let seconds = start.elapsed().as_secs_f64();
    let samples: Vec<f64> = outcomes
        .into_iter()
        .flatten()
        .filter_map(|o| f.record(o))
        .collect();
    let throughput = samples.len() as f64 / seconds;
    (samples, throughput)
}

/// Per write: `t_send`, `t_ack` and the notification's arrival.
type Timed = Vec<(Instant, Instant, Instant)>;

/// `writes` PUTs round-robin over `ids`, each sent once the previous one's notification (on
/// `updates`) has arrived. `Err` names the first write whose notification did not come.
async fn notify_pass(
    http: &reqwest::Client,
    server: &Server,
    ids: &[String],
    updates: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    writes: usize,
    first_n: usize,
    strays: &mut usize,
) -> Result<Timed, String> {
    let mut timed = Vec::with_capacity(writes);
    for k in 0..writes {
        let id = &ids[k % ids.len()];
        let uri = format!("context://{id}");
        while updates.try_recv().is_ok() {
            *strays += 1;
        }
        let (t_send, t_ack) = put(http, server, id, first_n + k).await;
        let deadline = tokio::time::Instant::from_std(t_send + NOTIFY_DEADLINE);
        loop {
            match tokio::time::timeout_at(deadline, updates.recv()).await {
                Ok(Some((got, at))) if got == uri => {
                    timed.push((t_send, t_ack, at));
                    break;
                }
                Ok(Some(_)) => *strays += 1,
                Ok(None) => return Err(format!("write {k} ({id}): the notification stream ended")),
                Err(_) => {
                    return Err(format!(
                        "write {k} ({id}): no notification within {NOTIFY_DEADLINE:?}"
                    ));
                }
            }
        }
    }
    Ok(timed)
}

/// Warm-up and measured notification pass; a table row, or what went missing.
async fn notify_row(
    http: &reqwest::Client,
    server: &Server,
    ids: &[String],
    updates: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    knobs: &Knobs,
    path: &'static str,
) -> Result<NotifyRow, String> {
    let mut strays = 0;
    let warmup = ids.len() * WARMUP_WRITES_PER_ID;
    notify_pass(http, server, ids, updates, warmup, 0, &mut strays).await?;
    strays = 0;
    let timed = notify_pass(
        http,
        server,
        ids,
        updates,
        knobs.writes,
        warmup,
        &mut strays,
    )
    .await?;
    let column = |f: fn(&(Instant, Instant, Instant)) -> f64| spread(timed.iter().map(f).collect());
    Ok(NotifyRow {
        store: server.name.clone(),
        path,
        round_trip: column(|&(send, ack, _)| signed_ms(ack, send)),
        send_to_receipt: column(|&(send, _, at)| signed_ms(at, send)),
        ack_to_receipt: column(|&(_, ack, at)| signed_ms(at, ack)),
        strays,
    })
}

/// Starts a server on `database_url`, seeds it and runs every pass.
async fn run_store(
    store: &str,
    database_url: &str,
    knobs: &Knobs,
) -> (Vec<ReadRow>, Vec<NotifyRow>, Failures) {
    let started = Instant::now();
    let server = Server::start(store, database_url, &knobs.server_log);
    let http = http_client();
    let ids: Vec<String> = (0..knobs.ids).map(|i| format!("mcp-bench-{i}")).collect();
    let watched: Vec<String> = (0..knobs.subscribed).map(|i| format!("w{i}")).collect();
    for (n, id) in ids.iter().chain(&watched).enumerate() {
        put(&http, &server, id, n).await;
    }
    println!(
        "{store}: server ready and {} contexts seeded in {:.2?} ({database_url})",
        ids.len() + watched.len(),
        started.elapsed()
    );
    let mut f = Failures::default();
    let mut reads = Vec::new();

    let samples = read_sequential(&server, &ids, knobs, &mut f).await;
    for (kind, samples) in KINDS.into_iter().zip(samples) {
        if !samples.is_empty() {
            let spread = spread(samples);
            reads.push(ReadRow {
                store: store.to_owned(),
                clients: 1,
                kind,
                spread,
                throughput: None,
            });
        }
    }
    for kind in KINDS {
        let (samples, throughput) = read_concurrent(&server, &ids, kind, knobs, &mut f).await;
        if !samples.is_empty() {
            let spread = spread(samples);
            let throughput = Some(throughput);
            reads.push(ReadRow {
                store: store.to_owned(),
                clients: knobs.clients,
                kind,
                spread,
                throughput,
            });
        }
    }
    println!("{store}: reads done at {:.2?}", started.elapsed());

    let mut notifies = Vec::new();
    // 2026-07-28: one `subscriptions/listen` stream per context, each read by a task of its own.
    let (tx, mut updates) = mpsc::unbounded_channel();
    let client = stateless(&server).await;
    let mut readers = Vec::new();
    for id in &watched {
        let filter = SubscriptionFilter::builder()
            .resource_subscriptions([format!("context://{id}")])
            .build();
        let mut subscription = client
            .listen(filter)
            .await
            .expect("the server accepts the listen");
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(notification)) = subscription.next().await {
                let at = Instant::now();
                if let ServerNotification::ResourceUpdatedNotification(n) = notification {
                    let _ = tx.send((n.params.uri, at));
                }
            }
        }));
    }
    drop(tx);
    let path = "2026-07-28 subscriptions/listen";
    match notify_row(&http, &server, &watched, &mut updates, knobs, path).await {
        Ok(row) => notifies.push(row),
        Err(e) => f.missing_notifications.push(format!("{path}: {e}")),
    }
    readers.iter().for_each(|reader| reader.abort());
    let _ = client.cancel().await;

    // 2025-11-25: one session, `resources/subscribe` to every context.
    let (tx, mut updates) = mpsc::unbounded_channel();
    let client = session(&server, tx).await;
    for id in &watched {
        #[allow(deprecated)]
        client
            .subscribe(SubscribeRequestParams::new(format!("context://{id}")))
            .await
            .expect("the server accepts the subscription");
    }
    let path = "2025-11-25 resources/subscribe";
    match notify_row(&http, &server, &watched, &mut updates, knobs, path).await {
        Ok(row) => notifies.push(row),
        Err(e) => f.missing_notifications.push(format!("{path}: {e}")),
    }
    let _ = client.cancel().await;
    println!("{store}: done in {:.2?}", started.elapsed());
    if !f.missing_notifications.is_empty() {
        eprintln!(
            "{store}: the server's last log lines:\n{}",
            server.log_tail()
        );
    }
    (reads, notifies, f)
}

// ---------------------------------------------------------------------------------------------

fn ms(value: f64) -> String {
    format!("{value:.3}")
}

fn print_report(
    reads: &[ReadRow],
    notifies: &[NotifyRow],
    failures: &[(String, Failures)],
    knobs: &Knobs,
) {
    let line = "-".repeat(104);
    println!();
    println!(
        "Reads: {} ids of ~{DATA_BYTES} B data; {} measured reads per row (after {WARMUP_READS}); \
         1 client: the three kinds interleaved, round by round; times in ms",
        knobs.ids, knobs.reads
    );
    println!(
        "{:<9} {:>7} {:<28} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "store", "clients", "path", "n", "p50", "p90", "p99", "max", "mean", "reads/s"
    );
    println!("{line}");
    for r in reads {
        let s = &r.spread;
        println!(
            "{:<9} {:>7} {:<28} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            r.store,
            r.clients,
            r.kind.label(),
            s.n,
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.max),
            ms(s.mean),
            r.throughput.map_or("-".to_owned(), |t| format!("{t:.0}"))
        );
    }

    println!();
    println!(
        "Target: MCP get_context p99 within {RATIO_TARGET}x of REST's (printed, not enforced)"
    );
    println!(
        "{:<9} {:>7} {:<28} {:>10} {:>10} {:>14}",
        "store", "clients", "path", "p50 ratio", "p99 ratio", "p99 within 2x"
    );
    println!("{line}");
    for r in reads.iter().filter(|r| r.kind != Kind::Rest) {
        let Some(rest) = reads
            .iter()
            .find(|x| x.kind == Kind::Rest && x.store == r.store && x.clients == r.clients)
        else {
            continue;
        };
        let p99 = r.spread.p99 / rest.spread.p99;
        println!(
            "{:<9} {:>7} {:<28} {:>10.2} {:>10.2} {:>14}",
            r.store,
            r.clients,
            r.kind.label(),
            r.spread.p50 / rest.spread.p50,
            p99,
            if p99 <= RATIO_TARGET { "yes" } else { "NO" }
        );
    }

    println!();
    println!(
        "Notifications: REST PUT (~{DATA_BYTES} B) → notifications/resources/updated, {} contexts \
         listened to, {} writes per row, each after the previous one's notification; times in ms",
        knobs.subscribed, knobs.writes
    );
    println!(
        "{:<9} {:<31} {:<22} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "store", "path", "measure", "n", "p50", "p90", "p99", "max", "mean"
    );
    println!("{line}");
    for r in notifies {
        let rows: [(&str, &Spread); 3] = [
            ("PUT round trip", &r.round_trip),
            ("send→receipt", &r.send_to_receipt),
            ("ack→receipt", &r.ack_to_receipt),
        ];
        for (what, s) in rows {
            println!(
                "{:<9} {:<31} {:<22} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
                r.store,
                r.path,
                what,
                s.n,
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max),
                ms(s.mean)
            );
        }
        if r.strays > 0 {
            println!("{:<9} {} notification(s) came for no write", "", r.strays);
        }
    }
    println!();
    println!(
        "Target: p99 send→receipt ≤ {} ms on loopback (printed, not enforced)",
        knobs.target_ms
    );
    for r in notifies {
        let p99 = r.send_to_receipt.p99;
        let met = if p99 <= knobs.target_ms {
            "met"
        } else {
            "MISSED"
        };
        println!("{:<9} {:<31} p99 {:>8} ms  {met}", r.store, r.path, ms(p99));
    }

    println!();
    println!(
        "Checks: every read a 200 / a tool result for the id asked; every notification within {NOTIFY_DEADLINE:?}"
    );
    for (store, f) in failures {
        let ok = f.bad_reads == 0 && f.missing_notifications.is_empty();
        println!(
            "{store:<9} bad reads {}  missing notifications {}  => {}",
            f.bad_reads,
            f.missing_notifications.len(),
            if ok { "OK" } else { "FAILED" }
        );
        for e in f.first_bad_read.iter().chain(&f.missing_notifications) {
            println!("  {e}");
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it,
    // and a benchmark is not a test.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("mcp: a benchmark; run it with `cargo bench --bench mcp`");
        return;
    }
    let knobs = Knobs::from_env();
    knobs.print();
    let bench_start = Instant::now();
    let suffix = unique_suffix();

    let all_ok = {
        // Dropped after the servers (declared first): the database, the SQLite directory.
        let pg = knobs.pg.trim_end_matches('/');
        let database = knobs
            .stores
            .iter()
            .any(|s| s == "postgres")
            .then(|| Database {
                admin_url: format!("{pg}/postgres"),
                name: format!("contextd_mcp_bench_{suffix}"),
            });
        let sqlite_dir = knobs.stores.iter().any(|s| s == "sqlite").then(|| {
            let dir = std::env::temp_dir().join(format!("contextd-mcp-bench-{suffix}"));
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            TempDir(dir)
        });

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (reads, notifies, failures) = runtime.block_on(async {
            let (mut reads, mut notifies, mut failures) = (Vec::new(), Vec::new(), Vec::new());
            for store in &knobs.stores {
                let database_url = match store.as_str() {
                    "postgres" => format!("{pg}/{}", database.as_ref().expect("made").name),
                    _ => format!(
                        "sqlite:{}",
                        sqlite_dir.as_ref().expect("made").0.join("c.db").display()
                    ),
                };
                let (r, n, f) = run_store(store, &database_url, &knobs).await;
                reads.extend(r);
                notifies.extend(n);
                failures.push((store.clone(), f));
            }
            (reads, notifies, failures)
        });
        drop(runtime);
        print_report(&reads, &notifies, &failures, &knobs);
        println!();
        failures
            .iter()
            .all(|(_, f)| f.bad_reads == 0 && f.missing_notifications.is_empty())
    };
    println!("total {:.1?}", bench_start.elapsed());
    if !all_ok {
        eprintln!("mcp: a check FAILED (see above)");
        std::process::exit(1);
    }
}
