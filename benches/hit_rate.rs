//! Hit-rate simulation: a Zipf trace run through the real L1, against an exact (unsharded) LRU
//! of the same capacity, Belady's OPT as the ceiling, and a model of L1 + an L2 that holds
//! everything.
//!
//! `cargo bench --bench hit_rate`. Parameters, from the environment (defaults in brackets):
//! `HIT_RATE_KEYS` [100000] distinct keys, `HIT_RATE_REQUESTS` [2000000] trace length,
//! `HIT_RATE_ZIPF_S` [1.0] exponent, `HIT_RATE_CAPACITY` [10% of keys] L1 entries,
//! `HIT_RATE_SEED` [0x5EED_C0DE] PRNG seed.
//!
//! Only the entry bound is in play: max_bytes is set huge and the TTL far past the run.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use contextd::cache::{CachedContext, L1};
use contextd::config::L1Settings;
use contextd::domain::ContextId;

mod common;

use common::{distinct, env_or, zipf_trace};

fn context(rank: usize) -> Arc<CachedContext> {
    let id = ContextId::parse(&format!("ctx_{rank:08}")).expect("a valid id");
    common::cached_context(
        id,
        serde_json::json!({ "rank": rank }),
        serde_json::json!({}),
    )
}

/// The real L1: get, and on a miss put (what the service does on a read-through).
/// Hits, ns per request, and the entries L1 held at the end (its effective capacity once full).
fn run_l1(trace: &[u32], keys: usize, capacity: usize) -> (u64, f64, usize) {
    let contexts: Vec<_> = (0..keys).map(context).collect();
    let cache = L1::new(&L1Settings {
        max_entries: capacity,
        max_bytes: 1 << 50,
        ttl_seconds: 100 * 365 * 24 * 3600,
    });
    let start = Instant::now();
    let mut hits = 0u64;
    for &rank in trace {
        let c = &contexts[rank as usize];
        if cache.get(&c.id).is_some() {
            hits += 1;
        } else {
            cache.put(c.clone());
        }
    }
    let ns_per_request = start.elapsed().as_nanos() as f64 / trace.len() as f64;
    let stats = cache.stats();
    assert_eq!(stats.hits, hits, "L1's own count agrees");
    (hits, ns_per_request, stats.entries)
}

/// One exact, global LRU of the same capacity: what L1 would do without its 16 shards.
fn run_exact_lru(trace: &[u32], capacity: usize) -> u64 {
    let Some(capacity) = NonZeroUsize::new(capacity) else {
        return 0;
    };
    let mut cache = lru::LruCache::<u32, ()>::new(capacity);
    let mut hits = 0u64;
    for &key in trace {
        if cache.get(&key).is_some() {
            hits += 1;
        } else {
            cache.put(key, ());
        }
    }
    hits
}

/// Belady's MIN: on a miss with the cache full, evict the key whose next use is farthest away.
/// With `bypass`, the requested key is itself a candidate (a miss need not be cached): the true
/// optimum for any policy. Without, every miss is cached (demand fetch, as L1 does).
fn run_belady(trace: &[u32], keys: usize, capacity: usize, bypass: bool) -> u64 {
    if capacity == 0 {
        return 0;
    }
    let n = trace.len();
    // next_use[i]: the index of the next request for trace[i], or n + key (never again; distinct
    // so that the set's entries stay unique and "never" sorts after every real use).
    let mut next_use = vec![0usize; n];
    let mut upcoming = vec![usize::MAX; keys];
    for i in (0..n).rev() {
        let key = trace[i] as usize;
        next_use[i] = if upcoming[key] == usize::MAX {
            n + key
        } else {
            upcoming[key]
        };
        upcoming[key] = i;
    }
    // (next use, key) of every cached key; `cached[key]` is its entry's next use.
    let mut set = BTreeSet::<(usize, u32)>::new();
    let mut cached = vec![usize::MAX; keys];
    let mut hits = 0u64;
    for (i, &key) in trace.iter().enumerate() {
        let k = key as usize;
        let next = next_use[i];
        if cached[k] != usize::MAX {
            hits += 1;
            set.remove(&(cached[k], key));
        } else if set.len() == capacity {
            let &(farthest, victim) = set.last().expect("a full cache is not empty");
            if bypass && farthest < next {
                continue; // The new key is the one to drop: do not cache it.
            }
            set.pop_last();
            cached[victim as usize] = usize::MAX;
        }
        set.insert((next, key));
        cached[k] = next;
    }
    hits
}

/// The `capacity` most popular ranks pinned, each cached at its first request: the best a
/// policy that knows only popularity (no future) can do on this independent-request trace.
fn run_static_top(trace: &[u32], keys: usize, capacity: usize) -> u64 {
    let mut seen = vec![false; keys];
    let mut hits = 0u64;
    for &rank in trace {
        let r = rank as usize;
        if r < capacity && seen[r] {
            hits += 1;
        }
        seen[r] = true;
    }
    hits
}

fn main() {
    if !common::run_as_bench("hit_rate") {
        return;
    }
    let keys: usize = env_or("HIT_RATE_KEYS", 100_000);
    let requests: usize = env_or("HIT_RATE_REQUESTS", 2_000_000);
    let s: f64 = env_or("HIT_RATE_ZIPF_S", 1.0);
    let capacity: usize = env_or("HIT_RATE_CAPACITY", keys / 10);
    let seed: u64 = env_or("HIT_RATE_SEED", 0x5EED_C0DE);
    assert!(
        keys > 0 && keys <= u32::MAX as usize,
        "HIT_RATE_KEYS out of range"
    );
    assert!(requests > 0, "HIT_RATE_REQUESTS must be positive");

    println!(
        "hit_rate: keys={keys} requests={requests} zipf_s={s} capacity={capacity} seed={seed:#x}"
    );
    let start = Instant::now();
    let trace = zipf_trace(keys, requests, s, seed);
    let distinct = distinct(&trace, keys);
    println!(
        "trace: {distinct} distinct keys requested ({:.1}% of keys), generated in {:.2?}",
        100.0 * distinct as f64 / keys as f64,
        start.elapsed()
    );

    let (l1_hits, l1_ns, l1_entries) = run_l1(&trace, keys, capacity);
    let rows = [
        ("L1 (16-shard LRU, contextd::cache::L1)", l1_hits),
        (
            "exact global LRU (lru::LruCache)",
            run_exact_lru(&trace, capacity),
        ),
        (
            "static top-k by popularity (IRM oracle)",
            run_static_top(&trace, keys, capacity),
        ),
        (
            "Belady MIN, every miss cached",
            run_belady(&trace, keys, capacity, false),
        ),
        (
            "Belady OPT, misses may bypass (ceiling)",
            run_belady(&trace, keys, capacity, true),
        ),
        (
            "no compulsory misses: 1 - distinct/requests",
            (requests - distinct) as u64,
        ),
        (
            "model: L1 + L2 holding all (TTL > trace)",
            (requests - distinct) as u64,
        ),
    ];

    println!();
    println!(
        "{:<46} {:>10} {:>10} {:>10}",
        "policy", "capacity", "hit rate", "hits"
    );
    println!("{}", "-".repeat(79));
    for (name, hits) in rows {
        let cap = if name.starts_with("no compulsory") || name.starts_with("model") {
            "∞".to_string()
        } else {
            capacity.to_string()
        };
        let rate = 100.0 * hits as f64 / requests as f64;
        println!("{name:<46} {cap:>10} {rate:>9.2}% {hits:>10}");
    }
    println!();
    println!(
        "Every key's first request is a compulsory miss ({distinct} of {requests}), so no cache \
         of any size beats {:.2}%.",
        100.0 * (requests - distinct) as f64 / requests as f64
    );
    println!(
        "The L1 + L2 row is a model, not a run: it assumes L2 (Redis) keeps every context for \
         longer than the trace, so only first requests reach the store."
    );
    if l1_entries > capacity {
        println!(
            "NOTE: L1 ended holding {l1_entries} entries, more than max_entries = {capacity} \
             (each shard's capacity is rounded up)."
        );
    }
    println!("L1 run: {l1_ns:.0} ns per request (get, and put on a miss), single thread.");
}
