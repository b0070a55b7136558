//! Logs: one tracing subscriber for the process. `RUST_LOG` wins over `log.level`.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; later calls (tests that start several apps) keep the first.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
