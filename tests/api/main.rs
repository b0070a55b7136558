//! Integration tests: the real app on port 0 against real Postgres, one database per test
//! (cloned from a template migrated once), so the suite runs in parallel.

mod harness;
#[path = "../common/model.rs"]
mod model;
#[path = "../common/openai_fake.rs"]
mod openai_fake;
#[path = "../common/redis_servers.rs"]
mod redis_servers;
#[path = "../common/weaviate_fake.rs"]
mod weaviate_fake;

mod auth;
mod cache;
mod cli;
mod concurrency;
mod contexts;
mod embedder;
mod errors;
mod failures;
mod lifecycle;
mod limits;
mod mcp;
mod merge;
mod ops;
mod redis;
mod reindex;
mod retrieval;
mod search;
mod server_embeddings;
mod store;
mod sync;
mod tls;
mod transfer;
mod versions;
