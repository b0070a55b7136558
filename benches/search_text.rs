//! Text search at size, through the real release binary: what `POST /contexts/search` with a
//! text `query` costs in each mode on a store of N contexts, with the `local` embedder
//! (all-MiniLM-L6-v2, 384 dimensions) embedding the query in the server.
//!
//! `cargo bench --bench search_text` (N = 100,000 on SQLite: 10 to 20 minutes on 2 cores,
//! most of it the HNSW graph being linked after the restart). For each store of `STORES` it
//! makes a fresh store (a new SQLite file, or a new Postgres database, removed at the end)
//! and starts `contextd serve` on it (no Redis; `vector.dimensions` 384), and:
//!
//! 1. on the empty store, starts the server with `embedder.backend` `none`, then `local`: the
//!    baseline RSS, the model's load time alone (spawn → `/readyz` `checks.embedder == "ok"`)
//!    and its memory;
//! 2. loads `SEARCH_N` contexts of agent-memory text (40-80 words each from a seeded Zipf
//!    vocabulary of `SEARCH_VOCABULARY` words, plus one rare word per context and in half of
//!    them a ticket number) with an `embedding` each through `POST /sync/factory`,
//!    `SEARCH_BATCH` items per request, `SEARCH_INFLIGHT` in flight. The embeddings are random
//!    unit vectors (seeded), in `SEARCH_CLUSTERS` gaussian clusters of per-coordinate
//!    deviation `SEARCH_SPREAD` (0 clusters: uniform on the sphere): the model embeds queries
//!    only, as embedding N texts on 2 cores would take hours;
//! 3. restarts the server on that store with embedder `none`: spawn → `checks.vector == "ok"`
//!    (the vector and keyword indexes loaded from the store) and the RSS then; with
//!    `SEARCH_SETTLE_NONE=1` it also waits for its CPU to go idle (see 4);
//! 4. restarts it with embedder `local`: the same, and the model (→ `checks.embedder == "ok"`,
//!    polled from the server's `ready` line on); then `SEARCH_DURING_BUILD` hybrid queries at
//!    once, while the embedded index links its vectors into the HNSW graph in the background;
//!    then it waits for the server's CPU to go idle (the graph linked): the time, the CPU, and
//!    the RSS then, from which the indexes' and the model's memory are taken by difference;
//! 5. on that server, `SEARCH_QUERIES` queries of 2-6 words (`limit` 10), one at a time, in
//!    each of: `keyword`; `vector` with only `query` (the server embeds); `vector` with the
//!    same query's embedding given (made by the bench with the same model before any server
//!    starts); `hybrid` with only `query`; `hybrid` with `query` and the embedding; then
//!    `hybrid` with only `query` from `SEARCH_CLIENTS` concurrent clients
//!    (`SEARCH_CONCURRENT_QUERIES` in all): throughput and latency;
//! 6. with `SEARCH_KEYWORD_STORE=1`, loads the same texts without embeddings into a second
//!    fresh store and restarts on it: the keyword index's memory alone.
//!
//! Latencies are client-side (request sent to body read, on loopback); the server's own
//! mean (its `contextd_http_request_duration_seconds`, to the response head), its mean
//! embedding time (`contextd_embedding_duration_seconds`) and who used the CPUs (the server,
//! the bench, every other process) are given beside them. It prints one table per store,
//! `| measure | value | goal |`, and writes the same (with the knobs and the commit) to
//! `target/search-text/<timestamp>.md`. Every non-2xx answer is counted and reported; a
//! failed load is a panic with the server's last log lines.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use contextd::embed::local::LocalEmbedder;
use serde_json::{Value, json};

mod common;

use common::{
    BIN, Database, Logs, Server, SplitMix64, Spread, TempDir, bench_runtime, env_or, http_client,
    print_knobs, store_list, unique_suffix,
};

/// The goal of the issue: a hybrid text query's p99 at 100,000 contexts on 2 cores.
const GOAL_HYBRID_P99_MS: f64 = 30.0;
/// all-MiniLM-L6-v2's vectors.
const DIMENSIONS: usize = 384;
/// Results asked of every search.
const LIMIT: usize = 10;
/// Queries sent before each timed run, not counted (the first searches warm the caches).
const WARMUP: usize = 10;
/// How often `/readyz` is polled while a server starts.
const POLL: Duration = Duration::from_millis(20);
/// How long a SIGTERMed server may take before it is killed.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);
/// The default Postgres (its database is replaced by the bench's own).
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

// ---------------------------------------------------------------------------------------------
// Knobs.

struct Knobs {
    n: usize,
    stores: Vec<String>,
    queries: usize,
    clients: usize,
    concurrent_queries: usize,
    batch: usize,
    inflight: usize,
    seed: u64,
    vocabulary: usize,
    keyword_store: bool,
    model_dir: PathBuf,
    pg_url: String,
    ready_timeout: Duration,
    settle_timeout: Duration,
    settle_none: bool,
    during_build: usize,
    clusters: usize,
    spread: f64,
    server_log: String,
}

fn default_model_dir() -> PathBuf {
    std::env::var_os("CONTEXTD_TEST_MODEL_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/models/all-MiniLM-L6-v2"),
        PathBuf::from,
    )
}

impl Knobs {
    fn from_env() -> Self {
        let n: String = env_or("SEARCH_N", "100000".to_owned());
        let stores: String = env_or("STORES", "sqlite".to_owned());
        let queries = env_or("SEARCH_QUERIES", 300);
        let knobs = Self {
            n: n.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("SEARCH_N={n:?} is not a number")),
            stores: store_list(&stores),
            queries,
            clients: env_or("SEARCH_CLIENTS", 4),
            concurrent_queries: env_or("SEARCH_CONCURRENT_QUERIES", 2 * queries),
            batch: env_or("SEARCH_BATCH", 500),
            inflight: env_or("SEARCH_INFLIGHT", 4),
            seed: env_or("SEARCH_SEED", 42),
            vocabulary: env_or("SEARCH_VOCABULARY", 4000),
            keyword_store: env_or::<u8>("SEARCH_KEYWORD_STORE", 1) != 0,
            model_dir: env_or("SEARCH_MODEL_DIR", default_model_dir()),
            pg_url: env_or("CONTEXTD_TEST_DATABASE_URL", DEFAULT_PG_URL.to_owned()),
            ready_timeout: Duration::from_secs(env_or("SEARCH_READY_TIMEOUT", 900)),
            settle_timeout: Duration::from_secs(env_or("SEARCH_SETTLE_TIMEOUT", 900)),
            settle_none: env_or::<u8>("SEARCH_SETTLE_NONE", 0) != 0,
            during_build: env_or("SEARCH_DURING_BUILD", 100),
            clusters: env_or("SEARCH_CLUSTERS", 256),
            spread: env_or("SEARCH_SPREAD", 0.05),
            server_log: env_or("SEARCH_SERVER_LOG", "info,tokio_postgres=warn".to_owned()),
        };
        assert!(knobs.n > 0, "SEARCH_N must be positive");
        assert!(!knobs.stores.is_empty(), "STORES is empty");
        for store in &knobs.stores {
            assert!(
                store == "postgres" || store == "sqlite",
                "STORES: {store:?} is neither postgres nor sqlite"
            );
        }
        assert!(knobs.queries > 0, "SEARCH_QUERIES must be positive");
        assert!(knobs.clients > 0, "SEARCH_CLIENTS must be positive");
        assert!(
            knobs.concurrent_queries > 0,
            "SEARCH_CONCURRENT_QUERIES must be positive"
        );
        assert!(
            (1..=1000).contains(&knobs.batch),
            "SEARCH_BATCH must be 1..=1000 (what POST /sync/factory takes)"
        );
        assert!(knobs.inflight > 0, "SEARCH_INFLIGHT must be positive");
        assert!(
            knobs.vocabulary >= COMMON.split_whitespace().count(),
            "SEARCH_VOCABULARY must be at least the {} common words",
            COMMON.split_whitespace().count()
        );
        assert!(
            knobs.model_dir.join("model.safetensors").is_file(),
            "no model at {}: run scripts/fetch-model.sh (or set SEARCH_MODEL_DIR)",
            knobs.model_dir.display()
        );
        knobs
    }

    fn rows(&self) -> Vec<(&'static str, String, &'static str)> {
        vec![
            ("SEARCH_N", self.n.to_string(), "100000"),
            ("STORES", self.stores.join(","), "sqlite"),
            ("SEARCH_QUERIES", self.queries.to_string(), "300"),
            ("SEARCH_CLIENTS", self.clients.to_string(), "4"),
            (
                "SEARCH_CONCURRENT_QUERIES",
                self.concurrent_queries.to_string(),
                "2 x SEARCH_QUERIES",
            ),
            ("SEARCH_BATCH", self.batch.to_string(), "500"),
            ("SEARCH_INFLIGHT", self.inflight.to_string(), "4"),
            ("SEARCH_SEED", self.seed.to_string(), "42"),
            ("SEARCH_VOCABULARY", self.vocabulary.to_string(), "4000"),
            (
                "SEARCH_KEYWORD_STORE",
                u8::from(self.keyword_store).to_string(),
                "1",
            ),
            (
                "SEARCH_MODEL_DIR",
                self.model_dir.display().to_string(),
                "target/models/all-MiniLM-L6-v2",
            ),
            (
                "CONTEXTD_TEST_DATABASE_URL",
                self.pg_url.clone(),
                DEFAULT_PG_URL,
            ),
            (
                "SEARCH_READY_TIMEOUT",
                self.ready_timeout.as_secs().to_string(),
                "900 (s)",
            ),
            (
                "SEARCH_SETTLE_TIMEOUT",
                self.settle_timeout.as_secs().to_string(),
                "900 (s)",
            ),
            (
                "SEARCH_SETTLE_NONE",
                u8::from(self.settle_none).to_string(),
                "0",
            ),
            ("SEARCH_DURING_BUILD", self.during_build.to_string(), "100"),
            ("SEARCH_CLUSTERS", self.clusters.to_string(), "256"),
            ("SEARCH_SPREAD", self.spread.to_string(), "0.05"),
            (
                "SEARCH_SERVER_LOG",
                self.server_log.clone(),
                "info,tokio_postgres=warn",
            ),
        ]
    }

    /// The Postgres server of `CONTEXTD_TEST_DATABASE_URL`: the URL without its database
    /// name (and query), as [`Database::new`] takes it.
    fn pg_server(&self) -> String {
        let url = self.pg_url.split('?').next().unwrap_or_default();
        match url.find("://") {
            Some(scheme) => match url[scheme + 3..].find('/') {
                Some(slash) => url[..scheme + 3 + slash].to_owned(),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The data: agent-memory text over a Zipf vocabulary.

/// The most frequent words, most frequent first: English function words and the words of
/// agents' notes. The rest of the vocabulary is made of syllables (see [`Corpus::new`]).
const COMMON: &str = "the to and a of in is for on that it with was user as be this at by \
    not from or agent are have but they has an can we if will all should needs after when \
    then so about before which their there more one new also task any other into only its \
    been would than could first last next over same each some them up out no yes asked said \
    wants prefers told reported noticed confirmed tried failed passed fixed opened closed \
    moved merged deployed restarted retried escalated approved rejected reviewed updated \
    created deleted checked sent replied waiting blocked done running pending scheduled \
    service cluster region staging production database query index cache latency timeout \
    error warning alert incident ticket support customer account billing invoice refund \
    payment subscription plan tier upgrade quota limit usage report dashboard metric log \
    logs trace pipeline build release version branch commit review test tests suite flaky \
    integration migration schema column table row backup restore snapshot replica failover \
    disk memory cpu network request response endpoint api key token secret password login \
    session email message meeting call thursday monday friday week yesterday today tomorrow \
    morning afternoon deadline priority high low medium urgent team lead manager engineer \
    owner contact summary note draft reply question answer plan step steps goal issue bug \
    feature flag config setting option default value change changes document docs link \
    example examples short long detailed concise friendly formal tone language english \
    french german japanese spanish timezone locale preference preferences remember context \
    history memory fact facts tool tools search file files folder project repository repo \
    server client browser mobile app web desktop notification webhook sync queue worker job \
    jobs batch import export upload download storage bucket region zone host node pod \
    container image kubernetes docker terraform aws gcp azure postgres redis kafka";

const NAMES: &str = "jane john amara li sofia omar yuki lena raj mateo ines kofi";
const TAGS: &str = "billing urgent onboarding infra bug feature follow-up customer";
const KINDS: &str = "note plan observation fact";

const ONSETS: &[&str] = &[
    "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br",
    "ch", "cl", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "sp", "st", "th", "tr",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ea", "ai", "io", "ou"];
const CODAS: &[&str] = &["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "x", "ck"];

fn pick<'a>(rng: &mut SplitMix64, from: &[&'a str]) -> &'a str {
    from[(rng.next_u64() % from.len() as u64) as usize]
}

/// A made-up word of `syllables` syllables (`brenvo`, `stiacklo`...).
fn pseudo_word(rng: &mut SplitMix64, syllables: usize) -> String {
    let mut word = String::new();
    for _ in 0..syllables {
        word.push_str(pick(rng, ONSETS));
        word.push_str(pick(rng, VOWELS));
        word.push_str(pick(rng, CODAS));
    }
    word
}

/// The vocabulary and its Zipf distribution (s = 1).
struct Corpus {
    seed: u64,
    words: Vec<String>,
    cumulative: Vec<f64>,
    total: f64,
    names: Vec<&'static str>,
    tags: Vec<&'static str>,
    kinds: Vec<&'static str>,
}

impl Corpus {
    /// The common words, then made-up two- and three-syllable words until there are `size`.
    fn new(seed: u64, size: usize) -> Self {
        let mut seen = HashSet::new();
        let mut words: Vec<String> = COMMON
            .split_whitespace()
            .filter(|w| seen.insert(w.to_string()))
            .map(str::to_owned)
            .collect();
        let mut rng = SplitMix64(seed ^ 0x766F_6361_6275_6C61);
        while words.len() < size {
            let syllables = 2 + (rng.next_u64() % 2) as usize;
            let word = pseudo_word(&mut rng, syllables);
            if seen.insert(word.clone()) {
                words.push(word);
            }
        }
        let mut cumulative = Vec::with_capacity(words.len());
        let mut total = 0.0;
        for k in 1..=words.len() {
            total += 1.0 / k as f64;
            cumulative.push(total);
        }
        let split = |text: &'static str| text.split_whitespace().collect();
        Corpus {
            seed,
            words,
            cumulative,
            total,
            names: split(NAMES),
            tags: split(TAGS),
            kinds: split(KINDS),
        }
    }

    /// A word drawn by its Zipf weight.
    fn zipf<'a>(&'a self, rng: &mut SplitMix64) -> &'a str {
        let u = rng.next_f64() * self.total;
        let k = self
            .cumulative
            .partition_point(|&c| c <= u)
            .min(self.words.len() - 1);
        &self.words[k]
    }

    /// A word drawn uniformly from the vocabulary.
    fn uniform<'a>(&'a self, rng: &mut SplitMix64) -> &'a str {
        &self.words[(rng.next_u64() % self.words.len() as u64) as usize]
    }

    /// Context `n`'s rare word: a three-syllable made-up word of its own (one in 40 billion,
    /// so nearly every context has a word no other has).
    fn rare_word(&self, n: usize) -> String {
        let mut rng = SplitMix64(self.seed ^ 0x7261_7265 ^ (n as u64).wrapping_mul(0xD6E8_FEB8));
        pseudo_word(&mut rng, 3)
    }

    /// The `data` of context `n` and how many words its text has: 40-80 words in sentences
    /// of 6-14 (a summary, facts, an open question), its rare word among them, a ticket
    /// number in half of them, and a user name, a kind and two tags.
    fn context(&self, n: usize) -> (Value, usize) {
        let mut rng = SplitMix64(self.seed ^ (n as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        let total = 40 + (rng.next_u64() % 41) as usize;
        let mut words: Vec<String> = (0..total - 1)
            .map(|_| self.zipf(&mut rng).to_owned())
            .collect();
        let at = (rng.next_u64() % total as u64) as usize;
        words.insert(at, self.rare_word(n));
        if rng.next_u64().is_multiple_of(2) {
            let ticket = format!("#{}", 10_000 + rng.next_u64() % 90_000);
            words.truncate(total - 2);
            words.push("ticket".to_owned());
            words.push(ticket);
        }
        let mut sentences = Vec::new();
        let mut rest = &words[..];
        while !rest.is_empty() {
            let len = (6 + (rng.next_u64() % 9) as usize).min(rest.len());
            let (head, tail) = rest.split_at(len);
            let mut sentence = head.join(" ");
            if let Some(first) = sentence.get(..1) {
                let upper = first.to_uppercase();
                sentence.replace_range(..1, &upper);
            }
            sentence.push('.');
            sentences.push(Value::String(sentence));
            rest = tail;
        }
        let summary = sentences.remove(0);
        let question = if sentences.len() > 1 {
            sentences.pop()
        } else {
            None
        };
        let first_tag = (rng.next_u64() % self.tags.len() as u64) as usize;
        let second_tag = (first_tag + 1 + (rng.next_u64() % (self.tags.len() as u64 - 1)) as usize)
            % self.tags.len();
        let data = json!({
            "summary": summary,
            "user": {"name": pick(&mut rng, &self.names)},
            "memory": {"facts": sentences, "open_question": question},
            "kind": self.kinds[n % self.kinds.len()],
            "tags": [self.tags[first_tag], self.tags[second_tag]],
            "seq": n,
        });
        (data, total + 4)
    }

    /// `count` queries of 2-6 words: each word a rare word of a loaded context (1 in 10), a
    /// word drawn as the texts draw them (Zipf), or one drawn uniformly from the vocabulary.
    fn queries(&self, count: usize, n: usize, salt: u64) -> Vec<String> {
        let mut rng = SplitMix64(self.seed ^ 0x7175_6572_7900 ^ salt);
        (0..count)
            .map(|_| {
                let len = 2 + (rng.next_u64() % 5) as usize;
                (0..len)
                    .map(|_| {
                        let roll = rng.next_u64() % 20;
                        if roll < 2 {
                            self.rare_word((rng.next_u64() % n as u64) as usize)
                        } else if roll < 11 {
                            self.zipf(&mut rng).to_owned()
                        } else {
                            self.uniform(&mut rng).to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }
}

/// A normal deviate (Box-Muller).
fn normal(rng: &mut SplitMix64) -> f64 {
    let u = rng.next_f64().max(f64::MIN_POSITIVE);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * rng.next_f64()).cos()
}

/// A point uniform on the unit sphere.
fn sphere(rng: &mut SplitMix64) -> Vec<f64> {
    let v: Vec<f64> = (0..DIMENSIONS).map(|_| normal(rng)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

/// The contexts' embeddings: random unit vectors, seeded, in gaussian clusters around random
/// centres (sentence embeddings cluster by topic; with `spread` 0.05 at 384 dimensions a
/// member is at cosine ~0.7 from its centre and ~0.5 from the others of its cluster, and
/// members of different clusters near 0), or uniform on the sphere with no clusters.
struct Embeddings {
    seed: u64,
    centres: Vec<Vec<f64>>,
    spread: f64,
}

impl Embeddings {
    fn new(seed: u64, clusters: usize, spread: f64) -> Self {
        let mut rng = SplitMix64(seed ^ 0x6365_6E74_7265);
        Embeddings {
            seed,
            centres: (0..clusters).map(|_| sphere(&mut rng)).collect(),
            spread,
        }
    }

    /// Context `n`'s embedding, unit length, rounded to 4 decimals (short JSON).
    fn of(&self, n: usize) -> Vec<f32> {
        let mut rng =
            SplitMix64(self.seed ^ 0x656D_6265_6464 ^ (n as u64).wrapping_mul(0x9FB2_1C65));
        let v: Vec<f64> = if self.centres.is_empty() {
            sphere(&mut rng)
        } else {
            let centre = &self.centres[(rng.next_u64() % self.centres.len() as u64) as usize];
            centre
                .iter()
                .map(|c| c + self.spread * normal(&mut rng))
                .collect()
        };
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter()
            .map(|x| ((x / norm * 1e4).round() / 1e4) as f32)
            .collect()
    }
}

fn context_id(n: usize) -> String {
    format!("m{n:08}")
}

// ---------------------------------------------------------------------------------------------
// Processes.

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
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next())
            .is_none_or(|state| state == 'Z' || state == 'X'),
        Err(_) => true,
    }
}

/// SIGTERM to `server` and the time until it exited; `None` if it outlived
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
        std::thread::sleep(Duration::from_millis(5));
    }
    if took.is_none() {
        eprintln!(
            "search_text: server {} did not exit within {SHUTDOWN_LIMIT:?} of SIGTERM; its \
             last log lines:\n{}",
            server.name(),
            server.log_tail()
        );
    }
    drop(server);
    took
}

/// Which embedder a server runs with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Embedder {
    None,
    Local,
}

impl Embedder {
    fn as_str(self) -> &'static str {
        match self {
            Embedder::None => "none",
            Embedder::Local => "local",
        }
    }
}

/// One start of a server, until `/readyz` said its indexes (and model) were ready.
struct Boot {
    /// Spawn → the `ready` log line (the store open; the server serves).
    ready_log: Duration,
    /// Spawn → `checks.vector == "ok"`: the vector and keyword indexes loaded from the store.
    vector_ok: Duration,
    /// Spawn → `checks.embedder == "ok"`: the model loaded (`None` without an embedder).
    embedder_ok: Option<Duration>,
    /// VmRSS as soon as both were ok, and VmHWM then.
    rss: Option<u64>,
    hwm: Option<u64>,
    spawned: Instant,
    /// Until the server's CPU went idle; `None` if the bench did not wait for it.
    settled: Option<Settled>,
}

/// After ready, the server's background work: the embedded index links its vectors into the
/// HNSW graph after `checks.vector` is ok (searches scan the vectors not linked yet, and share
/// the cores with it meanwhile), and its memory grows as the graph is built.
struct Settled {
    /// Spawn → the server's CPU idle; `None`: still busy at `SEARCH_SETTLE_TIMEOUT`.
    at: Option<Duration>,
    /// The CPU the server used from the start of the wait to idle.
    cpu: Duration,
    /// VmRSS and VmHWM once idle.
    rss: Option<u64>,
    hwm: Option<u64>,
}

impl Boot {
    /// RSS once idle, when the bench waited for it.
    fn rss_idle(&self) -> Option<u64> {
        self.settled.as_ref().and_then(|s| s.rss)
    }

    /// Waits until the server's CPU is idle and records it.
    fn settle(&mut self, server: &Server, knobs: &Knobs) {
        let (at, cpu) = settle(server, self.spawned, knobs.settle_timeout);
        let settled = Settled {
            at,
            cpu,
            rss: proc_status_kb(server.pid(), "VmRSS"),
            hwm: proc_status_kb(server.pid(), "VmHWM"),
        };
        println!(
            "  {}: idle {} ({:.1?} CPU), RSS {}",
            server.name(),
            settled
                .at
                .map_or("still busy".to_owned(), |d| format!("{d:.2?}")),
            settled.cpu,
            opt_mb(settled.rss)
        );
        self.settled = Some(settled);
    }
}

/// Starts `contextd serve` on `database_url` with `embedder`, and polls `/readyz` until its
/// indexes (and its model, with one) are ready.
fn boot(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    name: &str,
    database_url: &str,
    embedder: Embedder,
    knobs: &Knobs,
) -> (Server, Boot) {
    let spawned = Instant::now();
    let server = Server::start(name, Logs::AtExit, |command| {
        command
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", &knobs.server_log)
            .env("CONTEXTD__VECTOR__DIMENSIONS", DIMENSIONS.to_string())
            .env("CONTEXTD__EMBEDDER__BACKEND", embedder.as_str());
        if embedder == Embedder::Local {
            command.env("CONTEXTD__EMBEDDER__LOCAL__MODEL_DIR", &knobs.model_dir);
        }
    });
    let ready_log = spawned.elapsed();
    let (mut vector_ok, mut embedder_ok) = (None, None);
    let url = server.url("/readyz");
    let mut last = Value::Null;
    runtime.block_on(async {
        loop {
            if let Ok(response) = client.get(&url).send().await
                && let Ok(body) = response.json::<Value>().await
            {
                let at = spawned.elapsed();
                if vector_ok.is_none() && body["checks"]["vector"] == "ok" {
                    vector_ok = Some(at);
                }
                if embedder_ok.is_none() && body["checks"]["embedder"] == "ok" {
                    embedder_ok = Some(at);
                }
                last = body;
            }
            if vector_ok.is_some() && (embedder == Embedder::None || embedder_ok.is_some()) {
                return;
            }
            let tail = server.log_tail();
            if exited(server.pid()) || tail.contains("did not load") {
                panic!(
                    "search_text: server {name} failed while starting (last /readyz: {last}); \
                     its last log lines:\n{tail}"
                );
            }
            assert!(
                spawned.elapsed() < knobs.ready_timeout,
                "search_text: server {name} not ready within SEARCH_READY_TIMEOUT = {} s (last \
                 /readyz: {last}); its last log lines:\n{tail}",
                knobs.ready_timeout.as_secs()
            );
            tokio::time::sleep(POLL).await;
        }
    });
    let boot = Boot {
        ready_log,
        vector_ok: vector_ok.expect("polled until ok"),
        embedder_ok,
        rss: proc_status_kb(server.pid(), "VmRSS"),
        hwm: proc_status_kb(server.pid(), "VmHWM"),
        spawned,
        settled: None,
    };
    println!(
        "  {name}: ready {:.2?}, vector ok {:.2?}{}, RSS {}",
        boot.ready_log,
        boot.vector_ok,
        boot.embedder_ok
            .map_or(String::new(), |d| format!(", embedder ok {d:.2?}")),
        opt_mb(boot.rss),
    );
    (server, boot)
}

/// The CPU time (user + system) process `pid` has used.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After the state (field 3): utime and stime are fields 14 and 15, in clock ticks.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks_to_duration(ticks))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf(3) has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// The CPU time every process of the machine has used (`/proc/stat`: all but idle and
/// iowait).
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let busy = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4);
    Some(ticks_to_duration(busy.map(|(_, t)| t).sum()))
}

/// Waits until the server's CPU is idle (under 2% of a core over each of two 500 ms windows),
/// `timeout` after `spawned` at most: spawn → idle, and the CPU it used meanwhile.
fn settle(server: &Server, spawned: Instant, timeout: Duration) -> (Option<Duration>, Duration) {
    let window = Duration::from_millis(500);
    let first = cpu_time(server.pid());
    let mut previous = first;
    let mut quiet = 0;
    while spawned.elapsed() < timeout {
        std::thread::sleep(window);
        let now = cpu_time(server.pid());
        match (previous, now) {
            (Some(before), Some(after)) if after.saturating_sub(before) < window / 50 => quiet += 1,
            _ => quiet = 0,
        }
        previous = now;
        if quiet == 2 {
            let used = match (first, previous) {
                (Some(first), Some(last)) => last.saturating_sub(first),
                _ => Duration::ZERO,
            };
            // The two quiet windows are not part of the busy time.
            return (Some(spawned.elapsed().saturating_sub(2 * window)), used);
        }
    }
    let used = match (first, cpu_time(server.pid())) {
        (Some(first), Some(last)) => last.saturating_sub(first),
        _ => Duration::ZERO,
    };
    (None, used)
}

/// Who used the CPUs over a run, in cores (CPU seconds per second of the run).
#[derive(Clone, Copy, Default)]
struct Cores {
    server: f64,
    bench: f64,
    /// Everything else on the machine (other builds, Postgres).
    others: f64,
}

/// The CPU counters at one moment, to take [`Cores`] over a run.
struct CpuMark {
    at: Instant,
    machine: Option<Duration>,
    server: Option<Duration>,
    bench: Option<Duration>,
}

impl CpuMark {
    fn now(server: &Server) -> Self {
        CpuMark {
            at: Instant::now(),
            machine: machine_busy(),
            server: cpu_time(server.pid()),
            bench: cpu_time(std::process::id()),
        }
    }

    fn cores_since(&self, earlier: &CpuMark) -> Cores {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let delta = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => a.saturating_sub(b).as_secs_f64(),
            _ => 0.0,
        };
        let machine = delta(self.machine, earlier.machine);
        let server = delta(self.server, earlier.server);
        let bench = delta(self.bench, earlier.bench);
        Cores {
            server: server / wall,
            bench: bench / wall,
            others: (machine - server - bench).max(0.0) / wall,
        }
    }
}

/// Drops `client` (its pool closes every connection), lets the closes reach the server, and
/// stops it: an idle pooled connection would hold its exit until its header timeout.
fn close_and_stop(
    client: reqwest::Client,
    runtime: &tokio::runtime::Runtime,
    server: Server,
) -> Option<Duration> {
    drop(client);
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    stop(server)
}

// ---------------------------------------------------------------------------------------------
// Load.

struct Load {
    elapsed: Duration,
    requests: usize,
    /// Mean bytes of an item as sent (JSON, with its embedding).
    item_bytes: f64,
    /// Mean words of a context's text.
    words: f64,
    /// `contextd_vector_backlog` when the last batch was answered.
    backlog: Option<i64>,
}

/// Loads the corpus, each context with its embedding when `embeddings` is given.
async fn load(
    client: &reqwest::Client,
    server: &Server,
    corpus: &Arc<Corpus>,
    knobs: &Knobs,
    embeddings: Option<&Arc<Embeddings>>,
) -> Load {
    let n = knobs.n;
    let batches = n.div_ceil(knobs.batch);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let words = Arc::new(AtomicUsize::new(0));
    let url = server.url("/sync/factory");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..knobs.inflight.min(batches) {
        let (client, url, corpus) = (client.clone(), url.clone(), corpus.clone());
        let embeddings = embeddings.cloned();
        let (next, done, bytes, words) = (next.clone(), done.clone(), bytes.clone(), words.clone());
        let batch = knobs.batch;
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<(), String>(());
                }
                let range = b * batch..((b + 1) * batch).min(n);
                let items: Vec<Value> = range
                    .clone()
                    .map(|i| {
                        let (data, count) = corpus.context(i);
                        words.fetch_add(count, Ordering::Relaxed);
                        let mut item = json!({
                            "id": context_id(i),
                            "data": data,
                            "metadata": {"agent": format!("agent-{}", i % 64)},
                        });
                        if let Some(embeddings) = &embeddings {
                            item["embedding"] = json!(embeddings.of(i));
                        }
                        item
                    })
                    .collect();
                let body = serde_json::to_vec(&json!({"contexts": items})).expect("JSON");
                bytes.fetch_add(body.len(), Ordering::Relaxed);
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
                        (finished * batch).min(n),
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
    let elapsed = start.elapsed();
    if !failures.is_empty() {
        panic!(
            "search_text: loading {n} contexts failed ({} task(s)): {}; the server's last log \
             lines:\n{}",
            failures.len(),
            failures.join("; "),
            server.log_tail()
        );
    }
    let backlog = scrape(client, server)
        .await
        .and_then(|text| metric(&text, "contextd_vector_backlog", &[]))
        .map(|v| v as i64);
    Load {
        elapsed,
        requests: batches,
        item_bytes: bytes.load(Ordering::Relaxed) as f64 / n as f64,
        words: words.load(Ordering::Relaxed) as f64 / n as f64,
        backlog,
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics of the server.

async fn scrape(client: &reqwest::Client, server: &Server) -> Option<String> {
    let response = client.get(server.url("/metrics")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// The value of the sample `name` whose labels include every one of `labels` (`key="value"`).
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (head, value) = rest.rsplit_once(' ')?;
        if !(head.is_empty() || head.starts_with('{')) {
            return None;
        }
        labels
            .iter()
            .all(|label| head.contains(label))
            .then(|| value.trim().parse().ok())?
    })
}

/// The server's own sums for search: `(request seconds, requests, embedding seconds,
/// embeddings)`.
#[derive(Clone, Copy, Default)]
struct ServerSums {
    request_seconds: f64,
    requests: f64,
    embed_seconds: f64,
    embeds: f64,
}

async fn server_sums(client: &reqwest::Client, server: &Server) -> ServerSums {
    let Some(text) = scrape(client, server).await else {
        return ServerSums::default();
    };
    let route = ["method=\"POST\"", "route=\"/contexts/search\""];
    let get = |name: &str, labels: &[&str]| metric(&text, name, labels).unwrap_or(0.0);
    ServerSums {
        request_seconds: get("contextd_http_request_duration_seconds_sum", &route),
        requests: get("contextd_http_request_duration_seconds_count", &route),
        embed_seconds: get("contextd_embedding_duration_seconds_sum", &[]),
        embeds: get("contextd_embedding_duration_seconds_count", &[]),
    }
}

// ---------------------------------------------------------------------------------------------
// Searches and their tallies.

/// What a run of searches saw.
#[derive(Default)]
struct Tally {
    ok_ms: Vec<f64>,
    /// Non-2xx answers by status; transport errors as status 0.
    failures: BTreeMap<u16, u64>,
    first_failure: Option<String>,
    results: usize,
    /// Answers with no result at all.
    empty: usize,
    /// Answers with a result found by the vector side, and by the keyword side.
    vector_side: usize,
    keyword_side: usize,
    elapsed: Duration,
    /// The server's own request and embedding time over the run.
    server: ServerSums,
    /// Who used the CPUs during the run.
    cores: Cores,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn fail(&mut self, status: u16, text: String) {
        *self.failures.entry(status).or_default() += 1;
        self.first_failure.get_or_insert(text);
    }

    fn merge(&mut self, other: Tally) {
        self.ok_ms.extend(other.ok_ms);
        for (status, count) in other.failures {
            *self.failures.entry(status).or_default() += count;
        }
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.results += other.results;
        self.empty += other.empty;
        self.vector_side += other.vector_side;
        self.keyword_side += other.keyword_side;
    }

    fn spread(&self) -> Option<Spread> {
        Spread::of(self.ok_ms.clone())
    }

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
            "**{}** ({}; first: {})",
            self.failed(),
            kinds.join(", "),
            self.first_failure.as_deref().unwrap_or("")
        )
    }
}

/// One search: timed from send to the whole body read, then its results counted.
async fn search(client: &reqwest::Client, url: &str, body: &bytes::Bytes, tally: &mut Tally) {
    let start = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(e) => return tally.fail(0, e.to_string()),
    };
    let status = response.status();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => return tally.fail(0, format!("reading the body: {e}")),
    };
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        return tally.fail(status.as_u16(), format!("{status}: {text}"));
    }
    tally.ok_ms.push(ms);
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let results = answer["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let side = |name: &str| {
        results.iter().any(|r| {
            r["matched"]
                .as_array()
                .is_some_and(|m| m.iter().any(|s| s == name))
        })
    };
    tally.results += results.len();
    tally.empty += usize::from(results.is_empty());
    tally.vector_side += usize::from(side("vector"));
    tally.keyword_side += usize::from(side("keyword"));
}

/// How a run asks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    Keyword,
    /// `vector` mode with only `query`: the server embeds it.
    VectorText,
    /// `vector` mode with the query's embedding.
    VectorGiven,
    /// `hybrid` mode with only `query`.
    HybridText,
    /// `hybrid` mode with `query` and its embedding.
    HybridGiven,
}

impl Ask {
    fn label(self) -> &'static str {
        match self {
            Ask::Keyword => "`keyword` (query)",
            Ask::VectorText => "`vector` (query only: the server embeds it)",
            Ask::VectorGiven => "`vector` (the query's embedding given)",
            Ask::HybridText => "`hybrid` (query only: the server embeds it)",
            Ask::HybridGiven => "`hybrid` (query + its embedding given)",
        }
    }

    /// The request's body. `vector` mode asks with threshold 0: the random embeddings are
    /// far from any model vector, and the default 0.7 would return nothing, leaving out the
    /// reads of the results that a real search pays.
    fn body(self, query: &str, vector: &[f32]) -> bytes::Bytes {
        let body = match self {
            Ask::Keyword => json!({"query": query, "mode": "keyword", "limit": LIMIT}),
            Ask::VectorText => {
                json!({"query": query, "mode": "vector", "limit": LIMIT, "threshold": 0.0})
            }
            Ask::VectorGiven => {
                json!({"vector": vector, "mode": "vector", "limit": LIMIT, "threshold": 0.0})
            }
            Ask::HybridText => json!({"query": query, "mode": "hybrid", "limit": LIMIT}),
            Ask::HybridGiven => {
                json!({"query": query, "vector": vector, "mode": "hybrid", "limit": LIMIT})
            }
        };
        bytes::Bytes::from(serde_json::to_vec(&body).expect("JSON"))
    }
}

/// The queries and the bench's own embedding of each (the model the server runs).
struct Queries {
    timed: Vec<(String, Vec<f32>)>,
    warmup: Vec<(String, Vec<f32>)>,
    /// How long the bench's model took per query, ms (`LocalEmbedder::embed_blocking`).
    embed_ms: Spread,
    words: f64,
}

fn make_queries(corpus: &Corpus, knobs: &Knobs) -> Queries {
    let started = Instant::now();
    let model = LocalEmbedder::load(&knobs.model_dir).unwrap_or_else(|e| {
        panic!(
            "{}: the model does not load: {e:#}",
            knobs.model_dir.display()
        )
    });
    println!(
        "search_text: the model loaded in the bench in {:.2?} (to embed the queries given as \
         vectors)",
        started.elapsed()
    );
    let mut embed_ms = Vec::new();
    let mut embed = |texts: Vec<String>| -> Vec<(String, Vec<f32>)> {
        texts
            .into_iter()
            .map(|text| {
                let started = Instant::now();
                let mut vectors = model
                    .embed_blocking(std::slice::from_ref(&text))
                    .expect("the model embeds a query");
                embed_ms.push(started.elapsed().as_secs_f64() * 1e3);
                let vector = vectors.pop().expect("one vector");
                (text, vector)
            })
            .collect()
    };
    let warmup = embed(corpus.queries(WARMUP, knobs.n, 1));
    let timed = embed(corpus.queries(knobs.queries, knobs.n, 0));
    let words = timed
        .iter()
        .map(|(q, _)| q.split_whitespace().count())
        .sum::<usize>() as f64
        / timed.len() as f64;
    Queries {
        timed,
        warmup,
        embed_ms: Spread::of(embed_ms).expect("queries"),
        words,
    }
}

/// The warm-up queries, then the first `take` timed queries (all of them, at most) once,
/// one at a time.
async fn sequential(
    client: &reqwest::Client,
    server: &Server,
    queries: &Queries,
    ask: Ask,
    take: usize,
) -> Tally {
    let url = server.url("/contexts/search");
    let mut warm = Tally::default();
    for (query, vector) in &queries.warmup {
        search(client, &url, &ask.body(query, vector), &mut warm).await;
    }
    let bodies: Vec<bytes::Bytes> = queries
        .timed
        .iter()
        .take(take)
        .map(|(query, vector)| ask.body(query, vector))
        .collect();
    let before = server_sums(client, server).await;
    let mut tally = Tally::default();
    let mark = CpuMark::now(server);
    let start = Instant::now();
    for body in &bodies {
        search(client, &url, body, &mut tally).await;
    }
    tally.elapsed = start.elapsed();
    tally.cores = CpuMark::now(server).cores_since(&mark);
    tally.server = delta(before, server_sums(client, server).await);
    // A failed warm-up query is a failure too.
    for (status, count) in warm.failures {
        *tally.failures.entry(status).or_default() += count;
    }
    if tally.first_failure.is_none() {
        tally.first_failure = warm.first_failure;
    }
    tally
}

/// `total` queries from `clients` concurrent clients, each sending its next query as soon as
/// the last is answered.
async fn concurrent(
    client: &reqwest::Client,
    server: &Server,
    queries: &Queries,
    ask: Ask,
    clients: usize,
    total: usize,
) -> Tally {
    let url = server.url("/contexts/search");
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        queries
            .timed
            .iter()
            .map(|(query, vector)| ask.body(query, vector))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let before = server_sums(client, server).await;
    let mark = CpuMark::now(server);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, bodies, next) =
                (client.clone(), url.clone(), bodies.clone(), next.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return tally;
                    }
                    search(&client, &url, &bodies[i % bodies.len()], &mut tally).await;
                }
            })
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        all.merge(task.await.expect("a client task"));
    }
    all.elapsed = start.elapsed();
    all.cores = CpuMark::now(server).cores_since(&mark);
    all.server = delta(before, server_sums(client, server).await);
    all
}

fn delta(before: ServerSums, after: ServerSums) -> ServerSums {
    ServerSums {
        request_seconds: after.request_seconds - before.request_seconds,
        requests: after.requests - before.requests,
        embed_seconds: after.embed_seconds - before.embed_seconds,
        embeds: after.embeds - before.embeds,
    }
}

// ---------------------------------------------------------------------------------------------
// One store.

struct Figures {
    store: String,
    load_before: String,
    load_after: String,
    empty_none: Boot,
    empty_local: Boot,
    load: Load,
    shutdown_after_load: Option<Duration>,
    full_none: Boot,
    full_local: Boot,
    keyword_only: Option<(Load, Boot)>,
    /// Hybrid queries right after the restart, while the graph was being linked.
    during_build: Option<Tally>,
    runs: Vec<(Ask, Tally)>,
    hybrid_concurrent: Tally,
    rss_end: Option<u64>,
    hwm_end: Option<u64>,
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

fn run_one(
    store: &str,
    knobs: &Knobs,
    corpus: &Arc<Corpus>,
    queries: &Queries,
    suffix: &str,
) -> Figures {
    let load_before = load_average();
    let n = knobs.n;
    let dir = TempDir::new(&format!("contextd-search-text-{suffix}-{store}"));
    let (databases, main_url, keyword_url) = match store {
        "postgres" => {
            let pg = knobs.pg_server();
            let (main, main_url) = Database::new(&pg, format!("contextd_search_{suffix}"));
            let (keyword, keyword_url) =
                Database::new(&pg, format!("contextd_search_{suffix}_keyword"));
            (vec![main, keyword], main_url, keyword_url)
        }
        _ => (
            Vec::new(),
            format!("sqlite:{}", dir.path().join("main.db").display()),
            format!("sqlite:{}", dir.path().join("keyword.db").display()),
        ),
    };
    let runtime = bench_runtime();
    println!("== {store}, N = {n} ({main_url})");

    // 1. The empty store: the baseline, and the model alone.
    let client = http_client();
    let (server, mut empty_none) = boot(
        &runtime,
        &client,
        &format!("{store}-empty-none"),
        &main_url,
        Embedder::None,
        knobs,
    );
    empty_none.settle(&server, knobs);
    close_and_stop(client, &runtime, server);
    let client = http_client();
    let (server, mut empty_local) = boot(
        &runtime,
        &client,
        &format!("{store}-empty-local"),
        &main_url,
        Embedder::Local,
        knobs,
    );
    empty_local.settle(&server, knobs);
    close_and_stop(client, &runtime, server);

    // 2. The load, with embeddings.
    let client = http_client();
    let (server, _) = boot(
        &runtime,
        &client,
        &format!("{store}-load"),
        &main_url,
        Embedder::None,
        knobs,
    );
    let embeddings = Arc::new(Embeddings::new(knobs.seed, knobs.clusters, knobs.spread));
    let loaded = runtime.block_on(load(&client, &server, corpus, knobs, Some(&embeddings)));
    println!(
        "  loaded {n} contexts with embeddings in {:.2?} ({:.0}/s); vector backlog {}",
        loaded.elapsed,
        n as f64 / loaded.elapsed.as_secs_f64(),
        loaded.backlog.map_or("?".to_owned(), |b| b.to_string())
    );
    let shutdown_after_load = close_and_stop(client, &runtime, server);

    // 3. Restarts on the loaded store: without, then with the model.
    let client = http_client();
    let (server, mut full_none) = boot(
        &runtime,
        &client,
        &format!("{store}-{n}-none"),
        &main_url,
        Embedder::None,
        knobs,
    );
    if knobs.settle_none {
        full_none.settle(&server, knobs);
    }
    close_and_stop(client, &runtime, server);
    let client = http_client();
    let (server, mut full_local) = boot(
        &runtime,
        &client,
        &format!("{store}-{n}-local"),
        &main_url,
        Embedder::Local,
        knobs,
    );
    // What a search costs while the graph is being linked, right after a restart.
    let during_build = (knobs.during_build > 0).then(|| {
        let tally = runtime.block_on(sequential(
            &client,
            &server,
            queries,
            Ask::HybridText,
            knobs.during_build,
        ));
        println!(
            "  hybrid during the graph build: {}; {} failed",
            p50_p99(&tally),
            tally.failed()
        );
        tally
    });
    full_local.settle(&server, knobs);

    // 5. The searches, on the server with the model.
    let mut runs = Vec::new();
    for ask in [
        Ask::Keyword,
        Ask::VectorText,
        Ask::VectorGiven,
        Ask::HybridText,
        Ask::HybridGiven,
    ] {
        let tally = runtime.block_on(sequential(&client, &server, queries, ask, usize::MAX));
        println!(
            "  {}: {}; {} failed",
            ask.label(),
            p50_p99(&tally),
            tally.failed()
        );
        runs.push((ask, tally));
    }
    let hybrid_concurrent = runtime.block_on(concurrent(
        &client,
        &server,
        queries,
        Ask::HybridText,
        knobs.clients,
        knobs.concurrent_queries,
    ));
    println!(
        "  hybrid, {} clients: {:.0} queries/s, {}; {} failed",
        knobs.clients,
        per_second(&hybrid_concurrent),
        p50_p99(&hybrid_concurrent),
        hybrid_concurrent.failed()
    );
    let rss_end = proc_status_kb(server.pid(), "VmRSS");
    let hwm_end = proc_status_kb(server.pid(), "VmHWM");
    close_and_stop(client, &runtime, server);

    // 4. The same texts without embeddings: the keyword index alone.
    let keyword_only = knobs.keyword_store.then(|| {
        let client = http_client();
        let (server, _) = boot(
            &runtime,
            &client,
            &format!("{store}-keyword-load"),
            &keyword_url,
            Embedder::None,
            knobs,
        );
        let load = runtime.block_on(load(&client, &server, corpus, knobs, None));
        println!(
            "  loaded {n} contexts without embeddings in {:.2?} ({:.0}/s)",
            load.elapsed,
            n as f64 / load.elapsed.as_secs_f64()
        );
        close_and_stop(client, &runtime, server);
        let client = http_client();
        let (server, mut boot) = boot(
            &runtime,
            &client,
            &format!("{store}-{n}-keyword-none"),
            &keyword_url,
            Embedder::None,
            knobs,
        );
        boot.settle(&server, knobs);
        close_and_stop(client, &runtime, server);
        (load, boot)
    });

    drop(runtime);
    drop(databases);
    drop(dir);
    Figures {
        store: store.to_owned(),
        load_before,
        load_after: load_average(),
        empty_none,
        empty_local,
        load: loaded,
        shutdown_after_load,
        full_none,
        full_local,
        keyword_only,
        during_build,
        runs,
        hybrid_concurrent,
        rss_end,
        hwm_end,
    }
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

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

fn opt_mb(bytes: Option<u64>) -> String {
    bytes.map_or("?".to_owned(), |b| mb(b as f64))
}

/// `later − earlier` of two RSS figures, in MB, and scaled to 100,000 contexts.
fn rss_delta(later: Option<u64>, earlier: Option<u64>, n: usize) -> String {
    match (later, earlier) {
        (Some(later), Some(earlier)) => {
            let delta = later as f64 - earlier as f64;
            format!(
                "{} ({} per 100,000 contexts; {:.0} B per context)",
                mb(delta),
                mb(delta * 100_000.0 / n as f64),
                delta / n as f64
            )
        }
        _ => "?".to_owned(),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn per_second(tally: &Tally) -> f64 {
    tally.ok_ms.len() as f64 / tally.elapsed.as_secs_f64()
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

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**MISSED**" }
}

fn boot_text(boot: &Boot) -> String {
    let idle = match &boot.settled {
        None => "; not waited for idle".to_owned(),
        Some(s) => format!(
            "; CPU idle {} ({} of CPU), then RSS {} (VmHWM {})",
            s.at.map_or("**still busy at SEARCH_SETTLE_TIMEOUT**".to_owned(), secs),
            secs(s.cpu),
            opt_mb(s.rss),
            opt_mb(s.hwm)
        ),
    };
    format!(
        "ready (log) {}, indexes ok {}{}; RSS {} at ready (VmHWM {}){idle}",
        secs(boot.ready_log),
        secs(boot.vector_ok),
        boot.embedder_ok
            .map_or(String::new(), |d| format!(", model ok {}", secs(d))),
        opt_mb(boot.rss),
        opt_mb(boot.hwm),
    )
}

/// The details of a run: mean, the server's own mean, results, failures.
fn run_text(tally: &Tally) -> String {
    let ok = tally.ok_ms.len();
    let mean = tally.spread().map_or(0.0, |s| s.mean());
    let server = if tally.server.requests > 0.0 {
        format!(
            "; server mean {:.2} ms",
            tally.server.request_seconds / tally.server.requests * 1e3
        )
    } else {
        String::new()
    };
    let embeds = if tally.server.embeds > 0.0 {
        let embed_ms = tally.server.embed_seconds / tally.server.embeds * 1e3;
        let rest = if tally.server.requests > 0.0 {
            format!(
                ", the rest of the request {:.2} ms",
                tally.server.request_seconds / tally.server.requests * 1e3
                    - embed_ms * tally.server.embeds / tally.server.requests
            )
        } else {
            String::new()
        };
        format!(
            "; {} embeddings in the server, mean {embed_ms:.2} ms{rest}",
            tally.server.embeds
        )
    } else {
        String::new()
    };
    let cores = tally.cores;
    format!(
        "{}; mean {mean:.2} ms{server}{embeds}; {:.1} results per answer, {} empty, vector \
         side in {}, keyword side in {}; CPU: server {:.2}, bench {:.2}, other processes {:.2} \
         cores; failures {}",
        p50_p99(tally),
        tally.results as f64 / ok.max(1) as f64,
        tally.empty,
        tally.vector_side,
        tally.keyword_side,
        cores.server,
        cores.bench,
        cores.others,
        tally.failures_text()
    )
}

fn render(f: &Figures, knobs: &Knobs, queries: &Queries) -> String {
    let n = knobs.n;
    let mut rows: Vec<[String; 3]> = Vec::new();
    let mut row = |what: &str, value: String, goal: String| {
        rows.push([what.to_owned(), value, goal]);
    };
    let load_row = |load: &Load| {
        format!(
            "{:.0} contexts/s ({:.1} s; {} requests of {}, {} in flight; {:.0} B per item, \
             {:.1} words of text per context); vector backlog at the end {}",
            n as f64 / load.elapsed.as_secs_f64(),
            load.elapsed.as_secs_f64(),
            load.requests,
            knobs.batch,
            knobs.inflight,
            load.item_bytes,
            load.words,
            load.backlog
                .map_or("?".to_owned(), |b| thousands(b.max(0) as u64))
        )
    };

    row(
        &format!(
            "load of {} contexts with embeddings (POST /sync/factory)",
            thousands(n as u64)
        ),
        load_row(&f.load),
        String::new(),
    );
    row(
        "shutdown after the load (SIGTERM → exit)",
        f.shutdown_after_load.map_or("killed".to_owned(), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1e3)
        }),
        String::new(),
    );
    row(
        "start, empty store, embedder none",
        boot_text(&f.empty_none),
        String::new(),
    );
    row(
        "start, empty store, embedder local: the model load alone",
        boot_text(&f.empty_local),
        String::new(),
    );
    row(
        "restart on the loaded store, embedder none",
        boot_text(&f.full_none),
        String::new(),
    );
    row(
        "restart on the loaded store, embedder local (the searches below start once its CPU is idle: the HNSW graph linked)",
        boot_text(&f.full_local),
        String::new(),
    );
    if let Some((load, boot)) = &f.keyword_only {
        row(
            "load of the same texts without embeddings (second store)",
            load_row(load),
            String::new(),
        );
        row(
            "restart on it, embedder none: keyword index loaded",
            boot_text(boot),
            String::new(),
        );
    }
    // Memory, by differences of RSS once the server was idle (the graph built).
    row(
        "memory: indexes (vector+keyword, with the HNSW graph) = RSS loaded − RSS empty, both \
         with embedder local, idle (the model cancels out)",
        rss_delta(f.full_local.rss_idle(), f.empty_local.rss_idle(), n),
        String::new(),
    );
    if f.full_none.settled.is_some() {
        row(
            "memory: the same with embedder none (RSS loaded − RSS empty, idle)",
            rss_delta(f.full_none.rss_idle(), f.empty_none.rss_idle(), n),
            String::new(),
        );
    }
    row(
        "memory at ready, before the graph: RSS loaded − RSS empty, embedder none, at \
         `checks.vector` ok",
        rss_delta(f.full_none.rss, f.empty_none.rss, n),
        String::new(),
    );
    if let Some((_, boot)) = &f.keyword_only {
        row(
            "memory: keyword index = RSS loaded without embeddings − RSS empty (embedder none, \
             idle)",
            rss_delta(boot.rss_idle(), f.empty_none.rss_idle(), n),
            String::new(),
        );
        let vector = match (
            f.full_local.rss_idle(),
            f.empty_local.rss_idle(),
            boot.rss_idle(),
            f.empty_none.rss_idle(),
        ) {
            (Some(full), Some(empty), Some(keyword), Some(base)) => {
                Some((full as i64 - empty as i64) - (keyword as i64 - base as i64))
            }
            _ => None,
        };
        row(
            "memory: vector index with its graph = indexes − keyword index",
            vector.map_or("?".to_owned(), |bytes| {
                format!(
                    "{} ({} per 100,000 contexts; {:.0} B per vector of {DIMENSIONS} floats)",
                    mb(bytes as f64),
                    mb(bytes as f64 * 100_000.0 / n as f64),
                    bytes as f64 / n as f64
                )
            }),
            String::new(),
        );
    }
    let model = |later: Option<u64>, earlier: Option<u64>| match (later, earlier) {
        (Some(later), Some(earlier)) => mb(later as f64 - earlier as f64),
        _ => "?".to_owned(),
    };
    row(
        "memory: the model = RSS embedder local − RSS embedder none (idle)",
        if f.full_none.settled.is_some() {
            format!(
                "{} on the empty store, {} on the loaded store",
                model(f.empty_local.rss_idle(), f.empty_none.rss_idle()),
                model(f.full_local.rss_idle(), f.full_none.rss_idle())
            )
        } else {
            format!(
                "{} (on the empty store)",
                model(f.empty_local.rss_idle(), f.empty_none.rss_idle())
            )
        },
        String::new(),
    );
    row(
        "RSS of the local server after the searches",
        format!("{} (VmHWM {})", opt_mb(f.rss_end), opt_mb(f.hwm_end)),
        String::new(),
    );

    if let Some(tally) = &f.during_build {
        row(
            &format!(
                "`hybrid` (query only) right after the restart, while the graph is linked — {} \
                 queries, 1 client",
                tally.ok_ms.len() as u64 + tally.failed()
            ),
            run_text(tally),
            String::new(),
        );
    }
    for (ask, tally) in &f.runs {
        let goal = if *ask == Ask::HybridText {
            let p99 = tally.spread().map(|s| s.pct(99.0));
            format!(
                "p99 < {GOAL_HYBRID_P99_MS} ms: {}",
                verdict(p99.is_some_and(|p| p < GOAL_HYBRID_P99_MS) && tally.failed() == 0)
            ) + if n < 100_000 {
                " (the goal is stated at 100,000 contexts)"
            } else {
                ""
            }
        } else {
            String::new()
        };
        row(
            &format!(
                "{} — {} queries, 1 client",
                ask.label(),
                tally.ok_ms.len() as u64 + tally.failed()
            ),
            run_text(tally),
            goal,
        );
    }
    let c = &f.hybrid_concurrent;
    row(
        &format!(
            "`hybrid` (query only), {} concurrent clients — {} queries",
            knobs.clients,
            c.ok_ms.len() as u64 + c.failed()
        ),
        format!("{:.1} queries/s; {}", per_second(c), run_text(c)),
        format!(
            "p99 < {GOAL_HYBRID_P99_MS} ms: {} (for reference: the goal is 1 client)",
            verdict(
                c.spread().is_some_and(|s| s.pct(99.0) < GOAL_HYBRID_P99_MS) && c.failed() == 0
            )
        ),
    );

    // The embedding inside a query.
    let find = |which: Ask| {
        f.runs
            .iter()
            .find(|(ask, _)| *ask == which)
            .and_then(|(_, t)| t.spread())
    };
    let diff = |a: Ask, b: Ask| match (find(a), find(b)) {
        (Some(a), Some(b)) => format!(
            "p50 +{:.2} ms, p99 +{:.2} ms, mean +{:.2} ms",
            a.pct(50.0) - b.pct(50.0),
            a.pct(99.0) - b.pct(99.0),
            a.mean() - b.mean()
        ),
        _ => "—".to_owned(),
    };
    row(
        "embedding inside a query: `vector` (query) − `vector` (embedding given)",
        diff(Ask::VectorText, Ask::VectorGiven),
        String::new(),
    );
    row(
        "embedding inside a query: `hybrid` (query) − `hybrid` (query + embedding)",
        diff(Ask::HybridText, Ask::HybridGiven),
        String::new(),
    );
    let e = &queries.embed_ms;
    row(
        "the model alone, in the bench (`embed_blocking`, one query, no server running)",
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} queries of {:.1} words on average)",
            e.pct(50.0),
            e.pct(99.0),
            e.max(),
            e.len(),
            queries.words
        ),
        String::new(),
    );

    let mut out = format!(
        "### search_text: {}, N = {}\n\nload average (1, 5, 15 min) {} at the start, {} at the \
         end (the machine has {} CPUs)\n\n| measure | value | goal |\n|---|---|---|\n",
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

/// The commit the binary was built from, and how many tracked files differed from it (read
/// without taking git's index lock: other work may be using the checkout).
fn git_state() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .env("GIT_OPTIONAL_LOCKS", "0")
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

fn main() {
    if !common::run_as_bench("search_text") {
        return;
    }
    let knobs = Knobs::from_env();
    println!("search_text: {BIN}");
    let rows = knobs.rows();
    print_knobs(&rows);

    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/search-text");
    std::fs::create_dir_all(&out_dir).expect("target/search-text");
    let report_path = out_dir.join(format!("{stamp}.md"));
    let mut report =
        File::create(&report_path).unwrap_or_else(|e| panic!("{}: {e}", report_path.display()));
    let git = git_state();
    println!("search_text: {git}");
    let mut header = format!(
        "# search_text {stamp}\n\n`{BIN}`, {git}\n\n| knob (env) | value | default |\n\
         |---|---|---|\n"
    );
    for (name, value, default) in &rows {
        header.push_str(&format!("| `{name}` | `{value}` | `{default}` |\n"));
    }
    header.push('\n');
    report.write_all(header.as_bytes()).expect("the report");

    let corpus = Arc::new(Corpus::new(knobs.seed, knobs.vocabulary));
    let queries = make_queries(&corpus, &knobs);
    println!(
        "search_text: {} queries (+{WARMUP} warm-up), e.g. {:?}, {:?}",
        queries.timed.len(),
        queries.timed[0].0,
        queries.timed[1 % queries.timed.len()].0
    );

    let suffix = unique_suffix();
    let bench_start = Instant::now();
    let mut summaries = Vec::new();
    for store in &knobs.stores {
        let figures = run_one(store, &knobs, &corpus, &queries, &suffix);
        let text = render(&figures, &knobs, &queries);
        report
            .write_all(format!("{text}\n").as_bytes())
            .expect("the report");
        summaries.push(text);
    }
    println!("\n# Summary ({:.1?} in all)\n", bench_start.elapsed());
    for text in &summaries {
        println!("{text}");
    }
    println!("written to {}", report_path.display());
}
