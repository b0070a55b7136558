//! What the index holds and how it changes: slots, the id map, pending vectors and
//! tombstones; exact scans over them; upserts and deletes.

use super::*;

impl State {
    pub(super) fn new() -> Self {
        Self {
            slots: Vec::new(),
            vectors: Vec::new(),
            by_id: HashMap::new(),
            by_parent: HashMap::new(),
            by_source: [0; 2],
            live: 0,
            free: Vec::new(),
            graph: None,
            graph_points: 0,
            tombstones: 0,
            pending: Vec::new(),
            rebuilding: false,
        }
    }

    pub(super) fn vector(&self, slot: u32, dims: usize) -> &[f32] {
        let at = slot as usize * dims;
        &self.vectors[at..at + dims]
    }

    /// Applies one entry whose vector is already unit-length.
    pub(super) fn upsert(&mut self, entry: VectorEntry, unit: Vec<f32>, dims: usize) {
        if let Some(&slot) = self.by_id.get(&entry.id) {
            let held = &self.slots[slot as usize];
            if entry.version < held.version {
                // A late update: the index already has something newer for this id.
                return;
            }
            if self.vector(slot, dims) == unit.as_slice() {
                // Same embedding (the common case: a new version of the data only): keep the
                // point, update what filters see.
                self.unlink_filters(slot);
                let held = &mut self.slots[slot as usize];
                held.version = entry.version;
                held.source = entry.source;
                held.parent_id = entry.parent_id;
                self.link_filters(slot);
                return;
            }
            self.kill(slot);
        }
        let place = if self.graph.is_some() {
            Place::Pending
        } else {
            Place::Nowhere
        };
        let record = Slot {
            id: entry.id.clone(),
            version: entry.version,
            source: entry.source,
            parent_id: entry.parent_id,
            live: true,
            place,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                let at = slot as usize * dims;
                self.vectors[at..at + dims].copy_from_slice(&unit);
                self.slots[slot as usize] = record;
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 vectors");
                self.vectors.extend_from_slice(&unit);
                self.slots.push(record);
                slot
            }
        };
        if place == Place::Pending {
            self.pending.push(slot);
        }
        self.live += 1;
        self.by_id.insert(entry.id, slot);
        self.link_filters(slot);
    }

    pub(super) fn link_filters(&mut self, slot: u32) {
        let record = &self.slots[slot as usize];
        self.by_source[source_index(record.source)] += 1;
        if let Some(parent) = &record.parent_id {
            self.by_parent
                .entry(parent.clone())
                .or_default()
                .insert(slot);
        }
    }

    pub(super) fn unlink_filters(&mut self, slot: u32) {
        let record = &self.slots[slot as usize];
        self.by_source[source_index(record.source)] -= 1;
        if let Some(parent) = &record.parent_id
            && let Some(children) = self.by_parent.get_mut(parent)
        {
            children.remove(&slot);
            if children.is_empty() {
                self.by_parent.remove(parent);
            }
        }
    }

    /// Makes a live slot dead. Its id mapping is the caller's business.
    pub(super) fn kill(&mut self, slot: u32) {
        self.unlink_filters(slot);
        let record = &mut self.slots[slot as usize];
        debug_assert!(record.live);
        record.live = false;
        self.live -= 1;
        match record.place {
            Place::Nowhere if !self.rebuilding => self.free.push(slot),
            // A rebuild recomputes the free list when it swaps.
            Place::Nowhere => {}
            // The background thread frees it when it reaches it in the pending list.
            Place::Pending => {}
            Place::Graph => self.tombstones += 1,
        }
    }

    pub(super) fn delete(&mut self, id: &ContextId) {
        if let Some(slot) = self.by_id.remove(id) {
            self.kill(slot);
        }
    }

    /// The next thing the background thread should do.
    pub(super) fn job(&self, params: &Params) -> Job {
        if self.rebuilding {
            return Job::Idle;
        }
        match &self.graph {
            None if self.live >= params.exact_below => Job::Build,
            None => Job::Idle,
            Some(_) if self.live < params.exact_below / 2 => Job::DropGraph,
            Some(_)
                if self.tombstones >= MIN_TOMBSTONES
                    && self.tombstones as f64 > self.graph_points as f64 * TOMBSTONE_SHARE =>
            {
                Job::Build
            }
            Some(_) if !self.pending.is_empty() => Job::Drain,
            Some(_) => Job::Idle,
        }
    }

    /// How many live slots can match the filter (an upper bound), cheaply.
    pub(super) fn matching_bound(&self, filter: &Filter<'_>) -> usize {
        let mut bound = self.live;
        if let Some(source) = filter.source {
            bound = bound.min(self.by_source[source_index(source)]);
        }
        if let Some(parent) = filter.parent_id {
            bound = bound.min(self.by_parent.get(parent).map_or(0, HashSet::len));
        }
        bound
    }

    pub(super) fn consider<'a>(
        &'a self,
        top: &mut TopK<'a>,
        slot: u32,
        query: &[f32],
        filter: &Filter<'_>,
    ) {
        let record = &self.slots[slot as usize];
        if !filter.matches(record) {
            return;
        }
        let cos = dot(query, self.vector(slot, query.len()));
        if filter.high_enough(cos) {
            top.push(Candidate {
                cos,
                slot,
                id: &record.id,
            });
        }
    }

    /// Exact search over every live slot that matches.
    pub(super) fn exact<'a>(
        &'a self,
        query: &[f32],
        limit: usize,
        filter: &Filter<'_>,
    ) -> TopK<'a> {
        let mut top = TopK::new(limit);
        match filter.parent_id {
            // A parent's children are few: visit only them.
            Some(parent) => {
                for &slot in self.by_parent.get(parent).into_iter().flatten() {
                    self.consider(&mut top, slot, query, filter);
                }
            }
            None => {
                for slot in 0..self.slots.len() as u32 {
                    self.consider(&mut top, slot, query, filter);
                }
            }
        }
        top
    }

    /// Approximate search: the graph's candidates plus an exact scan of the pending list.
    /// `None` when the filter is too selective for the graph to be worth it.
    pub(super) fn approximate<'a>(
        &'a self,
        graph: &Graph,
        ef_search: usize,
        query: &[f32],
        limit: usize,
        filter: &Filter<'_>,
    ) -> Option<TopK<'a>> {
        let matching = self.matching_bound(filter);
        let points = self.graph_points.max(1);
        // Of the graph's points, about this share is live and passes the filter: ask for
        // enough candidates that `limit` of them should survive.
        let share = (matching as f64 / points as f64).clamp(1.0 / points as f64, 1.0);
        let mut k = ((limit as f64 / share) * 1.25).ceil() as usize + 4;
        loop {
            k = k.min(points).max(limit);
            if k.saturating_mul(CANDIDATE_COST) > matching {
                return None;
            }
            let ef = ef_search.max(k);
            let found = graph.hnsw.search(query, k, ef);
            let mut top = TopK::new(limit);
            for neighbour in &found {
                let slot = neighbour.d_id as u32;
                // The graph's distance is computed over the same unit vector, but the slot's
                // own copy is the one exact scans use: score with it so both agree.
                self.consider(&mut top, slot, query, filter);
            }
            let exhausted = found.len() < k || k >= points;
            let below_threshold = found
                .last()
                .is_some_and(|n| !filter.high_enough(1.0 - n.distance));
            if top.len() >= limit || exhausted || below_threshold {
                // Pending vectors are not in the graph yet (or are being linked right now, so
                // the graph may have returned them already: those are skipped).
                let seen: HashSet<u32> = found.iter().map(|n| n.d_id as u32).collect();
                for &slot in &self.pending {
                    if !seen.contains(&slot) {
                        self.consider(&mut top, slot, query, filter);
                    }
                }
                return Some(top);
            }
            // Too many candidates were dead or filtered out: ask for more.
            k = k.saturating_mul(4);
        }
    }

    pub(super) fn approx_bytes(&self, dims: usize, max_connections: usize) -> usize {
        let slots = self.slots.len() * (std::mem::size_of::<Slot>() + 48);
        let vectors = self.vectors.capacity() * 4;
        let maps = self.by_id.len() * 64 + self.live * 16;
        // hnsw_rs keeps its own copy of each vector, and per link an `Arc` to a small
        // heap-allocated record (about 40 bytes with the Arc header); the bottom layer has
        // up to 2 * max_connections links, upper layers are small.
        let graph = self.graph_points * (dims * 4 + 2 * max_connections * 48 + 160);
        slots + vectors + maps + graph
    }
}
