//! The cache through the real HTTP API: the release binary, real Postgres, real Redis.
//!
//! `cargo bench --bench http_cache`. It starts `contextd serve` several times against one fresh
//! Postgres database (created by the server, dropped at the end) and a Redis key prefix per
//! process (deleted at the end), and measures:
//!
//! 1. GET latency per cache layer, p50/p99, one client sending sequential keep-alive requests,
//!    every sample checked against its `Cache-Status`: L1 (repeated reads), L2 (a fresh
//!    process, L3 off, on the Redis prefix the seeding process filled), L3 (a fresh process, a
//!    new Redis prefix, L3 on; and one without Redis), and a store read (L3 off; without Redis,
//!    and behind a cold Redis prefix). Only the first read of a context in a fresh process is
//!    an L2/L3/store sample: it lands in L1 after that. The five processes run side by side and
//!    they take turns of 100 reads, so the machine's noise falls on all alike.
//!    `GET /healthz` is the floor.
//! 2. The overall hit rate of a cold Zipf trace of GETs from a few concurrent clients, read from
//!    `/metrics/summary`: a fresh process with L1 holding 10% of the keys, a new (cold) Redis
//!    prefix and L3 on; then L1 alone (no Redis, L3 off); then L1 + cold L2 without L3.
//!
//! Parameters, from the environment (defaults in brackets):
//! `HTTP_CACHE_KEYS` [10000] contexts seeded, `HTTP_CACHE_REQUESTS` [100000] Zipf trace length,
//! `HTTP_CACHE_ZIPF_S` [1.0] exponent, `HTTP_CACHE_L1_ENTRIES` [10% of keys] L1 capacity in the
//! Zipf runs, `HTTP_CACHE_CLIENTS` [8] concurrent clients of the Zipf runs,
//! `HTTP_CACHE_SEED_CLIENTS` [16] concurrent writers while seeding, `HTTP_CACHE_SAMPLES` [2000]
//! contexts per latency measurement, `HTTP_CACHE_DATA_BYTES` [1024] compact `data` size,
//! `HTTP_CACHE_SEED` [0x5EED_C0DE] PRNG seed, `HTTP_CACHE_PG` [postgres://postgres@127.0.0.1:5432]
//! server (no database name), `HTTP_CACHE_REDIS` [redis://127.0.0.1:6379],
//! `HTTP_CACHE_SERVER_LOG` [info,tokio_postgres=warn] the servers' `RUST_LOG`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{
    BIN, DEFAULT_PG, Database, Logs, Server, bench_runtime, distinct, env_or, http_client,
    metrics_summary, percentile, print_knobs, unique_suffix, zipf_trace,
};

const L1_HIT: &str = "contextd; hit; detail=l1";
const L2_HIT: &str = "contextd; hit; detail=l2";
const L3_HIT: &str = "contextd; hit; detail=l3";
const MISS: &str = "contextd; fwd=miss";

/// Reads of contexts outside the measured set before a latency measurement: they open the
/// HTTP connection, the Redis connection and a Postgres connection with its statements.
const WARMUP_READS: usize = 50;

/// The latency servers take turns: this many measured reads on one, then the next.
const BLOCK: usize = 100;

/// Unmeasured reads that start each turn.
const BLOCK_WARMUP: usize = 2;

fn env_seed(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(raw) => {
            let raw = raw.trim().replace('_', "");
            match raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => raw.parse(),
            }
            .unwrap_or_else(|_| panic!("{name}={raw:?} does not parse"))
        }
        Err(_) => default,
    }
}

struct Knobs {
    keys: usize,
    requests: usize,
    zipf_s: f64,
    l1_entries: usize,
    clients: usize,
    seed_clients: usize,
    samples: usize,
    data_bytes: usize,
    seed: u64,
    pg: String,
    redis: String,
    server_log: String,
}

impl Knobs {
    fn from_env() -> Self {
        let keys: usize = env_or("HTTP_CACHE_KEYS", 10_000);
        let knobs = Self {
            keys,
            requests: env_or("HTTP_CACHE_REQUESTS", 100_000),
            zipf_s: env_or("HTTP_CACHE_ZIPF_S", 1.0),
            l1_entries: env_or("HTTP_CACHE_L1_ENTRIES", keys / 10),
            clients: env_or("HTTP_CACHE_CLIENTS", 8),
            seed_clients: env_or("HTTP_CACHE_SEED_CLIENTS", 16),
            samples: env_or("HTTP_CACHE_SAMPLES", 2000),
            data_bytes: env_or("HTTP_CACHE_DATA_BYTES", 1024),
            seed: env_seed("HTTP_CACHE_SEED", 0x5EED_C0DE),
            pg: env_or("HTTP_CACHE_PG", DEFAULT_PG.to_owned()),
            redis: env_or("HTTP_CACHE_REDIS", "redis://127.0.0.1:6379".to_owned()),
            server_log: env_or(
                "HTTP_CACHE_SERVER_LOG",
                "info,tokio_postgres=warn".to_owned(),
            ),
        };
        assert!(
            knobs.keys > 0 && knobs.keys <= u32::MAX as usize,
            "HTTP_CACHE_KEYS out of range"
        );
        assert!(knobs.requests > 0, "HTTP_CACHE_REQUESTS must be positive");
        assert!(
            knobs.l1_entries > 0,
            "HTTP_CACHE_L1_ENTRIES must be positive"
        );
        assert!(
            knobs.clients > 0 && knobs.seed_clients > 0,
            "client counts must be positive"
        );
        assert!(
            knobs.samples > 0 && knobs.samples <= knobs.keys,
            "HTTP_CACHE_SAMPLES must be 1..=HTTP_CACHE_KEYS"
        );
        knobs
    }

    fn print(&self) {
        println!("http_cache: {BIN}");
        let rows: [(&str, String, &str); 12] = [
            ("HTTP_CACHE_KEYS", self.keys.to_string(), "10000"),
            ("HTTP_CACHE_REQUESTS", self.requests.to_string(), "100000"),
            ("HTTP_CACHE_ZIPF_S", self.zipf_s.to_string(), "1.0"),
            (
                "HTTP_CACHE_L1_ENTRIES",
                self.l1_entries.to_string(),
                "10% of keys",
            ),
            ("HTTP_CACHE_CLIENTS", self.clients.to_string(), "8"),
            (
                "HTTP_CACHE_SEED_CLIENTS",
                self.seed_clients.to_string(),
                "16",
            ),
            ("HTTP_CACHE_SAMPLES", self.samples.to_string(), "2000"),
            ("HTTP_CACHE_DATA_BYTES", self.data_bytes.to_string(), "1024"),
            ("HTTP_CACHE_SEED", format!("{:#x}", self.seed), "0x5eedc0de"),
            ("HTTP_CACHE_PG", self.pg.clone(), DEFAULT_PG),
            (
                "HTTP_CACHE_REDIS",
                self.redis.clone(),
                "redis://127.0.0.1:6379",
            ),
            (
                "HTTP_CACHE_SERVER_LOG",
                self.server_log.clone(),
                "info,tokio_postgres=warn",
            ),
        ];
        print_knobs(&rows);
    }
}

// ---------------------------------------------------------------------------------------------
// Child servers (see `common`), and the Redis keys, deleted on drop.

/// What one server process runs with.
struct Spec<'a> {
    name: &'a str,
    database_url: &'a str,
    /// `REDIS_URL` and the L2 key prefix; `None`: no Redis at all.
    redis: Option<(&'a str, &'a str)>,
    l3: bool,
    l1_entries: Option<usize>,
    log: &'a str,
}

/// Starts `contextd serve` as `spec` says, the warm loop off.
fn start(spec: &Spec<'_>) -> Server {
    Server::start(spec.name, Logs::AtExit, |command| {
        command
            .env("DATABASE_URL", spec.database_url)
            .env("CONTEXTD__CACHE__WARM__ENABLED", "false")
            .env("CONTEXTD__CACHE__L3__ENABLED", spec.l3.to_string())
            .env("RUST_LOG", spec.log);
        if let Some((url, prefix)) = spec.redis {
            command
                .env("REDIS_URL", url)
                .env("CONTEXTD__CACHE__L2__ENABLED", "true")
                .env("CONTEXTD__CACHE__L2__KEY_PREFIX", prefix);
        }
        if let Some(entries) = spec.l1_entries {
            command.env("CONTEXTD__CACHE__L1__MAX_ENTRIES", entries.to_string());
        }
    })
}

/// User + system CPU seconds `server` has used, from `/proc/PID/stat` (Linux).
fn cpu_seconds(server: &Server) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).ok()?;
    // Fields after the command name (which may hold spaces, hence the last ')'): state is
    // field 3, utime 14, stime 15, in clock ticks (USER_HZ, 100 on Linux).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The Redis key prefixes the servers used; their keys are deleted at the end.
struct RedisKeys {
    url: String,
    prefixes: Vec<String>,
}

impl RedisKeys {
    /// `host:port` and the database number of `redis://host:port[/db]` (no auth, no TLS).
    fn address(&self) -> Option<(String, Option<String>)> {
        let rest = self.url.strip_prefix("redis://")?;
        if rest.contains('@') {
            return None;
        }
        let (host, db) = match rest.split_once('/') {
            Some((host, db)) if !db.is_empty() => (host, Some(db.to_owned())),
            Some((host, _)) => (host, None),
            None => (rest, None),
        };
        let host = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:6379")
        };
        Some((host, db))
    }

    fn delete(&self) -> Result<u64, String> {
        let (addr, db) = self
            .address()
            .ok_or_else(|| format!("cannot parse {} (only redis://host:port[/db])", self.url))?;
        let mut stream = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        if let Some(db) = db {
            resp_command(&mut stream, &["SELECT", &db])?;
        }
        const SCRIPT: &str = "local ks = redis.call('KEYS', ARGV[1]) \
            for i = 1, #ks, 1000 do redis.call('DEL', unpack(ks, i, math.min(i + 999, #ks))) end \
            return #ks";
        let mut deleted = 0;
        for prefix in &self.prefixes {
            let reply = resp_command(&mut stream, &["EVAL", SCRIPT, "0", &format!("{prefix}*")])?;
            deleted += reply
                .strip_prefix(':')
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("unexpected reply {reply:?}"))?;
        }
        Ok(deleted)
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        match self.delete() {
            Ok(n) => println!(
                "deleted {n} Redis keys under {} bench prefixes",
                self.prefixes.len()
            ),
            Err(e) => eprintln!("could not delete the bench's Redis keys: {e}"),
        }
    }
}

/// Sends one command in RESP and returns its one-line reply (`+OK`, `:3`, `-ERR ...`).
fn resp_command(stream: &mut TcpStream, args: &[&str]) -> Result<String, String> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).map_err(|e| e.to_string())?;
        reply.push(byte[0]);
    }
    let reply = String::from_utf8_lossy(&reply[..reply.len() - 2]).into_owned();
    if reply.starts_with('-') {
        return Err(reply);
    }
    Ok(reply)
}

// ---------------------------------------------------------------------------------------------
// Requests.

fn context_id(i: usize) -> String {
    format!("bench_{i:06}")
}

/// The PUT body of context `i`: `data` about `bytes` long as compact JSON.
fn put_body(i: usize, bytes: usize) -> Value {
    let mut data = json!({
        "rank": i,
        "owner": format!("agent-{:03}", i % 997),
        "tags": ["bench", "http_cache"],
        "text": "",
    });
    let base = serde_json::to_string(&data).expect("serializes").len();
    let text: String = (0..bytes.saturating_sub(base))
        .map(|k| (b'a' + ((i * 31 + k * 7) % 26) as u8) as char)
        .collect();
    data["text"] = Value::String(text);
    json!({"data": data, "source": "mcp"})
}

/// PUTs contexts `0..keys` with `clients` concurrent writers; the PUTs per second.
async fn seed(client: &reqwest::Client, server: &Server, knobs: &Knobs) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..knobs.seed_clients)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            let (base, keys, bytes) = (server.base().to_owned(), knobs.keys, knobs.data_bytes);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        break;
                    }
                    let url = format!("{base}/contexts/{}", context_id(i));
                    let response = client
                        .put(&url)
                        .json(&put_body(i, bytes))
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
                    let status = response.status();
                    let body = response.bytes().await.unwrap_or_default();
                    assert!(
                        status == reqwest::StatusCode::CREATED,
                        "PUT {url} answered {status}, not 201: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a seeding task panicked");
    }
    knobs.keys as f64 / start.elapsed().as_secs_f64()
}

/// One GET: its status, `Cache-Status`, body length and duration (send to last body byte).
async fn timed_get(client: &reqwest::Client, url: &str) -> (u16, String, usize, Duration) {
    let start = Instant::now();
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let cache_status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body: {e}"));
    (status, cache_status, body.len(), start.elapsed())
}

/// Latency samples of one kind of read, in nanoseconds: only those whose `Cache-Status` was
/// the expected one; the others are counted by what they said.
#[derive(Default)]
struct Samples {
    nanos: Vec<u64>,
    unexpected: BTreeMap<String, usize>,
    body_bytes: usize,
}

impl Samples {
    fn percentile_us(&self, p: f64) -> f64 {
        let mut sorted = self.nanos.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        percentile(&sorted, p) as f64 / 1000.0
    }

    fn mean_us(&self) -> f64 {
        self.nanos.iter().sum::<u64>() as f64 / self.nanos.len().max(1) as f64 / 1000.0
    }

    fn total(&self) -> usize {
        self.nanos.len() + self.unexpected.values().sum::<usize>()
    }
}

/// Sequential GETs of `paths`, each checked for 200 and `expect` in `Cache-Status` (`None`:
/// nothing to check but 200).
async fn measure(
    client: &reqwest::Client,
    server: &Server,
    paths: &[String],
    expect: Option<&str>,
) -> Samples {
    let mut samples = Samples::default();
    for path in paths {
        sample(client, server, path, expect, &mut samples).await;
    }
    samples
}

/// One GET of `path` into `samples`; see `measure`.
async fn sample(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    expect: Option<&str>,
    samples: &mut Samples,
) {
    let url = server.url(path);
    let (status, cache_status, len, elapsed) = timed_get(client, &url).await;
    assert_eq!(status, 200, "GET {url} answered {status}");
    samples.body_bytes = samples.body_bytes.max(len);
    match expect {
        Some(expected) if cache_status != expected => {
            *samples.unexpected.entry(cache_status).or_default() += 1;
        }
        _ => samples.nanos.push(elapsed.as_nanos() as u64),
    }
}

fn context_paths(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("/contexts/{}", context_id(i)))
        .collect()
}

/// Opens the connections a measurement should not pay for: HTTP, and through reads of
/// contexts outside the measured set, Redis and Postgres.
async fn warm_up(client: &reqwest::Client, server: &Server, knobs: &Knobs) {
    let health = vec!["/healthz".to_owned(); 100];
    measure(client, server, &health, None).await;
    let end = (knobs.samples + WARMUP_READS).min(knobs.keys);
    measure(client, server, &context_paths(knobs.samples..end), None).await;
}

/// What one Zipf run through the API measured.
struct ZipfRun {
    label: &'static str,
    l2: bool,
    l3: bool,
    seconds: f64,
    /// CPU seconds the server process used during the run (Linux `/proc` only).
    server_cpu: Option<f64>,
    /// Client-side tally of `Cache-Status`.
    statuses: BTreeMap<String, u64>,
    latency: Samples,
    summary: Value,
}

/// Drives `trace` (ranks) against `server` with `clients` concurrent sequential clients taking
/// the next request of the trace in turn.
async fn run_zipf(
    (label, l2, l3): (&'static str, bool, bool),
    client: &reqwest::Client,
    server: &Server,
    trace: &Arc<Vec<u32>>,
    clients: usize,
) -> ZipfRun {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_seconds(server);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, next, trace) = (client.clone(), next.clone(), trace.clone());
            let base = server.base().to_owned();
            tokio::spawn(async move {
                let mut statuses = BTreeMap::<String, u64>::new();
                let mut nanos = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&rank) = trace.get(i) else { break };
                    let url = format!("{base}/contexts/{}", context_id(rank as usize));
                    let (status, cache_status, _, elapsed) = timed_get(&client, &url).await;
                    assert_eq!(status, 200, "GET {url} answered {status}");
                    *statuses.entry(cache_status).or_default() += 1;
                    nanos.push(elapsed.as_nanos() as u64);
                }
                (statuses, nanos)
            })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    let mut latency = Samples::default();
    for task in tasks {
        let (counts, nanos) = task.await.expect("a client task panicked");
        for (status, n) in counts {
            *statuses.entry(status).or_default() += n;
        }
        latency.nanos.extend(nanos);
    }
    let seconds = start.elapsed().as_secs_f64();
    let server_cpu = cpu_before
        .zip(cpu_seconds(server))
        .map(|(before, after)| after - before);
    ZipfRun {
        label,
        l2,
        l3,
        seconds,
        server_cpu,
        statuses,
        latency,
        summary: metrics_summary(client, server).await,
    }
}

fn main() {
    if !common::run_as_bench("http_cache") {
        return;
    }
    let knobs = Knobs::from_env();
    knobs.print();
    let bench_start = Instant::now();

    let suffix = unique_suffix();
    let (database, database_url) = Database::new(&knobs.pg, format!("contextd_bench_{suffix}"));
    let prefix = |phase: &str| format!("contextd-bench-{suffix}-{phase}:");
    let (p_seed, p_l3, p_miss, p_zipf, p_zipf_no_l3) = (
        prefix("seed"),
        prefix("l3"),
        prefix("miss"),
        prefix("zipf"),
        prefix("zipf-nol3"),
    );
    let _redis_keys = RedisKeys {
        url: knobs.redis.clone(),
        prefixes: vec![
            p_seed.clone(),
            p_l3.clone(),
            p_miss.clone(),
            p_zipf.clone(),
            p_zipf_no_l3.clone(),
        ],
    };
    println!(
        "database {} (created by the first server, dropped at the end); Redis prefixes \
         contextd-bench-{suffix}-*",
        database.name()
    );

    let runtime = bench_runtime();
    let client = http_client();
    let redis_url = knobs.redis.as_str();
    let log = knobs.server_log.as_str();
    let spec = |name, redis, l3, l1_entries| Spec {
        name,
        database_url: &database_url,
        redis,
        l3,
        l1_entries,
        log,
    };

    runtime.block_on(async {
        let n = knobs.samples;
        let measured = context_paths(0..n);

        // Seed through process A: every write goes to the store, L3 (same transaction), L1
        // and Redis under `p_seed`.
        let started = Instant::now();
        let mut a = start(&spec("A seed", Some((redis_url, &p_seed)), true, None));
        a.wait_ready(&client).await;
        println!(
            "server A started in {:.2?} (creates and migrates the database)",
            started.elapsed()
        );
        let puts_per_second = seed(&client, &a, &knobs).await;
        println!(
            "seeded {} contexts (~{} B data each) through A with {} concurrent clients: \
             {puts_per_second:.0} PUT/s",
            knobs.keys, knobs.data_bytes, knobs.seed_clients
        );
        let seeded = metrics_summary(&client, &a).await;
        assert_eq!(
            seeded["contexts"]["total"].as_i64(),
            Some(knobs.keys as i64),
            "contexts after seeding: {seeded}"
        );
        drop(a);

        // The latency servers, each fresh (empty L1), all running side by side and taking
        // turns of `BLOCK` reads, so that the machine's noise falls on every layer alike.
        // B: L3 off, on the Redis prefix A filled (L2 hits). C: a new prefix, L3 on (L3 hits
        // behind a cold L2). C2: L3 on, no Redis. D: no Redis, L3 off (store reads). E: a new
        // prefix, L3 off (store reads behind a cold L2).
        let layouts = [
            ("B", Some((redis_url, p_seed.as_str())), false, L2_HIT),
            ("C", Some((redis_url, p_l3.as_str())), true, L3_HIT),
            ("C2", None, true, L3_HIT),
            ("D", None, false, MISS),
            ("E", Some((redis_url, p_miss.as_str())), false, MISS),
        ];
        let mut servers = Vec::new();
        for (name, redis, l3, _) in layouts {
            let mut server = start(&spec(name, redis, l3, None));
            server.wait_ready(&client).await;
            servers.push(server);
        }
        for server in &servers {
            warm_up(&client, server, &knobs).await;
        }
        let mut first: Vec<Samples> = servers.iter().map(|_| Samples::default()).collect();
        let mut spare = knobs.samples + WARMUP_READS;
        for block in measured.chunks(BLOCK) {
            for ((server, layout), samples) in servers.iter().zip(&layouts).zip(&mut first) {
                // A few first reads of unmeasured contexts wake the process (and its Redis
                // and Postgres connections) after its turn off.
                for _ in 0..BLOCK_WARMUP {
                    let path = match spare < knobs.keys {
                        true => format!("/contexts/{}", context_id(spare)),
                        false => "/healthz".to_owned(),
                    };
                    sample(&client, server, &path, None, &mut Samples::default()).await;
                    spare += 1;
                }
                for path in block {
                    sample(&client, server, path, Some(layout.3), samples).await;
                }
            }
        }
        // L1: the 2nd and 3rd read of each context on B, a /healthz on B after each.
        let (mut l1, mut health) = (Samples::default(), Samples::default());
        for _ in 0..2 {
            for path in &measured {
                sample(&client, &servers[0], path, Some(L1_HIT), &mut l1).await;
                sample(&client, &servers[0], "/healthz", None, &mut health).await;
            }
        }
        drop(servers);
        let [l2, l3, l3_alone, store, store_cold_l2] =
            <[Samples; 5]>::try_from(first).unwrap_or_else(|_| unreachable!("one per layout"));

        println!();
        println!(
            "GET latency by the layer that answered: one client, sequential keep-alive \
             requests, response body {} B",
            l2.body_bytes.max(store.body_bytes)
        );
        println!(
            "{:<34} {:<44} {:>7} {:>9} {:>9} {:>9}",
            "answered by (Cache-Status)", "server", "samples", "p50 µs", "p99 µs", "mean µs"
        );
        println!("{}", "-".repeat(117));
        let rows: [(&str, &str, &Samples); 7] = [
            ("GET /healthz (floor)", "B", &health),
            ("L1 hit (detail=l1)", "B, 2nd and 3rd read of each", &l1),
            (
                "L2 hit (detail=l2)",
                "B: L3 off, Redis prefix A filled",
                &l2,
            ),
            (
                "L3 hit (detail=l3), L2 cold",
                "C: new Redis prefix, L3 on",
                &l3,
            ),
            (
                "L3 hit (detail=l3), no Redis",
                "C2: no Redis, L3 on",
                &l3_alone,
            ),
            (
                "store read (fwd=miss), L2 cold",
                "E: new Redis prefix, L3 off",
                &store_cold_l2,
            ),
            (
                "store read (fwd=miss), no Redis",
                "D: no Redis, L3 off",
                &store,
            ),
        ];
        for (what, server, samples) in rows {
            println!(
                "{what:<34} {server:<44} {:>7} {:>9.0} {:>9.0} {:>9.0}",
                samples.nanos.len(),
                samples.percentile_us(50.0),
                samples.percentile_us(99.0),
                samples.mean_us()
            );
        }
        for (what, _, samples) in rows {
            if !samples.unexpected.is_empty() {
                println!(
                    "  NOTE {what}: {} of {} reads said another Cache-Status and are left out: \
                     {:?}",
                    samples.unexpected.values().sum::<usize>(),
                    samples.total(),
                    samples.unexpected
                );
            }
        }

        // The Zipf runs: each a fresh process, L1 at `l1_entries`, warm loop off.
        let trace = Arc::new(zipf_trace(
            knobs.keys,
            knobs.requests,
            knobs.zipf_s,
            knobs.seed,
        ));
        let distinct = distinct(&trace, knobs.keys);
        let l1_entries = Some(knobs.l1_entries);
        let configs = [
            (
                "L1 + L2 (cold) + L3",
                Some((redis_url, p_zipf.as_str())),
                true,
            ),
            ("L1 only (no Redis, L3 off)", None, false),
            (
                "L1 + L2 (cold), L3 off",
                Some((redis_url, p_zipf_no_l3.as_str())),
                false,
            ),
        ];
        let mut runs = Vec::new();
        for (label, redis, l3) in configs {
            let mut server = start(&spec(label, redis, l3, l1_entries));
            server.wait_ready(&client).await;
            let run = run_zipf(
                (label, redis.is_some(), l3),
                &client,
                &server,
                &trace,
                knobs.clients,
            );
            runs.push(run.await);
        }

        println!();
        println!(
            "Zipf(s={}) trace through the API: {} GETs over {} contexts ({distinct} distinct \
             requested), {} concurrent clients, L1 max_entries={}, warm loop off; rates from \
             /metrics/summary (layer rate = hits / reads that reached the layer); store = \
             reads answered fwd=miss; cpu = the server process's CPU per request",
            knobs.zipf_s, knobs.requests, knobs.keys, knobs.clients, knobs.l1_entries
        );
        println!(
            "{:<28} {:>8} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7} {:>7} {:>8}",
            "layers",
            "requests",
            "overall",
            "L1",
            "L2",
            "L3",
            "store",
            "req/s",
            "p50 µs",
            "p99 µs",
            "cpu µs/r"
        );
        println!("{}", "-".repeat(115));
        let rate = |v: &Value| match v.as_f64() {
            Some(r) => format!("{r:.2}%"),
            None => "-".to_owned(),
        };
        for run in &runs {
            let cache = &run.summary["cache"];
            let layer = |name: &str, on: bool| {
                if on {
                    rate(&cache[name]["hit_rate"])
                } else {
                    "off".to_owned()
                }
            };
            println!(
                "{:<28} {:>8} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8.0} {:>7.0} {:>7.0} {:>8}",
                run.label,
                cache["overall"]["requests"],
                rate(&cache["overall"]["hit_rate"]),
                rate(&cache["l1"]["hit_rate"]),
                layer("l2", run.l2),
                layer("l3", run.l3),
                run.statuses.get(MISS).copied().unwrap_or(0),
                knobs.requests as f64 / run.seconds,
                run.latency.percentile_us(50.0),
                run.latency.percentile_us(99.0),
                run.server_cpu.map_or("-".to_owned(), |cpu| format!(
                    "{:.0}",
                    cpu * 1e6 / knobs.requests as f64
                )),
            );
        }
        println!();
        println!(
            "per layer (hits/misses from /metrics/summary; Cache-Status tally from the clients):"
        );
        for run in &runs {
            let cache = &run.summary["cache"];
            let tally: Vec<String> = run
                .statuses
                .iter()
                .map(|(status, n)| {
                    let short = match status.as_str() {
                        L1_HIT => "l1",
                        L2_HIT => "l2",
                        L3_HIT => "l3",
                        MISS => "miss",
                        other => other,
                    };
                    format!("{short}={n}")
                })
                .collect();
            println!(
                "  {:<28} l1 {}/{}  l2 {}/{}  l3 {}/{}  | {}  | target {}% met={}",
                run.label,
                cache["l1"]["hits"],
                cache["l1"]["misses"],
                cache["l2"]["hits"],
                cache["l2"]["misses"],
                cache["l3"]["hits"],
                cache["l3"]["misses"],
                tally.join(" "),
                cache["target_hit_rate"],
                cache["meets_target"],
            );
            if cache["overall"]["requests"].as_u64() != Some(knobs.requests as u64) {
                println!(
                    "  NOTE {}: /metrics/summary counts {} requests, the trace sent {}",
                    run.label, cache["overall"]["requests"], knobs.requests
                );
            }
        }
        println!(
            "\nEvery key's first request misses a cold L1 and L2 ({distinct} of {}): only L3, \
             written by the seeding writes, turns those into hits; without it no cache beats \
             {:.2}%.",
            knobs.requests,
            100.0 * (knobs.requests - distinct) as f64 / knobs.requests as f64
        );
    });
    drop(runtime);
    println!("total {:.1?}", bench_start.elapsed());
}
