//! The embedded vector index: cosine nearest-neighbour search inside the process, so search
//! works with no vector service at all. It is derived data: the indexer fills it from the store
//! at start and keeps it current from the outbox; nothing here is persisted.
//!
//! What it keeps per context: the unit-length embedding, the version it belongs to, and the
//! two fields filters need (`source`, `parent_id`). Not `data` or `metadata`: the service reads
//! those from the store, which has the last word on what is current.
//!
//! How it searches:
//! - below `exact_below` live vectors, or when a filter leaves fewer than that many candidates,
//!   an exact scan (a dot product per vector; unit vectors make it the cosine);
//! - above, an HNSW graph (`hnsw_rs`), asked for more candidates than `limit` when a filter or
//!   dead points make some of them unusable, and falling back to an exact scan of the matching
//!   subset when the filter is so selective that the graph would cost more than the scan.
//!
//! HNSW cannot delete. A replaced or deleted context's old point stays in the graph as a
//! tombstone: results are checked against the live slots, so it is never returned. When
//! tombstones pass a quarter of the graph, a background thread builds a new graph from the
//! live vectors and swaps it in; searches go on against the old graph (and writes go on) while
//! it builds. New vectors are searchable at once: until that thread has linked them into the
//! graph, they sit in a pending list that every search scans exactly.
//!
//! Versions: an upsert older than the version held for its id is ignored, so a late update
//! cannot bring back an old vector. A delete forgets the id altogether (a deleted context may
//! be created again, from version 1); ordering a delete against late upserts of the same id is
//! the indexer's business, and it only ever applies the store's current state.
//!
//! Costs (measured by `benches/vector.rs`, 768 dimensions, 2 cores): memory is about 2.8 times
//! the raw vectors (this index's unit copy, the graph's own copy, and the graph's links); the
//! graph links about 1,000 vectors a second using every core (rayon), so a start with 100,000
//! embeddings answers by exact scans (~15 ms each) for the first minute and a half.
//!
//! What it must not do: return a deleted or replaced id, let an upsert of an older version
//! replace a newer one, hold its lock while building a graph, or block a search for longer
//! than a swap.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use hnsw_rs::prelude::{Distance, Hnsw};

use super::{Hit, SearchQuery, VectorEntry, VectorError, VectorIndex};
use crate::config::EmbeddedSettings;
use crate::domain::{ContextId, Source};

mod search;
mod state;

use self::search::*;

/// Rebuild the graph once dead points are more than this share of it: past that, searches
/// waste a noticeable part of their candidates on them, and their memory is not given back.
const TOMBSTONE_SHARE: f64 = 0.25;

/// ... but not for a handful of dead points in a small graph.
const MIN_TOMBSTONES: usize = 256;

/// Pending vectors linked into the graph per round of the background thread; its write-lock
/// section is proportional to it, so it stays small.
const DRAIN_CHUNK: usize = 512;

/// Vectors copied out (under a read lock) per step of a rebuild.
const BUILD_CHUNK: usize = 4096;

/// A graph search keeping `k` candidates costs roughly as much as scanning this many times `k`
/// vectors; when a filter would need more, the exact scan of the matching subset is cheaper.
const CANDIDATE_COST: usize = 8;

/// HNSW layers at most (the crate's own maximum).
const MAX_LAYERS: usize = 16;

/// The crate exits the process (!) when asked for more than 256 links per node.
const MAX_CONNECTIONS: usize = 255;

/// The in-process index. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct EmbeddedIndex {
    shared: Arc<Shared>,
}

/// What the index holds right now, for tests, the benchmark and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Searchable contexts.
    pub live: usize,
    /// Slots allocated (live, dead awaiting reuse, tombstones).
    pub slots: usize,
    /// Whether an HNSW graph exists.
    pub graph: bool,
    /// Points in the graph, dead ones included.
    pub graph_points: usize,
    /// Dead points still in the graph.
    pub tombstones: usize,
    /// Live vectors not linked into the graph yet (searched exactly meanwhile).
    pub pending: usize,
    /// A new graph is being built.
    pub rebuilding: bool,
    /// A rough estimate of the heap memory held, in bytes.
    pub approx_bytes: usize,
}

struct Shared {
    dims: usize,
    params: Params,
    state: RwLock<State>,
    /// Set when there may be work for the background thread.
    wake: Mutex<bool>,
    wake_cv: Condvar,
    /// The index was dropped: the background thread stops at its next step.
    closed: AtomicBool,
    /// HNSW candidates kept while searching; a knob that can move at run time.
    ef_search: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
struct Params {
    exact_below: usize,
    max_connections: usize,
    ef_construction: usize,
}

/// Where a slot's vector is, as far as the graph goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In no graph: when dead, the slot is in the free list.
    Nowhere,
    /// Waiting in (or being linked from) the pending list.
    Pending,
    /// A point of the current graph (a tombstone when dead).
    Graph,
}

/// One vector's bookkeeping; its number is its HNSW data id and its offset in `vectors`.
#[derive(Debug)]
struct Slot {
    id: ContextId,
    version: i64,
    source: Source,
    parent_id: Option<ContextId>,
    live: bool,
    place: Place,
}

/// Everything behind the lock. Invariants (outside a rebuild): a live slot is `Pending` when a
/// graph exists and `Nowhere` otherwise, or `Graph`; a dead `Nowhere` slot is in `free`; a slot
/// is reused only from `free`, so a slot number in the graph always means the vector it was
/// linked with.
struct State {
    slots: Vec<Slot>,
    /// Unit vectors, `dims` per slot.
    vectors: Vec<f32>,
    /// The live slot of each id.
    by_id: HashMap<ContextId, u32>,
    /// Live slots per parent, so a parent filter scans only its children.
    by_parent: HashMap<ContextId, HashSet<u32>>,
    /// Live slots per source, to judge how selective a source filter is.
    by_source: [usize; 2],
    live: usize,
    free: Vec<u32>,
    graph: Option<Arc<Graph>>,
    graph_points: usize,
    tombstones: usize,
    /// Slots waiting to be linked into the graph, oldest first; searches scan them exactly.
    pending: Vec<u32>,
    /// The background thread is building a new graph: no slot is freed meanwhile (a freed
    /// slot could be reused with another vector after the builder copied the old one).
    rebuilding: bool,
}

struct Graph {
    hnsw: Hnsw<'static, f32, UnitCosine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Idle,
    /// Build a graph from every live vector (none yet, or too many tombstones).
    Build,
    /// Link pending vectors into the graph.
    Drain,
    /// Few vectors left: exact scans are faster, free the graph.
    DropGraph,
}

impl Shared {
    fn check(&self, vector: &[f32], what: &str) -> Result<(), VectorError> {
        if vector.len() != self.dims {
            return Err(VectorError::Rejected(format!(
                "{what} has {} dimensions; the index has {}",
                vector.len(),
                self.dims
            )));
        }
        if vector.iter().any(|x| !x.is_finite()) {
            return Err(VectorError::Rejected(format!(
                "{what} holds a value that is not finite"
            )));
        }
        Ok(())
    }

    fn search(&self, query: &SearchQuery, exact: bool) -> Result<Vec<Hit>, VectorError> {
        self.check(&query.vector, "the query vector")?;
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let vector = unit(&query.vector);
        let filter = Filter {
            source: query.source,
            parent_id: query.parent_id.as_ref(),
            id_prefix: query.visible.prefix(),
            min_certainty: query.min_certainty,
        };
        let params = &self.params;
        let ef_search = self.ef_search.load(Ordering::Relaxed);
        let state = self.read();
        let matching = state.matching_bound(&filter);
        if matching == 0 {
            return Ok(Vec::new());
        }
        let graph = state.graph.clone();
        let top = match graph {
            Some(graph) if !exact && matching >= params.exact_below => state
                .approximate(&graph, ef_search, &vector, query.limit, &filter)
                .unwrap_or_else(|| state.exact(&vector, query.limit, &filter)),
            _ => state.exact(&vector, query.limit, &filter),
        };
        // A slot can come from both the graph and the pending list: keep it once.
        let mut best = top.heap.into_vec();
        best.sort_by(|a, b| a.better(b).then_with(|| a.slot.cmp(&b.slot)));
        best.dedup_by_key(|c| c.slot);
        Ok(best
            .into_iter()
            .map(|c| Hit::from_cosine(c.id.clone(), f64::from(c.cos)))
            .collect())
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as each step made it;
        // serving on is better than failing every search after it.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn nudge(&self) {
        *self.wake.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake_cv.notify_one();
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The background thread: waits for a nudge, then works until there is nothing left.
    fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            {
                let mut woken = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
                while !*woken && !self.closed() {
                    woken = self
                        .wake_cv
                        .wait_timeout(woken, Duration::from_secs(1))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                *woken = false;
            }
            loop {
                if self.closed() {
                    return;
                }
                let job = self.read().job(&self.params);
                if job == Job::Idle {
                    break;
                }
                // The graph crate asserts its own invariants: should one fail, the index must
                // not stay half-updated nor stop being maintained. Dropping the graph puts it
                // back in a state every search answers exactly, and the next round rebuilds.
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match job {
                    Job::Idle => {}
                    Job::Build => self.rebuild(),
                    Job::Drain => self.drain(),
                    Job::DropGraph => self.drop_graph(),
                }));
                if outcome.is_err() {
                    tracing::error!(
                        ?job,
                        "the embedded vector index's background work panicked; the graph is \
                         dropped and rebuilt (searches scan exactly meanwhile)"
                    );
                    self.write().rebuilding = false;
                    self.drop_graph();
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    fn new_graph(&self, capacity: usize) -> Graph {
        Graph {
            hnsw: Hnsw::new(
                self.params.max_connections,
                capacity.max(1024),
                MAX_LAYERS,
                self.params.ef_construction,
                UnitCosine,
            ),
        }
    }

    /// Links vectors into a graph, on every core when there are enough of them.
    fn link(graph: &Graph, batch: &[(u32, Vec<f32>)]) {
        if batch.len() >= 64 {
            let items: Vec<(&[f32], usize)> = batch
                .iter()
                .map(|(slot, v)| (v.as_slice(), *slot as usize))
                .collect();
            graph.hnsw.parallel_insert_slice(&items);
        } else {
            for (slot, v) in batch {
                graph.hnsw.insert_slice((v, *slot as usize));
            }
        }
    }

    /// Links the oldest pending vectors into the current graph. The linking runs with no lock
    /// held (the crate's graph takes `&self` and locks per node), so searches and writes go on.
    fn drain(&self) {
        let (graph, taken, batch) = {
            let state = self.read();
            let Some(graph) = state.graph.clone() else {
                return;
            };
            let taken = state.pending.len().min(DRAIN_CHUNK);
            let batch: Vec<(u32, Vec<f32>)> = state.pending[..taken]
                .iter()
                .filter(|&&slot| state.slots[slot as usize].live)
                .map(|&slot| (slot, state.vector(slot, self.dims).to_vec()))
                .collect();
            (graph, taken, batch)
        };
        Self::link(&graph, &batch);
        let mut state = self.write();
        if !state.graph.as_ref().is_some_and(|g| Arc::ptr_eq(g, &graph)) {
            return;
        }
        let linked: HashSet<u32> = batch.iter().map(|(slot, _)| *slot).collect();
        // Only this thread removes from `pending`, so its first `taken` are the ones read.
        let done: Vec<u32> = state.pending.drain(..taken).collect();
        for slot in done {
            let record = &mut state.slots[slot as usize];
            if linked.contains(&slot) {
                record.place = Place::Graph;
                let dead = !record.live;
                state.graph_points += 1;
                if dead {
                    state.tombstones += 1;
                }
            } else {
                // Dead before it was linked: it was never in the graph, so it can be reused.
                record.place = Place::Nowhere;
                state.free.push(slot);
            }
        }
    }

    /// Builds a new graph from the live vectors, without holding the lock while linking, then
    /// swaps it in. Writes made meanwhile are either picked up by the builder (it reads the
    /// slots in order until it reaches the end) or left pending for the new graph.
    fn rebuild(&self) {
        let capacity = {
            let mut state = self.write();
            state.rebuilding = true;
            state.live + state.live / 8
        };
        let graph = self.new_graph(capacity);
        let mut built: Vec<bool> = Vec::new();
        let mut cursor = 0usize;
        loop {
            if self.closed() {
                self.write().rebuilding = false;
                return;
            }
            let batch: Vec<(u32, Vec<f32>)> = {
                let state = self.read();
                let end = (cursor + BUILD_CHUNK).min(state.slots.len());
                if cursor == end {
                    break;
                }
                let batch = (cursor..end)
                    .map(|slot| slot as u32)
                    .filter(|&slot| state.slots[slot as usize].live)
                    .map(|slot| (slot, state.vector(slot, self.dims).to_vec()))
                    .collect();
                cursor = end;
                batch
            };
            built.resize(cursor, false);
            Self::link(&graph, &batch);
            for (slot, _) in &batch {
                built[*slot as usize] = true;
            }
        }
        let old = {
            let mut state = self.write();
            let state = &mut *state;
            state.pending.clear();
            state.free.clear();
            state.graph_points = 0;
            state.tombstones = 0;
            for (i, record) in state.slots.iter_mut().enumerate() {
                let slot = i as u32;
                if built.get(i).copied().unwrap_or(false) {
                    record.place = Place::Graph;
                    state.graph_points += 1;
                    if !record.live {
                        // Killed after the builder copied it.
                        state.tombstones += 1;
                    }
                } else if record.live {
                    // Written after the builder passed it.
                    record.place = Place::Pending;
                    state.pending.push(slot);
                } else {
                    record.place = Place::Nowhere;
                    state.free.push(slot);
                }
            }
            state.rebuilding = false;
            state.graph.replace(Arc::new(graph))
        };
        // Freeing a large graph takes a while: not under the lock.
        drop(old);
    }

    fn drop_graph(&self) {
        let old = {
            let mut state = self.write();
            let state = &mut *state;
            // With no graph every dead slot is free: recomputed rather than patched, so this
            // also repairs the lists after an interrupted rebuild.
            state.free.clear();
            for (i, record) in state.slots.iter_mut().enumerate() {
                if !record.live {
                    state.free.push(i as u32);
                }
                record.place = Place::Nowhere;
            }
            state.pending.clear();
            state.graph_points = 0;
            state.tombstones = 0;
            state.graph.take()
        };
        drop(old);
    }
}

impl EmbeddedIndex {
    /// An empty index for vectors of `dimensions`. Starts one background thread (named
    /// `vector-index`) that builds and maintains the graph; it ends when the index is dropped.
    pub fn new(dimensions: usize, settings: &EmbeddedSettings) -> Self {
        let params = Params {
            exact_below: settings.exact_below,
            max_connections: settings.max_connections.clamp(2, MAX_CONNECTIONS),
            ef_construction: settings.ef_construction.max(1),
        };
        let shared = Arc::new(Shared {
            dims: dimensions,
            params,
            state: RwLock::new(State::new()),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            closed: AtomicBool::new(false),
            ef_search: AtomicUsize::new(settings.ef_search.max(1)),
        });
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("vector-index".to_owned())
            .spawn(move || worker.run())
            .expect("the vector index's background thread starts");
        Self { shared }
    }

    fn check(&self, vector: &[f32], what: &str) -> Result<(), VectorError> {
        self.shared.check(vector, what)
    }

    /// `upsert`, synchronously. Either every entry is applied or (on a bad vector) none.
    pub fn upsert_entries(&self, entries: Vec<VectorEntry>) -> Result<(), VectorError> {
        for entry in &entries {
            self.check(&entry.vector, &format!("the embedding of {}", entry.id))?;
        }
        // Normalizing is most of the work: done before taking the lock.
        let units: Vec<Vec<f32>> = entries.iter().map(|e| unit(&e.vector)).collect();
        {
            let mut state = self.shared.write();
            for (entry, unit) in entries.into_iter().zip(units) {
                state.upsert(entry, unit, self.shared.dims);
            }
        }
        self.shared.nudge();
        Ok(())
    }

    /// `delete`, synchronously.
    pub fn delete_ids(&self, ids: &[ContextId]) {
        {
            let mut state = self.shared.write();
            for id in ids {
                state.delete(id);
            }
        }
        self.shared.nudge();
    }

    /// `search`, synchronously: exact or approximate as the size and the filter call for.
    pub fn search_now(&self, query: &SearchQuery) -> Result<Vec<Hit>, VectorError> {
        self.search_with(query, false)
    }

    /// An exact scan whatever the size: the reference the approximate search is measured by.
    pub fn search_exact(&self, query: &SearchQuery) -> Result<Vec<Hit>, VectorError> {
        self.search_with(query, true)
    }

    fn search_with(&self, query: &SearchQuery, exact: bool) -> Result<Vec<Hit>, VectorError> {
        self.shared.search(query, exact)
    }

    /// Changes `ef_search` for the searches that start from now on (recall against speed).
    pub fn set_ef_search(&self, ef_search: usize) {
        self.shared
            .ef_search
            .store(ef_search.max(1), Ordering::Relaxed);
    }

    /// Blocks until the background thread has nothing left to do (the graph built, pending
    /// vectors linked): for tests and benchmarks, which want to measure the graph itself.
    pub fn settle(&self) {
        loop {
            let busy = {
                let state = self.shared.read();
                state.rebuilding || state.job(&self.shared.params) != Job::Idle
            };
            if !busy {
                return;
            }
            self.shared.nudge();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn stats(&self) -> EmbeddedStats {
        let state = self.shared.read();
        EmbeddedStats {
            live: state.live,
            slots: state.slots.len(),
            graph: state.graph.is_some(),
            graph_points: state.graph_points,
            tombstones: state.tombstones,
            pending: state.pending.len(),
            rebuilding: state.rebuilding,
            approx_bytes: state.approx_bytes(self.shared.dims, self.shared.params.max_connections),
        }
    }
}

impl Drop for EmbeddedIndex {
    fn drop(&mut self) {
        // The thread notices at its next step and exits; not joined, as a rebuild step can
        // take a moment and dropping the index must not wait for it.
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.nudge();
    }
}

#[async_trait]
impl VectorIndex for EmbeddedIndex {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn dimensions(&self) -> usize {
        self.shared.dims
    }

    async fn prepare(&self) -> Result<(), VectorError> {
        Ok(())
    }

    async fn upsert(&self, entries: Vec<VectorEntry>) -> Result<(), VectorError> {
        self.upsert_entries(entries)
    }

    async fn delete(&self, ids: Vec<ContextId>) -> Result<(), VectorError> {
        self.delete_ids(&ids);
        Ok(())
    }

    /// On the CPU pool: an exact scan of 100k vectors takes tens of milliseconds.
    async fn search(&self, query: &SearchQuery) -> Result<Vec<Hit>, VectorError> {
        let (shared, query) = (self.shared.clone(), query.clone());
        crate::cpu::run(move || shared.search(&query, false)).await
    }

    async fn ping(&self) -> Result<(), VectorError> {
        Ok(())
    }
}

#[cfg(test)]
impl State {
    /// The invariants the bookkeeping relies on; panics naming the first that fails.
    fn check_invariants(&self) {
        let live: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&s| self.slots[s as usize].live)
            .collect();
        assert_eq!(self.live, live.len(), "live count");
        assert_eq!(self.by_id.len(), live.len(), "one id per live slot");
        for (id, &slot) in &self.by_id {
            let record = &self.slots[slot as usize];
            assert!(
                record.live && &record.id == id,
                "by_id points at {id}'s live slot"
            );
        }
        let factory = live
            .iter()
            .filter(|&&s| self.slots[s as usize].source == Source::Factory)
            .count();
        assert_eq!(self.by_source, [factory, live.len() - factory], "by_source");
        let children: usize = self.by_parent.values().map(HashSet::len).sum();
        let with_parent = live
            .iter()
            .filter(|&&s| self.slots[s as usize].parent_id.is_some())
            .count();
        assert_eq!(children, with_parent, "by_parent");
        if self.rebuilding {
            return;
        }
        let free: HashSet<u32> = self.free.iter().copied().collect();
        assert_eq!(
            free.len(),
            self.free.len(),
            "no slot twice in the free list"
        );
        let pending: HashSet<u32> = self.pending.iter().copied().collect();
        assert_eq!(
            pending.len(),
            self.pending.len(),
            "no slot twice in pending"
        );
        let (mut in_graph, mut dead_in_graph) = (0, 0);
        for (i, record) in self.slots.iter().enumerate() {
            let slot = i as u32;
            assert_eq!(
                free.contains(&slot),
                !record.live && record.place == Place::Nowhere,
                "slot {slot} is free exactly when dead and in no graph"
            );
            assert_eq!(
                pending.contains(&slot),
                record.place == Place::Pending,
                "slot {slot} is pending exactly when listed"
            );
            if self.graph.is_none() {
                assert_eq!(record.place, Place::Nowhere, "no graph, slot {slot}");
            } else if record.live {
                assert_ne!(record.place, Place::Nowhere, "live slot {slot} reachable");
            }
            if record.place == Place::Graph {
                in_graph += 1;
                dead_in_graph += usize::from(!record.live);
            }
        }
        assert_eq!(self.graph_points, in_graph, "graph_points");
        assert_eq!(self.tombstones, dead_in_graph, "tombstones");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// splitmix64, with Box-Muller for normal deviates: deterministic test data, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn uniform(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let u = self.uniform().max(f64::MIN_POSITIVE);
            let v = self.uniform();
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }

        fn gaussian(&mut self, dims: usize) -> Vec<f32> {
            (0..dims).map(|_| self.normal() as f32).collect()
        }

        /// Half uniform on the sphere, half near one of `centres`.
        fn mixed(&mut self, centres: &[Vec<f32>]) -> Vec<f32> {
            let dims = centres[0].len();
            if self.next().is_multiple_of(2) {
                self.gaussian(dims)
            } else {
                let centre = &centres[(self.next() % centres.len() as u64) as usize];
                centre
                    .iter()
                    .map(|c| c + 0.35 * self.normal() as f32)
                    .collect()
            }
        }
    }

    fn settings(exact_below: usize) -> EmbeddedSettings {
        EmbeddedSettings {
            exact_below,
            max_connections: 12,
            ef_construction: 64,
            ef_search: 128,
        }
    }

    /// Every search answered by the graph (once it is built).
    const APPROXIMATE: usize = 0;
    /// Every search answered by an exact scan.
    const EXACT: usize = usize::MAX;

    fn id(raw: &str) -> ContextId {
        ContextId::parse(raw).unwrap()
    }

    fn entry(name: &str, version: i64, vector: Vec<f32>) -> VectorEntry {
        VectorEntry {
            id: id(name),
            version,
            vector,
            source: Source::Mcp,
            parent_id: None,
            data: Default::default(),
            metadata: Default::default(),
            updated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn query(vector: Vec<f32>, limit: usize) -> SearchQuery {
        SearchQuery {
            vector,
            limit,
            min_certainty: 0.0,
            source: None,
            parent_id: None,
            visible: crate::domain::Visible::to(&crate::domain::Principal::system()),
        }
    }

    fn ids(hits: &[Hit]) -> Vec<&str> {
        hits.iter().map(|h| h.id.as_str()).collect()
    }

    fn check(index: &EmbeddedIndex) {
        index.shared.read().check_invariants();
    }

    /// `n` entries `c<i>` from the mixed distribution, sources and parents by `shape`.
    fn fill(
        index: &EmbeddedIndex,
        rng: &mut Rng,
        dims: usize,
        n: usize,
        shape: impl Fn(usize, &mut VectorEntry),
    ) -> Vec<Vec<f32>> {
        let centres: Vec<Vec<f32>> = (0..20).map(|_| rng.gaussian(dims)).collect();
        let vectors: Vec<Vec<f32>> = (0..n).map(|_| rng.mixed(&centres)).collect();
        let entries: Vec<VectorEntry> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut e = entry(&format!("c{i}"), 1, v.clone());
                shape(i, &mut e);
                e
            })
            .collect();
        for batch in entries.chunks(500) {
            index.upsert_entries(batch.to_vec()).unwrap();
        }
        vectors
    }

    fn recall(approximate: &[Hit], exact: &[Hit]) -> (usize, usize) {
        let truth: BTreeSet<&str> = ids(exact).into_iter().collect();
        let found = ids(approximate)
            .into_iter()
            .filter(|i| truth.contains(i))
            .count();
        (found, truth.len())
    }

    #[test]
    fn exact_and_approximate_agree_on_small_data() {
        let dims = 32;
        let exact = EmbeddedIndex::new(dims, &settings(EXACT));
        let approximate = EmbeddedIndex::new(dims, &settings(APPROXIMATE));
        for index in [&exact, &approximate] {
            fill(index, &mut Rng(7), dims, 2000, |_, _| {});
            index.settle();
            check(index);
        }
        let stats = approximate.stats();
        assert!(
            stats.graph && stats.graph_points == 2000 && stats.pending == 0,
            "{stats:?}"
        );
        assert!(!exact.stats().graph);

        let mut rng = Rng(99);
        let centres: Vec<Vec<f32>> = (0..20).map(|_| rng.gaussian(dims)).collect();
        let (mut found, mut total) = (0, 0);
        for _ in 0..100 {
            let q = query(rng.mixed(&centres), 10);
            let truth = exact.search_now(&q).unwrap();
            let got = approximate.search_now(&q).unwrap();
            assert_eq!(truth.len(), 10);
            assert_eq!(got.len(), 10);
            // The exact scan of either index is the same answer.
            assert_eq!(approximate.search_exact(&q).unwrap(), truth);
            // What the graph finds is scored exactly as the scan scores it.
            for hit in &got {
                if let Some(same) = truth.iter().find(|t| t.id == hit.id) {
                    assert_eq!(same, hit);
                }
            }
            let (f, t) = recall(&got, &truth);
            found += f;
            total += t;
        }
        let recall = found as f64 / total as f64;
        assert!(recall >= 0.97, "recall@10 {recall}");
    }

    #[test]
    fn results_are_best_first_at_most_limit_and_scored_by_cosine() {
        for exact_below in [EXACT, APPROXIMATE] {
            let index = EmbeddedIndex::new(2, &settings(exact_below));
            // Angles 0, 30, 60, 90, 180 degrees from the query's direction.
            let at = |deg: f64| {
                let r = deg.to_radians();
                vec![r.cos() as f32 * 3.0, r.sin() as f32 * 3.0]
            };
            index
                .upsert_entries(vec![
                    entry("d60", 1, at(60.0)),
                    entry("d0", 1, at(0.0)),
                    entry("d180", 1, at(180.0)),
                    entry("d30", 1, at(30.0)),
                    entry("d90", 1, at(90.0)),
                ])
                .unwrap();
            index.settle();
            let hits = index.search_now(&query(vec![1.0, 0.0], 10)).unwrap();
            assert_eq!(ids(&hits), ["d0", "d30", "d60", "d90", "d180"]);
            for (hit, deg) in hits.iter().zip([0.0f64, 30.0, 60.0, 90.0, 180.0]) {
                let cos = deg.to_radians().cos();
                let want = Hit::from_cosine(hit.id.clone(), cos);
                assert!((hit.certainty - want.certainty).abs() < 1e-6, "{hit:?}");
                assert!((hit.distance - want.distance).abs() < 1e-6, "{hit:?}");
            }
            let two = index.search_now(&query(vec![1.0, 0.0], 2)).unwrap();
            assert_eq!(ids(&two), ["d0", "d30"]);
            assert!(
                index
                    .search_now(&query(vec![1.0, 0.0], 0))
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn hits_below_min_certainty_are_left_out() {
        for exact_below in [EXACT, APPROXIMATE] {
            let index = EmbeddedIndex::new(2, &settings(exact_below));
            index
                .upsert_entries(vec![
                    entry("same", 1, vec![2.0, 0.0]),
                    entry("orthogonal", 1, vec![0.0, 5.0]),
                    entry("opposite", 1, vec![-1.0, 0.0]),
                ])
                .unwrap();
            index.settle();
            let mut q = query(vec![1.0, 0.0], 10);
            q.min_certainty = 0.5;
            // Certainty 0.5 is cos 0: at the threshold is in.
            let hits = index.search_now(&q).unwrap();
            assert_eq!(ids(&hits), ["same", "orthogonal"]);
            q.min_certainty = 0.51;
            assert_eq!(ids(&index.search_now(&q).unwrap()), ["same"]);
            q.min_certainty = 1.0;
            assert_eq!(ids(&index.search_now(&q).unwrap()), ["same"]);
            q.vector = vec![-1.0, 0.01];
            q.min_certainty = 0.99;
            assert_eq!(ids(&index.search_now(&q).unwrap()), ["opposite"]);
        }
    }

    #[test]
    fn filters_match_exactly_and_lose_no_results() {
        let dims = 24;
        for exact_below in [EXACT, APPROXIMATE] {
            let index = EmbeddedIndex::new(dims, &settings(exact_below));
            // 2000 contexts: one in 3 from Factory, a few Factory ones under "rare", and 4
            // children of "p1" scattered through the collection.
            let vectors = fill(&index, &mut Rng(3), dims, 2000, |i, e| {
                e.source = if i % 3 == 0 {
                    Source::Factory
                } else {
                    Source::Mcp
                };
                if i % 600 == 17 {
                    e.parent_id = Some(id("p1"));
                } else if i % 400 == 5 {
                    e.parent_id = Some(id("rare"));
                }
            });
            index.settle();
            check(&index);
            let mut rng = Rng(11);
            for _ in 0..20 {
                let probe = rng.gaussian(dims);
                // A selective filter still returns every match there is.
                let mut q = query(probe.clone(), 10);
                q.parent_id = Some(id("p1"));
                let hits = index.search_now(&q).unwrap();
                let got: BTreeSet<&str> = ids(&hits).into_iter().collect();
                assert_eq!(got, BTreeSet::from(["c17", "c617", "c1217", "c1817"]));
                assert!(hits.windows(2).all(|w| w[0].certainty >= w[1].certainty));

                // Parent and source together.
                q.parent_id = Some(id("rare"));
                q.source = Some(Source::Factory);
                let hits = index.search_now(&q).unwrap();
                for hit in &hits {
                    let i: usize = hit.id.as_str()[1..].parse().unwrap();
                    assert!(
                        i % 400 == 5 && i.is_multiple_of(3) && i % 600 != 17,
                        "{hit:?}"
                    );
                }
                assert_eq!(
                    hits.len(),
                    (0..2000).filter(|i| i % 400 == 5 && i % 3 == 0).count()
                );

                // A broad filter: limit hits, all from the source, as good as the exact scan.
                let mut q = query(probe, 10);
                q.source = Some(Source::Factory);
                let hits = index.search_now(&q).unwrap();
                assert_eq!(hits.len(), 10);
                for hit in &hits {
                    let i: usize = hit.id.as_str()[1..].parse().unwrap();
                    assert_eq!(i % 3, 0, "{hit:?}");
                }
                let truth = index.search_exact(&q).unwrap();
                let (found, total) = recall(&hits, &truth);
                assert!(found + 1 >= total, "{found} of {total}");
            }
            // An unknown parent matches nothing.
            let mut q = query(vectors[0].clone(), 10);
            q.parent_id = Some(id("nobody"));
            assert!(index.search_now(&q).unwrap().is_empty());
        }
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        for exact_below in [EXACT, APPROXIMATE] {
            let index = EmbeddedIndex::new(2, &settings(exact_below));
            index
                .upsert_entries(vec![entry("c", 5, vec![1.0, 0.0])])
                .unwrap();
            index.settle();
            // A late update of version 4 with another vector is ignored ...
            index
                .upsert_entries(vec![entry("c", 4, vec![0.0, 1.0])])
                .unwrap();
            index.settle();
            let hits = index.search_now(&query(vec![1.0, 0.0], 10)).unwrap();
            assert_eq!(hits.len(), 1);
            assert!((hits[0].certainty - 1.0).abs() < 1e-6, "{hits:?}");
            // ... the same version again is applied (idempotent replays) ...
            index
                .upsert_entries(vec![entry("c", 5, vec![1.0, 0.0])])
                .unwrap();
            // ... and a newer one replaces it, also within one batch, in order.
            index
                .upsert_entries(vec![
                    entry("c", 7, vec![0.0, 1.0]),
                    entry("c", 6, vec![-1.0, 0.0]),
                ])
                .unwrap();
            index.settle();
            check(&index);
            let hits = index.search_now(&query(vec![0.0, 1.0], 10)).unwrap();
            assert_eq!(ids(&hits), ["c"]);
            assert!((hits[0].certainty - 1.0).abs() < 1e-6, "{hits:?}");
            assert_eq!(index.stats().live, 1);
        }
    }

    #[test]
    fn a_deleted_id_is_never_found_again() {
        let dims = 16;
        for exact_below in [EXACT, APPROXIMATE] {
            let index = EmbeddedIndex::new(dims, &settings(exact_below));
            let vectors = fill(&index, &mut Rng(5), dims, 1000, |_, _| {});
            index.settle();
            let gone: Vec<ContextId> = (0..1000).step_by(3).map(|i| id(&format!("c{i}"))).collect();
            index.delete_ids(&gone);
            // Deleting what is not there is not an error.
            index.delete_ids(&[id("never-there"), gone[0].clone()]);
            check(&index);
            for phase in ["at once", "settled"] {
                for v in vectors.iter().step_by(3).take(40) {
                    let hits = index.search_now(&query(v.clone(), 1000)).unwrap();
                    assert_eq!(hits.len(), 1000 - gone.len(), "{phase}");
                    assert!(hits.iter().all(|h| !gone.contains(&h.id)), "{phase}");
                }
                index.settle();
                check(&index);
            }
            // A deleted id can come back with a new upsert (a re-created context).
            index
                .upsert_entries(vec![entry("c0", 1, vectors[0].clone())])
                .unwrap();
            let hits = index.search_now(&query(vectors[0].clone(), 1)).unwrap();
            assert_eq!(ids(&hits), ["c0"]);
        }
    }

    #[test]
    fn a_replaced_vector_is_found_only_where_it_now_is() {
        let dims = 16;
        let index = EmbeddedIndex::new(dims, &settings(APPROXIMATE));
        let vectors = fill(&index, &mut Rng(8), dims, 1500, |_, _| {});
        index.settle();
        assert_eq!(index.stats().pending, 0);
        let old = vectors[42].clone();
        let new: Vec<f32> = old.iter().map(|x| -x).collect();
        index
            .upsert_entries(vec![entry("c42", 2, new.clone())])
            .unwrap();
        // Straight away (pending, not linked yet) and once linked into the graph.
        for phase in ["pending", "linked"] {
            let near_old = index.search_now(&query(old.clone(), 10)).unwrap();
            assert!(!ids(&near_old).contains(&"c42"), "{phase}: {near_old:?}");
            let near_new = index.search_now(&query(new.clone(), 10)).unwrap();
            assert_eq!(near_new[0].id.as_str(), "c42", "{phase}");
            assert!((near_new[0].certainty - 1.0).abs() < 1e-6);
            let all = index.search_now(&query(old.clone(), 1500)).unwrap();
            assert_eq!(all.iter().filter(|h| h.id.as_str() == "c42").count(), 1);
            index.settle();
        }
        let stats = index.stats();
        assert_eq!((stats.live, stats.tombstones), (1500, 1), "{stats:?}");
        check(&index);
    }

    #[test]
    fn an_update_with_the_same_vector_keeps_the_point_and_moves_the_filters() {
        let index = EmbeddedIndex::new(2, &settings(EXACT));
        let mut first = entry("c", 1, vec![1.0, 0.0]);
        first.parent_id = Some(id("p"));
        index.upsert_entries(vec![first]).unwrap();
        let mut second = entry("c", 2, vec![1.0, 0.0]);
        second.source = Source::Factory;
        second.parent_id = Some(id("q"));
        index.upsert_entries(vec![second]).unwrap();
        check(&index);
        assert_eq!(index.stats().slots, 1);
        let mut q = query(vec![1.0, 0.0], 10);
        q.parent_id = Some(id("p"));
        assert!(index.search_now(&q).unwrap().is_empty());
        q.parent_id = Some(id("q"));
        q.source = Some(Source::Factory);
        assert_eq!(ids(&index.search_now(&q).unwrap()), ["c"]);
        q.source = Some(Source::Mcp);
        assert!(index.search_now(&q).unwrap().is_empty());
    }

    #[test]
    fn many_replacements_trigger_a_rebuild_that_keeps_results_right() {
        let dims = 16;
        let index = EmbeddedIndex::new(dims, &settings(APPROXIMATE));
        let mut rng = Rng(21);
        fill(&index, &mut rng, dims, 1200, |_, _| {});
        index.settle();
        // Replace 600 vectors: 600 tombstones in a graph of 1800 points is past the share.
        let fresh: Vec<Vec<f32>> = (0..600).map(|_| rng.gaussian(dims)).collect();
        let entries: Vec<VectorEntry> = fresh
            .iter()
            .enumerate()
            .map(|(i, v)| entry(&format!("c{i}"), 2, v.clone()))
            .collect();
        index.upsert_entries(entries).unwrap();
        index.settle();
        check(&index);
        let stats = index.stats();
        assert!(stats.tombstones < MIN_TOMBSTONES, "{stats:?}");
        assert_eq!(stats.live, 1200);
        assert_eq!(stats.graph_points, 1200 + stats.tombstones);
        // Slots freed by the rebuild are reused by later writes.
        let slots = stats.slots;
        index
            .upsert_entries(vec![entry("extra", 1, rng.gaussian(dims))])
            .unwrap();
        index.settle();
        assert_eq!(index.stats().slots, slots);
        check(&index);
        for (i, v) in fresh.iter().enumerate().take(50) {
            let hits = index.search_now(&query(v.clone(), 10)).unwrap();
            assert_eq!(hits[0].id.as_str(), format!("c{i}"));
            let truth = index.search_exact(&query(v.clone(), 10)).unwrap();
            let (found, total) = recall(&hits, &truth);
            assert!(found + 1 >= total);
        }
    }

    #[test]
    fn the_graph_is_built_past_exact_below_and_dropped_well_under_it() {
        let dims = 8;
        let index = EmbeddedIndex::new(dims, &settings(500));
        let vectors = fill(&index, &mut Rng(2), dims, 400, |_, _| {});
        index.settle();
        assert!(!index.stats().graph);
        fill(&index, &mut Rng(3), dims, 600, |_, _| {});
        index.settle();
        let stats = index.stats();
        // `fill` names its entries c0.., so the second call replaced the first 400.
        assert!(stats.graph && stats.live == 600, "{stats:?}");
        check(&index);
        let gone: Vec<ContextId> = (0..400).map(|i| id(&format!("c{i}"))).collect();
        index.delete_ids(&gone);
        index.settle();
        let stats = index.stats();
        assert!(!stats.graph && stats.live == 200, "{stats:?}");
        check(&index);
        let hits = index.search_now(&query(vectors[0].clone(), 1000)).unwrap();
        assert_eq!(hits.len(), 200);
        assert!(hits.iter().all(|h| !gone.contains(&h.id)));
    }

    #[test]
    fn bad_vectors_are_rejected_and_nothing_of_the_batch_is_applied() {
        let index = EmbeddedIndex::new(3, &settings(EXACT));
        let err = index
            .upsert_entries(vec![
                entry("good", 1, vec![1.0, 0.0, 0.0]),
                entry("short", 1, vec![1.0, 0.0]),
            ])
            .unwrap_err();
        assert!(
            matches!(err, VectorError::Rejected(ref m) if m.contains("short")),
            "{err}"
        );
        let err = index
            .upsert_entries(vec![entry("nan", 1, vec![f32::NAN, 0.0, 0.0])])
            .unwrap_err();
        assert!(matches!(err, VectorError::Rejected(_)), "{err}");
        assert_eq!(index.stats().live, 0);
        let err = index.search_now(&query(vec![1.0, 0.0], 10)).unwrap_err();
        assert!(matches!(err, VectorError::Rejected(_)), "{err}");
    }

    #[test]
    fn an_all_zero_vector_has_cosine_zero_with_everything() {
        let index = EmbeddedIndex::new(2, &settings(EXACT));
        index
            .upsert_entries(vec![
                entry("zero", 1, vec![0.0, 0.0]),
                entry("x", 1, vec![1.0, 0.0]),
            ])
            .unwrap();
        let hits = index.search_now(&query(vec![0.0, 3.0], 10)).unwrap();
        for hit in hits {
            assert!((hit.certainty - 0.5).abs() < 1e-9, "{hit:?}");
        }
        let hits = index.search_now(&query(vec![0.0, 0.0], 10)).unwrap();
        assert_eq!(hits.len(), 2);
    }

    #[test]
    fn searches_run_while_writes_go_on() {
        let dims = 16;
        let index = Arc::new(EmbeddedIndex::new(dims, &settings(300)));
        fill(&index, &mut Rng(1), dims, 1000, |_, _| {});
        let deleted: Vec<ContextId> = (0..50).map(|i| id(&format!("c{i}"))).collect();
        index.delete_ids(&deleted);
        std::thread::scope(|scope| {
            let writer = Arc::clone(&index);
            scope.spawn(move || {
                let mut rng = Rng(77);
                for round in 0..20 {
                    let entries = (100..400)
                        .map(|i| entry(&format!("c{i}"), 2 + round, rng.gaussian(dims)))
                        .collect();
                    writer.upsert_entries(entries).unwrap();
                }
            });
            for seed in 0..2 {
                let reader = Arc::clone(&index);
                let deleted = &deleted;
                scope.spawn(move || {
                    let mut rng = Rng(1000 + seed);
                    for _ in 0..200 {
                        let hits = reader.search_now(&query(rng.gaussian(dims), 20)).unwrap();
                        assert_eq!(hits.len(), 20);
                        assert!(hits.iter().all(|h| !deleted.contains(&h.id)));
                        assert!(hits.windows(2).all(|w| w[0].certainty >= w[1].certainty));
                        let unique: BTreeSet<&str> = ids(&hits).into_iter().collect();
                        assert_eq!(unique.len(), hits.len());
                    }
                });
            }
        });
        index.settle();
        check(&index);
        assert_eq!(index.stats().live, 950);
    }

    #[tokio::test]
    async fn the_trait_methods_serve_the_index() {
        let index: Arc<dyn VectorIndex> = Arc::new(EmbeddedIndex::new(2, &settings(EXACT)));
        assert_eq!(index.backend(), "embedded");
        index.prepare().await.unwrap();
        index.ping().await.unwrap();
        index
            .upsert(vec![
                entry("a", 1, vec![1.0, 0.0]),
                entry("b", 1, vec![0.0, 1.0]),
            ])
            .await
            .unwrap();
        let hits = index.search(&query(vec![1.0, 0.1], 10)).await.unwrap();
        assert_eq!(ids(&hits), ["a", "b"]);
        index.delete(vec![id("a")]).await.unwrap();
        let hits = index.search(&query(vec![1.0, 0.1], 10)).await.unwrap();
        assert_eq!(ids(&hits), ["b"]);
    }
}
