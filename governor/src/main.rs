//! governor: an eBPF TCP traffic governor and connection monitor.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use governor::{
    cli,
    config::{Config, LogFormat},
    daemon, doctor,
};

#[derive(Parser)]
#[command(version, about = "eBPF TCP traffic governor and connection monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground: watch every TCP connection on the
    /// host and serve metrics.
    Run(RunArgs),
    /// Show unhealthy and suspect endpoints and leaking processes, from a
    /// running daemon.
    Status {
        #[command(flatten)]
        addr: AddrArg,
        /// Print the JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// A live view of the busiest endpoints of a running daemon; q quits.
    Top {
        #[command(flatten)]
        addr: AddrArg,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// The instances this node holds out of the service registries in etcd.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Check the kernel and host for what governor needs.
    Doctor(ConfigArg),
    /// Remove the policies a daemon in pinned mode left in the kernel
    /// (`enforcement.pin_dir`): their enforcement stops at once, also
    /// under a pinned daemon still running (until it restarts).
    Unpin(ConfigArg),
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// List the quarantined instances: key, endpoint, reason, time out and
    /// time until restore.
    List {
        #[command(flatten)]
        addr: AddrArg,
        /// Print the JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put one quarantined instance back now, through the same etcd
    /// transaction as an automatic restore (with its lease, if alive).
    /// governor then leaves it in for one base quarantine period.
    Release {
        #[command(flatten)]
        addr: AddrArg,
        /// The instance's key, as `governor registry list` shows it.
        key: String,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// Config file (TOML); built-in defaults when absent.
    #[arg(long, env = "GOVERNOR_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct AddrArg {
    /// The daemon's HTTP address (its `--metrics-addr`).
    #[arg(long, env = "GOVERNOR_ADDR", default_value = "127.0.0.1:9966")]
    addr: SocketAddr,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Address of the HTTP listener (`/metrics`, `/healthz`, `/readyz`);
    /// overrides `daemon.metrics_addr` [default: 127.0.0.1:9966].
    #[arg(long, env = "GOVERNOR_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Log format; overrides `daemon.log_format` [default: text].
    #[arg(long, env = "GOVERNOR_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Act on nothing: every policy counts what it would deny and denies
    /// nothing, and the registry writes nothing to etcd (as `dry_run` in
    /// each policy and `registry.dry_run`; also after a reload).
    #[arg(long, env = "GOVERNOR_DRY_RUN")]
    dry_run: bool,
    /// Log filter, `tracing` syntax (for example `info` or `governor=debug`).
    #[arg(long, env = "GOVERNOR_LOG", default_value = "info")]
    log: String,
}

impl ConfigArg {
    fn load(&self) -> anyhow::Result<Config> {
        Ok(match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        })
    }
}

fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter:?} (--log / GOVERNOR_LOG): {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("governor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let mut config = args.config.load()?;
            if let Some(addr) = args.metrics_addr {
                config.daemon.metrics_addr = addr;
            }
            if let Some(format) = args.log_format {
                config.daemon.log_format = format;
            }
            if args.dry_run {
                config.force_dry_run();
            }
            init_logging(config.daemon.log_format, &args.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(daemon::run(config, args.config.config.clone(), args.dry_run))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { addr, json } => cli::status::status(addr.addr, json),
        Command::Top { addr, interval } => {
            if !(0.2..=3600.0).contains(&interval) {
                anyhow::bail!("--interval must be between 0.2 and 3600 seconds");
            }
            cli::top::top(addr.addr, std::time::Duration::from_secs_f64(interval))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Registry(RegistryCommand::List { addr, json }) => cli::registry::list(addr.addr, json),
        Command::Registry(RegistryCommand::Release { addr, key }) => cli::registry::release(addr.addr, &key),
        Command::Doctor(args) => {
            let config = args.load()?;
            let checks = doctor::checks(&config);
            print!("{}", doctor::render(&checks));
            Ok(if doctor::all_required_pass(&checks) {
                println!("governor can run on this host.");
                ExitCode::SUCCESS
            } else {
                println!("governor cannot run on this host: fix the FAIL lines above.");
                ExitCode::FAILURE
            })
        }
        Command::Unpin(args) => {
            let dir = args.load()?.enforcement.pin_dir;
            if governor::pin::unpin(&dir).map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))? {
                println!("removed the pinned policies at {}", dir.display());
            } else {
                println!("nothing pinned at {}", dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            eprintln!("{} is valid; the effective configuration:", file.display());
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}
