//! Embed, `local`: a sentence-transformers BERT (all-MiniLM-L6-v2 and its kind) run in
//! process on the CPU, in pure Rust: the tokenizer of its `tokenizer.json` (the `tokenizers`
//! crate), the BERT encoder on candle, then the pooling and normalisation its
//! sentence-transformers configuration names. Nothing is downloaded: the model is a directory
//! on disk (`embedder.local.model_dir`).
//!
//! What it does is what the model's own configuration says, so that its vectors are those of
//! `SentenceTransformer(dir).encode(texts)` (tests/embedder_local.rs holds it to cosine 0.999
//! against them):
//! - `modules.json`: a Transformer, a Pooling, and optionally a Normalize (L2) module; a
//!   model with any other module (Dense, ...) is refused rather than embedded wrongly;
//! - `sentence_bert_config.json`: `max_seq_length` tokens per text (special tokens included),
//!   longer text cut off; else the least of `max_position_embeddings` and the tokenizer's
//!   `model_max_length`. Its `do_lower_case` lowercases the text first;
//! - `1_Pooling/config.json` (the Pooling module's folder): mean over the attention mask, or
//!   the `[CLS]` token; other modes are refused;
//! - `tokenizer.json`'s own truncation and padding are replaced: all-MiniLM-L6-v2's say 128
//!   tokens, padded to 128, which the reference does not use either.
//!
//! This layer only turns texts into vectors: loading the weights in the background and
//! checking `vector.dimensions` ([`inspect`], which reads only the small JSON files) happen
//! above it. The forward pass is blocking work: [`Embedder::embed`] runs it on
//! [`crate::cpu::run`], and its matrix products on a thread pool of its own, as wide as the
//! CPU pool, so that a batch never takes the core the pool leaves to the request runtime.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail, ensure};
use async_trait::async_trait;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;
use tokenizers::{PostProcessor, Tokenizer, TruncationParams};

use super::{EmbedError, Embedder};

/// Texts per [`Embedder::embed`] call. Batching pays up to about 8 texts (a third more per
/// second than one at a time; `cargo bench --bench embedder`), little beyond; and a call holds
/// the CPU pool for its whole batch, which on 2 cores is the pool, so a search's query waits
/// for it: 16 long texts (256 tokens) take about 2.5 s on one core, 16 short ones 0.2 s.
pub const BATCH_SIZE: usize = 16;

/// Tokens one forward pass takes at most (its texts times their padded length): past a few
/// thousand, a batch's attention scores (heads x length x length per text) outgrow the
/// caches, and a batch of long texts runs slower per text than one text alone.
const MAX_BATCH_TOKENS: usize = 2048;

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const WEIGHTS: &str = "model.safetensors";
const MODULES: &str = "modules.json";
const SENTENCE_CONFIG: &str = "sentence_bert_config.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// What start-up needs to know of a model before its weights load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The length of every vector it makes.
    pub dimensions: usize,
    /// Tokens per text, special tokens included; the rest of a longer text is cut off.
    pub max_tokens: usize,
}

/// Reads the model directory's small JSON files (not the weights, not the tokenizer) and says
/// what the model makes; an error names the file and what is wrong with it.
pub fn inspect(dir: &Path) -> anyhow::Result<ModelInfo> {
    Ok(ModelConfig::read(dir)?.info())
}

/// A loaded model: cheap to clone, shared by every call.
#[derive(Clone)]
pub struct LocalEmbedder {
    model: Arc<Model>,
    /// [`model_name`] of its directory.
    name: String,
}

/// What the model in `dir` is known as beside its embeddings: `local:` and the directory's
/// name (`local:all-MiniLM-L6-v2`). Another model put in the same directory is not noticed:
/// `contextd reindex` makes every server embedding again.
pub fn model_name(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    format!("local:{name}")
}

struct Model {
    config: ModelConfig,
    tokenizer: Tokenizer,
    bert: Bert,
    /// Where the forward pass runs its parallel parts (candle's matrix products, softmax and
    /// layer norm use rayon): as many threads as the CPU pool runs at once.
    threads: rayon::ThreadPool,
}

impl fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.model.config;
        f.debug_struct("LocalEmbedder")
            .field("dimensions", &config.dimensions)
            .field("max_tokens", &config.max_tokens)
            .field("pooling", &config.pooling)
            .field("normalize", &config.normalize)
            .finish_non_exhaustive()
    }
}

impl LocalEmbedder {
    /// Reads the configuration, the tokenizer and the weights (about 90 MB for
    /// all-MiniLM-L6-v2, under a second). Blocking.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let config = ModelConfig::read(dir)?;
        let tokenizer = load_tokenizer(&dir.join(TOKENIZER), &config)?;
        let weights = dir.join(WEIGHTS);
        let bytes = std::fs::read(&weights)
            .with_context(|| format!("{}: cannot read", weights.display()))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
            .with_context(|| format!("{}: not a safetensors file", weights.display()))?;
        let bert = Bert::load(vb, &config.bert)
            .with_context(|| format!("{}: not the weights of {}", weights.display(), CONFIG))?;
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(pool_width())
            .thread_name(|i| format!("embed-local-{i}"))
            .build()
            .context("cannot start the embedder's threads")?;
        Ok(Self {
            model: Arc::new(Model {
                config,
                tokenizer,
                bert,
                threads,
            }),
            name: model_name(dir),
        })
    }

    /// What the model makes.
    pub fn info(&self) -> ModelInfo {
        self.model.config.info()
    }

    /// One unit-length (when the model normalises) vector per text, in order; any number of
    /// texts, run in batches of [`BATCH_SIZE`] of similar length. Blocking, CPU-heavy.
    pub fn embed_blocking(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let model = &self.model;
        model.threads.install(|| model.embed(texts))
    }
}

/// As many threads as [`crate::cpu`] runs work at once: one less than the cores, at least one.
fn pool_width() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    cores.saturating_sub(1).max(1)
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn model(&self) -> &str {
        &self.name
    }

    fn dimensions(&self) -> usize {
        self.model.config.dimensions
    }

    fn batch_size(&self) -> usize {
        BATCH_SIZE
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.len() > BATCH_SIZE {
            return Err(EmbedError::Rejected(format!(
                "{} texts in one call; the local embedder takes at most {BATCH_SIZE}",
                texts.len()
            )));
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let embedder = self.clone();
        let texts = texts.to_vec();
        // A failure here is the model's own (a shape it cannot take), the same on every try.
        crate::cpu::run(move || embedder.embed_blocking(&texts))
            .await
            .map_err(|e| EmbedError::Rejected(format!("{e:#}")))
    }

    /// In jobs of about [`BACKGROUND_JOB_BYTES`] of text on the CPU pool, each after the
    /// requests' work waiting then: a text query waits for one such job at most.
    async fn embed_background(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for chunk in background_jobs(texts) {
            let embedder = self.clone();
            let chunk = chunk.to_vec();
            let made = crate::cpu::run_background(move || embedder.embed_blocking(&chunk))
                .await
                .map_err(|e| EmbedError::Rejected(format!("{e:#}")))?;
            vectors.extend(made);
        }
        Ok(vectors)
    }
}

/// About how much text one job of background embedding takes: one text of the model's whole
/// input (256 tokens is some 1.2 KB of English), or several short ones. A query that arrives
/// meanwhile waits for one such job at most: about 180 ms on one core of this machine, where
/// four texts of 200 words made it wait 0.7 s. Batching gains little beyond it (a batch of 32
/// long texts embeds no faster than one at a time; of short texts, 40% faster).
pub const BACKGROUND_JOB_BYTES: usize = 1024;

/// `texts` cut into jobs of about [`BACKGROUND_JOB_BYTES`] (at least one text each), in order.
fn background_jobs(texts: &[String]) -> Vec<&[String]> {
    let mut jobs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (at, text) in texts.iter().enumerate() {
        if at > start && bytes + text.len() > BACKGROUND_JOB_BYTES {
            jobs.push(&texts[start..at]);
            (start, bytes) = (at, 0);
        }
        bytes += text.len();
    }
    if start < texts.len() {
        jobs.push(&texts[start..]);
    }
    jobs
}

impl Model {
    fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut encodings = Vec::with_capacity(texts.len());
        for text in texts {
            let text = if self.config.lowercase {
                text.to_lowercase()
            } else {
                text.clone()
            };
            let encoding = self
                .tokenizer
                .encode_fast(text, true)
                .map_err(|e| anyhow!("tokenizing failed: {e}"))?;
            encodings.push(encoding);
        }
        // Longest first, as sentence-transformers batches: texts of a batch are of about one
        // length, so little of it is padding.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
        let lengths: Vec<usize> = order.iter().map(|&i| encodings[i].len()).collect();
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut start = 0;
        for size in batches(&lengths, BATCH_SIZE, MAX_BATCH_TOKENS) {
            let batch = &order[start..start + size];
            start += size;
            let tokens: Vec<Tokens<'_>> = batch
                .iter()
                .map(|&i| Tokens {
                    ids: encodings[i].get_ids(),
                    type_ids: encodings[i].get_type_ids(),
                    mask: encodings[i].get_attention_mask(),
                })
                .collect();
            for (&i, vector) in batch.iter().zip(self.forward(&tokens)?) {
                vectors[i] = vector;
            }
        }
        Ok(vectors)
    }

    /// One batch through the encoder, pooled and (if configured) normalised.
    fn forward(&self, batch: &[Tokens<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
        // At least one position, even for a tokenizer that makes nothing of an empty text:
        // a padding token, masked out, so that its pooled vector is zeros rather than a panic.
        let len = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0).max(1);
        let rows = batch.len();
        let mut ids = vec![0u32; rows * len];
        let mut type_ids = vec![0u32; rows * len];
        let mut mask = vec![0u32; rows * len];
        for (row, tokens) in batch.iter().enumerate() {
            let at = row * len;
            ids[at..at + tokens.ids.len()].copy_from_slice(tokens.ids);
            type_ids[at..at + tokens.type_ids.len()].copy_from_slice(tokens.type_ids);
            mask[at..at + tokens.mask.len()].copy_from_slice(tokens.mask);
        }
        let device = Device::Cpu;
        let hidden = self.bert.forward(
            &Tensor::from_vec(ids, (rows, len), &device)?,
            &Tensor::from_vec(type_ids, (rows, len), &device)?,
            &Tensor::from_slice(&mask, (rows, len), &device)?,
        )?;
        let dim = self.config.bert.hidden_size;
        let hidden = hidden.flatten_all()?.to_vec1::<f32>()?;
        let vectors = hidden
            .chunks_exact(len * dim)
            .zip(mask.chunks_exact(len))
            .map(|(states, mask)| {
                let mut vector = pool(self.config.pooling, states, mask, dim);
                if self.config.normalize {
                    normalize(&mut vector);
                }
                vector
            })
            .collect();
        Ok(vectors)
    }
}

/// The sizes of consecutive batches of texts of `lengths` tokens (longest first): at most
/// `most` texts, and at most `budget` tokens once padded to the batch's first (longest) text,
/// but never less than one text.
fn batches(lengths: &[usize], most: usize, budget: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut at = 0;
    while at < lengths.len() {
        let per_text = lengths[at].max(1);
        let size = (budget / per_text).clamp(1, most).min(lengths.len() - at);
        sizes.push(size);
        at += size;
    }
    sizes
}

/// One text's tokens, unpadded.
struct Tokens<'a> {
    ids: &'a [u32],
    type_ids: &'a [u32],
    mask: &'a [u32],
}

fn load_tokenizer(path: &Path, config: &ModelConfig) -> anyhow::Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| anyhow!("{}: not a tokenizer this build reads: {e}", path.display()))?;
    let special = tokenizer
        .get_post_processor()
        .map_or(0, |p| p.added_tokens(false));
    ensure!(
        config.max_tokens > special,
        "{}: {} tokens per text leave no room beside the {special} special tokens",
        path.display(),
        config.max_tokens
    );
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: config.max_tokens,
            ..TruncationParams::default()
        }))
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    // Padding is the batch's business (to its longest text), not a fixed length.
    tokenizer.with_padding(None);
    let vocabulary = tokenizer.get_vocab_size(true);
    ensure!(
        vocabulary <= config.bert.vocab_size,
        "{}: {vocabulary} tokens, more than the {} of {CONFIG}'s vocab_size",
        path.display(),
        config.bert.vocab_size
    );
    Ok(tokenizer)
}

// ---------------------------------------------------------------------------------------------
// The model directory's configuration.

/// Everything the JSON files of a model directory say that the embedder uses.
#[derive(Debug, Clone)]
struct ModelConfig {
    bert: BertConfig,
    pooling: Pooling,
    normalize: bool,
    max_tokens: usize,
    lowercase: bool,
    dimensions: usize,
}

impl ModelConfig {
    fn read(dir: &Path) -> anyhow::Result<Self> {
        ensure!(
            dir.is_dir(),
            "{}: no such directory (embedder.local.model_dir must name a sentence-transformers \
             model directory)",
            dir.display()
        );
        let bert = parse_bert(&read_json(&dir.join(CONFIG))?)
            .with_context(|| format!("{}", dir.join(CONFIG).display()))?;
        for file in [TOKENIZER, WEIGHTS] {
            let path = dir.join(file);
            ensure!(
                path.is_file(),
                "{}: missing (a model directory holds {CONFIG}, {TOKENIZER}, {WEIGHTS} and \
                 {MODULES}; weights in another format, such as pytorch_model.bin, are not read)",
                path.display()
            );
        }
        let modules = parse_modules(&read_json(&dir.join(MODULES))?)
            .with_context(|| format!("{}", dir.join(MODULES).display()))?;
        let pooling_path = dir.join(&modules.pooling).join(CONFIG);
        let (pooling, pooled_dimensions) = parse_pooling(&read_json(&pooling_path)?)
            .with_context(|| format!("{}", pooling_path.display()))?;
        if let Some(pooled) = pooled_dimensions {
            ensure!(
                pooled == bert.hidden_size,
                "{}: the pooling's embedding dimension {pooled} is not {CONFIG}'s hidden_size {}",
                pooling_path.display(),
                bert.hidden_size
            );
        }
        let sentence = read_optional(&dir.join(SENTENCE_CONFIG))?
            .map(|text| parse_sentence_config(&text))
            .transpose()
            .with_context(|| format!("{}", dir.join(SENTENCE_CONFIG).display()))?
            .unwrap_or_default();
        let tokenizer_limit = read_optional(&dir.join(TOKENIZER_CONFIG))?
            .map(|text| parse_tokenizer_limit(&text))
            .transpose()
            .with_context(|| format!("{}", dir.join(TOKENIZER_CONFIG).display()))?
            .flatten();
        Ok(Self {
            max_tokens: max_tokens(
                sentence.max_seq_length,
                tokenizer_limit,
                bert.max_position_embeddings,
            ),
            lowercase: sentence.do_lower_case,
            dimensions: bert.hidden_size,
            pooling,
            normalize: modules.normalize,
            bert,
        })
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            dimensions: self.dimensions,
            max_tokens: self.max_tokens,
        }
    }
}

fn read_json(path: &Path) -> anyhow::Result<String> {
    read_optional(path)?.ok_or_else(|| {
        anyhow!(
            "{}: missing (not a sentence-transformers model directory?)",
            path.display()
        )
    })
}

fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(e).context(format!("{}: cannot read", path.display()))),
    }
}

/// `config.json`: the BERT's shape.
#[derive(Debug, Clone, PartialEq)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: Activation,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// `gelu`: the exact one, with erf.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

fn parse_bert(text: &str) -> anyhow::Result<BertConfig> {
    #[derive(Deserialize)]
    struct Raw {
        vocab_size: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        intermediate_size: usize,
        hidden_act: String,
        max_position_embeddings: usize,
        #[serde(default = "two")]
        type_vocab_size: usize,
        #[serde(default = "bert_eps")]
        layer_norm_eps: f64,
        position_embedding_type: Option<String>,
    }
    fn two() -> usize {
        2
    }
    fn bert_eps() -> f64 {
        1e-12
    }
    let model_type: Option<String> = serde_json::from_str::<serde_json::Value>(text)
        .context("not JSON")?
        .get("model_type")
        .and_then(|v| v.as_str().map(str::to_owned));
    ensure!(
        model_type.as_deref() == Some("bert"),
        "model_type is {}, not \"bert\": only BERT models are supported",
        model_type.map_or("missing".to_owned(), |t| format!("{t:?}"))
    );
    let raw: Raw = serde_json::from_str(text).context("not a BERT configuration")?;
    if let Some(kind) = raw.position_embedding_type.as_deref() {
        ensure!(
            kind == "absolute",
            "position_embedding_type {kind:?} is not supported (only \"absolute\")"
        );
    }
    let hidden_act = match raw.hidden_act.as_str() {
        "gelu" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => bail!("hidden_act {other:?} is not supported (gelu, gelu_new or relu)"),
    };
    ensure!(
        raw.num_attention_heads > 0 && raw.hidden_size.is_multiple_of(raw.num_attention_heads),
        "hidden_size {} is not a multiple of num_attention_heads {}",
        raw.hidden_size,
        raw.num_attention_heads
    );
    ensure!(
        raw.max_position_embeddings > 0,
        "max_position_embeddings is 0"
    );
    Ok(BertConfig {
        vocab_size: raw.vocab_size,
        hidden_size: raw.hidden_size,
        num_hidden_layers: raw.num_hidden_layers,
        num_attention_heads: raw.num_attention_heads,
        intermediate_size: raw.intermediate_size,
        hidden_act,
        max_position_embeddings: raw.max_position_embeddings,
        type_vocab_size: raw.type_vocab_size,
        layer_norm_eps: raw.layer_norm_eps,
    })
}

/// `modules.json`, as far as the embedder follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Modules {
    /// The Pooling module's folder (holding its `config.json`).
    pooling: PathBuf,
    /// Whether a Normalize module follows it.
    normalize: bool,
}

fn parse_modules(text: &str) -> anyhow::Result<Modules> {
    #[derive(Deserialize)]
    struct Module {
        #[serde(default)]
        path: String,
        #[serde(rename = "type")]
        kind: String,
    }
    let modules: Vec<Module> = serde_json::from_str(text).context("not a list of modules")?;
    // `sentence_transformers.models.Pooling` and the like: the class name is what counts.
    let name = |m: &Module| m.kind.rsplit('.').next().unwrap_or_default().to_owned();
    let names: Vec<String> = modules.iter().map(name).collect();
    match names.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["Transformer", "Pooling"] | ["Transformer", "Pooling", "Normalize"] => {}
        _ => bail!(
            "modules {names:?} are not supported: only Transformer, Pooling and an optional \
             Normalize, in that order"
        ),
    }
    ensure!(
        modules[0].path.is_empty(),
        "the Transformer module is in {:?}; only one at the directory's top is supported",
        modules[0].path
    );
    Ok(Modules {
        pooling: PathBuf::from(&modules[1].path),
        normalize: modules.len() == 3,
    })
}

/// How one text's token vectors become its vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    /// The mean of the token vectors the attention mask keeps.
    Mean,
    /// The first token's (`[CLS]`) vector.
    Cls,
}

/// A Pooling module's `config.json`, in either spelling sentence-transformers writes: the
/// `pooling_mode` of 5.x and later, or the older `pooling_mode_*_tokens` flags. Also its
/// embedding dimension, where it gives one.
fn parse_pooling(text: &str) -> anyhow::Result<(Pooling, Option<usize>)> {
    let value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    let object = value.as_object().context("not a JSON object")?;
    let modes: Vec<String> = match object.get("pooling_mode") {
        Some(serde_json::Value::String(mode)) => vec![mode.clone()],
        Some(serde_json::Value::Array(modes)) => modes
            .iter()
            .map(|m| {
                m.as_str()
                    .map(str::to_owned)
                    .context("pooling_mode is not a string")
            })
            .collect::<anyhow::Result<_>>()?,
        Some(other) => bail!("pooling_mode {other} is neither a string nor a list"),
        None => {
            const FLAGS: [(&str, &str); 6] = [
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_max_tokens", "max"),
                ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                ("pooling_mode_weightedmean_tokens", "weightedmean"),
                ("pooling_mode_lasttoken", "lasttoken"),
            ];
            FLAGS
                .iter()
                .filter(|(flag, _)| object.get(*flag) == Some(&serde_json::Value::Bool(true)))
                .map(|(_, mode)| (*mode).to_owned())
                .collect()
        }
    };
    let pooling = match &modes[..] {
        [mode] if mode == "mean" => Pooling::Mean,
        [mode] if mode == "cls" => Pooling::Cls,
        [mode] => bail!("pooling mode {mode:?} is not supported (only mean and cls)"),
        [] => bail!("no pooling mode is set"),
        _ => bail!("pooling modes {modes:?} together are not supported (one of mean or cls)"),
    };
    let dimensions = ["embedding_dimension", "word_embedding_dimension"]
        .iter()
        .find_map(|key| object.get(*key))
        .map(|v| {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .context("the embedding dimension is not a count")
        })
        .transpose()?;
    Ok((pooling, dimensions))
}

/// `sentence_bert_config.json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

fn parse_sentence_config(text: &str) -> anyhow::Result<SentenceConfig> {
    serde_json::from_str(text).context("not a sentence-transformers configuration")
}

/// `tokenizer_config.json`'s `model_max_length`, when it is a real limit (transformers writes
/// 1e30 and the like for "none").
fn parse_tokenizer_limit(text: &str) -> anyhow::Result<Option<usize>> {
    let value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    Ok(value
        .get("model_max_length")
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| usize::try_from(n).ok()))
}

/// Tokens per text: the sentence-transformers setting if there is one, else the least of the
/// tokenizer's limit and the positions; never more positions than the model has (a longer
/// input would not run at all).
fn max_tokens(max_seq_length: Option<usize>, tokenizer: Option<usize>, positions: usize) -> usize {
    max_seq_length
        .or(tokenizer)
        .map_or(positions, |n| n.min(positions))
}

// ---------------------------------------------------------------------------------------------
// Pooling and normalisation: plain arithmetic on one text's token vectors.

/// `states`: one text's token vectors, `dim` floats each, padding included; `mask`: 1 for a
/// token, 0 for padding. The mean divides by at least 1e-9 tokens, as sentence-transformers
/// does, so a text of no tokens pools to zeros.
fn pool(pooling: Pooling, states: &[f32], mask: &[u32], dim: usize) -> Vec<f32> {
    match pooling {
        Pooling::Cls => states[..dim].to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0f32; dim];
            let mut count = 0f32;
            for (token, &keep) in states.chunks_exact(dim).zip(mask) {
                if keep != 0 {
                    count += 1.0;
                    for (s, x) in sum.iter_mut().zip(token) {
                        *s += x;
                    }
                }
            }
            let count = count.max(1e-9);
            sum.iter_mut().for_each(|s| *s /= count);
            sum
        }
    }
}

/// L2 normalisation as `torch.nn.functional.normalize`: a zero vector stays zero.
fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    vector.iter_mut().for_each(|x| *x /= norm);
}

// ---------------------------------------------------------------------------------------------
// The BERT encoder (transformers' `BertModel` without its pooler), on candle.

struct Bert {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    activation: Activation,
    heads: usize,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Bert {
    fn load(vb: VarBuilder, c: &BertConfig) -> candle_core::Result<Self> {
        // Weights saved from a BertFor... model carry a `bert.` prefix.
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let e = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                Ok(Layer {
                    query: candle_nn::linear(h, h, a.pp("self.query"))?,
                    key: candle_nn::linear(h, h, a.pp("self.key"))?,
                    value: candle_nn::linear(h, h, a.pp("self.value"))?,
                    attention_out: candle_nn::linear(h, h, a.pp("output.dense"))?,
                    attention_norm: candle_nn::layer_norm(h, eps, a.pp("output.LayerNorm"))?,
                    intermediate: candle_nn::linear(
                        h,
                        c.intermediate_size,
                        l.pp("intermediate.dense"),
                    )?,
                    output: candle_nn::linear(c.intermediate_size, h, l.pp("output.dense"))?,
                    output_norm: candle_nn::layer_norm(h, eps, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            words: candle_nn::embedding(c.vocab_size, h, e.pp("word_embeddings"))?,
            positions: candle_nn::embedding(
                c.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_types: candle_nn::embedding(c.type_vocab_size, h, e.pp("token_type_embeddings"))?,
            embeddings_norm: candle_nn::layer_norm(h, eps, e.pp("LayerNorm"))?,
            layers,
            activation: c.hidden_act,
            heads: c.num_attention_heads,
        })
    }

    /// `ids`, `type_ids`, `mask`: (batch, tokens); the last hidden states, (batch, tokens,
    /// hidden).
    fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (_, len) = ids.dims2()?;
        let positions = Tensor::arange(0u32, len as u32, ids.device())?;
        let x = self
            .words
            .forward(ids)?
            .add(&self.token_types.forward(type_ids)?)?
            .broadcast_add(&self.positions.forward(&positions)?)?;
        let mut x = self.embeddings_norm.forward(&x)?;
        // What padding adds to the attention scores: 0 for a token, the least f32 for padding
        // (as transformers does), so that softmax gives padding no weight.
        let bias = mask
            .to_dtype(DType::F32)?
            .affine(f64::from(f32::MAX), -f64::from(f32::MAX))?
            .unsqueeze(1)?
            .unsqueeze(1)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &bias)?;
        }
        Ok(x)
    }

    fn layer(&self, l: &Layer, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, len, hidden) = x.dims3()?;
        let head = hidden / self.heads;
        let split = |t: Tensor| {
            t.reshape((batch, len, self.heads, head))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = 1.0 / (head as f64).sqrt();
        let q = split((l.query.forward(x)? * scale)?)?;
        let k = split(l.key.forward(x)?)?;
        let v = split(l.value.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, len, hidden))?;
        let attended = l
            .attention_norm
            .forward(&l.attention_out.forward(&context)?.add(x)?)?;
        let inner = l.intermediate.forward(&attended)?;
        let inner = match self.activation {
            Activation::Gelu => inner.gelu_erf()?,
            Activation::GeluTanh => inner.gelu()?,
            Activation::Relu => inner.relu()?,
        };
        l.output_norm
            .forward(&l.output.forward(&inner)?.add(&attended)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_jobs_hold_about_a_kilobyte_of_text_and_at_least_one_text() {
        let texts =
            |sizes: &[usize]| -> Vec<String> { sizes.iter().map(|n| "x".repeat(*n)).collect() };
        let sizes = |jobs: Vec<&[String]>| -> Vec<Vec<usize>> {
            jobs.iter()
                .map(|job| job.iter().map(String::len).collect())
                .collect()
        };
        assert_eq!(
            sizes(background_jobs(&texts(&[300, 300, 300, 300, 100]))),
            [vec![300, 300, 300], vec![300, 100]]
        );
        assert_eq!(
            sizes(background_jobs(&texts(&[5000, 10, 5000]))),
            [vec![5000], vec![10], vec![5000]]
        );
        assert!(background_jobs(&[]).is_empty());
    }

    const MINILM_CONFIG: &str = r#"{
        "_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": false,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 384,
        "initializer_range": 0.02, "intermediate_size": 1536, "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
        "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute",
        "transformers_version": "4.8.2", "type_vocab_size": 2, "use_cache": true,
        "vocab_size": 30522}"#;

    const MINILM_MODULES: &str = r#"[
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn minilm_s_config_is_a_six_layer_bert_of_384() {
        let config = parse_bert(MINILM_CONFIG).unwrap();
        assert_eq!(config.hidden_size, 384);
        assert_eq!(config.num_hidden_layers, 6);
        assert_eq!(config.num_attention_heads, 12);
        assert_eq!(config.hidden_act, Activation::Gelu);
        assert_eq!(config.max_position_embeddings, 512);
    }

    #[test]
    fn a_model_that_is_not_a_bert_is_refused_by_name() {
        let roberta = MINILM_CONFIG.replace("\"bert\"", "\"roberta\"");
        let error = parse_bert(&roberta).unwrap_err().to_string();
        assert!(error.contains("\"roberta\", not \"bert\""), "{error}");
        let error = parse_bert(r#"{"hidden_size": 384}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("model_type is missing"), "{error}");
        let swish = MINILM_CONFIG.replace("\"gelu\"", "\"swish\"");
        let error = parse_bert(&swish).unwrap_err().to_string();
        assert!(error.contains("hidden_act \"swish\""), "{error}");
    }

    #[test]
    fn minilm_s_modules_pool_then_normalise() {
        let modules = parse_modules(MINILM_MODULES).unwrap();
        assert_eq!(modules.pooling, PathBuf::from("1_Pooling"));
        assert!(modules.normalize);
        let without: Vec<serde_json::Value> = serde_json::from_str(MINILM_MODULES).unwrap();
        let without = serde_json::to_string(&without[..2]).unwrap();
        assert!(!parse_modules(&without).unwrap().normalize);
    }

    #[test]
    fn a_module_the_embedder_cannot_run_is_refused() {
        let dense = MINILM_MODULES.replace(
            "sentence_transformers.models.Normalize",
            "sentence_transformers.models.Dense",
        );
        let error = parse_modules(&dense).unwrap_err().to_string();
        assert!(
            error.contains("\"Dense\"") && error.contains("not supported"),
            "{error}"
        );
    }

    #[test]
    fn pooling_reads_both_spellings_of_the_mode() {
        let legacy = r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false,
            "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false}"#;
        assert_eq!(parse_pooling(legacy).unwrap(), (Pooling::Mean, Some(384)));
        let current =
            r#"{"embedding_dimension": 768, "pooling_mode": "cls", "include_prompt": true}"#;
        assert_eq!(parse_pooling(current).unwrap(), (Pooling::Cls, Some(768)));
        assert_eq!(
            parse_pooling(r#"{"pooling_mode": ["mean"]}"#).unwrap(),
            (Pooling::Mean, None)
        );
    }

    #[test]
    fn pooling_modes_other_than_mean_and_cls_are_refused() {
        let error = parse_pooling(r#"{"pooling_mode": "max"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"max\" is not supported"), "{error}");
        let both = r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#;
        let error = parse_pooling(both).unwrap_err().to_string();
        assert!(error.contains("together"), "{error}");
        let error = parse_pooling(r#"{"pooling_mode_mean_tokens": false}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no pooling mode"), "{error}");
    }

    #[test]
    fn the_token_limit_is_max_seq_length_else_the_least_of_the_others() {
        let sentence =
            parse_sentence_config(r#"{"max_seq_length": 256, "do_lower_case": false}"#).unwrap();
        assert_eq!(sentence.max_seq_length, Some(256));
        assert_eq!(max_tokens(sentence.max_seq_length, Some(512), 512), 256);
        assert_eq!(max_tokens(None, Some(128), 512), 128);
        assert_eq!(max_tokens(None, None, 512), 512);
        assert_eq!(max_tokens(Some(1024), None, 512), 512);
        let huge = r#"{"model_max_length": 1000000000000000019884624838656}"#;
        assert_eq!(parse_tokenizer_limit(huge).unwrap(), None);
        assert_eq!(
            parse_tokenizer_limit(r#"{"model_max_length": 512}"#).unwrap(),
            Some(512)
        );
    }

    #[test]
    fn mean_pooling_averages_only_the_tokens_the_mask_keeps() {
        // Three positions of two floats; the last is padding.
        let states = [1.0, 2.0, 3.0, 6.0, 100.0, -100.0];
        assert_eq!(pool(Pooling::Mean, &states, &[1, 1, 0], 2), vec![2.0, 4.0]);
        assert_eq!(pool(Pooling::Cls, &states, &[1, 1, 0], 2), vec![1.0, 2.0]);
        assert_eq!(pool(Pooling::Mean, &states, &[0, 0, 0], 2), vec![0.0, 0.0]);
    }

    #[test]
    fn batches_hold_at_most_the_token_budget_and_at_least_one_text() {
        // Longest first: 300 tokens alone exceed a budget of 256 but still make a batch.
        assert_eq!(
            batches(&[300, 100, 100, 60, 60, 60, 10], 16, 256),
            vec![1, 2, 4]
        );
        assert_eq!(batches(&[10; 40], 16, 2048), vec![16, 16, 8]);
        assert_eq!(batches(&[0, 0], 16, 2048), vec![2]);
        assert!(batches(&[], 16, 2048).is_empty());
    }

    #[test]
    fn normalising_makes_unit_length_and_leaves_zero_alone() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0; 3];
        normalize(&mut zero);
        assert_eq!(zero, vec![0.0; 3]);
    }

    #[test]
    fn inspect_names_the_missing_file() {
        let dir = std::env::temp_dir().join(format!("contextd-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = format!("{:#}", inspect(&dir).unwrap_err());
        assert!(error.contains("config.json: missing"), "{error}");
        std::fs::write(dir.join(CONFIG), MINILM_CONFIG).unwrap();
        let error = format!("{:#}", inspect(&dir).unwrap_err());
        assert!(error.contains("tokenizer.json: missing"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
