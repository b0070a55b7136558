//! Sync latency: a committed change to the webhook receiver, through the real release binary,
//! on Postgres and on SQLite.
//!
//! `cargo bench --bench sync_latency`. An in-bench webhook receiver (axum on 127.0.0.1, its own
//! thread and runtime) answers 204 and records the arrival of every `(id, version)` it is sent.
//! For each store it starts `contextd serve` with `sync.factory.webhook_url` pointing there and a
//! secret (so the cost of signing is in), then measures two passes of PUTs (a new version each,
//! ~1 KB of data, over a few ids): one client sending sequentially on a keep-alive connection,
//! then several concurrent clients. Per write it records `t_send` (before the PUT goes out) and
//! `t_ack` (its response read), and reports, once every change has arrived:
//!
//! - ack→receipt: receipt − `t_ack` (negative when the push beats the PUT's response);
//! - send→receipt: receipt − `t_send`, an upper bound of commit→receipt;
//! - the server's own `contextd_sync_latency_seconds` histogram (commit to the receiver's 2xx),
//!   the difference of `/metrics` before and after the pass: p50/p99 by linear interpolation
//!   within the buckets (as Prometheus' `histogram_quantile`), and the mean from `_sum/_count`.
//!
//! It checks that each `(id, version)` written arrives exactly once, nothing else arrives, the
//! `seq`s arrive strictly increasing, and every push is correctly signed; and it says whether
//! the target (p99 commit→receipt ≤ `SYNC_LATENCY_TARGET_MS`) is met by the server-side p99
//! and by the send→receipt p99. It exits with status 1 when a check fails.
//!
//! Parameters, from the environment (defaults in brackets): `SYNC_LATENCY_WRITES` [1000] writes
//! per pass, `SYNC_LATENCY_CLIENTS` [8] concurrent writers of the second pass,
//! `SYNC_LATENCY_IDS` [8] contexts written, `SYNC_LATENCY_DATA_BYTES` [1024] compact `data`
//! size, `SYNC_LATENCY_TARGET_MS` [10] the p99 target, `SYNC_LATENCY_STORES` [postgres,sqlite],
//! `SYNC_LATENCY_PG` [postgres://postgres@127.0.0.1:5432] server (no database name),
//! `SYNC_LATENCY_SERVER_LOG` [info,tokio_postgres=warn] the servers' `RUST_LOG`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::serve::ListenerExt;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

mod common;

use common::{
    BIN, DEFAULT_PG, Database, Logs, Server, Spread, TempDir, bench_runtime, env_or, http_client,
    metrics_summary, pad, print_knobs, signed_ms, store_list, unique_suffix,
};

/// The webhook secret the servers sign with, and the receiver checks.
const SECRET: &str = "sync-latency-bench-secret";

/// The seed's target for p99 commit→receipt, printed beside the issue's.
const SEED_TARGET_MS: f64 = 100.0;

/// How long every change of a pass may take to arrive after its last write was answered.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);

/// After the last pass: how long to keep listening for late duplicates.
const SETTLE: Duration = Duration::from_millis(300);

/// Unmeasured writes per id before the first pass: they create the contexts and open the
/// connections (client → server, server → Postgres, pusher → receiver).
const WARMUP_WRITES_PER_ID: usize = 3;

/// The server-side histogram.
const HISTOGRAM: &str = "contextd_sync_latency_seconds";

struct Knobs {
    writes: usize,
    clients: usize,
    ids: usize,
    data_bytes: usize,
    target_ms: f64,
    stores: Vec<String>,
    pg: String,
    server_log: String,
}

impl Knobs {
    fn from_env() -> Self {
        let stores: String = env_or("SYNC_LATENCY_STORES", "postgres,sqlite".to_owned());
        let knobs = Self {
            writes: env_or("SYNC_LATENCY_WRITES", 1000),
            clients: env_or("SYNC_LATENCY_CLIENTS", 8),
            ids: env_or("SYNC_LATENCY_IDS", 8),
            data_bytes: env_or("SYNC_LATENCY_DATA_BYTES", 1024),
            target_ms: env_or("SYNC_LATENCY_TARGET_MS", 10.0),
            stores: store_list(&stores),
            pg: env_or("SYNC_LATENCY_PG", DEFAULT_PG.to_owned()),
            server_log: env_or(
                "SYNC_LATENCY_SERVER_LOG",
                "info,tokio_postgres=warn".to_owned(),
            ),
        };
        assert!(knobs.writes > 0, "SYNC_LATENCY_WRITES must be positive");
        assert!(knobs.clients > 0, "SYNC_LATENCY_CLIENTS must be positive");
        assert!(knobs.ids > 0, "SYNC_LATENCY_IDS must be positive");
        for store in &knobs.stores {
            assert!(
                store == "postgres" || store == "sqlite",
                "SYNC_LATENCY_STORES: {store:?} is neither postgres nor sqlite"
            );
        }
        knobs
    }

    fn print(&self) {
        println!("sync_latency: {BIN}");
        let rows: [(&str, String, &str); 8] = [
            ("SYNC_LATENCY_WRITES", self.writes.to_string(), "1000"),
            ("SYNC_LATENCY_CLIENTS", self.clients.to_string(), "8"),
            ("SYNC_LATENCY_IDS", self.ids.to_string(), "8"),
            (
                "SYNC_LATENCY_DATA_BYTES",
                self.data_bytes.to_string(),
                "1024",
            ),
            ("SYNC_LATENCY_TARGET_MS", self.target_ms.to_string(), "10"),
            (
                "SYNC_LATENCY_STORES",
                self.stores.join(","),
                "postgres,sqlite",
            ),
            ("SYNC_LATENCY_PG", self.pg.clone(), DEFAULT_PG),
            (
                "SYNC_LATENCY_SERVER_LOG",
                self.server_log.clone(),
                "info,tokio_postgres=warn",
            ),
        ];
        print_knobs(&rows);
    }
}

// ---------------------------------------------------------------------------------------------
// The webhook receiver.

/// What one server's pushes brought (the receiver keeps one per path tag).
#[derive(Default)]
struct Received {
    /// `(id, version)` → the arrival of each push that carried it.
    arrivals: HashMap<(String, i64), Vec<Instant>>,
    /// Every change's `seq`, in arrival order.
    seqs: Vec<i64>,
    requests: usize,
    changes: usize,
    largest_batch: usize,
    bad_signatures: usize,
    malformed: Vec<String>,
}

struct Receiver {
    runs: Mutex<HashMap<String, Received>>,
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `POST /hook/{tag}`: the arrival time is taken first, once the body is in.
async fn hook(
    State(receiver): State<Arc<Receiver>>,
    Path(tag): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    let signed = headers
        .get("x-contextd-signature")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == signature(SECRET, &body));
    let changes = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|mut body| match body["changes"].take() {
            Value::Array(changes) => Some(changes),
            _ => None,
        });
    let mut runs = receiver.runs.lock().unwrap();
    let run = runs.entry(tag).or_default();
    run.requests += 1;
    if !signed {
        run.bad_signatures += 1;
    }
    let Some(changes) = changes else {
        if run.malformed.len() < 5 {
            run.malformed
                .push(String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        }
        // Still 2xx: a refusal would only make the pusher retry it forever.
        return StatusCode::NO_CONTENT;
    };
    run.largest_batch = run.largest_batch.max(changes.len());
    for change in changes {
        run.changes += 1;
        match (
            change["seq"].as_i64(),
            change["id"].as_str(),
            change["version"].as_i64(),
        ) {
            (Some(seq), Some(id), Some(version)) => {
                run.seqs.push(seq);
                run.arrivals
                    .entry((id.to_owned(), version))
                    .or_default()
                    .push(at);
            }
            _ => {
                if run.malformed.len() < 5 {
                    run.malformed.push(change.to_string());
                }
            }
        }
    }
    StatusCode::NO_CONTENT
}

/// Starts the receiver on a thread and runtime of its own, so that its arrival times do not
/// wait for the bench's writers; returns its address.
fn start_receiver(receiver: Arc<Receiver>) -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("webhook-receiver".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the receiver");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("the receiver binds 127.0.0.1:0");
                tx.send(listener.local_addr().expect("a local address"))
                    .expect("main waits for the address");
                let listener = listener.tap_io(|stream| {
                    let _ = stream.set_nodelay(true);
                });
                let app = Router::new()
                    .route("/hook/{tag}", post(hook))
                    .with_state(receiver);
                axum::serve(listener, app).await.expect("the receiver runs");
            });
        })
        .expect("a receiver thread");
    rx.recv().expect("the receiver reports its address")
}

// ---------------------------------------------------------------------------------------------
// The child servers (see `common`).

/// Starts `contextd serve` on `database_url`, the warm loop off, pushing its changes to
/// `webhook_url` signed with [`SECRET`].
fn start(name: &str, database_url: &str, webhook_url: &str, log: &str) -> Server {
    Server::start(name, Logs::AtExit, |command| {
        command
            .env("DATABASE_URL", database_url)
            .env("CONTEXTD__CACHE__WARM__ENABLED", "false")
            .env("CONTEXTD__SYNC__FACTORY__WEBHOOK_URL", webhook_url)
            .env("CONTEXTD__SYNC__FACTORY__SECRET", SECRET)
            .env("RUST_LOG", log);
    })
}

// ---------------------------------------------------------------------------------------------
// Writes and what the server says of them.

/// One PUT: the version it made and when it went out and came back.
struct Write {
    id: String,
    version: i64,
    t_send: Instant,
    t_ack: Instant,
}

fn context_id(index: usize) -> String {
    format!("sync-bench-{index}")
}

/// A compact `data` object of about `bytes` bytes, unique to `n`.
fn data_body(n: usize, writer: usize, bytes: usize) -> Vec<u8> {
    let pad = pad(n, bytes.saturating_sub(40).max(1));
    serde_json::to_vec(&json!({
        "data": {"n": n, "writer": writer, "pad": pad},
        "source": "mcp",
    }))
    .expect("JSON serializes")
}

async fn put(client: &reqwest::Client, server: &Server, id: String, body: Vec<u8>) -> Write {
    let url = server.url(&format!("/contexts/{id}"));
    let t_send = Instant::now();
    let response = client
        .put(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: reading the answer: {e}"));
    let t_ack = Instant::now();
    assert!(
        status == reqwest::StatusCode::OK || status == reqwest::StatusCode::CREATED,
        "PUT {url} answered {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let answer: Value = serde_json::from_slice(&bytes).expect("a JSON answer");
    let version = answer["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("PUT {url}: no version in {answer}"));
    Write {
        id,
        version,
        t_send,
        t_ack,
    }
}

/// `writes` PUTs from `clients` concurrent writers; writer `w`'s `k`-th write goes to id
/// `(w + k * clients) % ids` (with `clients` ≤ `ids`, each writer has ids of its own).
async fn write_pass(
    client: &reqwest::Client,
    server: &Server,
    knobs: &Knobs,
    writes: usize,
    clients: usize,
    first_n: usize,
) -> Vec<Write> {
    let ids = knobs.ids;
    let bytes = knobs.data_bytes;
    let writer = |w: usize| {
        let client = client.clone();
        async move {
            let mut done = Vec::new();
            let mut k = 0;
            while w + k * clients < writes {
                let n = first_n + w + k * clients;
                let id = context_id((w + k * clients) % ids);
                done.push(put(&client, server, id, data_body(n, w, bytes)).await);
                k += 1;
            }
            done
        }
    };
    // The writers run concurrently on this task (they are I/O bound: the runtime's threads
    // drive the connections).
    let mut all: Vec<Write> = futures_util::future::join_all((0..clients).map(writer))
        .await
        .into_iter()
        .flatten()
        .collect();
    all.sort_by_key(|write| write.t_send);
    all
}

/// Waits until every write of `writes` has arrived at the receiver under `tag`.
async fn wait_delivered(receiver: &Receiver, tag: &str, writes: &[Write]) -> Result<(), String> {
    let until = Instant::now() + DELIVERY_DEADLINE;
    loop {
        let missing = {
            let runs = receiver.runs.lock().unwrap();
            match runs.get(tag) {
                Some(run) => writes
                    .iter()
                    .filter(|w| !run.arrivals.contains_key(&(w.id.clone(), w.version)))
                    .count(),
                None => writes.len(),
            }
        };
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!(
                "{missing} of {} changes had not arrived {DELIVERY_DEADLINE:?} after the last \
                 write",
                writes.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A Prometheus histogram: cumulative bucket counts by upper bound (the last is +Inf).
#[derive(Clone, Default)]
struct Histogram {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn parse(text: &str, name: &str) -> Histogram {
        let mut histogram = Histogram::default();
        let bucket = format!("{name}_bucket{{");
        for line in text.lines() {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Some(labels) = key.strip_prefix(&bucket) {
                let le = labels
                    .split("le=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_else(|| panic!("no le in {line:?}"));
                let le = match le {
                    "+Inf" => f64::INFINITY,
                    le => le
                        .parse()
                        .unwrap_or_else(|_| panic!("le {le:?} in {line:?}")),
                };
                let count = value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("count in {line:?}"));
                histogram.buckets.push((le, count as u64));
            } else if key == format!("{name}_sum") {
                histogram.sum = value.parse().unwrap_or_else(|_| panic!("{line:?}"));
            } else if key == format!("{name}_count") {
                histogram.count =
                    value.parse::<f64>().unwrap_or_else(|_| panic!("{line:?}")) as u64;
            }
        }
        assert!(
            !histogram.buckets.is_empty(),
            "/metrics has no {name} histogram"
        );
        histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        histogram
    }

    /// What was observed since `earlier`.
    fn since(&self, earlier: &Histogram) -> Histogram {
        let before: HashMap<u64, u64> = earlier
            .buckets
            .iter()
            .map(|&(le, n)| (le.to_bits(), n))
            .collect();
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| (le, n - before.get(&le.to_bits()).copied().unwrap_or(0)))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The `q` quantile in seconds, interpolated linearly within its bucket (from 0 for the
    /// first); in the +Inf bucket, the largest finite bound (as `histogram_quantile`).
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(le, n) in &self.buckets {
            if n as f64 >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = (n - below) as f64;
                let fraction = if inside > 0.0 {
                    (rank - below as f64) / inside
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * fraction);
            }
            (lower, below) = (le, n);
        }
        Some(lower)
    }

    /// The upper bound of the highest bucket that holds an observation.
    fn max_bound(&self) -> Option<f64> {
        let mut below = 0;
        let mut bound = None;
        for &(le, n) in &self.buckets {
            if n > below {
                bound = Some(le);
            }
            below = n;
        }
        bound
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

async fn fetch_histogram(client: &reqwest::Client, server: &Server) -> Histogram {
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the /metrics text");
    Histogram::parse(&text, HISTOGRAM)
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// The spread of `values`, which are not empty.
fn spread(values: Vec<f64>) -> Spread {
    Spread::of(values).expect("no samples")
}

/// One measured pass.
struct Pass {
    store: String,
    clients: usize,
    seconds: f64,
    round_trip: Spread,
    ack_to_receipt: Spread,
    send_to_receipt: Spread,
    server: Histogram,
    /// Pushes and changes the receiver got during the pass.
    requests: usize,
    changes: usize,
    last_latency_ms: Value,
}

// ---------------------------------------------------------------------------------------------

/// What the checks of one store found.
struct Verdict {
    store: String,
    written: usize,
    lost: usize,
    duplicated: usize,
    unexpected: usize,
    seq_disorder: usize,
    bad_signatures: usize,
    malformed: Vec<String>,
    pending: Value,
    requests: usize,
    largest_batch: usize,
}

impl Verdict {
    fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.unexpected == 0
            && self.seq_disorder == 0
            && self.bad_signatures == 0
            && self.malformed.is_empty()
    }
}

/// Starts a server on `database_url`, warms it up, runs the sequential and the concurrent
/// pass, and checks what arrived.
async fn run_store(
    store: &str,
    database_url: &str,
    hook_base: &str,
    receiver: &Receiver,
    client: &reqwest::Client,
    knobs: &Knobs,
) -> (Vec<Pass>, Verdict) {
    let started = Instant::now();
    let webhook_url = format!("{hook_base}/hook/{store}");
    let mut server = start(store, database_url, &webhook_url, &knobs.server_log);
    server.wait_ready(client).await;
    println!(
        "{store}: server ready in {:.2?} ({database_url})",
        started.elapsed()
    );

    let mut all_writes = Vec::new();
    let warmup = write_pass(
        client,
        &server,
        knobs,
        knobs.ids * WARMUP_WRITES_PER_ID,
        1,
        0,
    )
    .await;
    if let Err(e) = wait_delivered(receiver, store, &warmup).await {
        panic!(
            "{store}: warm-up: {e}; the server's last log lines:\n{}",
            server.log_tail()
        );
    }
    let mut next_n = warmup.len();
    all_writes.extend(warmup);

    let mut passes = Vec::new();
    for clients in [1, knobs.clients] {
        let before = fetch_histogram(client, &server).await;
        let (requests_before, changes_before) = {
            let runs = receiver.runs.lock().unwrap();
            let run = &runs[store];
            (run.requests, run.changes)
        };
        let start = Instant::now();
        let writes = write_pass(client, &server, knobs, knobs.writes, clients, next_n).await;
        let seconds = start.elapsed().as_secs_f64();
        next_n += writes.len();
        if let Err(e) = wait_delivered(receiver, store, &writes).await {
            panic!(
                "{store}, {clients} client(s): {e}; the server's last log lines:\n{}",
                server.log_tail()
            );
        }
        let after = fetch_histogram(client, &server).await;
        let summary = metrics_summary(client, &server).await;
        let (receipts, requests, changes) = {
            let runs = receiver.runs.lock().unwrap();
            let run = &runs[store];
            let receipts: Vec<Instant> = writes
                .iter()
                .map(|w| run.arrivals[&(w.id.clone(), w.version)][0])
                .collect();
            (
                receipts,
                run.requests - requests_before,
                run.changes - changes_before,
            )
        };
        passes.push(Pass {
            store: store.to_owned(),
            clients,
            seconds,
            round_trip: spread(
                writes
                    .iter()
                    .map(|w| signed_ms(w.t_ack, w.t_send))
                    .collect(),
            ),
            ack_to_receipt: spread(
                writes
                    .iter()
                    .zip(&receipts)
                    .map(|(w, &at)| signed_ms(at, w.t_ack))
                    .collect(),
            ),
            send_to_receipt: spread(
                writes
                    .iter()
                    .zip(&receipts)
                    .map(|(w, &at)| signed_ms(at, w.t_send))
                    .collect(),
            ),
            server: after.since(&before),
            requests,
            changes,
            last_latency_ms: summary["sync"]["last_latency_ms"].clone(),
        });
        all_writes.extend(writes);
    }

    // Late duplicates would come now, if any.
    tokio::time::sleep(SETTLE).await;
    let pending = metrics_summary(client, &server).await["sync"]["pending"].clone();
    drop(server);

    let runs = receiver.runs.lock().unwrap();
    let run = &runs[store];
    let written: HashSet<(String, i64)> = all_writes
        .iter()
        .map(|w| (w.id.clone(), w.version))
        .collect();
    assert_eq!(
        written.len(),
        all_writes.len(),
        "{store}: two PUTs answered with the same (id, version)"
    );
    let verdict = Verdict {
        store: store.to_owned(),
        written: written.len(),
        lost: written
            .iter()
            .filter(|key| !run.arrivals.contains_key(*key))
            .count(),
        duplicated: run.arrivals.values().filter(|at| at.len() > 1).count(),
        unexpected: run
            .arrivals
            .keys()
            .filter(|key| !written.contains(*key))
            .count(),
        seq_disorder: run
            .seqs
            .windows(2)
            .filter(|pair| pair[1] <= pair[0])
            .count(),
        bad_signatures: run.bad_signatures,
        malformed: run.malformed.clone(),
        pending,
        requests: run.requests,
        largest_batch: run.largest_batch,
    };
    (passes, verdict)
}

// ---------------------------------------------------------------------------------------------

fn ms(value: f64) -> String {
    format!("{value:.2}")
}

fn print_report(passes: &[Pass], verdicts: &[Verdict], knobs: &Knobs) {
    println!();
    println!(
        "Sync latency: PUT /contexts/{{id}} (~{} B data, {} ids) → webhook push → in-bench \
         receiver (204, signature checked); {} writes per pass; all times in ms",
        knobs.data_bytes, knobs.ids, knobs.writes
    );
    println!(
        "{:<9} {:>7} {:<36} {:>6} {:>8} {:>8} {:>10} {:>8}",
        "store", "clients", "measure", "n", "p50", "p99", "max", "mean"
    );
    println!("{}", "-".repeat(100));
    for pass in passes {
        let rows: [(&str, &Spread); 3] = [
            ("PUT round trip (send→ack)", &pass.round_trip),
            ("ack→receipt (client clock)", &pass.ack_to_receipt),
            ("send→receipt (≥ commit→receipt)", &pass.send_to_receipt),
        ];
        for (what, s) in rows {
            println!(
                "{:<9} {:>7} {:<36} {:>6} {:>8} {:>8} {:>10} {:>8}",
                pass.store,
                pass.clients,
                what,
                s.len(),
                ms(s.pct(50.0)),
                ms(s.pct(99.0)),
                ms(s.max()),
                ms(s.mean())
            );
        }
        let h = &pass.server;
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |s| ms(s * 1e3));
        println!(
            "{:<9} {:>7} {:<36} {:>6} {:>8} {:>8} {:>10} {:>8}",
            pass.store,
            pass.clients,
            "commit→2xx (server histogram)",
            h.count,
            show(h.quantile(0.5)),
            show(h.quantile(0.99)),
            h.max_bound()
                .map_or("-".to_owned(), |b| format!("≤ {}", ms(b * 1e3))),
            show(h.mean())
        );
        println!(
            "{:<9} {:>7}   {:.0} PUT/s; {} pushes carried {} changes ({:.1} per push); \
             /metrics/summary sync.last_latency_ms = {}",
            "",
            "",
            knobs.writes as f64 / pass.seconds,
            pass.requests,
            pass.changes,
            pass.changes as f64 / pass.requests.max(1) as f64,
            pass.last_latency_ms
        );
        println!("{}", "-".repeat(100));
    }
    println!(
        "server histogram buckets (ms): 1, 2.5, 5, 10, 25, 50, 100, ...: its p50/p99 are \
         interpolated within them, its max is a bucket bound"
    );

    println!();
    let target = knobs.target_ms;
    println!(
        "Target: p99 commit→receipt ≤ {target} ms on loopback (the seed's: ≤ {SEED_TARGET_MS} ms)"
    );
    println!(
        "{:<9} {:>7} {:>16} {:<12} {:>18} {:<12} {:<10}",
        "store", "clients", "server p99", "≤ target", "send→receipt p99", "≤ target", "≤ seed's"
    );
    let verdict = |v: f64, limit: f64| if v <= limit { "met" } else { "MISSED" };
    for pass in passes {
        let server_p99 = pass.server.quantile(0.99).map(|s| s * 1e3);
        let client_p99 = pass.send_to_receipt.pct(99.0);
        println!(
            "{:<9} {:>7} {:>16} {:<12} {:>18} {:<12} {:<10}",
            pass.store,
            pass.clients,
            server_p99.map_or("-".to_owned(), ms),
            server_p99.map_or("-", |p| verdict(p, target)),
            ms(client_p99),
            verdict(client_p99, target),
            verdict(
                server_p99.unwrap_or(f64::INFINITY).max(client_p99),
                SEED_TARGET_MS
            ),
        );
    }

    println!();
    println!(
        "Delivery checks (all writes incl. {} warm-up per store): each (id, version) exactly \
         once, nothing else, seq strictly increasing, every push signed",
        knobs.ids * WARMUP_WRITES_PER_ID
    );
    for v in verdicts {
        println!(
            "{:<9} written {:>5}  lost {}  duplicated {}  unexpected {}  seq out of order {}  \
             bad signatures {}  malformed {}  | {} pushes, largest {} changes, pending after: \
             {}  => {}",
            v.store,
            v.written,
            v.lost,
            v.duplicated,
            v.unexpected,
            v.seq_disorder,
            v.bad_signatures,
            v.malformed.len(),
            v.requests,
            v.largest_batch,
            v.pending,
            if v.ok() { "OK" } else { "FAILED" }
        );
        for m in &v.malformed {
            println!("  malformed: {m}");
        }
    }
}

fn main() {
    if !common::run_as_bench("sync_latency") {
        return;
    }
    let knobs = Knobs::from_env();
    knobs.print();
    let bench_start = Instant::now();
    let suffix = unique_suffix();

    let receiver = Arc::new(Receiver {
        runs: Mutex::new(HashMap::new()),
    });
    let hook_base = format!("http://{}", start_receiver(receiver.clone()));
    println!("webhook receiver on {hook_base}/hook/<store>");

    let all_ok = {
        // Dropped after the servers (declared first): the database, the SQLite directory.
        let database = knobs
            .stores
            .iter()
            .any(|s| s == "postgres")
            .then(|| Database::new(&knobs.pg, format!("contextd_sync_bench_{suffix}")));
        let sqlite_dir = knobs
            .stores
            .iter()
            .any(|s| s == "sqlite")
            .then(|| TempDir::new(&format!("contextd-sync-bench-{suffix}")));

        let runtime = bench_runtime();
        let client = http_client();

        let (passes, verdicts) = runtime.block_on(async {
            let (mut passes, mut verdicts) = (Vec::new(), Vec::new());
            for store in &knobs.stores {
                let database_url = match store.as_str() {
                    "postgres" => database.as_ref().expect("made for postgres").1.clone(),
                    _ => format!(
                        "sqlite:{}",
                        sqlite_dir
                            .as_ref()
                            .expect("made for sqlite")
                            .path()
                            .join("contextd.db")
                            .display()
                    ),
                };
                let (p, v) =
                    run_store(store, &database_url, &hook_base, &receiver, &client, &knobs).await;
                passes.extend(p);
                verdicts.push(v);
            }
            (passes, verdicts)
        });
        drop(runtime);
        print_report(&passes, &verdicts, &knobs);
        println!();
        verdicts.iter().all(Verdict::ok)
    };
    println!("total {:.1?}", bench_start.elapsed());
    if !all_ok {
        eprintln!("sync_latency: a delivery check FAILED (see above)");
        std::process::exit(1);
    }
}
