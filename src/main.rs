//! The `contextd` command: parse the command line, load the settings, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use contextd::cache::TieredCache;
use contextd::config::Settings;
use contextd::service::ContextService;
use contextd::startup::{App, open_store, shutdown_signal};

#[derive(Parser)]
#[command(
    name = "contextd",
    version,
    about = "A versioned context store for AI agents"
)]
struct Cli {
    /// Config file (default: config/context.yaml, or CONTEXTD_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, then serve HTTP until SIGTERM or Ctrl-C.
    Serve,
    /// Apply migrations and exit.
    Migrate,
    /// Write every context with its history to stdout, one JSON line each.
    Export,
    /// Read what `export` wrote (from FILE, or stdin) into the store; ids, versions and times
    /// are kept, and importing twice changes nothing.
    Import {
        /// The JSON lines to read; stdin when absent.
        file: Option<PathBuf>,
    },
    /// Print the OpenAPI document (the content of openapi/openapi.json).
    Openapi {
        /// Write it to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// The context service for a command that does not serve: the store, and no Redis (an import
/// writes no cache entries; serving instances pick the data up as they read it).
async fn offline_service(settings: &Settings) -> anyhow::Result<ContextService> {
    let store = open_store(settings).await?;
    let cache = Arc::new(TieredCache::new(&settings.cache, store.clone(), None));
    Ok(ContextService::new(store, cache, settings))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi { output } = &cli.command {
        let json = contextd::api::openapi_json();
        return match output {
            None => {
                print!("{json}");
                ExitCode::SUCCESS
            }
            Some(path) => match std::fs::write(path, json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("contextd: cannot write {}: {e}", path.display());
                    ExitCode::FAILURE
                }
            },
        };
    }

    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("contextd: {e}");
            return ExitCode::from(2);
        }
    };
    contextd::telemetry::init(&settings.log.level);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => {
                App::build(&settings)
                    .await?
                    .run_until(shutdown_signal())
                    .await
            }
            Command::Migrate => open_store(&settings).await.map(|_| {
                tracing::info!("migrations are up to date");
            }),
            Command::Export => {
                let contexts = offline_service(&settings).await?;
                let mut out = std::io::BufWriter::new(std::io::stdout());
                let summary = contexts.export(&mut out).await?;
                tracing::info!(
                    contexts = summary.contexts,
                    versions = summary.versions,
                    "exported"
                );
                Ok(())
            }
            Command::Import { file } => {
                let contexts = offline_service(&settings).await?;
                let summary = match file {
                    Some(path) => {
                        let file = std::fs::File::open(&path)
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                        contexts.import(std::io::BufReader::new(file)).await
                    }
                    None => contexts.import(std::io::stdin().lock()).await,
                }?;
                tracing::info!(
                    imported = summary.imported,
                    unchanged = summary.unchanged,
                    "imported"
                );
                Ok(())
            }
            Command::Openapi { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("contextd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
