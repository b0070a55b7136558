//! The arithmetic of a search: the distance the graph uses, unit vectors and certainty, the
//! filter a slot must pass, and the top-k of the candidates.

use super::*;

/// `1 - cos` for unit vectors: one dot product, no norms. Clamped at 0 because rounding can
/// push the dot of two equal unit vectors just above 1, and the crate asserts non-negative
/// distances.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// The dot product, written with independent accumulators so that the compiler vectorizes it
/// (a plain fold is a serial chain of additions it may not reorder).
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The vector scaled to length 1 (all zeros stays all zeros: its cosine with anything is 0,
/// as `super::cosine` says).
pub(super) fn unit(vector: &[f32]) -> Vec<f32> {
    let norm = vector
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return vector.to_vec();
    }
    vector
        .iter()
        .map(|x| (f64::from(*x) / norm) as f32)
        .collect()
}

/// Weaviate's certainty for a cosine, computed as `Hit::from_cosine` does.
pub(super) fn certainty(cos: f64) -> f64 {
    (1.0 + cos.clamp(-1.0, 1.0)) / 2.0
}

pub(super) fn source_index(source: Source) -> usize {
    match source {
        Source::Factory => 0,
        Source::Mcp => 1,
    }
}

/// A scored slot. Ordered worst first (lower cosine, then the greater id), so that a
/// `BinaryHeap` of them keeps the worst on top and the best `k` are easy to keep.
pub(super) struct Candidate<'a> {
    pub(super) cos: f32,
    pub(super) slot: u32,
    pub(super) id: &'a ContextId,
}

impl Candidate<'_> {
    /// Best first: higher cosine, then the smaller id (a stable order for ties).
    pub(super) fn better(&self, other: &Self) -> CmpOrdering {
        other
            .cos
            .total_cmp(&self.cos)
            .then_with(|| self.id.cmp(other.id))
    }
}

impl PartialEq for Candidate<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Candidate<'_> {}
impl PartialOrd for Candidate<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate<'_> {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // "Greater" means worse, so the heap's top is the one to drop.
        self.better(other)
    }
}

/// The best `k` candidates seen.
pub(super) struct TopK<'a> {
    pub(super) k: usize,
    pub(super) heap: BinaryHeap<Candidate<'a>>,
}

impl<'a> TopK<'a> {
    pub(super) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    pub(super) fn push(&mut self, candidate: Candidate<'a>) {
        if self.heap.len() < self.k {
            self.heap.push(candidate);
        } else if let Some(worst) = self.heap.peek()
            && candidate < *worst
        {
            self.heap.pop();
            self.heap.push(candidate);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

/// What a search asks of a slot.
pub(super) struct Filter<'q> {
    pub(super) source: Option<Source>,
    pub(super) parent_id: Option<&'q ContextId>,
    pub(super) id_prefix: Option<&'q str>,
    /// Cosines below this are left out (`min_certainty` turned into a cosine, checked again
    /// with the exact certainty arithmetic).
    pub(super) min_certainty: f64,
}

impl Filter<'_> {
    pub(super) fn matches(&self, slot: &Slot) -> bool {
        slot.live
            && self.source.is_none_or(|s| s == slot.source)
            && self
                .parent_id
                .is_none_or(|p| slot.parent_id.as_ref() == Some(p))
            && self
                .id_prefix
                .is_none_or(|p| slot.id.as_str().starts_with(p))
    }

    pub(super) fn high_enough(&self, cos: f32) -> bool {
        certainty(f64::from(cos)) >= self.min_certainty
    }
}
