//! contextd keeps **contexts**, versioned JSON documents that AI agents read and write.
//!
//! A request flows down the layers and never up:
//! - `api` (axum handlers: parse, call one service method, answer) and `mcp` (the same
//!   services as MCP tools, resources and subscriptions) parse what arrives into the shapes
//!   of `wire`, which both share (as does `sync`'s webhook push);
//! - `service` (the context manager: versions, retention, preconditions, merges, sync,
//!   search) decides, and answers a `ServiceError` in the domain's words, which `error` maps
//!   to problem+json;
//! - `cache` (L1 in process, L2 behind the `SharedLayer` trait: Redis or none, L3 a Postgres
//!   table), `store` (a trait per concern: contexts, the L3 table, the change log,
//!   embeddings, keys, health; on Postgres or SQLite) and `vector` (the `VectorIndex` trait,
//!   embedded or Weaviate) keep and find.
//!
//! `domain` holds the pure types and rules every layer shares (ids, JSON objects, the merge,
//! `Visible`, `PageLimit`, the embedding checks) and imports nothing of theirs. `sync` runs
//! the outbox's readers beside the server (the Factory webhook pusher, the vector indexer),
//! woken by the store's commit signal. `startup` wires it all from `config` and serves;
//! `main` only parses the command line. No two modules use each other
//! (`scripts/module-graph.sh` prints the graph and fails on a cycle).

pub mod api;
pub mod auth;
pub mod background;
pub mod cache;
pub mod config;
pub mod cpu;
pub mod domain;
pub mod embed;
pub mod error;
pub mod keyword;
pub mod mcp;
pub mod metrics;
pub mod server;
pub mod service;
pub mod startup;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod vector;
pub mod wire;
