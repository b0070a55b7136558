//! Logs: one tracing subscriber for the process, writing to stderr (stdout carries data, as
//! `contextd export` and `contextd openapi` write it). `RUST_LOG` wins over `log.level`.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; later calls (tests that start several apps) keep the first.
pub fn init(level: &str) {
    // tokio_postgres reports server NOTICEs (a migration's "already exists, skipping") at info.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},tokio_postgres=warn")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        // A log line that cannot be written is dropped: by default the subscriber reports it
        // with `eprintln!`, which panics when stderr itself is gone (a closed pipe), taking
        // down whatever thread was logging, shutdown included.
        .log_internal_errors(false)
        // Colours for a terminal only, never into a log file or a container's log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
