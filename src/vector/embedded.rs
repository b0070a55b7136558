//! The embedded vector index (placeholder while it is being written).
