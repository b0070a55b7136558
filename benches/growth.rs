//! Growth: what a store of N contexts costs, through the real release binary, on SQLite and on
//! Postgres.
//!
//! `cargo bench --bench growth`. For each store of `STORES` and each size of `SIZES` it makes a
//! fresh store (a new Postgres database, or a new SQLite file), starts `contextd serve` on it
//! (no Redis: L2 off), and:
//!
//! 1. loads N contexts of about 1 KB (agent-memory JSON made from `GROWTH_SEED`, distinct per
//!    context, ids `g00000000`...) through `POST /sync/factory`, `GROWTH_BATCH` items per request
//!    and `GROWTH_INFLIGHT` requests in flight: contexts/s; then waits (at most
//!    `GROWTH_DRAIN_TIMEOUT`) for the vector indexer's backlog to reach 0;
//! 2. closes its connections, stops the server (SIGTERM to exit), runs `ANALYZE` on the store
//!    (as autovacuum would), measures the bytes on disk, and starts it again: start-up time
//!    (spawn to `ready`) and the RSS right after;
//! 3. pages through all of `GET /contexts?limit=1000` following `next_cursor` (each page timed),
//!    then times the first, the middle and the last page 5 times each;
//! 4. cold GETs (`GROWTH_COLD_GETS` distinct random ids, one at a time, each read for the first
//!    time since the restart), hot GETs of one id (`GROWTH_HOT_CLIENTS` concurrent requests for
//!    `DURATION`), PUTs of new versions (`GROWTH_PUT_CLIENTS` concurrent clients for `DURATION`);
//! 5. `GET /metrics` and `GET /metrics/summary`, 20 calls each;
//! 6. stops the server, `contextd export`s the store to a file and `contextd import`s that file
//!    into another fresh store of the same kind (time, contexts/s, peak RSS of each process);
//! 7. the bytes on disk again (with the PUTs' versions).
//!
//! It prints one summary table per store and size, with the goals beside the figures, and
//! writes the same to `target/growth/<timestamp>.md` (with every list page's latency in
//! `target/growth/<timestamp>-<store>-<N>-pages.csv`). Every non-2xx answer is counted and
//! reported; a failed load is a panic.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{
    BIN, DEFAULT_PG, Database, Logs, Server, SplitMix64, Spread, TempDir, bench_runtime, env_or,
    http_client, print_knobs, store_list, unique_suffix,
};

/// The goals of the issue, beside the figures.
const GOAL_PAGE_RATIO: f64 = 2.0;
const GOAL_METRICS_MS: f64 = 5.0;
const GOAL_EXPORT_PER_S: f64 = 30_000.0;

/// Page size of the list pass.
const PAGE_LIMIT: usize = 1000;
/// Times each of the first, middle and last pages is re-timed.
const PAGE_RETIMES: usize = 5;
/// Calls of each metrics endpoint.
const METRICS_CALLS: usize = 20;
/// How long a SIGTERMed server may take before the bench gives up on it (and kills it).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);
/// How long the server idles after the metrics before its RSS is read once more.
const IDLE_SAMPLE: Duration = Duration::from_secs(2);
/// A shutdown slower than this prints the server's last log lines.
const SLOW_SHUTDOWN: Duration = Duration::from_secs(2);

struct Knobs {
    stores: Vec<String>,
    sizes: Vec<usize>,
    duration: Duration,
    pg: String,
    batch: usize,
    inflight: usize,
    cold_gets: usize,
    hot_clients: usize,
    put_clients: usize,
    seed: u64,
    pg_analyze: String,
    server_log: String,
    drain_timeout: Duration,
}

/// Seconds, as `5` or `5s` (bench/run.sh's spelling).
fn parse_seconds(raw: &str) -> Duration {
    let trimmed = raw.trim().trim_end_matches('s');
    let seconds: f64 = trimmed
        .parse()
        .unwrap_or_else(|_| panic!("DURATION={raw:?} is not a number of seconds"));
    assert!(seconds > 0.0, "DURATION must be positive");
    Duration::from_secs_f64(seconds)
}

impl Knobs {
    fn from_env() -> Self {
        let stores: String = env_or("STORES", "sqlite,postgres".to_owned());
        let sizes: String = env_or("SIZES", "10000,100000".to_owned());
        let duration: String = env_or("DURATION", "5".to_owned());
        let knobs = Self {
            stores: store_list(&stores),
            sizes: sizes
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.replace('_', "")
                        .parse()
                        .unwrap_or_else(|_| panic!("SIZES: {s:?} is not a number"))
                })
                .collect(),
            duration: parse_seconds(&duration),
            pg: env_or("GROWTH_PG", DEFAULT_PG.to_owned()),
            batch: env_or("GROWTH_BATCH", 1000),
            inflight: env_or("GROWTH_INFLIGHT", 4),
            cold_gets: env_or("GROWTH_COLD_GETS", 2000),
            hot_clients: env_or("GROWTH_HOT_CLIENTS", 32),
            put_clients: env_or("GROWTH_PUT_CLIENTS", 8),
            seed: env_or("GROWTH_SEED", 42),
            pg_analyze: env_or("GROWTH_PG_ANALYZE", "ANALYZE".to_owned()),
            server_log: env_or("GROWTH_SERVER_LOG", "info,tokio_postgres=warn".to_owned()),
            drain_timeout: Duration::from_secs(env_or("GROWTH_DRAIN_TIMEOUT", 600)),
        };
        assert!(!knobs.stores.is_empty(), "STORES is empty");
        assert!(!knobs.sizes.is_empty(), "SIZES is empty");
        for store in &knobs.stores {
            assert!(
                store == "postgres" || store == "sqlite",
                "STORES: {store:?} is neither postgres nor sqlite"
            );
        }
        for &n in &knobs.sizes {
            assert!(n > 0, "SIZES: every size must be positive");
        }
        assert!(
            (1..=1000).contains(&knobs.batch),
            "GROWTH_BATCH must be 1..=1000 (what POST /sync/factory takes)"
        );
        assert!(knobs.inflight > 0, "GROWTH_INFLIGHT must be positive");
        assert!(knobs.hot_clients > 0, "GROWTH_HOT_CLIENTS must be positive");
        assert!(knobs.put_clients > 0, "GROWTH_PUT_CLIENTS must be positive");
        knobs
    }

    fn rows(&self) -> Vec<(&'static str, String, &'static str)> {
        vec![
            ("STORES", self.stores.join(","), "sqlite,postgres"),
            (
                "SIZES",
                self.sizes
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                "10000,100000",
            ),
            ("DURATION", self.duration.as_secs_f64().to_string(), "5 (s)"),
            ("GROWTH_PG", self.pg.clone(), DEFAULT_PG),
            ("GROWTH_BATCH", self.batch.to_string(), "1000"),
            ("GROWTH_INFLIGHT", self.inflight.to_string(), "4"),
            ("GROWTH_COLD_GETS", self.cold_gets.to_string(), "2000"),
            ("GROWTH_HOT_CLIENTS", self.hot_clients.to_string(), "32"),
            ("GROWTH_PUT_CLIENTS", self.put_clients.to_string(), "8"),
            ("GROWTH_SEED", self.seed.to_string(), "42"),
            ("GROWTH_PG_ANALYZE", self.pg_analyze.clone(), "ANALYZE"),
            (
                "GROWTH_DRAIN_TIMEOUT",
                self.drain_timeout.as_secs().to_string(),
                "600 (s)",
            ),
            (
                "GROWTH_SERVER_LOG",
                self.server_log.clone(),
                "info,tokio_postgres=warn",
            ),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// The data: agent memory, about 1 KB of compact JSON per context.

/// The vocabularies, each a list of words separated by spaces.
const WORDS: &str = "the user asked about billing invoice refund deployment pipeline customer \
    prefers \
    short answers with examples and links to docs agent tried restarting service after \
    timeout error in region staging cluster needs approval from team lead before merge \
    tests failed on flaky integration suite retry passed second attempt schema migration \
    adds column index for search latency budget is under target cache hit rate dropped \
    yesterday ticket was escalated support priority high meeting moved thursday summary \
    sent by email draft reply waiting review plan has three steps next check logs open \
    question whether quota applies account upgraded pro tier last week feature flag \
    enabled";
const NAMES: &str = "jane john amara li sofia omar yuki lena raj mateo ines kofi";
const LOCALES: &str = "en-US en-GB fr-FR de-DE ja-JP pt-BR es-ES";
const ZONES: &str = "UTC Europe/Paris America/New_York Asia/Tokyo America/Sao_Paulo";
const TONES: &str = "concise friendly formal detailed";
const STATUSES: &str = "open in_progress blocked done";
const TOOLS: &str = "search_docs run_tests open_ticket query_logs send_email read_file";
const TAGS: &str = "billing urgent onboarding infra bug feature follow-up customer";
const KINDS: &str = "note plan observation fact";

/// The words of each vocabulary, split once.
struct Vocabulary {
    words: Vec<&'static str>,
    names: Vec<&'static str>,
    locales: Vec<&'static str>,
    zones: Vec<&'static str>,
    tones: Vec<&'static str>,
    statuses: Vec<&'static str>,
    tools: Vec<&'static str>,
    tags: Vec<&'static str>,
    kinds: Vec<&'static str>,
}

static VOCABULARY: LazyLock<Vocabulary> = LazyLock::new(|| {
    let split = |text: &'static str| text.split_whitespace().collect();
    Vocabulary {
        words: split(WORDS),
        names: split(NAMES),
        locales: split(LOCALES),
        zones: split(ZONES),
        tones: split(TONES),
        statuses: split(STATUSES),
        tools: split(TOOLS),
        tags: split(TAGS),
        kinds: split(KINDS),
    }
});

fn pick<'a>(rng: &mut SplitMix64, from: &[&'a str]) -> &'a str {
    from[(rng.next_u64() % from.len() as u64) as usize]
}

/// `words` words, capitalised, with a full stop.
fn sentence(rng: &mut SplitMix64, words: usize) -> String {
    let mut out = String::new();
    for i in 0..words {
        let word = pick(rng, &VOCABULARY.words);
        if i == 0 {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        } else {
            out.push(' ');
            out.push_str(word);
        }
    }
    out.push('.');
    out
}

/// The `data` of context `n` at revision `rev` (0: as loaded): deterministic, distinct per
/// `(n, rev)`.
fn context_data(seed: u64, n: usize, rev: u64) -> Value {
    let v = &*VOCABULARY;
    let mut rng = SplitMix64(
        seed ^ (n as u64).wrapping_mul(0xA24B_AED4_963E_E407)
            ^ rev.wrapping_mul(0x9FB2_1C65_1E98_DF25),
    );
    let steps: Vec<Value> = (1..=3)
        .map(|i| {
            json!({
                "n": i,
                "text": sentence(&mut rng, 8),
                "done": rng.next_u64().is_multiple_of(2),
            })
        })
        .collect();
    let facts: Vec<Value> = (0..3)
        .map(|_| Value::String(sentence(&mut rng, 9)))
        .collect();
    let tags: Vec<&str> = {
        let tags = &v.tags;
        let first = rng.next_u64() as usize % tags.len();
        let second = (first + 1 + rng.next_u64() as usize % (tags.len() - 1)) % tags.len();
        vec![tags[first], tags[second]]
    };
    json!({
        "summary": sentence(&mut rng, 14),
        "user": {
            "name": pick(&mut rng, &v.names),
            "locale": pick(&mut rng, &v.locales),
            "preferences": {
                "tone": pick(&mut rng, &v.tones),
                "verbosity": rng.next_u64() % 5,
                "timezone": pick(&mut rng, &v.zones),
            },
        },
        "task": {
            "title": sentence(&mut rng, 6),
            "status": pick(&mut rng, &v.statuses),
            "priority": 1 + rng.next_u64() % 5,
            "steps": steps,
        },
        "memory": {
            "facts": facts,
            "last_tool": pick(&mut rng, &v.tools),
            "open_question": sentence(&mut rng, 10),
        },
        "stats": {
            "turns": 1 + rng.next_u64() % 200,
            "tokens_in": rng.next_u64() % 50_000,
            "tokens_out": rng.next_u64() % 20_000,
            "confidence": (rng.next_f64() * 1000.0).round() / 1000.0,
        },
        "tags": tags,
        "seq": n,
        "rev": rev,
    })
}

fn context_metadata(n: usize) -> Value {
    let kinds = &VOCABULARY.kinds;
    json!({"agent": format!("agent-{}", n % 64), "kind": kinds[n % kinds.len()]})
}

fn context_id(n: usize) -> String {
    format!("g{n:08}")
}

// ---------------------------------------------------------------------------------------------
// Processes: RSS, SIGTERM, the CLI.

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Whether `pid` has exited (gone, or a zombie waiting for its parent).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next())
            .is_none_or(|state| state == 'Z' || state == 'X'),
        Err(_) => true,
    }
}

/// SIGTERM to `server`, and the time until it exited; `None` if it was still running after
/// [`SHUTDOWN_LIMIT`] (the drop then kills it).
fn stop(server: Server) -> Option<Duration> {
    let pid = server.pid();
    let start = Instant::now();
    // SAFETY: kill(2) with a child's pid, which is not reaped before `server` is dropped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(
        rc,
        0,
        "kill -TERM {pid}: {}",
        std::io::Error::last_os_error()
    );
    let mut took = None;
    while start.elapsed() < SHUTDOWN_LIMIT {
        if exited(pid) {
            took = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    match took {
        None => eprintln!(
            "growth: server {} did not exit within {SHUTDOWN_LIMIT:?} of SIGTERM; its last log \
             lines:\n{}",
            server.name(),
            server.log_tail()
        ),
        Some(took) if took > SLOW_SHUTDOWN => {
            let tail = server.log_tail();
            let lines: Vec<&str> = tail.lines().rev().take(12).collect();
            eprintln!(
                "growth: note: server {} took {took:.2?} to exit after SIGTERM; its last log \
                 lines:\n{}",
                server.name(),
                lines.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Some(_) => {}
    }
    drop(server);
    took
}

/// What one CLI run took.
struct CliRun {
    elapsed: Duration,
    /// The process's peak RSS (its `VmHWM`, polled every 5 ms), in bytes.
    peak_rss: u64,
}

/// Runs `contextd ARGS` with `DATABASE_URL` (and nothing of the bench's own `CONTEXTD*`
/// environment), stdout to `stdout` if given, stderr to `log`; panics unless it exits 0.
fn run_cli(args: &[&str], database_url: &str, stdout: Option<&Path>, log: &Path) -> CliRun {
    let mut command = Command::new(BIN);
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && (key.starts_with("CONTEXTD")
                || ["DATABASE_URL", "REDIS_URL", "RUST_LOG"].contains(&key))
        {
            command.env_remove(key);
        }
    }
    let log_file = File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    command
        .current_dir(std::env::temp_dir())
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info,tokio_postgres=warn")
        .stdin(Stdio::null())
        .stderr(log_file);
    match stdout {
        Some(path) => {
            let out = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            command.stdout(out);
        }
        None => {
            command.stdout(Stdio::null());
        }
    }
    let start = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    // VmHWM, polled: the kernel's high-water mark of this process's own memory since its
    // exec (wait4's ru_maxrss would count the bench's RSS, which the child had at its fork).
    let mut peak_rss = 0;
    let status = loop {
        if let Some(hwm) = proc_status_kb(child.id(), "VmHWM") {
            peak_rss = peak_rss.max(hwm);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for contextd {}: {e}", args.join(" ")),
        }
    };
    let elapsed = start.elapsed();
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        panic!(
            "contextd {} failed ({status}); its last log lines:\n{}",
            args.join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    CliRun { elapsed, peak_rss }
}

// ---------------------------------------------------------------------------------------------
// The stores, directly.

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("growth: a Postgres connection ended: {e}");
        }
    });
    client
}

/// One table with its indexes (and TOAST).
struct TableSize {
    name: String,
    bytes: u64,
    /// Of which: Postgres, its TOAST table (with its index); SQLite, overflow pages.
    spilled: u64,
}

/// What the store holds on disk.
#[derive(Default)]
struct Disk {
    /// Everything (Postgres: the tables with their indexes and TOAST; SQLite: the database
    /// file plus its -wal).
    total: u64,
    /// SQLite: the -wal file alone.
    wal: Option<u64>,
    /// Per table (with its indexes), largest first; empty if the store cannot say (no dbstat).
    tables: Vec<TableSize>,
    /// Postgres: `pg_database_size` (the catalogs too), for reference.
    database: Option<u64>,
    /// Rows of `factory_context_versions`.
    versions: u64,
    /// Rows of `factory_context_metadata`.
    contexts: u64,
}

async fn pg_disk(url: &str) -> Disk {
    let client = pg_connect(url).await;
    client
        .batch_execute("CHECKPOINT")
        .await
        .expect("CHECKPOINT");
    let rows = client
        .query(
            "SELECT c.relname::text, pg_total_relation_size(c.oid)::bigint, \
                    CASE WHEN c.reltoastrelid = 0 THEN 0 \
                         ELSE pg_total_relation_size(c.reltoastrelid) END::bigint \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'm') \
             ORDER BY 2 DESC, 1",
            &[],
        )
        .await
        .expect("table sizes");
    let tables: Vec<TableSize> = rows
        .iter()
        .map(|row| TableSize {
            name: row.get(0),
            bytes: row.get::<_, i64>(1) as u64,
            spilled: row.get::<_, i64>(2) as u64,
        })
        .collect();
    let database: i64 = client
        .query_one("SELECT pg_database_size(current_database())::bigint", &[])
        .await
        .expect("pg_database_size")
        .get(0);
    let count = |table: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap_or_else(|e| panic!("count {table}: {e}"))
                .get::<_, i64>(0) as u64
        }
    };
    Disk {
        total: tables.iter().map(|t| t.bytes).sum(),
        wal: None,
        tables,
        database: Some(database as u64),
        versions: count("factory_context_versions").await,
        contexts: count("factory_context_metadata").await,
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut os = path.as_os_str().to_owned();
    os.push(suffix);
    PathBuf::from(os)
}

/// The SQLite file and its -wal, measured before anything opens it (the last connection to
/// close checkpoints the WAL away); then, through rusqlite, the per-table figures of `dbstat`
/// (when the bundled SQLite has it) and the row counts.
fn sqlite_disk(path: &Path) -> Disk {
    let main = file_len(path);
    let wal = file_len(&with_suffix(path, "-wal"));
    let connection =
        rusqlite::Connection::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut tables = Vec::new();
    let owners: Result<BTreeMap<String, String>, rusqlite::Error> = connection
        .prepare("SELECT name, tbl_name FROM sqlite_schema")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        });
    let pages: Result<Vec<(String, i64, i64)>, rusqlite::Error> = connection
        .prepare(
            "SELECT name, SUM(pgsize), \
                    SUM(CASE WHEN pagetype = 'overflow' THEN pgsize ELSE 0 END) \
             FROM dbstat GROUP BY name",
        )
        .and_then(|mut statement| {
            statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect()
        });
    match (owners, pages) {
        (Ok(owners), Ok(pages)) => {
            let mut per_table: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for (name, bytes, overflow) in pages {
                let table = owners.get(&name).cloned().unwrap_or(name);
                let entry = per_table.entry(table).or_default();
                entry.0 += bytes as u64;
                entry.1 += overflow as u64;
            }
            tables = per_table
                .into_iter()
                .map(|(name, (bytes, spilled))| TableSize {
                    name,
                    bytes,
                    spilled,
                })
                .collect();
            tables.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
        }
        (_, Err(e)) | (Err(e), _) => {
            println!("  (no per-table sizes: dbstat is not available here: {e})");
        }
    }
    let count = |table: &str| -> u64 {
        connection
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get::<_, i64>(0)
            })
            .unwrap_or_else(|e| panic!("count {table}: {e}")) as u64
    };
    Disk {
        total: main + wal,
        wal: Some(wal),
        tables,
        database: None,
        versions: count("factory_context_versions"),
        contexts: count("factory_context_metadata"),
    }
}

fn sqlite_analyze(path: &Path) -> Duration {
    let start = Instant::now();
    let connection =
        rusqlite::Connection::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    connection.execute_batch("ANALYZE").expect("ANALYZE");
    drop(connection);
    start.elapsed()
}

async fn pg_analyze(url: &str, statement: &str) -> Duration {
    let client = pg_connect(url).await;
    let start = Instant::now();
    client
        .batch_execute(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// Load.

struct Load {
    elapsed: Duration,
    requests: usize,
    /// Mean compact bytes of an item's `data` + `metadata` as sent.
    item_bytes: f64,
}

async fn load(client: &reqwest::Client, server: &Server, knobs: &Knobs, n: usize) -> Load {
    let batches = n.div_ceil(knobs.batch);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let item_bytes = Arc::new(AtomicUsize::new(0));
    let url = server.url("/sync/factory");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..knobs.inflight.min(batches) {
        let (client, url) = (client.clone(), url.clone());
        let (next, done, item_bytes) = (next.clone(), done.clone(), item_bytes.clone());
        let (batch, seed) = (knobs.batch, knobs.seed);
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<(), String>(());
                }
                let range = b * batch..((b + 1) * batch).min(n);
                let mut bytes = 0;
                let items: Vec<Value> = range
                    .clone()
                    .map(|i| {
                        let (data, metadata) = (context_data(seed, i, 0), context_metadata(i));
                        bytes += data.to_string().len() + metadata.to_string().len();
                        json!({"id": context_id(i), "data": data, "metadata": metadata})
                    })
                    .collect();
                item_bytes.fetch_add(bytes, Ordering::Relaxed);
                let body = serde_json::to_vec(&json!({"contexts": items})).expect("JSON");
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("batch {b}: POST /sync/factory: {e}"))?;
                let status = response.status();
                let text = response
                    .text()
                    .await
                    .map_err(|e| format!("batch {b}: reading the answer: {e}"))?;
                if !status.is_success() {
                    return Err(format!(
                        "batch {b}: POST /sync/factory answered {status}: {}",
                        &text[..text.len().min(500)]
                    ));
                }
                let answer: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("batch {b}: the answer is not JSON: {e}"))?;
                let results = answer["results"].as_array().cloned().unwrap_or_default();
                if results.len() != range.len() {
                    return Err(format!(
                        "batch {b}: {} results for {} items",
                        results.len(),
                        range.len()
                    ));
                }
                if let Some(bad) = results.iter().find(|r| r["status"] != "created") {
                    return Err(format!("batch {b}: an item was not created: {bad}"));
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if batches >= 10 && finished % (batches / 10) == 0 {
                    println!(
                        "  loaded {:>3}% ({} contexts, {:.1?})",
                        finished * 100 / batches,
                        finished * batch,
                        start.elapsed()
                    );
                }
            }
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("a load task panicked: {e}")),
        }
    }
    if !failures.is_empty() {
        panic!(
            "growth: loading {n} contexts failed ({} task(s)): {}; the server's last log \
             lines:\n{}",
            failures.len(),
            failures.join("; "),
            server.log_tail()
        );
    }
    Load {
        elapsed: start.elapsed(),
        requests: batches,
        item_bytes: item_bytes.load(Ordering::Relaxed) as f64 / n as f64,
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and their tallies.

/// Latencies of the 2xx answers, and what went wrong with the rest.
#[derive(Default)]
struct Tally {
    ok_ms: Vec<f64>,
    /// Non-2xx answers by status, and transport errors (status 0).
    failures: BTreeMap<u16, u64>,
    first_failure: Option<String>,
    elapsed: Duration,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok(ms) => self.ok_ms.push(ms),
            Outcome::Failed(status, text) => {
                *self.failures.entry(status).or_default() += 1;
                self.first_failure.get_or_insert(text);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok_ms.extend(other.ok_ms);
        for (status, count) in other.failures {
            *self.failures.entry(status).or_default() += count;
        }
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    fn spread(&self) -> Option<Spread> {
        Spread::of(self.ok_ms.clone())
    }

    fn per_second(&self) -> f64 {
        self.ok_ms.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// `none`, or `N (503 x2, transport x1; first: ...)`.
    fn failures_text(&self) -> String {
        if self.failures.is_empty() {
            return "0".to_owned();
        }
        let kinds: Vec<String> = self
            .failures
            .iter()
            .map(|(status, count)| match status {
                0 => format!("transport ×{count}"),
                s => format!("{s} ×{count}"),
            })
            .collect();
        format!(
            "{} ({}; first: {})",
            self.failed(),
            kinds.join(", "),
            self.first_failure.as_deref().unwrap_or("")
        )
    }
}

enum Outcome {
    Ok(f64),
    Failed(u16, String),
}

/// Sends `request`, reads the whole answer; 2xx is `Ok(ms)`. The headers are handed to `seen`.
async fn timed(
    request: reqwest::RequestBuilder,
    seen: impl FnOnce(&reqwest::header::HeaderMap),
) -> (Outcome, Option<bytes::Bytes>) {
    let start = Instant::now();
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            seen(response.headers());
            match response.bytes().await {
                Ok(body) => {
                    let ms = start.elapsed().as_secs_f64() * 1e3;
                    if status.is_success() {
                        (Outcome::Ok(ms), Some(body))
                    } else {
                        let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
                        (
                            Outcome::Failed(status.as_u16(), format!("{status}: {text}")),
                            None,
                        )
                    }
                }
                Err(e) => (Outcome::Failed(0, format!("reading the body: {e}")), None),
            }
        }
        Err(e) => (Outcome::Failed(0, e.to_string()), None),
    }
}

/// `clients` concurrent loops for `duration`, each sending `make(client, i)` one after the
/// other.
async fn closed_loop(
    clients: usize,
    duration: Duration,
    make: Arc<dyn Fn(usize, u64) -> reqwest::RequestBuilder + Send + Sync>,
) -> Tally {
    let start = Instant::now();
    let until = start + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let make = make.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut i = 0u64;
                while Instant::now() < until {
                    let (outcome, _) = timed(make(c, i), |_| {}).await;
                    tally.record(outcome);
                    i += 1;
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.expect("a client task"));
    }
    total.elapsed = start.elapsed();
    total
}

// ---------------------------------------------------------------------------------------------
// The list pass.

struct Page {
    cursor: Option<String>,
    items: usize,
    ms: f64,
}

struct Listing {
    pages: Vec<Page>,
    elapsed: Duration,
    items: usize,
    /// Ids out of order or repeated.
    disorder: usize,
    tally: Tally,
    /// Medians of the re-timed first, middle and last (non-empty) pages, and their indexes.
    retimed: [(usize, Option<f64>); 3],
}

async fn list_all(client: &reqwest::Client, server: &Server) -> Listing {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    let mut tally = Tally::default();
    let (mut items, mut disorder) = (0, 0);
    let mut last_id: Option<String> = None;
    let start = Instant::now();
    loop {
        let mut attempts = 0;
        let (ms, body) = loop {
            let mut request = client
                .get(server.url("/contexts"))
                .query(&[("limit", PAGE_LIMIT.to_string())]);
            if let Some(cursor) = &cursor {
                request = request.query(&[("cursor", cursor)]);
            }
            let (outcome, body) = timed(request, |_| {}).await;
            match outcome {
                Outcome::Ok(ms) => {
                    tally.ok_ms.push(ms);
                    break (ms, body.expect("a 2xx has a body"));
                }
                failed => {
                    tally.record(failed);
                    attempts += 1;
                    assert!(
                        attempts < 3,
                        "growth: GET /contexts page {} failed 3 times: {}",
                        pages.len(),
                        tally.failures_text()
                    );
                }
            }
        };
        let page: Value = serde_json::from_slice(&body).expect("a page is JSON");
        let page_items = page["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for item in page_items {
            let id = item["context_id"].as_str().unwrap_or_default().to_owned();
            if last_id.as_ref().is_some_and(|last| *last >= id) {
                disorder += 1;
            }
            last_id = Some(id);
        }
        items += page_items.len();
        pages.push(Page {
            cursor: cursor.clone(),
            items: page_items.len(),
            ms,
        });
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let elapsed = start.elapsed();

    // The last page with items (a store may answer one empty page at the very end).
    let last = pages.iter().rposition(|p| p.items > 0).unwrap_or(0);
    let indexes = [0, last / 2, last];
    let mut retimed = [(0, None); 3];
    for (slot, &index) in retimed.iter_mut().zip(&indexes) {
        let mut times = Vec::new();
        for _ in 0..PAGE_RETIMES {
            let mut request = client
                .get(server.url("/contexts"))
                .query(&[("limit", PAGE_LIMIT.to_string())]);
            if let Some(cursor) = &pages[index].cursor {
                request = request.query(&[("cursor", cursor)]);
            }
            match timed(request, |_| {}).await.0 {
                Outcome::Ok(ms) => times.push(ms),
                failed => tally.record(failed),
            }
        }
        *slot = (index, Spread::of(times).map(|s| s.pct(50.0)));
    }
    Listing {
        pages,
        elapsed,
        items,
        disorder,
        tally,
        retimed,
    }
}

// ---------------------------------------------------------------------------------------------
// One store at one size.

struct Figures {
    store: String,
    n: usize,
    /// `/proc/loadavg` (1, 5 and 15 minutes) at the start and at the end.
    load_before: String,
    load_after: String,
    first_start: Duration,
    load: Load,
    drain: Drain,
    shutdown_after_load: Option<Duration>,
    analyze: Duration,
    disk_after_load: Disk,
    restart: Duration,
    rss_after_ready: Option<u64>,
    listing: Listing,
    cold: Tally,
    cold_cache: BTreeMap<String, u64>,
    hot: Tally,
    put: Tally,
    metrics: Tally,
    summary: Tally,
    /// VmRSS after each phase (from the load on; the restart resets it).
    rss: Vec<(&'static str, Option<u64>)>,
    /// VmHWM of the restarted server at the end.
    hwm_end: Option<u64>,
    shutdown_end: Option<Duration>,
    export: CliRun,
    export_bytes: u64,
    export_lines: usize,
    import: CliRun,
    imported: Disk,
    disk_end: Disk,
}

/// The vector indexer's backlog after the load, and how long it took to reach 0.
struct Drain {
    initial: Option<i64>,
    last: Option<i64>,
    elapsed: Duration,
    /// Then: until the server's CPU went idle, and the CPU it used meanwhile; `None` if it was
    /// still busy at the timeout.
    settled: Option<Duration>,
    busy_cpu: Duration,
}

/// The CPU time (user + system) `pid` has used.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After the state (field 3): utime and stime are fields 14 and 15, in clock ticks.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// `contextd_vector_backlog` of `GET /metrics`; `None` if the scrape fails or lacks it.
async fn vector_backlog(client: &reqwest::Client, server: &Server) -> Option<i64> {
    let response = client.get(server.url("/metrics")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let text = response.text().await.ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix("contextd_vector_backlog ")?;
        value.trim().parse::<f64>().ok().map(|v| v as i64)
    })
}

/// Polls the backlog every 100 ms until it is 0, then the server's CPU until it is idle
/// (under 2% of a core over each of two 500 ms windows), `timeout` in all: the background
/// work the load left (the change feed applied by its readers) is then done, so that what
/// follows measures the store and not that catching up (it would resume after the restart).
async fn drain_backlog(client: &reqwest::Client, server: &Server, timeout: Duration) -> Drain {
    let start = Instant::now();
    let initial = vector_backlog(client, server).await;
    let mut last = initial;
    while last != Some(0) && start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = vector_backlog(client, server).await;
    }
    let elapsed = start.elapsed();
    let window = Duration::from_millis(500);
    let first = cpu_time(server.pid());
    let mut previous = first;
    let mut quiet = 0;
    let mut settled = None;
    while start.elapsed() < timeout {
        tokio::time::sleep(window).await;
        let now = cpu_time(server.pid());
        match (previous, now) {
            (Some(before), Some(after)) if (after - before) < window / 50 => quiet += 1,
            _ => quiet = 0,
        }
        previous = now;
        if quiet == 2 {
            // The two quiet windows are not part of the busy time.
            settled = Some(start.elapsed().saturating_sub(2 * window));
            break;
        }
    }
    let busy_cpu = match (first, previous) {
        (Some(first), Some(last)) => last.saturating_sub(first),
        _ => Duration::ZERO,
    };
    Drain {
        initial,
        last,
        elapsed,
        settled,
        busy_cpu,
    }
}

/// Drops `client` (its pool closes every connection it holds) and lets the closes reach the
/// server.
fn close_connections(client: reqwest::Client, runtime: &tokio::runtime::Runtime) {
    drop(client);
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
}

fn start_server(name: &str, database_url: &str, knobs: &Knobs) -> (Server, Duration) {
    let start = Instant::now();
    let server = Server::start(name, Logs::AtExit, |command| {
        command
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", &knobs.server_log);
    });
    (server, start.elapsed())
}

/// What one store at one size leaves behind, removed when dropped.
struct Scratch {
    dir: TempDir,
    _databases: Vec<Database>,
}

/// The load averages of `/proc/loadavg`: what else ran on the machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn run_one(store: &str, n: usize, knobs: &Knobs, suffix: &str) -> Figures {
    let load_before = load_average();
    let dir = TempDir::new(&format!("contextd-growth-{suffix}-{store}-{n}"));
    let (databases, source_url, import_url) = match store {
        "postgres" => {
            let (source, source_url) =
                Database::new(&knobs.pg, format!("contextd_growth_{suffix}_{n}"));
            let (target, import_url) =
                Database::new(&knobs.pg, format!("contextd_growth_{suffix}_{n}_import"));
            (vec![source, target], source_url, import_url)
        }
        _ => (
            Vec::new(),
            format!("sqlite:{}", dir.path().join("contextd.db").display()),
            format!("sqlite:{}", dir.path().join("import.db").display()),
        ),
    };
    let sqlite_path = dir.path().join("contextd.db");
    // Dropped last: the servers first (they are locals of the steps below).
    let scratch = Scratch {
        dir,
        _databases: databases,
    };
    let runtime = bench_runtime();
    // One client per server, dropped before the server is stopped: a connection the pool
    // opened and never used would otherwise hold the server's exit until its header timeout
    // (see bench/README.md), which is not what a shutdown at N contexts costs.
    let client = http_client();
    let name = format!("{store}-{n}");
    let mut rss: Vec<(&'static str, Option<u64>)> = Vec::new();
    println!("== {store}, N = {n} ({source_url})");

    // 1. A fresh store, and the load.
    let (mut server, first_start) = start_server(&name, &source_url, knobs);
    runtime.block_on(server.wait_ready(&client));
    println!("  fresh server ready in {first_start:.2?}");
    let load = runtime.block_on(load(&client, &server, knobs, n));
    println!(
        "  loaded {n} contexts in {:.2?} ({:.0}/s)",
        load.elapsed,
        n as f64 / load.elapsed.as_secs_f64()
    );

    rss.push(("after load", proc_status_kb(server.pid(), "VmRSS")));
    let drain = runtime.block_on(drain_backlog(&client, &server, knobs.drain_timeout));
    println!(
        "  vector indexer backlog {} → {} in {:.2?}; server idle after {} ({:.2?} CPU)",
        drain.initial.map_or("?".to_owned(), |b| b.to_string()),
        drain.last.map_or("?".to_owned(), |b| b.to_string()),
        drain.elapsed,
        drain
            .settled
            .map_or("(still busy)".to_owned(), |d| format!("{d:.2?}")),
        drain.busy_cpu
    );

    // 2. Stop, ANALYZE, measure, start again.
    close_connections(client, &runtime);
    let shutdown_after_load = stop(server);
    let (analyze, disk_after_load) = match store {
        "postgres" => runtime.block_on(async {
            let analyze = pg_analyze(&source_url, &knobs.pg_analyze).await;
            (analyze, pg_disk(&source_url).await)
        }),
        _ => {
            // The files first: opening the database and closing it checkpoints the WAL.
            let mut disk = sqlite_disk(&sqlite_path);
            let analyze = sqlite_analyze(&sqlite_path);
            // ANALYZE adds sqlite_stat1; the sizes were taken before, as loaded.
            disk.tables.retain(|t| !t.name.starts_with("sqlite_stat"));
            (analyze, disk)
        }
    };
    println!(
        "  stopped in {}, {} in {analyze:.2?}; {} on disk",
        opt_duration(shutdown_after_load),
        if store == "postgres" {
            knobs.pg_analyze.as_str()
        } else {
            "ANALYZE"
        },
        mb(disk_after_load.total)
    );
    let (mut server, restart) = start_server(&name, &source_url, knobs);
    let rss_after_ready = proc_status_kb(server.pid(), "VmRSS");
    rss.push(("ready", rss_after_ready));
    let client = http_client();
    runtime.block_on(server.wait_ready(&client));
    println!(
        "  restarted in {restart:.2?}, RSS {}",
        opt_mb(rss_after_ready)
    );

    // 3. The list.
    let listing = runtime.block_on(list_all(&client, &server));
    rss.push(("list", proc_status_kb(server.pid(), "VmRSS")));
    println!(
        "  listed {} contexts in {} pages, {:.2?}",
        listing.items,
        listing.pages.len(),
        listing.elapsed
    );

    // 4. GETs and PUTs.
    let (cold, cold_cache) = runtime.block_on(cold_gets(&client, &server, knobs, n));
    rss.push(("cold GET", proc_status_kb(server.pid(), "VmRSS")));
    let hot_id = context_id(n / 2);
    let hot = runtime.block_on(async {
        let url = server.url(&format!("/contexts/{hot_id}"));
        let _ = client.get(&url).send().await;
        let client = client.clone();
        closed_loop(
            knobs.hot_clients,
            knobs.duration,
            Arc::new(move |_, _| client.get(&url)),
        )
        .await
    });
    rss.push(("hot GET", proc_status_kb(server.pid(), "VmRSS")));
    let put = runtime.block_on(async {
        let client = client.clone();
        let base = server.base().to_owned();
        let seed = knobs.seed;
        let clients = knobs.put_clients as u64;
        closed_loop(
            knobs.put_clients,
            knobs.duration,
            Arc::new(move |c, i| {
                let mut rng = SplitMix64(seed ^ 0x5075_7473 ^ ((c as u64) << 32) ^ i);
                let target = (rng.next_u64() % n as u64) as usize;
                // A revision of its own per request: the data always differs.
                let rev = 1 + i * clients + c as u64;
                client
                    .put(format!("{base}/contexts/{}", context_id(target)))
                    .json(&json!({
                        "data": context_data(seed, target, rev),
                        "metadata": context_metadata(target),
                        "source": "factory",
                        "changed_by": "growth-bench",
                    }))
            }),
        )
        .await
    });
    rss.push(("PUT", proc_status_kb(server.pid(), "VmRSS")));
    println!(
        "  cold GET p50 {}, hot GET {:.0}/s, PUT {:.0}/s",
        opt_ms(cold.spread().map(|s| s.pct(50.0))),
        hot.per_second(),
        put.per_second()
    );

    // 5. The metrics.
    let (metrics, summary) = runtime.block_on(async {
        let mut out = Vec::new();
        for path in ["/metrics", "/metrics/summary"] {
            let mut tally = Tally::default();
            let start = Instant::now();
            for _ in 0..METRICS_CALLS {
                tally.record(timed(client.get(server.url(path)), |_| {}).await.0);
            }
            tally.elapsed = start.elapsed();
            out.push(tally);
        }
        let summary = out.pop().expect("two");
        (out.pop().expect("two"), summary)
    });
    rss.push(("metrics", proc_status_kb(server.pid(), "VmRSS")));
    // Idle a moment: memory still growing now is work the requests left behind.
    std::thread::sleep(IDLE_SAMPLE);
    rss.push(("idle 2 s", proc_status_kb(server.pid(), "VmRSS")));
    let hwm_end = proc_status_kb(server.pid(), "VmHWM");
    close_connections(client, &runtime);
    let shutdown_end = stop(server);

    // 6. Export and import.
    let export_path = scratch.dir.path().join("export.jsonl");
    let export = run_cli(
        &["export"],
        &source_url,
        Some(&export_path),
        &scratch.dir.path().join("export.log"),
    );
    let export_bytes = file_len(&export_path);
    let export_lines = BufReader::new(File::open(&export_path).expect("the export"))
        .lines()
        .count();
    println!(
        "  exported {export_lines} lines ({}) in {:.2?}",
        mb(export_bytes),
        export.elapsed
    );
    let import = run_cli(
        &["import", export_path.to_str().expect("a UTF-8 path")],
        &import_url,
        None,
        &scratch.dir.path().join("import.log"),
    );
    let imported = match store {
        "postgres" => runtime.block_on(pg_disk(&import_url)),
        _ => sqlite_disk(&scratch.dir.path().join("import.db")),
    };
    println!(
        "  imported {} contexts ({} versions) in {:.2?}",
        imported.contexts, imported.versions, import.elapsed
    );

    // 7. The disk again, with the PUTs' versions.
    let disk_end = match store {
        "postgres" => runtime.block_on(pg_disk(&source_url)),
        _ => sqlite_disk(&sqlite_path),
    };
    drop(runtime);
    drop(scratch);

    Figures {
        store: store.to_owned(),
        n,
        load_before,
        load_after: load_average(),
        first_start,
        load,
        drain,
        shutdown_after_load,
        analyze,
        disk_after_load,
        restart,
        rss_after_ready,
        listing,
        cold,
        cold_cache,
        hot,
        put,
        metrics,
        summary,
        rss,
        hwm_end,
        shutdown_end,
        export,
        export_bytes,
        export_lines,
        import,
        imported,
        disk_end,
    }
}

/// `GROWTH_COLD_GETS` distinct random ids, one request at a time, and the `Cache-Status` of
/// each answer.
async fn cold_gets(
    client: &reqwest::Client,
    server: &Server,
    knobs: &Knobs,
    n: usize,
) -> (Tally, BTreeMap<String, u64>) {
    let want = knobs.cold_gets.min(n);
    let mut rng = SplitMix64(knobs.seed ^ 0xC01D);
    let mut ids = Vec::with_capacity(want);
    let mut seen = HashSet::with_capacity(want);
    while ids.len() < want {
        let i = (rng.next_u64() % n as u64) as usize;
        if seen.insert(i) {
            ids.push(i);
        }
    }
    let mut cache = BTreeMap::<String, u64>::new();
    let mut tally = Tally::default();
    let start = Instant::now();
    for i in ids {
        let request = client.get(server.url(&format!("/contexts/{}", context_id(i))));
        let (outcome, _) = timed(request, |headers| {
            let status = headers
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)")
                .to_owned();
            *cache.entry(status).or_default() += 1;
        })
        .await;
        tally.record(outcome);
    }
    tally.elapsed = start.elapsed();
    (tally, cache)
}

// ---------------------------------------------------------------------------------------------
// The summary.

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn opt_mb(bytes: Option<u64>) -> String {
    bytes.map_or("?".to_owned(), mb)
}

fn opt_ms(ms: Option<f64>) -> String {
    ms.map_or("—".to_owned(), |ms| format!("{ms:.2} ms"))
}

fn opt_duration(d: Option<Duration>) -> String {
    d.map_or(format!("> {} s (killed)", SHUTDOWN_LIMIT.as_secs()), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    })
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**MISSED**" }
}

fn per_context(bytes: u64, n: usize) -> String {
    format!("{:.0} B", bytes as f64 / n as f64)
}

fn p50_p99(tally: &Tally) -> String {
    match tally.spread() {
        Some(s) => format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            s.pct(50.0),
            s.pct(99.0),
            s.max()
        ),
        None => "no 2xx answers".to_owned(),
    }
}

/// The markdown of one store at one size.
fn render(f: &Figures, knobs: &Knobs) -> String {
    let n = f.n;
    let mut rows: Vec<[String; 3]> = Vec::new();
    let mut row = |what: &str, value: String, goal: String| {
        rows.push([what.to_owned(), value, goal]);
    };

    row(
        "first start (fresh store, migrations)",
        format!("{:.0} ms", f.first_start.as_secs_f64() * 1e3),
        String::new(),
    );
    row(
        "load via POST /sync/factory",
        format!(
            "{:.0} contexts/s ({:.1} s; {} requests of {}, {} in flight; ~{:.0} B data+metadata each)",
            n as f64 / f.load.elapsed.as_secs_f64(),
            f.load.elapsed.as_secs_f64(),
            f.load.requests,
            knobs.batch,
            knobs.inflight,
            f.load.item_bytes
        ),
        String::new(),
    );
    let drain = &f.drain;
    let drained = drain.last == Some(0);
    row(
        "vector indexer backlog after load (`contextd_vector_backlog`)",
        format!(
            "{} changes at the end of the load; {} after {:.1} s{}",
            drain
                .initial
                .map_or("?".to_owned(), |b| thousands(b.max(0) as u64)),
            drain
                .last
                .map_or("?".to_owned(), |b| thousands(b.max(0) as u64)),
            drain.elapsed.as_secs_f64(),
            match (drain.initial, drained) {
                (Some(initial), true) if initial > 0 => format!(
                    " (≈ {:.0} changes/s)",
                    initial as f64 / drain.elapsed.as_secs_f64()
                ),
                (_, false) => format!(
                    " (**not drained** within GROWTH_DRAIN_TIMEOUT = {} s)",
                    knobs.drain_timeout.as_secs()
                ),
                _ => String::new(),
            }
        ),
        String::new(),
    );
    row(
        "background work after load (until the server's CPU is idle)",
        match drain.settled {
            Some(settled) => format!(
                "{:.1} s, {:.1} s of CPU",
                settled.as_secs_f64(),
                drain.busy_cpu.as_secs_f64()
            ),
            None => format!(
                "**still busy** after GROWTH_DRAIN_TIMEOUT = {} s ({:.1} s of CPU)",
                knobs.drain_timeout.as_secs(),
                drain.busy_cpu.as_secs_f64()
            ),
        },
        String::new(),
    );
    row(
        "shutdown after load (SIGTERM → exit)",
        opt_duration(f.shutdown_after_load),
        String::new(),
    );
    row(
        if f.store == "postgres" {
            "ANALYZE (server stopped)"
        } else {
            "ANALYZE via rusqlite (server stopped)"
        },
        format!("{:.0} ms", f.analyze.as_secs_f64() * 1e3),
        String::new(),
    );
    row(
        "restart (spawn → ready)",
        format!("{:.0} ms", f.restart.as_secs_f64() * 1e3),
        String::new(),
    );
    row(
        "RSS right after ready",
        opt_mb(f.rss_after_ready),
        String::new(),
    );

    // The list.
    let l = &f.listing;
    let page_ms: Vec<f64> = l.pages.iter().map(|p| p.ms).collect();
    let (max_index, max_ms) = page_ms
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0));
    let first_pass = page_ms.first().copied().unwrap_or(0.0);
    let spread = Spread::of(page_ms.clone());
    row(
        "list: whole pass",
        format!(
            "{} contexts in {} pages, {:.2} s{}",
            thousands(l.items as u64),
            l.pages.len(),
            l.elapsed.as_secs_f64(),
            if l.items == n && l.disorder == 0 {
                String::new()
            } else {
                format!(
                    " (**expected {n} in id order: {} out of order**)",
                    l.disorder
                )
            }
        ),
        format!("{} contexts", thousands(n as u64)),
    );
    row(
        "list: page latency over the pass",
        format!(
            "first {first_pass:.2} ms, p50 {}, p99 {}, max {max_ms:.2} ms (page {max_index})",
            spread
                .as_ref()
                .map_or("—".to_owned(), |s| format!("{:.2} ms", s.pct(50.0))),
            spread
                .as_ref()
                .map_or("—".to_owned(), |s| format!("{:.2} ms", s.pct(99.0))),
        ),
        format!(
            "max/first {:.2}x ≤ {GOAL_PAGE_RATIO}x: {}",
            max_ms / first_pass,
            verdict(max_ms <= GOAL_PAGE_RATIO * first_pass)
        ),
    );
    let [(_, first), (mid_index, mid), (last_index, last)] = l.retimed;
    row(
        &format!("list: re-timed pages (median of {PAGE_RETIMES})"),
        format!(
            "first {}, middle (page {mid_index}) {}, last (page {last_index}) {}",
            opt_ms(first),
            opt_ms(mid),
            opt_ms(last)
        ),
        match (first, last, mid) {
            (Some(first), Some(last), Some(mid)) => format!(
                "last/first {:.2}x, middle/first {:.2}x ≤ {GOAL_PAGE_RATIO}x: {}",
                last / first,
                mid / first,
                verdict(last <= GOAL_PAGE_RATIO * first && mid <= GOAL_PAGE_RATIO * first)
            ),
            _ => "—".to_owned(),
        },
    );
    row("list: failures", l.tally.failures_text(), "0".to_owned());

    // GET and PUT.
    let cache: Vec<String> = f
        .cold_cache
        .iter()
        .map(|(status, count)| format!("`{status}` ×{count}"))
        .collect();
    row(
        &format!(
            "cold GET ({} distinct ids, 1 at a time)",
            f.cold.ok_ms.len() as u64 + f.cold.failed()
        ),
        format!("{}; Cache-Status: {}", p50_p99(&f.cold), cache.join(", ")),
        String::new(),
    );
    row("cold GET failures", f.cold.failures_text(), "0".to_owned());
    row(
        &format!(
            "hot GET (one id, {} concurrent, {:.0} s)",
            knobs.hot_clients,
            f.hot.elapsed.as_secs_f64()
        ),
        format!("{:.0} req/s; {}", f.hot.per_second(), p50_p99(&f.hot)),
        String::new(),
    );
    row("hot GET failures", f.hot.failures_text(), "0".to_owned());
    row(
        &format!(
            "PUT new version ({} clients, {:.0} s)",
            knobs.put_clients,
            f.put.elapsed.as_secs_f64()
        ),
        format!(
            "{:.0} req/s ({} writes); {}",
            f.put.per_second(),
            f.put.ok_ms.len(),
            p50_p99(&f.put)
        ),
        String::new(),
    );
    row("PUT failures", f.put.failures_text(), "0".to_owned());

    // The metrics.
    for (path, tally) in [("/metrics", &f.metrics), ("/metrics/summary", &f.summary)] {
        let p50 = tally.spread().map(|s| s.pct(50.0));
        row(
            &format!("GET {path} ({METRICS_CALLS} calls)"),
            format!(
                "{}{}",
                p50_p99(tally),
                if tally.failed() > 0 {
                    format!("; failures {}", tally.failures_text())
                } else {
                    String::new()
                }
            ),
            format!(
                "p50 < {GOAL_METRICS_MS} ms: {}",
                verdict(p50.is_some_and(|p| p < GOAL_METRICS_MS) && tally.failed() == 0)
            ),
        );
    }
    row(
        "server VmRSS after each phase (a restart after load)",
        format!(
            "{}; VmHWM at the end {}",
            f.rss
                .iter()
                .map(|(phase, bytes)| format!("{phase} {}", opt_mb(*bytes)))
                .collect::<Vec<_>>()
                .join(", "),
            opt_mb(f.hwm_end)
        ),
        String::new(),
    );
    row(
        "shutdown after the workload (SIGTERM → exit)",
        opt_duration(f.shutdown_end),
        String::new(),
    );

    // Export and import.
    let exported = n as f64 / f.export.elapsed.as_secs_f64();
    row(
        "export (`contextd export`, server stopped)",
        format!(
            "{:.0} contexts/s ({:.2} s, {} lines, {}, peak RSS {})",
            exported,
            f.export.elapsed.as_secs_f64(),
            thousands(f.export_lines as u64),
            mb(f.export_bytes),
            mb(f.export.peak_rss)
        ),
        format!(
            "≥ {} contexts/s: {}{}",
            thousands(GOAL_EXPORT_PER_S as u64),
            verdict(exported >= GOAL_EXPORT_PER_S),
            if f.export_lines == n {
                String::new()
            } else {
                format!(" (**{} lines for {n} contexts**)", f.export_lines)
            }
        ),
    );
    let complete =
        f.imported.contexts == f.disk_end.contexts && f.imported.versions == f.disk_end.versions;
    row(
        "import into a fresh store (`contextd import FILE`)",
        format!(
            "{:.0} contexts/s ({:.2} s, peak RSS {}); {} contexts, {} versions stored",
            n as f64 / f.import.elapsed.as_secs_f64(),
            f.import.elapsed.as_secs_f64(),
            mb(f.import.peak_rss),
            thousands(f.imported.contexts),
            thousands(f.imported.versions)
        ),
        format!(
            "the source's {} contexts, {} versions: {}",
            thousands(f.disk_end.contexts),
            thousands(f.disk_end.versions),
            if complete { "yes" } else { "**NO**" }
        ),
    );

    // The disk.
    let disk_row = |row: &mut dyn FnMut(&str, String, String), when: &str, disk: &Disk| {
        row(
            &format!("bytes on disk per context, {when}"),
            format!(
                "{} ({} in all{}{}; {} contexts, {} versions)",
                per_context(disk.total, n),
                mb(disk.total),
                disk.wal
                    .map_or(String::new(), |wal| format!(", -wal {}", mb(wal))),
                disk.database
                    .map_or(String::new(), |db| format!("; pg_database_size {}", mb(db))),
                thousands(disk.contexts),
                thousands(disk.versions)
            ),
            String::new(),
        );
        if !disk.tables.is_empty() {
            // Tables under 1% of the whole are lumped together.
            let (big, small): (Vec<&TableSize>, Vec<&TableSize>) = disk
                .tables
                .iter()
                .partition(|t| t.bytes * 100 >= disk.total);
            let spilled = if f.store == "postgres" {
                "TOAST"
            } else {
                "overflow pages"
            };
            let mut tables: Vec<String> = big
                .iter()
                .map(|t| {
                    format!(
                        "{} {}{}",
                        t.name,
                        per_context(t.bytes, n),
                        if t.spilled * 20 >= t.bytes {
                            format!(" (of which {spilled} {})", per_context(t.spilled, n))
                        } else {
                            String::new()
                        }
                    )
                })
                .collect();
            if !small.is_empty() {
                tables.push(format!(
                    "others ({}) {}",
                    small.len(),
                    per_context(small.iter().map(|t| t.bytes).sum(), n)
                ));
            }
            row(
                &format!("… per table (with indexes) per context, {when}"),
                tables.join(", "),
                String::new(),
            );
        }
    };
    disk_row(&mut row, "after load", &f.disk_after_load);
    disk_row(
        &mut row,
        "at the end (with the PUTs' versions)",
        &f.disk_end,
    );

    let mut out = format!(
        "### growth: {}, N = {}\n\nload average (1, 5, 15 min) {} at the start, {} at the end \
         (the machine has {} CPUs)\n\n| measure | value | goal |\n|---|---|---|\n",
        f.store,
        thousands(n as u64),
        f.load_before,
        f.load_after,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for [what, value, goal] in rows {
        out.push_str(&format!("| {what} | {value} | {goal} |\n"));
    }
    out
}

/// The commit the binary was built from, and how many tracked files differed from it.
fn git_state() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match (
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["status", "--porcelain", "--untracked-files=no"]),
    ) {
        (Some(head), Some(status)) => {
            let changed = status.lines().count();
            if changed == 0 {
                format!("commit {}", head.trim())
            } else {
                format!(
                    "commit {} with {changed} tracked file(s) changed (the binary was built \
                     from the working tree)",
                    head.trim()
                )
            }
        }
        _ => "commit unknown (no git)".to_owned(),
    }
}

fn write_pages_csv(path: &Path, listing: &Listing) {
    let mut text = String::from("page,items,ms\n");
    for (i, page) in listing.pages.iter().enumerate() {
        text.push_str(&format!("{i},{},{:.3}\n", page.items, page.ms));
    }
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("growth: cannot write {}: {e}", path.display());
    }
}

fn main() {
    if !common::run_as_bench("growth") {
        return;
    }
    let knobs = Knobs::from_env();
    println!("growth: {BIN}");
    let rows = knobs.rows();
    print_knobs(&rows);

    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/growth");
    std::fs::create_dir_all(&out_dir).expect("target/growth");
    let report_path = out_dir.join(format!("{stamp}.md"));
    let mut report =
        File::create(&report_path).unwrap_or_else(|e| panic!("{}: {e}", report_path.display()));
    let git = git_state();
    println!("growth: {git}");
    let mut header = format!(
        "# growth {stamp}\n\n`{BIN}`, {git}\n\n| knob (env) | value | default |\n|---|---|---|\n"
    );
    for (name, value, default) in &rows {
        header.push_str(&format!("| `{name}` | `{value}` | `{default}` |\n"));
    }
    header.push('\n');
    report.write_all(header.as_bytes()).expect("the report");

    let suffix = unique_suffix();
    let bench_start = Instant::now();
    let mut summaries = Vec::new();
    for store in &knobs.stores {
        for &n in &knobs.sizes {
            let figures = run_one(store, n, &knobs, &suffix);
            write_pages_csv(
                &out_dir.join(format!("{stamp}-{store}-{n}-pages.csv")),
                &figures.listing,
            );
            let text = render(&figures, &knobs);
            println!("\n{text}");
            report
                .write_all(format!("{text}\n").as_bytes())
                .expect("the report");
            summaries.push(text);
        }
    }
    println!("\n# Summary ({:.1?} in all)\n", bench_start.elapsed());
    for text in &summaries {
        println!("{text}");
    }
    println!("written to {}", report_path.display());
}
