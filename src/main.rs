//! The `switchyard` command: `serve`, `check`, `ctl` and `sink`.

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
    /// Admin client over the daemon's HTTP API.
    Ctl {
        /// The daemon's API.
        #[arg(long, env = "SWITCHYARD_API", default_value = "http://127.0.0.1:8025")]
        api: String,
        /// Bearer token (`[http] token`).
        #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// JSON for scripts instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Write a new DKIM private key and print the DNS TXT record to publish.
    DkimKeygen {
        /// The d= domain.
        #[arg(long)]
        domain: String,
        /// The selector.
        #[arg(long)]
        selector: String,
        /// Key type.
        #[arg(long, value_enum, default_value = "rsa2048")]
        algorithm: switchyard::dkim::KeyAlgorithm,
        /// Where to write the PEM private key (created, never overwritten, mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Read a password from standard input (not echoed on a terminal) and print its
    /// argon2id hash for `[[smtp.user]] password_hash`.
    HashPassword,
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
        /// Offer STARTTLS with this PEM certificate chain (with --tls-private-key).
        #[arg(long, requires = "tls_private_key")]
        tls_certificate: Option<PathBuf>,
        /// The PEM private key of --tls-certificate.
        #[arg(long, requires = "tls_certificate")]
        tls_private_key: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct TargetArgs {
    /// Tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Campaign (with --tenant).
    #[arg(long)]
    campaign: Option<String>,
    /// Destination domain.
    #[arg(long)]
    domain: Option<String>,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Scheduled and ready queues.
    Queues,
    /// Active suspensions, manual and automatic.
    Suspensions,
    /// Suspend a tenant, campaign or source (for a domain or site).
    Suspend {
        #[command(flatten)]
        target: TargetArgs,
        /// Egress source (with --site).
        #[arg(long)]
        source: Option<String>,
        /// Site (sorted MX host names joined by commas).
        #[arg(long)]
        site: Option<String>,
        /// How long, e.g. "3 hours".
        #[arg(long)]
        duration: String,
        /// Why (logged and listed).
        #[arg(long, default_value = "suspended with switchyard ctl")]
        reason: String,
    },
    /// End a suspension now; its held mail is due at once.
    Resume {
        /// Suspension id (see `ctl suspensions`).
        id: String,
    },
    /// Bounce queued mail with AdminBounce records (with --duration, also what arrives
    /// until it is over).
    Bounce {
        #[command(flatten)]
        target: TargetArgs,
        /// Keep bouncing new arrivals this long, e.g. "2 hours".
        #[arg(long)]
        duration: Option<String>,
        /// Why (in each AdminBounce record).
        #[arg(long, default_value = "bounced with switchyard ctl")]
        reason: String,
    },
    /// Bounce orders in force (from `bounce --duration` and Bounce rules).
    Bounces,
    /// End a bounce order now.
    BounceCancel {
        /// Bounce order id (see `ctl bounces`).
        id: String,
    },
    /// Why a tenant's mail to a domain behaves as it does: queue policy, shaping with the
    /// file:line of each value, and what applies now.
    Explain {
        #[command(flatten)]
        target: TargetArgs,
        /// Only this egress source (default: every source of the path's pool).
        #[arg(long)]
        source: Option<String>,
    },
    /// Active throttles, manual and automatic.
    Throttles,
    /// Pace a tenant's (or campaign's) mail, to a domain or site, for a while.
    Throttle {
        #[command(flatten)]
        target: TargetArgs,
        /// Site (sorted MX host names joined by commas).
        #[arg(long)]
        site: Option<String>,
        /// The pace, in KumoMTA's throttle syntax, e.g. "100/h".
        #[arg(long)]
        rate: String,
        /// How long, e.g. "2 hours".
        #[arg(long)]
        duration: String,
        /// Why (logged and listed).
        #[arg(long, default_value = "throttled with switchyard ctl")]
        reason: String,
    },
    /// End a throttle now.
    Unthrottle {
        /// Throttle id (see `ctl throttles`).
        id: String,
    },
    /// Active shaping overrides set by automation (SetConfig, SetDomainConfig).
    Overrides,
    /// End a shaping override now; its ready queues go back to their shaping.
    Revert {
        /// Override id (see `ctl overrides`).
        id: String,
    },
    /// The cluster: this node, Redis, and the nodes heard from.
    Cluster,
    /// Webhook endpoints: cursor, lag and last error; `webhooks test NAME` sends one signed
    /// test event.
    Webhooks {
        #[command(subcommand)]
        action: Option<WebhooksAction>,
    },
    /// Live view: per-tenant rates, suspensions, busiest sites.
    Top {
        /// Refresh interval.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Stop after this many screens (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        iterations: u64,
    },
}

/// `ctl webhooks` subcommands.
#[derive(Subcommand)]
enum WebhooksAction {
    /// Send one signed test event to the endpoint now.
    Test {
        /// The webhook's name.
        name: String,
    },
}

fn ctl(api: String, token: Option<String>, json: bool, command: CtlCommand) -> ExitCode {
    use switchyard::ctl::{self, Api, Target};
    let api = Api { url: api, token };
    let target = |t: TargetArgs, source: Option<String>, site: Option<String>| Target {
        tenant: t.tenant,
        campaign: t.campaign,
        domain: t.domain,
        source,
        site,
    };
    let out = match command {
        CtlCommand::Queues => ctl::queues(&api, json),
        CtlCommand::Suspensions => ctl::suspensions(&api, json),
        CtlCommand::Suspend {
            target: t,
            source,
            site,
            duration,
            reason,
        } => ctl::suspend(&api, &target(t, source, site), &duration, &reason, json),
        CtlCommand::Resume { id } => ctl::resume(&api, &id, json),
        CtlCommand::Bounce {
            target: t,
            duration,
            reason,
        } => ctl::bounce(
            &api,
            &target(t, None, None),
            duration.as_deref(),
            &reason,
            json,
        ),
        CtlCommand::Bounces => ctl::bounces(&api, json),
        CtlCommand::BounceCancel { id } => ctl::end(&api, "bounces", &id, "cancelled", json),
        CtlCommand::Explain { target: t, source } => {
            ctl::explain(&api, &target(t, source, None), json)
        }
        CtlCommand::Throttles => ctl::throttles(&api, json),
        CtlCommand::Throttle {
            target: t,
            site,
            rate,
            duration,
            reason,
        } => ctl::throttle(
            &api,
            &target(t, None, site),
            &rate,
            &duration,
            &reason,
            json,
        ),
        CtlCommand::Unthrottle { id } => ctl::end(&api, "throttles", &id, "unthrottled", json),
        CtlCommand::Overrides => ctl::overrides(&api, json),
        CtlCommand::Cluster => ctl::cluster(&api, json),
        CtlCommand::Webhooks { action: None } => ctl::webhooks(&api, json),
        CtlCommand::Webhooks {
            action: Some(WebhooksAction::Test { name }),
        } => ctl::webhook_test(&api, &name, json),
        CtlCommand::Revert { id } => ctl::end(&api, "overrides", &id, "reverted", json),
        CtlCommand::Top {
            interval,
            iterations,
        } => ctl::top(&api, interval, iterations).map(|()| String::new()),
    };
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(ctl::CtlError(why)) => {
            eprintln!("switchyard ctl: {why}");
            ExitCode::FAILURE
        }
    }
}

fn dkim_keygen(
    domain: &str,
    selector: &str,
    algorithm: switchyard::dkim::KeyAlgorithm,
    out: &std::path::Path,
) -> ExitCode {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let written = switchyard::dkim::generate(algorithm).and_then(|(pem, txt)| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
        f.write_all(pem.as_bytes())?;
        Ok(txt)
    });
    match written {
        Ok(txt) => {
            println!("Wrote {}. Publish this TXT record:", out.display());
            println!("{selector}._domainkey.{domain}. IN TXT \"{txt}\"");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard dkim-keygen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Read one line from standard input with the terminal's echo off (when it is a terminal).
fn read_password() -> std::io::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    // SAFETY: termios calls on fd 0 with a zeroed struct they fill in.
    let saved = terminal.then(|| unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(0, &mut t);
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        libc::tcsetattr(0, libc::TCSANOW, &t);
        saved
    });
    if terminal {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn hash_password() -> ExitCode {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let password = match read_password() {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => {
            eprintln!("switchyard hash-password: empty password (give it on standard input)");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("switchyard hash-password: cannot read standard input: {e}");
            return ExitCode::FAILURE;
        }
    };
    let salt = match SaltString::encode_b64(&rand::random::<[u8; 16]>()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard hash-password: {e}");
            return ExitCode::FAILURE;
        }
    };
    match argon2::Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sink(
    listen: std::net::SocketAddr,
    responses: Option<PathBuf>,
    record: Option<PathBuf>,
    hostname: String,
    tls: Option<(PathBuf, PathBuf)>,
) -> ExitCode {
    let tls = match tls.map(|(cert, key)| switchyard_sink::tls_config(&cert, &key)) {
        None => None,
        Some(Ok(config)) => Some(config),
        Some(Err(e)) => {
            eprintln!("switchyard sink: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let responses = match responses {
        None => None,
        Some(path) => {
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|text| switchyard_sink::Responses::parse(&text));
            match parsed {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("{}:{e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let options = switchyard_sink::SinkOptions {
        listen,
        responses,
        record,
        hostname,
        tls,
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(switchyard_sink::run(options)));
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
    switchyard_actors::test_hooks::enable_from_env();
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
        Command::Ctl {
            api,
            token,
            json,
            command,
        } => ctl(api, token, json, command),
        Command::DkimKeygen {
            domain,
            selector,
            algorithm,
            out,
        } => dkim_keygen(&domain, &selector, algorithm, &out),
        Command::HashPassword => hash_password(),
        Command::Sink {
            listen,
            responses,
            record,
            hostname,
            tls_certificate,
            tls_private_key,
        } => sink(
            listen,
            responses,
            record,
            hostname,
            tls_certificate.zip(tls_private_key),
        ),
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
