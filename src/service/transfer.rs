//! `contextd export` and `contextd import`: every context with its history as JSON lines, so
//! data moves between stores (SQLite to Postgres and back) with ids, versions and times kept.
//!
//! One line is one context:
//! `{"context_id", "version", "created_at", "updated_at", "versions": [{"version", "source",
//! "parent_id", "data", "metadata", "embedding", "change_type", "changed_by", "changed_at",
//! "size_bytes"}, ...]}`, versions oldest first, `version` naming the current one.

use std::collections::HashSet;
use std::io::{BufRead, Write};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::ContextService;
use super::ServiceError;
use crate::domain::{
    ChangeType, Content, ContextHistory, ContextId, JsonObject, Source, VersionInfo, VersionRecord,
};
use crate::store::{HISTORY_PAGE, ImportSummary};

/// Contexts stored per transaction by an import: well inside a default Postgres's lock table
/// (`max_locks_per_transaction` 64 per connection, shared), and enough that commits do not
/// dominate.
pub const IMPORT_BATCH: usize = 256;

/// Bytes of exported lines stored per transaction at most, however few contexts they hold.
const IMPORT_BATCH_BYTES: usize = 64 << 20;

/// The checked lines of an import, in a file of its own (readable by its owner only) that is
/// removed when the import ends, however it ends.
struct Spool {
    path: std::path::PathBuf,
}

impl Spool {
    fn create() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "contextd-import-{}-{nanos}.jsonl",
            std::process::id()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path)?;
        Ok(Self { path })
    }

    fn file(&self) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new().write(true).open(&self.path)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The `context_id` a line names, for a message (the line was checked already).
fn line_id(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["context_id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextLine {
    context_id: String,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    versions: Vec<VersionLine>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionLine {
    version: i64,
    source: Source,
    parent_id: Option<String>,
    data: JsonObject,
    #[serde(default)]
    metadata: Option<JsonObject>,
    #[serde(default)]
    embedding: Option<Vec<f32>>,
    change_type: ChangeType,
    #[serde(default)]
    changed_by: Option<String>,
    changed_at: DateTime<Utc>,
    /// Written for readers; recomputed on import.
    #[serde(default)]
    size_bytes: Option<i64>,
}

impl From<&ContextHistory> for ContextLine {
    fn from(history: &ContextHistory) -> Self {
        Self {
            context_id: history.id.as_str().to_owned(),
            version: history.version,
            created_at: history.created_at,
            updated_at: history.updated_at,
            versions: history
                .versions
                .iter()
                .map(|record| VersionLine {
                    version: record.info.version,
                    source: record.content.source,
                    parent_id: record
                        .content
                        .parent_id
                        .as_ref()
                        .map(|p| p.as_str().to_owned()),
                    data: record.content.data.clone(),
                    metadata: Some(record.content.metadata.clone()),
                    embedding: record.content.embedding.clone(),
                    change_type: record.info.change_type,
                    changed_by: record.info.changed_by.clone(),
                    changed_at: record.info.changed_at,
                    size_bytes: Some(record.info.size_bytes),
                })
                .collect(),
        }
    }
}

/// Why an import was refused. Nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("reading the input: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Store(ServiceError),
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub contexts: usize,
    pub versions: usize,
}

fn micros(time: DateTime<Utc>) -> DateTime<Utc> {
    time.trunc_subsecs(6)
}

impl ContextService {
    /// Writes every context with its history to `out`, one JSON line each, in id order.
    pub async fn export(&self, out: &mut impl Write) -> Result<ExportSummary, ServiceError> {
        let mut summary = ExportSummary::default();
        let mut after: Option<String> = None;
        // A page at a time, each read in one snapshot (two statements per page): a context
        // written while the export runs is exported as it was when its page was read.
        loop {
            let page = self.store.histories(after.as_deref()).await?;
            for history in &page {
                let line = serde_json::to_string(&ContextLine::from(history))
                    .map_err(|e| ServiceError::Internal(e.into()))?;
                writeln!(out, "{line}").map_err(|e| ServiceError::Internal(e.into()))?;
                summary.contexts += 1;
                summary.versions += history.versions.len();
            }
            match page.last() {
                Some(last) if page.len() == HISTORY_PAGE => {
                    after = Some(last.id.as_str().to_owned())
                }
                _ => break,
            }
        }
        out.flush().map_err(|e| ServiceError::Internal(e.into()))?;
        Ok(summary)
    }

    /// Reads exported lines into the store. Every line is checked first, and nothing is
    /// stored when one is bad (it is named by its number); then the contexts are stored in
    /// batches of [`IMPORT_BATCH`], each batch one transaction, so an import of any size fits a
    /// default Postgres's lock table and memory stays bounded (the checked lines wait in a
    /// spool file of their own, not in memory). A run that fails mid-way leaves the batches
    /// before the failure stored; running it again stores the rest and changes nothing that
    /// is already as the file says.
    pub async fn import(&self, input: impl BufRead) -> Result<ImportSummary, ImportError> {
        let spool = Spool::create()?;
        {
            let mut out = std::io::BufWriter::new(spool.file()?);
            let mut seen = HashSet::new();
            for (index, line) in input.lines().enumerate() {
                let line_no = index + 1;
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let history = self
                    .parse_line(&line)
                    .map_err(|message| ImportError::Line {
                        line: line_no,
                        message,
                    })?;
                if !seen.insert(history.id) {
                    return Err(ImportError::Line {
                        line: line_no,
                        message: format!("context {} appears twice", line_id(&line)),
                    });
                }
                writeln!(out, "{line}")?;
            }
            out.flush()?;
        }
        let mut summary = ImportSummary::default();
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for line in std::io::BufReader::new(std::fs::File::open(&spool.path)?).lines() {
            let line = line?;
            let history = self
                .parse_line(&line)
                .map_err(|message| ImportError::Line { line: 0, message })?;
            batch_bytes += line.len();
            batch.push(history);
            if batch.len() >= IMPORT_BATCH || batch_bytes >= IMPORT_BATCH_BYTES {
                summary += self.import_batch(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            summary += self.import_batch(batch).await?;
        }
        Ok(summary)
    }

    async fn import_batch(&self, batch: Vec<ContextHistory>) -> Result<ImportSummary, ImportError> {
        self.store
            .import(batch)
            .await
            .map_err(|e| ImportError::Store(e.into()))
    }

    fn parse_line(&self, line: &str) -> Result<ContextHistory, String> {
        let parsed: ContextLine =
            serde_json::from_str(line).map_err(|e| format!("not an exported context: {e}"))?;
        let id = ContextId::parse(&parsed.context_id).map_err(|e| format!("context_id: {e}"))?;
        if parsed.versions.is_empty() {
            return Err(format!("context {id} has no versions"));
        }
        let mut versions = Vec::with_capacity(parsed.versions.len());
        let mut previous = 0;
        for v in parsed.versions {
            if v.version <= previous {
                return Err(format!(
                    "context {id}: versions must be listed once each, oldest first ({} after {previous})",
                    v.version
                ));
            }
            previous = v.version;
            let parent_id = v
                .parent_id
                .map(|p| ContextId::parse(&p).map_err(|e| format!("parent_id: {e}")))
                .transpose()?;
            let content = Content {
                source: v.source,
                parent_id,
                data: v.data,
                metadata: v.metadata.unwrap_or_default(),
                embedding: v.embedding,
            };
            self.check_content(&content)
                .and_then(|()| Self::check_changed_by(v.changed_by.as_deref()))
                .map_err(|e| format!("context {id} version {}: {e}", v.version))?;
            versions.push(VersionRecord {
                id: id.clone(),
                info: VersionInfo {
                    version: v.version,
                    change_type: v.change_type,
                    changed_by: v.changed_by,
                    changed_at: micros(v.changed_at),
                    size_bytes: content.size_bytes() as i64,
                },
                content,
            });
        }
        if !versions.iter().any(|v| v.info.version == parsed.version) {
            return Err(format!(
                "context {id}: its current version {} is not among its versions",
                parsed.version
            ));
        }
        if versions.last().map(|v| v.info.version) != Some(parsed.version) {
            return Err(format!(
                "context {id}: its current version {} is not its newest",
                parsed.version
            ));
        }
        Ok(ContextHistory {
            id,
            version: parsed.version,
            created_at: micros(parsed.created_at),
            updated_at: micros(parsed.updated_at),
            versions,
        })
    }
}
