//! The `local` embedder (all-MiniLM-L6-v2 on the CPU, `contextd::embed::local`): throughput in
//! contexts per second for short (~20 words) and long (~200 words) texts at batches of 1 and
//! 32, and the latency of one short query through `Embedder::embed` (the CPU pool's hop
//! included), which is what a text search pays before it searches: alone, and while the server
//! embeds written contexts in the background (batches of 16 long texts, as the embedding worker
//! sends them), once through `Embedder::embed` (in turn with the queries, as if background
//! work were a request) and once through `Embedder::embed_background` (the queries first).
//!
//! `cargo bench --bench embedder` (about three minutes on 2 cores). The model is the tests':
//! `scripts/fetch-model.sh` puts it in `target/models/all-MiniLM-L6-v2`, or
//! `CONTEXTD_TEST_MODEL_DIR` names it.
//!
//! Knobs (environment): `EMBED_BENCH_TEXTS` (128: texts per throughput run),
//! `EMBED_BENCH_ROUNDS` (3: runs per row; the best is reported, and the worst beside it),
//! `EMBED_BENCH_QUERIES` (200: latency samples). Texts are words drawn from a fixed list with
//! splitmix64, seeded, so runs are comparable. The model's matrix products run on its own
//! pool, as wide as the CPU pool (one thread on 2 cores); wall-clock on a shared machine.

use std::path::{Path, PathBuf};
use std::time::Instant;

use contextd::embed::Embedder;
use contextd::embed::local::LocalEmbedder;

mod common;

use common::{SplitMix64, Spread, env_or, print_knobs};

const WORDS: &[&str] = &[
    "context",
    "version",
    "agent",
    "merge",
    "conflict",
    "document",
    "search",
    "vector",
    "store",
    "cache",
    "restore",
    "history",
    "feed",
    "webhook",
    "sync",
    "factory",
    "memory",
    "client",
    "server",
    "request",
    "answer",
    "index",
    "token",
    "model",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "that",
    "on",
    "keeps",
    "reads",
    "writes",
    "changes",
    "every",
    "last",
    "hundred",
    "kept",
    "Postgres",
    "Redis",
    "SQLite",
    "layer",
    "three-way",
    "JSON",
    "schema",
    "field",
    "value",
    "timestamp",
    "replica",
    "instance",
    "key",
    "prefix",
    "query",
];

fn text(rng: &mut SplitMix64, words: usize) -> String {
    let mut out: Vec<&str> = (0..words)
        .map(|_| WORDS[(rng.next_u64() % WORDS.len() as u64) as usize])
        .collect();
    out.push(".");
    out.join(" ")
}

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("CONTEXTD_TEST_MODEL_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/models/all-MiniLM-L6-v2"),
        PathBuf::from,
    );
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model at {}: run scripts/fetch-model.sh",
        dir.display()
    );
    dir
}

/// Contexts per second embedding `texts` in batches of `batch`, after one warm-up batch: the
/// best and the worst of `rounds` runs (the best is the machine's, the worst what other work
/// on it costs).
fn throughput(model: &LocalEmbedder, texts: &[String], batch: usize, rounds: usize) -> (f64, f64) {
    model.embed_blocking(&texts[..batch]).expect("embeds");
    let rates: Vec<f64> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for chunk in texts.chunks(batch) {
                model.embed_blocking(chunk).expect("embeds");
            }
            texts.len() as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    let best = rates.iter().copied().fold(0.0, f64::max);
    let worst = rates.iter().copied().fold(f64::INFINITY, f64::min);
    (best, worst)
}

fn main() {
    if !common::run_as_bench("embedder") {
        return;
    }
    let n: usize = env_or("EMBED_BENCH_TEXTS", 128);
    let queries: usize = env_or("EMBED_BENCH_QUERIES", 200);
    let rounds: usize = env_or("EMBED_BENCH_ROUNDS", 3);
    assert!(
        n >= 32,
        "EMBED_BENCH_TEXTS must be at least one batch of 32"
    );
    print_knobs(&[
        ("EMBED_BENCH_TEXTS", n.to_string(), "128"),
        ("EMBED_BENCH_QUERIES", queries.to_string(), "200"),
        ("EMBED_BENCH_ROUNDS", rounds.to_string(), "3"),
    ]);

    let dir = model_dir();
    let started = Instant::now();
    let model = LocalEmbedder::load(&dir).expect("the model loads");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "embedder: {} loaded in {:.2} s; {} dimensions, {} tokens at most; {cores} cores",
        dir.display(),
        started.elapsed().as_secs_f64(),
        model.dimensions(),
        model.info().max_tokens,
    );

    let mut rng = SplitMix64(0x5eed);
    let short: Vec<String> = (0..n).map(|_| text(&mut rng, 20)).collect();
    let long: Vec<String> = (0..n).map(|_| text(&mut rng, 200)).collect();
    println!();
    println!(
        "{:<28} {:>8} {:>12} {:>12}",
        "texts", "batch", "contexts/s", "worst round"
    );
    println!("{}", "-".repeat(63));
    for (name, texts) in [("short (20 words)", &short), ("long (200 words)", &long)] {
        for batch in [1, 8, 32] {
            let (best, worst) = throughput(&model, texts, batch, rounds.max(1));
            println!("{name:<28} {batch:>8} {best:>12.1} {worst:>12.1}");
        }
    }

    // One short query at a time through the trait, as search embeds its query.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let query = vec!["how do I restore an older version of a context".to_owned()];
    let samples = runtime.block_on(async {
        model.embed(&query).await.expect("embeds");
        let mut samples = Vec::with_capacity(queries);
        for _ in 0..queries {
            let started = Instant::now();
            model.embed(&query).await.expect("embeds");
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        samples
    });
    let spread = Spread::of(samples).expect("samples");
    println!();
    println!(
        "one short query (Embedder::embed, {} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        spread.len(),
        spread.pct(50.0),
        spread.pct(99.0),
        spread.pct(100.0)
    );

    // The same queries while contexts are embedded in the background, without a pause.
    let model = std::sync::Arc::new(model);
    let busy = (queries / 4).max(20);
    println!();
    for (name, background) in [
        ("background through embed", false),
        ("background through embed_background", true),
    ] {
        let (samples, embedded) = runtime.block_on(async {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let worker = {
                let (model, stop, long) = (model.clone(), stop.clone(), long.clone());
                tokio::spawn(async move {
                    let mut embedded = 0usize;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for chunk in long.chunks(16) {
                            let made = if background {
                                model.embed_background(chunk).await
                            } else {
                                model.embed(chunk).await
                            };
                            embedded += made.expect("embeds").len();
                            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                    embedded
                })
            };
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let started = Instant::now();
            let mut samples = Vec::with_capacity(busy);
            for _ in 0..busy {
                let at = Instant::now();
                model.embed(&query).await.expect("embeds");
                samples.push(at.elapsed().as_secs_f64() * 1e3);
                // A query now and then, as searches come.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let embedded = worker.await.expect("the worker");
            (samples, embedded as f64 / started.elapsed().as_secs_f64())
        });
        let spread = Spread::of(samples).expect("samples");
        println!(
            "one short query, {name} ({} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             {embedded:.1} long contexts/s embedded meanwhile",
            spread.len(),
            spread.pct(50.0),
            spread.pct(99.0),
            spread.pct(100.0)
        );
    }
}
