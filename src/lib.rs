//! contextd keeps **contexts**, versioned JSON documents that AI agents read and write.
//!
//! A request flows down the layers and never up:
//! `api` (axum handlers: parse, call one service method, map errors to problem+json) ->
//! `service` (the context manager: versions, retention, preconditions, merges) ->
//! `cache` (L1, an in-process LRU) and `store` (the `Store` trait; Postgres today).
//! `domain` holds the pure types and rules every layer shares and imports nothing of theirs.
//! `sync` runs the outbox's readers (the Factory webhook pusher) beside the server.
//! `startup` wires it all from `config` and serves; `main` only parses the command line.

pub mod api;
pub mod background;
pub mod cache;
pub mod config;
pub mod domain;
pub mod error;
pub mod mcp;
pub mod metrics;
pub mod service;
pub mod startup;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod vector;
