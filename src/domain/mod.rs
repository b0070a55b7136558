//! Domain: the vocabulary of contextd as plain types and pure functions.
//!
//! Everything here is free of I/O: no SQL, no HTTP, no clock reads. Every other layer imports
//! `domain`; `domain` imports none of them. Input is parsed into these types at the edge
//! (`ContextId::parse`, `Source::parse`), so the layers below never see an unchecked value.

mod context;
mod cursor;
pub mod embedding;
mod id;
mod json;
mod key;
mod merge;
mod page;
mod principal;
mod strategies;
mod text;
mod webhook;

pub use context::{
    ChangeType, Content, Context, ContextHistory, ContextSummary, EmbeddingSource, Refusal, Source,
    VersionInfo, VersionRecord,
};
pub use cursor::{Cursor, CursorError};
pub use id::{ContextId, InvalidId};
pub use json::{JsonError, JsonObject, count_values, value_kind};
pub use key::{KEY_CHARS, KEY_PREFIX, is_well_formed};
pub use merge::three_way_merge;
pub use page::{InvalidLimit, PageLimit};
pub use principal::{Principal, Role, Visible};
pub use strategies::{MergeInput, MergeStrategy, merge_data};
pub use text::{context_text, context_text_up_to};
pub use webhook::webhook_key;
