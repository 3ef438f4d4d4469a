//! The `waimai` binary: parses the command line and calls the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use waimai::api::Auth;
use waimai::domain::Role;
use waimai::store::Store;
use waimai::Config;

/// mimalloc instead of glibc malloc: a node allocates small objects on several threads (actor
/// messages, JSON, HTTP buffers); glibc's arenas showed in profiles (`_int_malloc`,
/// `malloc_consolidate`) and held freed memory back. With the crate's `override` feature the C
/// code linked in (SQLite, librdkafka) allocates from mimalloc as well.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "waimai",
    version,
    about = "Actor-based dispatch runtime for food delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: REST front door, actors, store.
    Serve {
        /// YAML file layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply the store schema and exit.
    Migrate {
        /// YAML file layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a signed bearer token.
    Token {
        /// customer, merchant, rider or admin.
        #[arg(long)]
        role: Role,
        /// Subject: the merchant's or rider's id, any customer id, or an operator name.
        #[arg(long)]
        sub: String,
        /// Lifetime in seconds (default: auth.token_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
        /// YAML file layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Drive a running node with simulated customers, merchants and riders over HTTP and
    /// websockets; print throughput, latency and invariant checks (exit 1 if one breaks).
    Loadgen(waimai::loadgen::LoadgenArgs),
    /// Run a dispatch policy in a seeded synthetic city, in simulated time, and print (and
    /// optionally write as JSON) what it did: click-to-door, pickup distance, time to assign,
    /// orders per rider-hour, late and unassigned orders, compute time per round.
    Simulate(waimai::sim::SimulateArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        waimai::telemetry::init_command_logs();
    }
    match cli.command {
        Command::Serve { config, listen } => {
            let mut cfg = Config::load(config.as_deref()).context("loading config")?;
            if let Some(l) = listen {
                cfg.server.listen = l; // the cluster derives this node's id and address from it
            }
            // Logs and traces (spans are exported when telemetry.otlp_endpoint is set); the
            // guard flushes buffered spans when serving ends.
            let _telemetry = waimai::telemetry::init(&cfg.telemetry).context("telemetry")?;
            let addr = cfg.server.listen.clone();
            let system = actix_rt::System::with_tokio_rt(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime")
            });
            system.block_on(async move {
                let listener = waimai::server::bind(&addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                waimai::serve(cfg, listener, shutdown_signal())
                    .await
                    .context("serving")
            })
        }
        Command::Migrate { config } => {
            let cfg = Config::load(config.as_deref()).context("loading config")?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let store = Store::connect(&cfg.store, cfg.shards.count)
                    .await
                    .context("connecting to the store")?;
                store.migrate().await.context("migrating")?;
                store.close().await;
                tracing::info!(backend = store.backend().name(), "schema is up to date");
                Ok(())
            })
        }
        Command::Token {
            role,
            sub,
            ttl,
            config,
        } => {
            let cfg = Config::load(config.as_deref()).context("loading config")?;
            let auth = Auth::new(&cfg.auth.jwt_secret);
            let token = auth
                .mint(role, &sub, ttl.unwrap_or(cfg.auth.token_ttl_secs))
                .context("signing token")?;
            println!("{token}");
            Ok(())
        }
        Command::Simulate(args) => {
            let params = args.params().context("simulation parameters")?;
            let report = waimai::sim::run(&params).context("simulation")?;
            print!("{}", report.table());
            if let Some(path) = args.json {
                let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
                std::fs::write(&path, json)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("JSON report: {}", path.display());
            }
            Ok(())
        }
        Command::Loadgen(args) => {
            let rt = args.runtime().context("the load generator's runtime")?;
            let json = args.json.clone();
            let max_errors = args.max_errors;
            let min_rate = args.min_rate;
            let report = rt
                .block_on(waimai::loadgen::run(args))
                .context("load generation")?;
            print!("{}", report.table());
            if let Some(path) = json {
                println!("JSON report: {}", path.display());
            }
            let broken = report.violations();
            if !broken.is_empty() {
                let names: Vec<&str> = broken.iter().map(|c| c.name.as_str()).collect();
                anyhow::bail!("{} invariant(s) BROKEN: {}", broken.len(), names.join("; "));
            }
            if let Some(min) = min_rate {
                let rate = report.primary_rate();
                if rate < min {
                    anyhow::bail!("{rate:.1}/s, below --min-rate {min}");
                }
            }
            if let Some(max) = max_errors {
                let errors = report.errors();
                if errors > max {
                    anyhow::bail!("{errors} error answers, more than --max-errors {max}");
                }
            }
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested: draining");
}
