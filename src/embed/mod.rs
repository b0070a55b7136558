//! Embed: the vectors of texts, made by contextd itself, behind one trait with two backends: a
//! sentence-transformers model run in process ([`local`]) and any OpenAI-compatible
//! `/v1/embeddings` endpoint ([`openai`]). `embedder.backend: none` (the default) has no
//! embedder at all.
//!
//! What a context's text is lives in [`crate::domain::context_text`]; who embeds when (the
//! indexer, after commit; search, for a text query) lives above this layer. This layer only
//! turns texts into vectors.

pub mod local;
pub mod openai;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The embedder cannot answer now (still loading, a timeout, a 5xx or 429 after the
    /// retries): worth trying again later.
    #[error("the embedder is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// The embedder refused the request for good (a 4xx, an answer of the wrong shape): a bug
    /// or a misconfiguration, not worth retrying as is.
    #[error("the embedder refused the request: {0}")]
    Rejected(String),
}

#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// `local` or `openai`.
    fn backend(&self) -> &'static str;

    /// Which model makes its vectors (`local:<directory>`, `openai:<model>`): kept beside each
    /// server embedding, so that a change of model has them made again.
    fn model(&self) -> &str;

    /// The length of every vector it makes; `vector.dimensions` must equal it.
    fn dimensions(&self) -> usize;

    /// The most texts one call to [`Embedder::embed`] takes.
    fn batch_size(&self) -> usize;

    /// One vector per text, in the texts' order, each of [`Embedder::dimensions`] finite
    /// floats. Text beyond the model's input limit is cut off, never an error. At most
    /// [`Embedder::batch_size`] texts.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;

    /// [`Embedder::embed`] for background work (the server's embeddings of written contexts):
    /// an embedder that shares the CPU with requests (the local model) lets their work go
    /// first, so a text query never waits behind a queue of them.
    async fn embed_background(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed(texts).await
    }
}

/// The configured embedder, answering before it is ready: a local model loads in the
/// background at start, and until it has, every call is [`EmbedError::Unavailable`] (search by
/// vector and by keyword works meanwhile). A load that failed stays failed, with its reason.
pub struct Pending {
    backend: &'static str,
    model: String,
    dimensions: usize,
    batch_size: usize,
    ready: std::sync::OnceLock<Result<std::sync::Arc<dyn Embedder>, String>>,
    /// The last call found the embedder unavailable.
    failing: std::sync::atomic::AtomicBool,
    /// Told of every call: its seconds, or `None` when it failed.
    observer: Option<Observer>,
}

/// What is told of every call to an embedder: its seconds, or `None` when it failed.
pub type Observer = Box<dyn Fn(Option<f64>) + Send + Sync>;

impl Pending {
    /// An embedder of `backend` and `model` making `dimensions`-float vectors, not loaded yet.
    pub fn new(backend: &'static str, model: String, dimensions: usize, batch_size: usize) -> Self {
        Self {
            backend,
            model,
            dimensions,
            batch_size,
            ready: std::sync::OnceLock::new(),
            failing: std::sync::atomic::AtomicBool::new(false),
            observer: None,
        }
    }

    /// Tells `observer` of every call (the embedding metrics).
    pub fn observed_by(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// An embedder that is ready now.
    pub fn ready(embedder: std::sync::Arc<dyn Embedder>) -> Self {
        let pending = Self::new(
            embedder.backend(),
            embedder.model().to_owned(),
            embedder.dimensions(),
            embedder.batch_size(),
        );
        pending.finish(Ok(embedder));
        pending
    }

    /// The load is over: from now on calls go to `embedder`, or fail with its error.
    pub fn finish(&self, embedder: Result<std::sync::Arc<dyn Embedder>, String>) {
        let _ = self.ready.set(embedder);
    }

    /// `None` while loading; then whether it loaded.
    pub fn state(&self) -> Option<Result<(), &str>> {
        self.ready
            .get()
            .map(|ready| ready.as_ref().map(|_| ()).map_err(String::as_str))
    }

    /// Whether the last call found it unavailable (down, timing out, refusing with 5xx).
    pub fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl Embedder for Pending {
    fn backend(&self) -> &'static str {
        self.backend
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.call(texts, false).await
    }

    async fn embed_background(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.call(texts, true).await
    }
}

impl Pending {
    /// One call to the embedder once it is ready, observed.
    async fn call(&self, texts: &[String], background: bool) -> Result<Vec<Vec<f32>>, EmbedError> {
        match self.ready.get() {
            None => Err(EmbedError::Unavailable(anyhow::anyhow!(
                "the {} embedder is still loading",
                self.backend
            ))),
            Some(Err(reason)) => Err(EmbedError::Unavailable(anyhow::anyhow!(
                "the {} embedder failed to load: {reason}",
                self.backend
            ))),
            Some(Ok(embedder)) => {
                let started = std::time::Instant::now();
                let result = if background {
                    embedder.embed_background(texts).await
                } else {
                    embedder.embed(texts).await
                };
                if let Some(observer) = &self.observer {
                    observer(
                        result
                            .as_ref()
                            .ok()
                            .map(|_| started.elapsed().as_secs_f64()),
                    );
                }
                self.failing.store(
                    matches!(result, Err(EmbedError::Unavailable(_))),
                    std::sync::atomic::Ordering::Relaxed,
                );
                result
            }
        }
    }
}
