//! The `contextd` command: parse the command line, load the settings, call the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use contextd::auth::keys::ApiKey;
use contextd::cache::TieredCache;
use contextd::config::Settings;
use contextd::domain::{Principal, Role};
use contextd::service::{ContextService, KeyService};
use contextd::startup::{open_store, shutdown_signal};

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
    /// Drop stored embeddings whose length is not `vector.dimensions`, make the server's
    /// embeddings again, and rebuild the index.
    ///
    /// Such embeddings (stored under other `vector.dimensions`) are left out of vector search,
    /// and `/readyz` says the vector check is `degraded`, until this drops them. A client's
    /// embedding cannot be made again, so it is dropped: the context and its current version
    /// stay, without an embedding. With an embedder configured, every embedding the server made
    /// is made again with it (after a change of model), as are those still missing; without
    /// one, the server's of another length are removed. It is a repair, not a write: no new
    /// version, and nothing in the change feed or the webhook. Then the index is rebuilt
    /// (Weaviate: every embedding upserted again; the embedded index is rebuilt at each start),
    /// so the next start is clean. Run it with the servers stopped (a running one stays
    /// degraded until it restarts); running it again drops nothing.
    Reindex,
    /// Manage API keys, in the store directly (no server needed).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print the OpenAPI document (the content of openapi/openapi.json).
    Openapi {
        /// Write it to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key and print it (the only time it is shown), then its id on stderr.
    Create {
        /// read (GETs, search, the feed), write (read and every write) or admin (write, cache
        /// warming and keys).
        #[arg(long)]
        role: String,
        /// What the key is for.
        #[arg(long, default_value = "cli")]
        name: String,
        /// The key sees and touches only contexts whose id starts with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// List every key (never the keys themselves), one tab-separated line each.
    List,
    /// Revoke a key by its id; every instance stops taking it within a second.
    Revoke {
        /// The key's id (`key_...`), as `keys list` shows it.
        id: String,
    },
    /// Print a fresh key without storing it, e.g. for `auth.bootstrap_key`.
    Generate,
}

async fn keys(settings: &Settings, command: KeysCommand) -> anyhow::Result<()> {
    if let KeysCommand::Generate = command {
        println!("{}", ApiKey::generate()?.expose());
        return Ok(());
    }
    let system = Principal::system();
    let keys = KeyService::new(open_store(settings).await?);
    match command {
        KeysCommand::Create { role, name, prefix } => {
            let role = Role::parse(&role)
                .ok_or_else(|| anyhow::anyhow!("--role must be read, write or admin"))?;
            let created = keys
                .create(&system, &name, role, prefix.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", created.key.expose());
            eprintln!(
                "made key {} ({}{}); it is shown only this once",
                created.record.id,
                role.as_str(),
                created
                    .record
                    .prefix
                    .as_deref()
                    .map(|p| format!(", prefix {p}"))
                    .unwrap_or_default()
            );
        }
        KeysCommand::List => {
            println!("id\tname\trole\tprefix\tcreated_at\tlast_used_at\trevoked_at");
            for k in keys
                .list(&system)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".to_owned())
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.name,
                    k.role.as_str(),
                    k.prefix.as_deref().unwrap_or("-"),
                    k.created_at.to_rfc3339(),
                    time(k.last_used_at),
                    time(k.revoked_at)
                );
            }
        }
        KeysCommand::Revoke { id } => {
            keys.revoke(&system, &id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!("revoked key {id}");
        }
        KeysCommand::Generate => unreachable!("needs no store; handled above"),
    }
    Ok(())
}

/// The context service for a command that does not serve: the store, and no Redis (an import
/// writes no cache entries; serving instances pick the data up as they read it).
async fn offline_service(settings: &Settings) -> anyhow::Result<ContextService> {
    let store = open_store(settings).await?;
    let cache = Arc::new(TieredCache::new(&settings.cache, store.clone(), None));
    Ok(ContextService::new(store, cache, settings))
}

/// The local embedder's kernels (candle) ask for the thread count on every operation and,
/// unless `RAYON_NUM_THREADS` says it, work it out from the CPU mask and `/proc/cpuinfo`: some
/// fifty file reads per query embedded. Said once here, as rayon itself counts (the cores this
/// process may use), so rayon's pools are as they would be without it.
fn name_the_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        // SAFETY: called first thing in `main`, before any other thread exists to read or
        // write the environment.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", cores.to_string()) };
    }
}

fn main() -> ExitCode {
    name_the_thread_count();
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
            let _ = writeln!(std::io::stderr(), "contextd: {e}");
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
            Command::Serve => contextd::startup::serve(&settings, shutdown_signal()).await,
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
            Command::Reindex => {
                let summary = contextd::startup::reindex(&settings).await?;
                tracing::info!(
                    backend = summary.backend,
                    dropped = summary.dropped,
                    remade = summary.remade,
                    indexed = summary.indexed,
                    "reindexed"
                );
                println!("{summary}");
                Ok(())
            }
            Command::Keys { command } => keys(&settings, command).await,
            Command::Openapi { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`, which panics when stderr is gone.
            let _ = writeln!(std::io::stderr(), "contextd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
