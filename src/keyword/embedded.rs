//! The embedded keyword index: tantivy, in memory, one document per context.
//!
//! Each context is a document of its id (also what it is deleted by), source and parent (for
//! filters) and text (tokenized by tantivy's default analyzer: split on non-alphanumerics,
//! lowercased, very long tokens dropped). A query is the same analysis of its text, English
//! stopwords left out as Weaviate leaves them out, each word a `Should` clause scored by BM25 (tantivy's own, k1 = 1.2 and b = 0.75), with the filters as
//! clauses that must match and score nothing. Writes take one writer (a mutex: the indexer is
//! its only caller) and are visible to searches when the call returns.

use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::anyhow;
use async_trait::async_trait;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, STORED, STRING, Schema, TEXT, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term, doc};

use super::{KeywordEntry, KeywordError, KeywordHit, KeywordIndex, KeywordQuery};
use crate::domain::ContextId;

/// The writer's indexing memory: tantivy's least for one thread (15 MB). Past it, the writer flushes a
/// segment, so this bounds what indexing holds beyond the index itself.
const WRITER_MEMORY: usize = 15_000_000;

/// The most words of a query that count: a query is at most 4,096 characters, and each word
/// is a clause.
const MAX_QUERY_WORDS: usize = 256;

/// Query words that count for nothing: Weaviate's `en` stopword preset (the Lucene English
/// list), dropped from queries (not from texts) as Weaviate does for its `word` tokenization,
/// so that "the" or "of" in a query does not lift every context holding it.
const STOPWORDS: [&str; 33] = [
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
];

/// How far past the limit a search reads to break ties by id: up to this many times it.
const MAX_TIE_ROUNDS: usize = 16;

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    source: Field,
    parent: Field,
    text: Field,
}

struct Shared {
    index: Index,
    fields: Fields,
    writer: Mutex<IndexWriter<TantivyDocument>>,
    reader: IndexReader,
}

/// The in-memory keyword index. Cheap to clone (shared).
#[derive(Clone)]
pub struct EmbeddedKeywordIndex {
    shared: Arc<Shared>,
}

impl EmbeddedKeywordIndex {
    /// An empty index.
    pub fn new() -> anyhow::Result<Self> {
        let mut schema = Schema::builder();
        let fields = Fields {
            id: schema.add_text_field("id", STRING | STORED),
            source: schema.add_text_field("source", STRING),
            parent: schema.add_text_field("parent", STRING),
            text: schema.add_text_field("text", TEXT),
        };
        let index = Index::create_in_ram(schema.build());
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            shared: Arc::new(Shared {
                index,
                fields,
                writer: Mutex::new(writer),
                reader,
            }),
        })
    }

    /// How many contexts it holds, as searches see them.
    pub fn len(&self) -> u64 {
        self.shared.reader.searcher().num_docs()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shared {
    /// Applies deletions and new documents in one commit, then lets searches see it.
    fn apply(&self, delete: &[ContextId], add: &[KeywordEntry]) -> tantivy::Result<()> {
        let f = self.fields;
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        for id in delete.iter().chain(add.iter().map(|entry| &entry.id)) {
            writer.delete_term(Term::from_field_text(f.id, id.as_str()));
        }
        for entry in add {
            let mut document = doc!(
                f.id => entry.id.as_str(),
                f.source => entry.source.as_str(),
                f.text => entry.text.as_str(),
            );
            if let Some(parent) = &entry.parent_id {
                document.add_text(f.parent, parent.as_str());
            }
            writer.add_document(document)?;
        }
        writer.commit()?;
        drop(writer);
        self.reader.reload()
    }

    fn search(&self, query: &KeywordQuery) -> tantivy::Result<Vec<KeywordHit>> {
        let f = self.fields;
        let mut words: Vec<String> = Vec::new();
        let mut analyzer = self.index.tokenizer_for_field(f.text)?;
        analyzer.token_stream(&query.text).process(&mut |token| {
            if words.len() < MAX_QUERY_WORDS
                && !words.contains(&token.text)
                && !STOPWORDS.contains(&token.text.as_str())
            {
                words.push(token.text.clone());
            }
        });
        if words.is_empty() || query.limit == 0 {
            return Ok(Vec::new());
        }
        let any_word: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|word| {
                let term = Term::from_field_text(f.text, word);
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                (Occur::Should, query)
            })
            .collect();
        // The words as one clause that must match: beside a `Must`, a `Should` would only add
        // to the score, and a filter alone would find contexts without any of the words.
        let mut clauses: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, Box::new(BooleanQuery::new(any_word)))];
        let mut must = |query: Box<dyn Query>| {
            // A filter scores nothing: BM25 alone ranks.
            clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(query, 0.0))));
        };
        if let Some(source) = query.source {
            let term = Term::from_field_text(f.source, source.as_str());
            must(Box::new(TermQuery::new(term, IndexRecordOption::Basic)));
        }
        if let Some(parent) = &query.parent_id {
            let term = Term::from_field_text(f.parent, parent.as_str());
            must(Box::new(TermQuery::new(term, IndexRecordOption::Basic)));
        }
        if let Some((from, until)) = query.visible.id_range() {
            must(Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_text(f.id, from)),
                Bound::Excluded(Term::from_field_text(f.id, &until)),
            )));
        }
        let searcher = self.reader.searcher();
        let query_all = BooleanQuery::new(clauses);
        // tantivy breaks ties by document, not by id: ask for more until the hits that tie
        // with the last one asked for are all in (a bounded number of times).
        let mut wanted = query.limit + 1;
        let top = loop {
            let top = searcher.search(&query_all, &TopDocs::with_limit(wanted).order_by_score())?;
            let edge_tied = top.len() == wanted && top[wanted - 1].0 == top[query.limit - 1].0;
            if !edge_tied || wanted >= query.limit * MAX_TIE_ROUNDS {
                break top;
            }
            wanted *= 2;
        };
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let document: TantivyDocument = searcher.doc(address)?;
            let id = document
                .get_first(f.id)
                .and_then(|value| value.as_str())
                .and_then(|raw| ContextId::parse(raw).ok())
                .ok_or_else(|| {
                    tantivy::TantivyError::InternalError("a document without its id".into())
                })?;
            hits.push(KeywordHit {
                id,
                score: f64::from(score),
            });
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        hits.truncate(query.limit);
        Ok(hits)
    }
}

/// Runs an index write on a blocking thread; a panic in it carries on here.
async fn background(
    work: impl FnOnce() -> tantivy::Result<()> + Send + 'static,
) -> Result<(), KeywordError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(unavailable),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down: the write did not happen, which the next start redoes.
        Err(e) => Err(unavailable(e)),
    }
}

fn unavailable(e: impl std::fmt::Display) -> KeywordError {
    KeywordError::Unavailable(anyhow!("the embedded keyword index: {e}"))
}

#[async_trait]
impl KeywordIndex for EmbeddedKeywordIndex {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    // Writes are the indexer's background work: on a blocking thread of their own, never
    // holding the CPU pool that requests wait for (a batch of a thousand texts takes tens of
    // milliseconds). Searches, on the request path, run on the pool.
    async fn upsert(&self, entries: Vec<KeywordEntry>) -> Result<(), KeywordError> {
        let shared = self.shared.clone();
        background(move || shared.apply(&[], &entries)).await
    }

    async fn delete(&self, ids: Vec<ContextId>) -> Result<(), KeywordError> {
        let shared = self.shared.clone();
        background(move || shared.apply(&ids, &[])).await
    }

    async fn search(&self, query: &KeywordQuery) -> Result<Vec<KeywordHit>, KeywordError> {
        let (shared, query) = (self.shared.clone(), query.clone());
        crate::cpu::run(move || shared.search(&query))
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Principal, Role, Source, Visible};

    fn entry(id: &str, source: Source, parent: Option<&str>, text: &str) -> KeywordEntry {
        KeywordEntry {
            id: ContextId::parse(id).unwrap(),
            version: 1,
            text: text.to_owned(),
            source,
            parent_id: parent.map(|p| ContextId::parse(p).unwrap()),
        }
    }

    fn query(text: &str) -> KeywordQuery {
        KeywordQuery {
            text: text.to_owned(),
            limit: 10,
            source: None,
            parent_id: None,
            visible: Visible::to(&Principal::system()),
        }
    }

    fn ids(hits: &[KeywordHit]) -> Vec<&str> {
        hits.iter().map(|hit| hit.id.as_str()).collect()
    }

    async fn corpus() -> EmbeddedKeywordIndex {
        let index = EmbeddedKeywordIndex::new().unwrap();
        index
            .upsert(vec![
                entry(
                    "a:rust",
                    Source::Mcp,
                    None,
                    "Rust borrow checker and lifetimes in Rust",
                ),
                entry(
                    "a:tea",
                    Source::Factory,
                    Some("a:rust"),
                    "green tea brewing at 80 degrees",
                ),
                entry(
                    "b:rust",
                    Source::Factory,
                    None,
                    "rust on the old bicycle chain",
                ),
                entry(
                    "b:kv",
                    Source::Mcp,
                    None,
                    "Postgres VACUUM and autovacuum tuning",
                ),
            ])
            .await
            .unwrap();
        index
    }

    #[tokio::test]
    async fn bm25_ranks_by_term_frequency_and_field_length() {
        let index = corpus().await;
        let hits = index.search(&query("RUST")).await.unwrap();
        // Twice in its text beats once, case aside; texts without the word are not hits.
        assert_eq!(ids(&hits), ["a:rust", "b:rust"]);
        assert!(hits[0].score > hits[1].score && hits[1].score > 0.0);
        // Any word of the query finds; words in no text find nothing.
        assert_eq!(
            ids(&index.search(&query("tea vacuum")).await.unwrap()).len(),
            2
        );
        assert!(
            index
                .search(&query("zeppelin ?!"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(index.search(&query("  ")).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stopwords_in_a_query_count_for_nothing() {
        let index = corpus().await;
        // "the" and "and" are in texts, but a query's stopwords are dropped (as Weaviate's
        // `en` preset does): only "tea" counts.
        let hits = index.search(&query("the tea and")).await.unwrap();
        assert_eq!(ids(&hits), ["a:tea"]);
        assert_eq!(
            hits[0].score,
            index.search(&query("tea")).await.unwrap()[0].score
        );
        assert!(index.search(&query("The AND")).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn filters_and_the_prefix_narrow_without_changing_scores() {
        let index = corpus().await;
        let all = index.search(&query("rust")).await.unwrap();
        let factory = index
            .search(&KeywordQuery {
                source: Some(Source::Factory),
                ..query("rust")
            })
            .await
            .unwrap();
        assert_eq!(ids(&factory), ["b:rust"]);
        assert_eq!(
            factory[0].score, all[1].score,
            "a filter adds nothing to the score"
        );
        let children = index
            .search(&KeywordQuery {
                parent_id: Some(ContextId::parse("a:rust").unwrap()),
                ..query("tea rust")
            })
            .await
            .unwrap();
        assert_eq!(ids(&children), ["a:tea"]);
        let team_b = Principal {
            key_id: Some("k".into()),
            role: Role::Read,
            prefix: Some("b:".into()),
        };
        let visible = index
            .search(&KeywordQuery {
                visible: Visible::to(&team_b),
                ..query("rust tea")
            })
            .await
            .unwrap();
        assert_eq!(ids(&visible), ["b:rust"]);
    }

    #[tokio::test]
    async fn an_upsert_replaces_and_a_delete_removes() {
        let index = corpus().await;
        index
            .upsert(vec![entry(
                "b:rust",
                Source::Factory,
                None,
                "a brand new chain",
            )])
            .await
            .unwrap();
        assert_eq!(
            ids(&index.search(&query("rust")).await.unwrap()),
            ["a:rust"]
        );
        assert_eq!(
            ids(&index.search(&query("chain")).await.unwrap()),
            ["b:rust"]
        );
        index
            .delete(vec![
                ContextId::parse("b:rust").unwrap(),
                ContextId::parse("nope").unwrap(),
            ])
            .await
            .unwrap();
        assert!(index.search(&query("chain")).await.unwrap().is_empty());
        assert_eq!(index.len(), 3);
    }

    #[tokio::test]
    async fn the_limit_holds_and_ties_go_by_id() {
        let index = EmbeddedKeywordIndex::new().unwrap();
        let same: Vec<KeywordEntry> = ["c3", "c1", "c2"]
            .iter()
            .map(|id| entry(id, Source::Mcp, None, "identical words here"))
            .chain(
                ["c0", "c5", "c4"]
                    .iter()
                    .map(|id| entry(id, Source::Mcp, None, "identical words here")),
            )
            .collect();
        index.upsert(same).await.unwrap();
        let hits = index
            .search(&KeywordQuery {
                limit: 2,
                ..query("identical")
            })
            .await
            .unwrap();
        assert_eq!(ids(&hits), ["c0", "c1"]);
    }
}
