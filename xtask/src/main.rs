//! Project tasks: `cargo xtask setup|run|test|bench`. Each step says what it
//! does; set-up is idempotent and fast when everything is present.

mod alerts;
mod bench;
mod deregister;
mod manifests;
mod policy_bench;
mod scale;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "governor's set-up, run, test and bench tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (LLVM 22, rust-src for
    /// nightly, bpf-linker, test tools) and mount tracefs and bpffs.
    Setup,
    /// Set up, build in release mode and run `governor run` with the given
    /// arguments (for example `cargo xtask run -- --metrics-addr 127.0.0.1:9966`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the whole test suite: unit tests, lints, and the
    /// root-only integration tests.
    Test,
    /// Measure the overhead of governor on a loopback connect/accept/close
    /// loop and write BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Write the alert rules derived from `deploy/alerts/rules.yml` (the
    /// `PrometheusRule` of the `DaemonSet` directory).
    Alerts,
    /// Check the deployment files only: the alert rules (promtool) and
    /// the manifests (Kubernetes schemas), as `cargo xtask test` does.
    CheckDeploy,
    /// Internal: the load generator the benchmark runs inside its namespace.
    #[command(hide = true)]
    Loadgen(bench::LoadgenArgs),
    /// Internal: the client of the enforcement benchmark, inside its
    /// namespace.
    #[command(hide = true)]
    AdmissionClient(policy_bench::ClientArgs),
    /// Internal: holds many connections open for the scale benchmark.
    #[command(hide = true)]
    Hold(scale::HoldArgs),
    /// Internal: new connections at a fixed rate for the scale benchmark.
    #[command(hide = true)]
    Paced(scale::PacedArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Run { args } => {
            setup::run()?;
            build_release()?;
            let bin = root().join("target/release/governor");
            step(&format!("starting {} run {}", bin.display(), args.join(" ")));
            // Become governor (cargo run already replaced itself with us), so
            // that SIGTERM and SIGINT reach the daemon itself.
            let err = std::os::unix::process::CommandExt::exec(Command::new(&bin).arg("run").args(&args));
            Err(err).with_context(|| format!("starting {}", bin.display()))
        }
        Task::Test => test(),
        Task::Alerts => alerts::generate(),
        Task::CheckDeploy => {
            setup::run()?;
            alerts::check()?;
            manifests::check()
        }
        Task::Bench(args) => {
            setup::run()?;
            build_release()?;
            bench::run(&args)
        }
        Task::Loadgen(args) => bench::loadgen(&args),
        Task::AdmissionClient(args) => policy_bench::client(&args),
        Task::Hold(args) => scale::hold(&args),
        Task::Paced(args) => scale::paced(&args),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

pub fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// Runs a command in the workspace root, failing with its name.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.current_dir(root()).status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn build_release() -> anyhow::Result<()> {
    step("building governor (release)");
    exec(cargo().args(["build", "--release", "--package", "governor"]))
}

fn test() -> anyhow::Result<()> {
    setup::run()?;
    step("formatting");
    exec(Command::new("cargo").args(["+nightly", "fmt", "--all", "--check"]))?;
    step("unit and property tests");
    exec(cargo().args(["test", "--workspace", "--exclude", "governor-ebpf", "--exclude", "governor-tests"]))?;
    step("clippy: user-space crates");
    exec(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "governor-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("clippy: kernel crate for the BPF target");
    exec(
        Command::new("cargo").args(["+nightly", "clippy", "--package", "governor-ebpf", "--bins", "--release"]).args([
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step("alert rules: generated copy up to date, promtool check and unit tests");
    alerts::check()?;
    step("deployment manifests: offline validation against Kubernetes schemas");
    manifests::check()?;
    build_release()?;
    if !setup::is_root() {
        bail!("the integration tests load eBPF programs and create network namespaces: run `cargo xtask test` as root");
    }
    step("integration tests (root, network namespaces, real traffic), one at a time");
    exec(
        cargo()
            .args(["test", "--release", "--package", "governor-tests", "--", "--test-threads=1"])
            .env("GOVERNOR_BIN", root().join("target/release/governor")),
    )
}
