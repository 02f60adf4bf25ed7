//! The registry part of `cargo xtask bench`: how long an unhealthy instance
//! on this node stays in the service registry. A real etcd (Debian's
//! etcd-server) runs on loopback in a temp dir; one kratos-style service per
//! trial has an instance on an address of a network namespace and one
//! elsewhere. Each trial makes ten connects to the local instance's closed
//! port (ten resets: unhealthy at once) and times its key's deletion two
//! ways: governor's own histogram (the health transition to the committed
//! transaction), and from the tenth refused connect to the delete event an
//! etcd watcher receives. The measuring itself is a binary of the tests
//! crate (`tests/src/bin/deregister-bench.rs`); xtask cannot link etcd's
//! client, whose build needs what `cargo xtask setup` installs.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{root, step};

#[derive(clap::Args, Clone, Copy)]
pub struct RegistryArgs {
    /// Deregistrations timed (each on an instance of its own).
    #[arg(long, default_value_t = 30)]
    pub registry_trials: u8,
}

/// What the trials measured, in milliseconds, one value per trial.
pub struct RegistryFigures {
    pub trials: u8,
    /// governor's `governor_registry_action_seconds`: from the endpoint's
    /// health transition to the committed transaction.
    pub internal_ms: Vec<f64>,
    /// From the tenth refused connect returning to a watcher seeing the
    /// delete.
    pub end_to_end_ms: Vec<f64>,
}

/// Builds and runs the measuring binary of the tests crate (it reuses the
/// integration tests' etcd, namespace and daemon fixtures).
pub fn run(args: RegistryArgs) -> anyhow::Result<RegistryFigures> {
    if !(1..=250).contains(&args.registry_trials) {
        bail!("--registry-trials must be between 1 and 250");
    }
    step("building the deregistration benchmark");
    crate::exec(crate::cargo().args([
        "build",
        "--release",
        "--package",
        "governor-tests",
        "--bin",
        "deregister-bench",
    ]))?;
    step(&format!("timing {} deregistrations against a real etcd", args.registry_trials));
    let bin = root().join("target/release/deregister-bench");
    let output = Command::new(&bin)
        .arg(args.registry_trials.to_string())
        .env("GOVERNOR_BIN", root().join("target/release/governor"))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", bin.display(), output.status);
    }
    let mut figures =
        RegistryFigures { trials: args.registry_trials, internal_ms: Vec::new(), end_to_end_ms: Vec::new() };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let values: Vec<f64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        let [internal, end_to_end] = values[..] else { bail!("unexpected line from {}: {line:?}", bin.display()) };
        step(&format!("deregistration: {internal:.1} ms in governor, {end_to_end:.1} ms end to end"));
        figures.internal_ms.push(internal);
        figures.end_to_end_ms.push(end_to_end);
    }
    if figures.internal_ms.len() != usize::from(args.registry_trials) {
        bail!("{} reported {} of {} trials", bin.display(), figures.internal_ms.len(), args.registry_trials);
    }
    Ok(figures)
}

/// The `q`-quantile by nearest rank.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank among at most 250 values"
    )]
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub const HEADING: &str = "## Deregistration latency";

/// The report section.
pub fn section(f: &RegistryFigures, command: &str, date: &str) -> String {
    let verdict = |p99: f64| if p99 <= 1000.0 { "meets the target" } else { "misses the target" };
    let mut out = format!(
        "\n{HEADING}\n\n\
         Produced by `{command}` (as root) on {date}.\n\n\
         A real etcd on loopback; {trials} kratos-style services with one instance on\n\
         an address of a network namespace (local to this node through\n\
         `registry.local_cidrs`) and one elsewhere; governor with its defaults\n\
         otherwise (`daemon.poll_interval_ms` 1000, `registry.window_ms` 1000,\n\
         `remove_after_windows` 1). Each trial makes ten connects to a closed port\n\
         of one local instance, which makes its endpoint unhealthy at once (ten\n\
         resets within 5 s), and times the deletion of its key two ways:\n\n\
         - **in governor**: `governor_registry_action_seconds`, from the health\n\
         \x20 engine's transition to unhealthy to the committed etcd transaction\n\
         \x20 (the issue's measure; target p99 ≤ 1 s);\n\
         - **end to end**: from the tenth refused connect returning to an etcd\n\
         \x20 watcher receiving the delete. This adds the ring buffer's drain\n\
         \x20 interval (`ebpf.event_drain_interval_ms`, 100 ms): the drain whose\n\
         \x20 reset events take an endpoint to the threshold triggers a reading of\n\
         \x20 the maps and a judgement at once, without waiting for the next poll;\n\
         \x20 the trials start at points spread over the one-second poll interval.\n\n\
         p99 is the nearest rank: with {trials} trials it is the largest value.\n\n\
         | | p50 | p99 | largest | target |\n|---|---|---|---|---|\n",
        trials = f.trials,
    );
    for (name, v, target) in [
        ("in governor (transition → committed)", &f.internal_ms, true),
        ("end to end (tenth reset → delete seen)", &f.end_to_end_ms, false),
    ] {
        let (p50, p99, max) = (quantile(v, 0.5), quantile(v, 0.99), quantile(v, 1.0));
        let target = if target { format!("≤ 1 s: {}", verdict(p99)) } else { String::new() };
        let _ = writeln!(out, "| {name} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms | {target} |");
    }
    out
}

/// Replaces the registry section of an existing report (or appends it).
pub fn splice(report: &str, section: &str) -> String {
    splice_at(report, HEADING, section)
}

/// Replaces the section under `heading` (up to the next `## `) with
/// `section`, or appends it.
pub fn splice_at(report: &str, heading: &str, section: &str) -> String {
    let section = section.trim_matches('\n');
    let (before, rest) = match report.find(heading) {
        Some(start) => {
            let after = &report[start + heading.len()..];
            let end = after.find("\n## ").map_or(report.len(), |i| start + heading.len() + i + 1);
            (&report[..start], &report[end..])
        }
        None => (report, ""),
    };
    let rest = if rest.is_empty() { String::new() } else { format!("\n{rest}") };
    format!("{}\n\n{section}\n{rest}", before.trim_end_matches('\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert!((quantile(&v, 0.5) - 10.0).abs() < f64::EPSILON);
        assert!((quantile(&v, 0.99) - 20.0).abs() < f64::EPSILON);
        assert!((quantile(&[3.0], 0.5) - 3.0).abs() < f64::EPSILON);
    }

    #[test]
    fn splice_replaces_only_its_section() {
        let section = "\n## Deregistration latency\n\nnew\n";
        let report = "# B\n\n## A\n\na\n\n## Deregistration latency\n\nold\n\n## C\n\nc\n";
        assert_eq!(splice(report, section), "# B\n\n## A\n\na\n\n## Deregistration latency\n\nnew\n\n## C\n\nc\n");
        let appended = "# B\n\n## A\n\na\n\n## Deregistration latency\n\nnew\n";
        assert_eq!(splice("# B\n\n## A\n\na\n", section), appended);
        assert_eq!(splice(appended, section), appended);
    }
}
