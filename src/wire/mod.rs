//! Wire types: the shapes requests and answers take on the wire, shared by the transports that
//! carry them (REST in `crate::api`, MCP tools in `crate::mcp`, the webhook push in
//! `crate::sync`) so that each is written, and parsed, once. They know serde and the OpenAPI
//! schema; the services below them know neither, and never use this module.

pub mod contexts;
pub mod merge;
pub mod search;
mod sync;

pub use sync::{ChangeOut, FactoryContextOut};
