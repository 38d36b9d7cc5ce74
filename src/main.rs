//! The `creditd` command: `serve`, `config check`, and subcommands that talk to a running
//! server (see `cli`).

use clap::{Parser, Subcommand};
use creditd::cli::{self, ClientCommand};
use creditd::config::Config;
use creditd::engine::clock::SystemClock;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Every request allocates a few dozen small blocks (ids, entries, answers, the protobuf
/// messages) on one thread and frees many on the journal writer's: glibc's allocator spent
/// a fifth of the request thread's time there, mostly consolidating free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "creditd",
    version,
    about = "gRPC metering sidecar and quota server: exact credits, every limit at once, durable."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded store in ./creditd-data unless configured otherwise).
    Serve(ServeArgs),
    /// Validate configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "CREDITD_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (server.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory of the embedded store (store.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// sync (answer after the write is durable) or async (store.durability).
    #[arg(long)]
    durability: Option<String>,
    /// text or json (log.format).
    #[arg(long)]
    log_format: Option<String>,
    /// Any setting as section.key=value; repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file (with the environment applied) and print the result.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    creditd::allocator::set_up_process();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config { command: ConfigCommand::Check { file } } => {
            match Config::load(Some(&file), std::env::vars(), &[]) {
                Ok(config) => {
                    println!("{} is valid. Effective configuration:\n", file.display());
                    println!("{}", toml::to_string_pretty(&config).expect("config serializes"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Client(command) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            runtime.block_on(cli::run(command))
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut overrides = args.set.clone();
    let mut flag = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            overrides.push(format!("{key}={v}"));
        }
    };
    flag("server.listen", args.listen);
    flag("store.data_dir", args.data_dir.map(|p| p.display().to_string()));
    flag("store.durability", args.durability);
    flag("log.format", args.log_format);
    let config = match Config::load(args.config.as_deref(), std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    creditd::telemetry::init_logging(&config.log);
    config.server.runtime_builder().build().expect("tokio runtime").block_on(run_server(config))
}

async fn run_server(config: Config) -> ExitCode {
    tracing::warn!(
        "no API keys are configured: creditd accepts only loopback connections and every caller has full access"
    );
    let running = match creditd::app::start(&config, Arc::new(SystemClock::new())).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match running.run_until_signal().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("shutdown could not flush everything: {e}");
            ExitCode::FAILURE
        }
    }
}
