//! MCP against REST, through the real release binary, on Postgres and on SQLite.
//!
//! `cargo bench --bench mcp`. For each store it starts `contextd serve` (`/mcp` shares the
//! REST port), seeds `MCP_BENCH_IDS` contexts of ~1 KB data by REST PUT, and measures with
//! rmcp's own client over Streamable HTTP:
//!
//! - reads: `tools/call get_context` against REST `GET /contexts/{id}`. Each round reads one
//!   id by REST (keep-alive reqwest), by MCP on revision 2026-07-28 (stateless requests) and
//!   by MCP on 2025-11-25 (an `initialize`d session), and as one plain JSON POST (see below), the first of the four rotating, so
//!   that all see the same machine state: one client each, sequential (latency). Then
//!   `MCP_BENCH_CLIENTS` concurrent clients of one kind at a time (throughput). The issue's
//!   target, MCP's p99 within 2x of REST's, is printed, not enforced.
//! - REST write → `notifications/resources/updated`: `MCP_BENCH_SUBSCRIBED` contexts `w{i}`,
//!   listened to by 2026-07-28 `subscriptions/listen` (one stream and one task per context),
//!   then by one 2025-11-25 session's `resources/subscribe`s; `MCP_BENCH_WRITES` PUTs go
//!   round-robin over them, each once the previous one's notification came (the server
//!   coalesces a subscriber's pending updates, so overlapping writes could share one). It
//!   reports arrival − `t_send` (before the PUT; an upper bound of commit → receipt) and
//!   arrival − `t_ack` (its answer read). The target, p99 send → receipt ≤
//!   `MCP_BENCH_TARGET_MS`, is printed, not enforced.
//!
//! The client side shares the bench's two-thread runtime, so MCP's figures include rmcp's
//! client work; a fourth path sends `tools/call` as one plain JSON POST with the same reqwest
//! client as REST, which leaves the server's own cost of MCP. Exit status 1 when a check fails: a read that is not a 200 / a tool result
//! for the id asked, or a notification missing 10 s after its write.
//!
//! Parameters, from the environment (defaults in brackets): `MCP_BENCH_READS` [5000] rounds
//! (after 500 unmeasured) and reads per kind of the concurrent pass, `MCP_BENCH_CLIENTS` [4],
//! `MCP_BENCH_IDS` [100], `MCP_BENCH_SUBSCRIBED` [8], `MCP_BENCH_WRITES` [1000] per
//! subscription path, `MCP_BENCH_TARGET_MS` [50], `MCP_BENCH_STORES` [postgres,sqlite],
//! `MCP_BENCH_PG` [postgres://postgres@127.0.0.1:5432] (no database name).

use std::fmt::Display;
use std::str::FromStr;
use std::time::{Duration, Instant};

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
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;

use common::{
    BIN, DEFAULT_PG, Database, Logs, Server, Spread, TempDir, bench_runtime, env_or, http_client,
    pad, signed_ms, store_list, unique_suffix,
};

/// The servers' `RUST_LOG`: warnings, and the `listening on` line the bench waits for.
const SERVER_LOG: &str = "warn,contextd::startup=info";

/// Unmeasured reads of each kind before the measured ones.
const WARMUP_READS: usize = 500;

/// Unmeasured writes per subscribed context before a notification pass.
const WARMUP_WRITES_PER_ID: usize = 2;

/// How long a notification may take before it counts as missing.
const NOTIFY_DEADLINE: Duration = Duration::from_secs(10);

/// Size of the compact `data` of every context written.
const DATA_BYTES: usize = 1024;

/// How many times REST's p99 the issue allows MCP's.
const RATIO_TARGET: f64 = 2.0;

/// The three ways of reading, in the order of [`Reader::new`]'s `kind`.
const PATHS: [&str; 4] = [
    "REST GET /contexts/{id}",
    "MCP get_context 2026-07-28",
    "MCP get_context 2025-11-25",
    "MCP get_context, plain POST",
];

/// A resource update as the bench saw it: the URI and its arrival.
type Update = (String, Instant);

/// `(t_send, t_ack, arrival)` of a write and its notification.
type Timed = (Instant, Instant, Instant);

/// `name` parsed from the environment, or `default`; printed as a row of the knob table.
fn knob<T: FromStr + Display>(name: &str, default: T) -> T {
    let shown = default.to_string();
    let value = env_or(name, default);
    println!("{name:<22} {:<36} {shown}", value.to_string());
    value
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
}

impl Knobs {
    /// Reads the knobs and prints them.
    fn from_env() -> Self {
        println!("mcp: {BIN}\n{:<22} {:<36} default", "knob (env)", "value");
        let count = |name: &str, default: usize| {
            let value = knob(name, default);
            assert!(value > 0, "{name} must be positive");
            value
        };
        let knobs = Self {
            reads: count("MCP_BENCH_READS", 5000),
            clients: count("MCP_BENCH_CLIENTS", 4),
            ids: count("MCP_BENCH_IDS", 100),
            subscribed: count("MCP_BENCH_SUBSCRIBED", 8),
            writes: count("MCP_BENCH_WRITES", 1000),
            target_ms: knob("MCP_BENCH_TARGET_MS", 50.0),
            stores: store_list(&knob("MCP_BENCH_STORES", "postgres,sqlite".to_owned())),
            pg: knob("MCP_BENCH_PG", DEFAULT_PG.to_owned()),
        };
        println!();
        knobs
    }
}

// ---------------------------------------------------------------------------------------------
// The child server (see `common`) and what a store leaves behind.

/// Starts `contextd serve` on `database_url`; its warnings and errors go to the bench's
/// stderr as they come.
fn start(name: &str, database_url: &str) -> Server {
    Server::start(name, Logs::Live, |command| {
        command
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", SERVER_LOG);
    })
}

/// What a store leaves behind, each removed when dropped: the fresh database the Postgres
/// server creates, or the directory of the SQLite database.
struct Scratch {
    _database: Option<Database>,
    _dir: Option<TempDir>,
}

impl Scratch {
    /// The scratch for `store`, and the `DATABASE_URL` that uses it.
    fn new(store: &str, pg: &str) -> (Scratch, String) {
        let suffix = unique_suffix();
        let (database, dir, url) = match store {
            "postgres" => {
                let (database, url) = Database::new(pg, format!("contextd_mcp_bench_{suffix}"));
                (Some(database), None, url)
            }
            "sqlite" => {
                let dir = TempDir::new(&format!("contextd-mcp-bench-{suffix}"));
                let url = format!("sqlite:{}", dir.path().join("c.db").display());
                (None, Some(dir), url)
            }
            other => panic!("MCP_BENCH_STORES: {other:?} is neither postgres nor sqlite"),
        };
        let scratch = Scratch {
            _database: database,
            _dir: dir,
        };
        (scratch, url)
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// A 2025-11-25 client: `initialize` opens a session; each `notifications/resources/updated`
/// goes to `updates` with its arrival time.
#[derive(Clone)]
struct SessionClient {
    updates: mpsc::UnboundedSender<Update>,
}

impl ClientHandler for SessionClient {
    fn get_info(&self) -> ClientConfig {
        let info = Implementation::new("contextd-mcp-bench", "1");
        ClientConfig::new(ClientCapabilities::default(), info)
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
    let preferred_versions = vec![ProtocolVersion::V_2026_07_28];
    let lifecycle = ClientLifecycleMode::Discover { preferred_versions };
    let client = ClientConfig::default().serve_with_lifecycle(transport!(server), lifecycle);
    client.await.expect("the client discovers the server")
}

/// A 2025-11-25 session client whose resource updates go to `updates`.
async fn session(
    server: &Server,
    updates: mpsc::UnboundedSender<Update>,
) -> RunningService<RoleClient, SessionClient> {
    let client = SessionClient { updates }.serve(transport!(server));
    client.await.expect("the client initializes")
}

/// One client of one of the [`PATHS`].
enum Reader {
    Rest(reqwest::Client, String),
    /// `tools/call` on 2026-07-28 as one plain JSON POST (reqwest, as REST), no rmcp on the
    /// client side: what MCP costs the server, apart from rmcp's client.
    Plain(reqwest::Client, String),
    Stateless(RunningService<RoleClient, ClientConfig>),
    Session(RunningService<RoleClient, SessionClient>),
}

impl Reader {
    async fn new(kind: usize, server: &Server) -> Reader {
        match kind {
            0 => Reader::Rest(http_client(), server.url("/contexts/")),
            1 => Reader::Stateless(stateless(server).await),
            3 => Reader::Plain(http_client(), server.url("/mcp")),
            // It subscribes to nothing: nobody needs its updates.
            _ => Reader::Session(session(server, mpsc::unbounded_channel().0).await),
        }
    }

    /// Reads `id` once: the latency, or what was wrong with the answer.
    async fn read(&self, id: &str) -> Result<Duration, String> {
        let Value::Object(arguments) = json!({"context_id": id}) else {
            unreachable!("an object")
        };
        let call = CallToolRequestParams::new("get_context").with_arguments(arguments);
        let start = Instant::now();
        let result = match self {
            Reader::Rest(http, prefix) => {
                let response = http.get(format!("{prefix}{id}")).send().await;
                let response = response.map_err(|e| format!("GET {id}: {e}"))?;
                let status = response.status();
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| format!("GET {id}: {e}"))?;
                let elapsed = start.elapsed();
                let body = String::from_utf8_lossy(&body);
                return (status == reqwest::StatusCode::OK)
                    .then_some(elapsed)
                    .ok_or_else(|| format!("GET {id}: {status} {body}"));
            }
            Reader::Plain(http, url) => {
                let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                    "name": "get_context", "arguments": {"context_id": id},
                    "_meta": {
                        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                        "io.modelcontextprotocol/clientCapabilities": {},
                        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"}}}});
                let response = http
                    .post(url)
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", "2026-07-28")
                    .header("mcp-method", "tools/call")
                    .header("mcp-name", "get_context")
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| format!("POST get_context {id}: {e}"))?;
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| format!("POST get_context {id}: {e}"))?;
                let elapsed = start.elapsed();
                // Checked as cheaply as REST's status (no parse on the clock's machine time):
                // a success result that names the id.
                let text = String::from_utf8_lossy(&body);
                let named = format!("\"context_id\":\"{id}\"");
                return (text.contains("\"isError\":false") && text.contains(&named))
                    .then_some(elapsed)
                    .ok_or_else(|| format!("POST get_context {id}: {text}"));
            }
            Reader::Stateless(client) => client.call_tool(call).await,
            Reader::Session(client) => client.call_tool(call).await,
        };
        let elapsed = start.elapsed();
        let result = result.map_err(|e| format!("get_context {id}: {e}"))?;
        let answered = result.structured_content.as_ref();
        if result.is_error == Some(true)
            || answered.and_then(|s| s["context_id"].as_str()) != Some(id)
        {
            return Err(format!("get_context {id}: {result:?}"));
        }
        Ok(elapsed)
    }
}

/// `PUT /contexts/{id}` with ~`DATA_BYTES` of `data` unique to `n`: when it went out and
/// when its answer was read.
async fn put(http: &reqwest::Client, server: &Server, id: &str, n: usize) -> (Instant, Instant) {
    let pad = pad(n, DATA_BYTES - 40);
    let body = json!({"data": {"n": n, "pad": pad}, "source": "mcp"});
    let url = server.url(&format!("/contexts/{id}"));
    let t_send = Instant::now();
    let response = http.put(&url).json(&body).send().await;
    let response = response.unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let status = response.status();
    let answer = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let t_ack = Instant::now();
    let answer = String::from_utf8_lossy(&answer);
    assert!(status.is_success(), "PUT {url} answered {status}: {answer}");
    (t_send, t_ack)
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report.

/// The columns of [`cells`].
const SPREAD_HEADER: &str = "     n      p50      p90      p99      max     mean";

/// `n`, p50, p90, p99, max and mean of `s`, under [`SPREAD_HEADER`].
fn cells(s: &Spread) -> String {
    let [p50, p90, p99, max] = [50.0, 90.0, 99.0, 100.0].map(|p| s.pct(p));
    let (n, mean) = (s.len(), s.mean());
    format!("{n:>6} {p50:>8.3} {p90:>8.3} {p99:>8.3} {max:>8.3} {mean:>8.3}")
}

/// The tables' rows, filled store by store, and the checks that failed.
#[derive(Default)]
struct Report {
    reads: Vec<String>,
    ratios: Vec<String>,
    notifies: Vec<String>,
    targets: Vec<String>,
    failed: Vec<String>,
}

impl Report {
    /// A read's latency in ms, or `None` once it is recorded as a failed check.
    fn check(&mut self, store: &str, outcome: Result<Duration, String>) -> Option<f64> {
        let failed = |e| self.failed.push(format!("{store}: bad read: {e}"));
        outcome
            .map(|elapsed| elapsed.as_secs_f64() * 1e3)
            .map_err(failed)
            .ok()
    }

    /// The rows of one read pass (latencies and reads/s of each of the [`PATHS`]), and the
    /// ratios of MCP's to REST's.
    fn read_rows(&mut self, store: &str, clients: usize, pass: Vec<(Vec<f64>, Option<f64>)>) {
        let mut rest = None;
        for (kind, (samples, throughput)) in pass.into_iter().enumerate() {
            let Some(s) = Spread::of(samples) else {
                continue;
            };
            let (path, cells) = (PATHS[kind], cells(&s));
            let throughput = throughput.map_or("-".to_owned(), |t| format!("{t:.0}"));
            let row = format!("{store:<9} {clients:>7} {path:<28} {cells} {throughput:>9}");
            self.reads.push(row);
            if kind == 0 {
                rest = Some(s);
            } else if let Some(r) = &rest {
                let (p50, p99) = (s.pct(50.0) / r.pct(50.0), s.pct(99.0) / r.pct(99.0));
                let within = if p99 <= RATIO_TARGET { "yes" } else { "NO" };
                let row = format!("{store:<9} {clients:>7} {path:<28} {p50:>10.2} {p99:>10.2}");
                self.ratios.push(format!("{row} {within:>14}"));
            }
        }
    }

    /// The rows of one notification pass.
    fn notify_rows(&mut self, store: &str, path: &str, timed: &[Timed], target_ms: f64) {
        let column =
            |f: fn(&Timed) -> f64| Spread::of(timed.iter().map(f).collect()).expect("writes > 0");
        let send_to_receipt = column(|&(send, _, at)| signed_ms(at, send));
        let p99 = send_to_receipt.pct(99.0);
        let met = if p99 <= target_ms { "met" } else { "MISSED" };
        self.targets
            .push(format!("{store:<9} {path:<31} p99 {p99:>8.3} ms  {met}"));
        for (what, s) in [
            (
                "PUT round trip",
                column(|&(send, ack, _)| signed_ms(ack, send)),
            ),
            ("send→receipt", send_to_receipt),
            ("ack→receipt", column(|&(_, ack, at)| signed_ms(at, ack))),
        ] {
            self.notifies
                .push(format!("{store:<9} {path:<31} {what:<15} {}", cells(&s)));
        }
    }

    fn print(&self, knobs: &Knobs) {
        let rule = "-".repeat(104);
        let rows = |rows: &[String]| rows.iter().for_each(|row| println!("{row}"));
        println!(
            "\nReads of {} ids (~{DATA_BYTES} B data), {} measured per row after {WARMUP_READS}; \
             with 1 client the four interleave round by round; times in ms",
            knobs.ids, knobs.reads
        );
        let header = format!("{:<9} {:>7} {:<28}", "store", "clients", "path");
        println!("{header} {SPREAD_HEADER} {:>9}\n{rule}", "reads/s");
        rows(&self.reads);
        println!("\nTarget: MCP get_context p99 within {RATIO_TARGET}x of REST's (not enforced)");
        let (p50, p99, within) = ("p50 ratio", "p99 ratio", "p99 within 2x");
        println!("{header} {p50:>10} {p99:>10} {within:>14}\n{rule}");
        rows(&self.ratios);
        println!(
            "\nNotifications: REST PUT (~{DATA_BYTES} B) → notifications/resources/updated; {} \
             contexts listened to, {} writes per path, each once the previous one's \
             notification came; times in ms",
            knobs.subscribed, knobs.writes
        );
        let header = format!("{:<9} {:<31} {:<15}", "store", "path", "measure");
        println!("{header} {SPREAD_HEADER}\n{rule}");
        rows(&self.notifies);
        let target = knobs.target_ms;
        println!("\nTarget: p99 send→receipt ≤ {target} ms on loopback (not enforced)");
        rows(&self.targets);
        let verdict = if self.failed.is_empty() {
            "OK"
        } else {
            "FAILED"
        };
        println!(
            "\nChecks: every read a 200 / a tool result for the id asked; every notification \
             within {NOTIFY_DEADLINE:?}: {verdict}"
        );
        self.failed.iter().take(10).for_each(|e| println!("  {e}"));
        if self.failed.len() > 10 {
            println!("  ... {} failures in all", self.failed.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The passes.

/// Reads by `clients` concurrent clients, each with a reader of each of `kinds` (of the
/// [`PATHS`]) and reading in rounds: round `r` reads id `r` once with each of its readers,
/// the first rotating. Client `c` has rounds `c, c + clients, ...` of `WARMUP_READS` rounds,
/// not measured, then of `reads`. The latencies of each kind, and with one kind, the reads
/// per second.
async fn read_pass(
    (server, ids): (&Server, &[String]),
    (kinds, clients, reads): (&[usize], usize, usize),
    report: &mut Report,
) -> Vec<(Vec<f64>, Option<f64>)> {
    let mut readers = Vec::new();
    for _ in 0..clients {
        let mut mine = Vec::new();
        for &kind in kinds {
            mine.push(Reader::new(kind, server).await);
        }
        readers.push(mine);
    }
    // The clients run on this task (the work is I/O: the runtime's threads drive it).
    let rounds = |total: usize| {
        futures_util::future::join_all(readers.iter().enumerate().map(
            move |(c, mine)| async move {
                let mut outcomes = Vec::new();
                for round in (c..total).step_by(clients) {
                    for j in 0..mine.len() {
                        let k = (round + j) % mine.len();
                        outcomes.push((k, mine[k].read(&ids[round % ids.len()]).await));
                    }
                }
                outcomes
            },
        ))
    };
    for (_, outcome) in rounds(WARMUP_READS).await.into_iter().flatten() {
        report.check(server.name(), outcome);
    }
    let start = Instant::now();
    let outcomes = rounds(reads).await;
    let seconds = start.elapsed().as_secs_f64();
    let mut samples = vec![Vec::new(); kinds.len()];
    for (k, outcome) in outcomes.into_iter().flatten() {
        samples[k].extend(report.check(server.name(), outcome));
    }
    // Reads per second of one kind alone.
    let throughput = (kinds.len() == 1).then(|| samples[0].len() as f64 / seconds);
    samples.into_iter().map(|s| (s, throughput)).collect()
}

/// `writes` PUTs round-robin over `ids`, each sent once the previous one's notification (on
/// `updates`) has arrived; the first whose notification never came is an error.
async fn notify_pass(
    (http, server): (&reqwest::Client, &Server),
    ids: &[String],
    updates: &mut mpsc::UnboundedReceiver<Update>,
    (writes, first_n): (usize, usize),
    strays: &mut usize,
) -> Result<Vec<Timed>, String> {
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
                Ok(Some((got, at))) if got == uri => break timed.push((t_send, t_ack, at)),
                Ok(Some(_)) => *strays += 1,
                Ok(None) => return Err(format!("write {k} ({id}): the updates ended")),
                Err(_) => return Err(format!("write {k} ({id}): none in {NOTIFY_DEADLINE:?}")),
            }
        }
    }
    Ok(timed)
}

/// A warm-up and a measured notification pass over `ids`, reported under `path`.
async fn notify_rows(
    on: (&reqwest::Client, &Server),
    (ids, path): (&[String], &str),
    updates: &mut mpsc::UnboundedReceiver<Update>,
    knobs: &Knobs,
    report: &mut Report,
) {
    let store = on.1.name();
    let (warmup, mut strays) = (ids.len() * WARMUP_WRITES_PER_ID, 0);
    let passes = async {
        notify_pass(on, ids, updates, (warmup, 0), &mut strays).await?;
        strays = 0;
        notify_pass(on, ids, updates, (knobs.writes, warmup), &mut strays).await
    };
    match passes.await {
        Ok(timed) => report.notify_rows(store, path, &timed, knobs.target_ms),
        Err(e) => report.failed.push(format!("{store}: {path}: {e}")),
    }
    if strays > 0 {
        let note = format!("{store:<9} {path:<31} {strays} update(s) came with no write waiting");
        report.notifies.push(note);
    }
}

/// One 2026-07-28 `subscriptions/listen` per id, each read by a task of its own that sends
/// the updates to `tx` until `stop`, then cancels its subscription.
async fn listen_each(
    client: &RunningService<RoleClient, ClientConfig>,
    ids: &[String],
    tx: mpsc::UnboundedSender<Update>,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for id in ids {
        let uri = [format!("context://{id}")];
        let filter = SubscriptionFilter::builder()
            .resource_subscriptions(uri)
            .build();
        let mut subscription = client.listen(filter).await.expect("the server accepts");
        let (tx, stop) = (tx.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    next = subscription.next() => match next {
                        Ok(Some(ServerNotification::ResourceUpdatedNotification(n))) => {
                            let _ = tx.send((n.params.uri, Instant::now()));
                        }
                        Ok(Some(_)) => {}
                        _ => return,
                    },
                }
            }
            let _ = subscription.cancel().await;
        }));
    }
    tasks
}

/// Starts a server for `store`, seeds it and runs every pass.
async fn run_store(store: &str, knobs: &Knobs, report: &mut Report) {
    let started = Instant::now();
    // Declared first, dropped last: after the server.
    let (_scratch, database_url) = Scratch::new(store, &knobs.pg);
    let server = start(store, &database_url);
    let http = http_client();
    let ids: Vec<String> = (0..knobs.ids).map(|i| format!("mcp-bench-{i}")).collect();
    let watched: Vec<String> = (0..knobs.subscribed).map(|i| format!("w{i}")).collect();
    for (n, id) in ids.iter().chain(&watched).enumerate() {
        put(&http, &server, id, n).await;
    }
    let (seeded, took) = (ids.len() + watched.len(), started.elapsed());
    println!("{store}: {database_url}: up, {seeded} contexts seeded in {took:.2?}");

    let on = (&server, &ids[..]);
    let pass = read_pass(on, (&[0, 1, 2, 3][..], 1, knobs.reads), report).await;
    report.read_rows(store, 1, pass);
    let mut pass = Vec::new();
    for kind in [[0], [1], [2], [3]] {
        let shape = (&kind[..], knobs.clients, knobs.reads);
        pass.extend(read_pass(on, shape, report).await);
    }
    report.read_rows(store, knobs.clients, pass);
    println!("{store}: reads done at {:.2?}", started.elapsed());

    let on = (&http, &server);
    let (tx, mut updates) = mpsc::unbounded_channel();
    let (client, stop) = (stateless(&server).await, CancellationToken::new());
    let tasks = listen_each(&client, &watched, tx, &stop).await;
    let path = "2026-07-28 subscriptions/listen";
    notify_rows(on, (&watched, path), &mut updates, knobs, report).await;
    stop.cancel();
    futures_util::future::join_all(tasks).await;
    let _ = client.cancel().await;

    let (tx, mut updates) = mpsc::unbounded_channel();
    let client = session(&server, tx).await;
    for id in &watched {
        #[allow(deprecated)]
        let subscribe = client.subscribe(SubscribeRequestParams::new(format!("context://{id}")));
        subscribe.await.expect("subscribed");
    }
    let path = "2025-11-25 resources/subscribe";
    notify_rows(on, (&watched, path), &mut updates, knobs, report).await;
    let _ = client.cancel().await;
    println!("{store}: done in {:.2?}", started.elapsed());
}

fn main() {
    if !common::run_as_bench("mcp") {
        return;
    }
    let knobs = Knobs::from_env();
    let bench_start = Instant::now();
    let mut report = Report::default();
    let runtime = bench_runtime();
    for store in &knobs.stores {
        runtime.block_on(run_store(store, &knobs, &mut report));
    }
    drop(runtime);
    report.print(&knobs);
    println!("\ntotal {:.1?}", bench_start.elapsed());
    if !report.failed.is_empty() {
        eprintln!("mcp: a check FAILED (see above)");
        std::process::exit(1);
    }
}
