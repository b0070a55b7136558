//! The Weaviate backend (placeholder while it is being written).
