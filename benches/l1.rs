//! L1 (`contextd::cache::L1`) micro-benchmarks: `get` hit and miss, `put`, and `get` hammered
//! by several threads on one shared cache.
//!
//! `cargo bench --bench l1` (about a minute). Target: an L1 hit under 1 µs.
//!
//! The contended benchmarks run `iters` gets on each of N threads at once and take the wall
//! time, so "time" is the time of one round of N concurrent gets (one get's latency as one
//! thread sees it, while the others run too), and "thrpt" (elements = N) is the aggregate gets
//! per second across all threads; wall time / N is the amortized cost of one get.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use contextd::cache::{CachedContext, L1};
use contextd::config::L1Settings;
use contextd::domain::ContextId;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

mod common;

/// The default capacity of `L1Settings`, written out so the benchmark does not move with it.
const CAPACITY: usize = 10_000;

fn settings(max_entries: usize) -> L1Settings {
    L1Settings {
        max_entries,
        max_bytes: 1 << 40,
        ttl_seconds: 3600,
    }
}

fn id(n: usize) -> ContextId {
    ContextId::parse(&format!("ctx_bench_{n:08}")).expect("a valid id")
}

/// A small context, typical of what agents keep: a few keys of data and metadata.
fn context(n: usize) -> Arc<CachedContext> {
    let data = json!({"user": "john", "step": n, "notes": "some text of modest length"});
    common::cached_context(id(n), data, json!({"agent": "planner"}))
}

/// An L1 holding contexts `0..resident`, and their ids. Its capacity has room to spare: keys
/// do not spread evenly over the shards, so a full shard would evict before L1 as a whole is.
fn filled(resident: usize) -> (L1, Vec<ContextId>) {
    let cache = L1::new(&settings(CAPACITY.max(2 * resident)));
    let ids = (0..resident)
        .map(|n| {
            let c = context(n);
            let id = c.id.clone();
            cache.put(c);
            id
        })
        .collect::<Vec<_>>();
    assert_eq!(cache.stats().entries, resident, "all should be resident");
    (cache, ids)
}

fn single_threaded(c: &mut Criterion) {
    let mut group = c.benchmark_group("l1");

    // Hits cycling over a working set that fits in CPU caches (1k), and over 10k (a full L1
    // at the default size).
    for resident in [1_000, CAPACITY] {
        let (cache, ids) = filled(resident);
        group.bench_function(BenchmarkId::new("get_hit", resident), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % ids.len();
                black_box(cache.get(black_box(&ids[i])))
            });
        });
        assert_eq!(cache.stats().misses, 0, "every get should have hit");
    }

    {
        let (cache, _) = filled(1_000);
        let absent: Vec<ContextId> = (1_000_000..1_001_000).map(id).collect();
        group.bench_function("get_miss", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % absent.len();
                black_box(cache.get(black_box(&absent[i])))
            });
        });
        assert_eq!(cache.stats().hits, 0, "every get should have missed");
    }

    // Put of a context already cached (same stamp: the entry is replaced).
    {
        let cache = L1::new(&settings(CAPACITY));
        let pool: Vec<_> = (0..1_000).map(context).collect();
        for c in &pool {
            cache.put(c.clone());
        }
        group.bench_function("put_replace", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % pool.len();
                cache.put(black_box(pool[i].clone()));
            });
        });
    }

    // Put into a full L1 of keys it does not hold: every put inserts and evicts one.
    {
        let cache = L1::new(&settings(CAPACITY));
        let pool: Vec<_> = (0..4 * CAPACITY).map(context).collect();
        for c in &pool {
            cache.put(c.clone());
        }
        group.bench_function("put_evict", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % pool.len();
                cache.put(black_box(pool[i].clone()));
            });
        });
        assert!(cache.stats().entries <= CAPACITY);
    }

    group.finish();
}

/// Runs `op(thread, i)` for `i in 0..iters` on each of `threads` threads at once; the wall time
/// from the first thread's start to the last one's end. (Not each thread's own time: with more
/// threads than cores, the OS may run some after others, and their own times would overlap.)
fn on_threads(threads: usize, iters: u64, op: &(impl Fn(usize, u64) + Sync)) -> Duration {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        op(t, i);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a bench thread panicked"))
            .collect()
    });
    let first = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let last = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    last - first
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("l1_contended");
    // Fewer, longer samples: each sample spawns its threads, which must stay negligible.
    group.sample_size(30);

    for hot in [64, 1] {
        let (cache, ids) = filled(hot);
        let cache = Arc::new(cache);
        for threads in [1, 2, 4] {
            group.throughput(Throughput::Elements(threads as u64));
            let name = format!("get_hit_hot{hot}");
            group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, &|t, i| {
                        // Threads walk the hot set from different offsets.
                        let k = (i as usize + t * 17) % ids.len();
                        black_box(cache.get(black_box(&ids[k])));
                    })
                });
            });
        }
        assert_eq!(cache.stats().misses, 0, "every get should have hit");
    }

    // Reference: what the one `hits` counter every get bumps costs by itself when shared.
    let counter = std::sync::atomic::AtomicU64::new(0);
    for threads in [2, 4] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_with_input(
            BenchmarkId::new("shared_atomic_add_only", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, &|_, _| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    })
                });
            },
        );
    }

    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = single_threaded, contended
}
criterion_main!(benches);
