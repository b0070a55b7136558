//! Where the tests find the local embedder's model: all-MiniLM-L6-v2, which
//! `scripts/fetch-model.sh` puts in target/models (the test command runs it).

use std::path::{Path, PathBuf};

/// `$CONTEXTD_TEST_MODEL_DIR`, else `target/models/all-MiniLM-L6-v2`. No model is a failure
/// that says what to run, never a skip.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("CONTEXTD_TEST_MODEL_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/models/all-MiniLM-L6-v2"),
        PathBuf::from,
    );
    assert!(
        dir.join("model.safetensors").is_file(),
        "no all-MiniLM-L6-v2 at {}: run scripts/fetch-model.sh (it puts the model in \
         target/models/all-MiniLM-L6-v2), or set CONTEXTD_TEST_MODEL_DIR to a copy of it",
        dir.display()
    );
    dir
}
