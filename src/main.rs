//! The `switchyard` command: `serve`, `check`, `sink` (and, as it lands, `ctl`).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use switchyard::config;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An outbound MTA where tenants and campaigns are first-class queues"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the embedded default config when no --config is given).
    Serve {
        /// Config file (switchyard.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load and validate the config and every shaping file it names.
    Check {
        /// Config file (switchyard.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// A fast SMTP sink for tests and benchmarks that can answer like real providers.
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2626")]
        listen: std::net::SocketAddr,
        /// Replies by sender domain, recipient domain, peer IP and chance (KumoMTA's
        /// responses.toml format plus [[rule]] entries).
        #[arg(long)]
        responses: Option<PathBuf>,
        /// Append one JSON line per transaction to this file.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Name in the banner and EHLO reply.
        #[arg(long, default_value = "sink.switchyard.test")]
        hostname: String,
    },
}

fn sink(
    listen: std::net::SocketAddr,
    responses: Option<PathBuf>,
    record: Option<PathBuf>,
    hostname: String,
) -> ExitCode {
    let responses = match responses {
        None => None,
        Some(path) => {
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|text| switchyard::sink::Responses::parse(&text));
            match parsed {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("{}:{e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let options = switchyard::sink::SinkOptions {
        listen,
        responses,
        record,
        hostname,
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(switchyard::sink::run(options)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard sink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&std::path::Path>) -> Option<config::LoadedConfig> {
    match config::load(path) {
        Ok(c) => Some(c),
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            None
        }
    }
}

/// Warnings of the shaping files: options not applied, and MX-rollup blocks DNS could not
/// place (looked up with the config's `[dns]`).
fn check_shaping(c: &config::LoadedConfig) -> Vec<String> {
    let shaping = match switchyard::shaping::load(c) {
        Ok(s) => s,
        Err(errors) => return errors.iter().map(ToString::to_string).collect(),
    };
    let mut warnings: Vec<String> = shaping.warnings.iter().map(ToString::to_string).collect();
    let lookups = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let dns =
                    switchyard::dns::Dns::new(&c.config.dns.nameservers.values, Default::default())
                        .map_err(|e| e.to_string())?;
                Ok(switchyard::shaping::resolve_sites(&shaping.shaping, &dns).await)
            })
        });
    match lookups {
        Ok(w) => warnings.extend(w),
        Err(e) => warnings.push(format!("mx_rollup: cannot use DNS: {e}")),
    }
    warnings
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { config } => match load(config.as_deref()) {
            Some(c) => {
                for w in check_shaping(&c) {
                    eprintln!("warning: {w}");
                }
                println!("{}: ok", c.name);
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        },
        Command::Sink {
            listen,
            responses,
            record,
            hostname,
        } => sink(listen, responses, record, hostname),
        Command::Serve { config } => {
            let Some(loaded) = load(config.as_deref()) else {
                return ExitCode::FAILURE;
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("switchyard: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(switchyard::server::run(loaded, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
