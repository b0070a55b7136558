//! What a service call comes to when it does not succeed, in the domain's words: no status
//! codes here. `crate::error` maps every variant to its problem+json (an exhaustive match, so
//! a new outcome cannot go unanswered), for REST and MCP alike.

use crate::domain::{Refusal, Role};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request breaks a rule of the resource: a bad id, limit, vector, name.
    #[error("{0}")]
    Invalid(String),
    /// Something the caller sent back that this server did not give out (a page cursor).
    #[error("{0}")]
    Malformed(String),
    /// The caller's role is below what the call needs.
    #[error("this needs a key with the {} role or above", .0.as_str())]
    NeedsRole(Role),
    /// The caller may not do this whatever its role (make a key wider than its own).
    #[error("{0}")]
    NotPermitted(String),
    /// Nothing by that name for this caller (not a context: those are [`Self::Refused`]).
    #[error("{0}")]
    NotFound(String),
    /// The rules refused a change or a read of the context `id`.
    #[error("{refusal:?} for context {id}")]
    Refused { refusal: Refusal, id: String },
    /// The context would be over `limits.max_context_bytes`.
    #[error("the context is {actual} bytes, over the limit of {limit}")]
    TooLarge { limit: usize, actual: usize },
    /// A backend the call needs cannot answer now (the vector index, the CPU pool).
    #[error("{0}")]
    Unavailable(String),
    /// The store failed; what it means for the caller is the store's to say.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Item `index` of a batch (`contexts[index]` of an ingest) was refused for `error`.
    #[error("contexts[{index}]: {error}")]
    InItem {
        index: usize,
        error: Box<ServiceError>,
    },
    /// A bug or a broken invariant.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ServiceError {
    /// A refusal of the rules about the context `id`.
    pub fn refused(refusal: Refusal, id: &str) -> Self {
        ServiceError::Refused {
            refusal,
            id: id.to_owned(),
        }
    }
}
