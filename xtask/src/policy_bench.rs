//! `cargo xtask bench --policies-only`: enforcement side by side with
//! nftables doing the same job, on the same traffic inside a namespace of
//! its own.
//!
//! - rate accuracy: a client connects as fast as it can for a few seconds
//!   under a connect rate limit (governor's `rate_limit`, or nftables'
//!   `limit rate over ... reject with tcp reset` on the output hook);
//!   admitted connections against the burst plus the rate for the time;
//! - cost on the connect/accept/close loop of the overhead benchmark: a
//!   policy that matches every connect but never limits, against the same
//!   run without it (governor running in both), and an nftables rule
//!   against no rule;
//! - the connect hook's own time per call (`kernel.bpf_stats_enabled`);
//! - breaker fail-fast: the time `connect()` takes to fail while the
//!   endpoint's breaker is open.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{self, Attached, Netns},
    step,
};

/// Burst of every rate limit measured.
const BURST: u64 = 10;
/// The rates of the accuracy table.
const RATES: [u64; 4] = [100, 500, 1000, 5000];
/// Port of the accuracy and latency measurements (inside the namespace).
const PORT: u16 = 20990;
/// Connects timed while the breaker is open.
const LATENCY_SAMPLES: usize = 10_000;

#[derive(clap::Args)]
pub struct ClientArgs {
    /// `rate`: connect as fast as possible for `seconds` to a listener of
    /// our own; `breaker`: refused connects until the breaker opens, then
    /// time the failing ones.
    #[arg(long)]
    mode: String,
    #[arg(long, default_value_t = 3)]
    seconds: u64,
}

/// Inside the namespace: prints `admitted denied seconds` (rate) or
/// `p50_ns p99_ns samples` (breaker).
pub fn client(args: &ClientArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], PORT));
    match args.mode.as_str() {
        "rate" => {
            let listener = TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            let start = Instant::now();
            let (mut admitted, mut denied) = (0u64, 0u64);
            while start.elapsed() < Duration::from_secs(args.seconds) && admitted + denied < 50_000_000 {
                match TcpStream::connect(addr) {
                    Ok(_) => admitted += 1,
                    // EPERM from governor's hook, ECONNREFUSED from the
                    // reset nftables answers with.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ECONNREFUSED)) => denied += 1,
                    Err(e) => bail!("connect: {e}"),
                }
                while listener.accept().is_ok() {}
            }
            println!("{admitted} {denied} {:.3}", start.elapsed().as_secs_f64());
        }
        "breaker" => {
            // Nothing listens: refused connects make the endpoint unhealthy.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match TcpStream::connect(addr) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => break,
                    _ if Instant::now() > deadline => bail!("the breaker did not open within 20 s"),
                    _ => thread::sleep(Duration::from_millis(20)),
                }
            }
            let mut samples: Vec<u64> = (0..LATENCY_SAMPLES)
                .map(|_| {
                    let t = Instant::now();
                    let r = TcpStream::connect(addr);
                    let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    if r.is_ok() { u64::MAX } else { ns }
                })
                .collect();
            samples.sort_unstable();
            let at = |q: f64| {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss,
                    reason = "an index of a short list"
                )]
                let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
                samples[i]
            };
            println!("{} {} {}", at(0.5), at(0.99), samples.len());
        }
        other => bail!("unknown mode {other}"),
    }
    Ok(())
}

fn client_in(ns: &Netns, mode: &str, seconds: u64) -> anyhow::Result<Vec<f64>> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe()?)
        .args(["admission-client", "--mode", mode, "--seconds", &seconds.to_string()])
        .output()
        .context("running the admission client")?;
    if !out.status.success() {
        bail!("admission client failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|w| w.parse::<f64>().context("admission client output"))
        .collect()
}

fn nft(ns: &Netns, ruleset: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running nft")?;
    child.stdin.take().context("nft stdin")?.write_all(ruleset.as_bytes())?;
    if !child.wait()?.success() {
        bail!("nft -f failed for:\n{ruleset}");
    }
    Ok(())
}

fn nft_rate(port: Option<u16>, rate: u64) -> String {
    let port = port.map_or(String::new(), |p| format!("tcp dport {p} "));
    format!(
        "table inet govbench {{\n chain output {{\n  type filter hook output priority 0; policy accept;\n  ip daddr \
         127.0.0.1 {port}tcp flags & (syn | ack) == syn limit rate over {rate}/second burst {BURST} packets reject \
         with tcp reset\n }}\n}}\n"
    )
}

fn governor_config(dir: &Path, name: &str, policy: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("[[policies]]\n{policy}\n"))?;
    Ok(path)
}

fn rate_policy(port: Option<u16>, rate: u64) -> String {
    let port = port.map_or(String::new(), |p| format!("ports = \"{p}\"\n"));
    format!(
        "name = \"bench\"\nkind = \"rate_limit\"\ndestination = \"127.0.0.1/32\"\n{port}rate_per_second = \
         {rate}\nburst = {BURST}"
    )
}

/// Admitted connections over expected, and denied connects, of one tool.
type Admitted = (f64, f64);

/// What the section reports.
pub struct Figures {
    seconds: u64,
    /// Rate, expected, then admitted/expected and denied for governor and
    /// for nftables.
    accuracy: Vec<(u64, f64, [Admitted; 2])>,
    /// Rate and CPU ratios of each round: governor's hook, nftables' rule.
    cost: [(Vec<f64>, Vec<f64>); 2],
    rounds: usize,
    hook_ns: f64,
    /// Breaker fail-fast p50 and p99, microseconds.
    latency: (f64, f64),
}

pub fn run(rounds: usize, seconds: u64) -> anyhow::Result<Figures> {
    let ns = Netns::new(format!("govpolicy{}", std::process::id()))?;
    let dir = std::env::temp_dir().join(format!("govpolicy{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut accuracy = Vec::new();
    for rate in RATES {
        step(&format!("rate accuracy at {rate}/s"));
        let config = governor_config(&dir, "rate", &rate_policy(Some(PORT), rate))?;
        let (gov, _) = bench::start_governor_with(Some(&config))?;
        let with_gov = client_in(&ns, "rate", seconds)?;
        drop(gov);
        nft(&ns, &nft_rate(Some(PORT), rate))?;
        let with_nft = client_in(&ns, "rate", seconds)?;
        nft(&ns, "delete table inet govbench\n")?;
        #[expect(clippy::cast_precision_loss, reason = "small integers")]
        let expected = |elapsed: f64| BURST as f64 + rate as f64 * elapsed;
        accuracy.push((
            rate,
            expected(with_gov[2]),
            [(with_gov[0] / expected(with_gov[2]), with_gov[1]), (with_nft[0] / expected(with_nft[2]), with_nft[1])],
        ));
    }
    // A limit no loop reaches: the rule matches every connect of the loop.
    let open = governor_config(&dir, "open", &rate_policy(None, 1_000_000_000))?;
    let none = governor_config(&dir, "none", "name = \"idle\"\nkind = \"block\"\ndestination = \"192.0.2.1/32\"")?;
    let (mut gov_rate, mut gov_cpu, mut nft_rate_r, mut nft_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let without = bench::measure(&ns, Attached::Governor, seconds, Some(&none))?;
        let with = bench::measure(&ns, Attached::Governor, seconds, Some(&open))?;
        gov_rate.push(with.rate / without.rate);
        gov_cpu.push(without.cpu_us / with.cpu_us);
        let plain = bench::measure(&ns, Attached::Nothing, seconds, None)?;
        nft(&ns, &nft_rate(None, 1_000_000_000))?;
        let ruled = bench::measure(&ns, Attached::Nothing, seconds, None)?;
        nft(&ns, "delete table inet govbench\n")?;
        nft_rate_r.push(ruled.rate / plain.rate);
        nft_cpu.push(plain.cpu_us / ruled.cpu_us);
        step(&format!(
            "round {round}: governor's hook {:.3}, nftables' rule {:.3}",
            gov_rate[round - 1],
            nft_rate_r[round - 1]
        ));
    }
    step("the connect hook's time per call (kernel.bpf_stats_enabled)");
    let hook_ns = {
        let _stats = bench::BpfStats::enable()?;
        let _gov = bench::start_governor_with(Some(&open))?;
        let _ = bench::loadgen_in(&ns, seconds)?;
        bench::program_ns_per_call("gov_connect4")?
    };
    step("breaker fail-fast latency");
    let breaker = governor_config(
        &dir,
        "breaker",
        &format!(
            "name = \"bench\"\nkind = \"breaker\"\ndestination = \"127.0.0.1/32\"\nports = \"{PORT}\"\ncooldown_seconds \
             = 300\ncooldown_max_seconds = 300"
        ),
    )?;
    let (gov, _) = bench::start_governor_with(Some(&breaker))?;
    let latency = client_in(&ns, "breaker", seconds)?;
    drop(gov);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Figures {
        seconds,
        accuracy,
        cost: [(gov_rate, gov_cpu), (nft_rate_r, nft_cpu)],
        rounds,
        hook_ns,
        latency: (latency[0] / 1000.0, latency[1] / 1000.0),
    })
}

pub const HEADING: &str = "## Enforcement compared with nftables";

pub fn section(f: &Figures, command: &str, date: &str) -> String {
    let mut s = format!(
        "{HEADING}\n\nProduced by `{command}` (as root) on {date}. Inside a network namespace of its own, on \
         loopback; nftables rules sit on the namespace's output hook, where they see the same connects as \
         governor's `cgroup/connect4` hook.\n\n"
    );
    let _ = writeln!(
        s,
        "**Rate accuracy.** A client connects as fast as it can for {} s under a limit with a burst of {BURST}: \
         governor's `rate_limit` (a denied `connect()` fails with `EPERM`) or nftables' `limit rate over R/second \
         burst {BURST} packets reject with tcp reset` on SYNs. Admitted connections divided by the burst plus the \
         rate times the time the client ran:\n",
        f.seconds
    );
    s.push_str("| rate (per second) | expected | governor | denied | nftables | denied |\n|---|---|---|---|---|---|\n");
    for (rate, expected, [(gov, gov_denied), (nft, nft_denied)]) in &f.accuracy {
        let _ = writeln!(s, "| {rate} | {expected:.0} | {gov:.3} | {gov_denied:.0} | {nft:.3} | {nft_denied:.0} |");
    }
    s.push_str(
        "\nBoth tools are token buckets: a bucket keeps no tokens beyond its burst, so whenever the client (connect, \
         accept and close in one thread, on a busy 2-CPU machine) stalls for longer than the burst lasts (2 ms at \
         5000 per second) the tokens of the stall are gone, and the ratio falls below 1 for either tool.\n",
    );
    let _ = writeln!(
        s,
        "\n**Cost on the connect/accept/close loop** (the overhead benchmark's load, {} rounds of {} s, medians). \
         governor: a rate limit matching every connect of the loop that never limits, against the same daemon \
         without a matching policy. nftables: the same rule with a limit never reached, against no rule. Ratios \
         as in the overhead section (1.0: free):\n",
        f.rounds, f.seconds
    );
    s.push_str("| | median rate ratio (range) | median CPU ratio (range) |\n|---|---|---|\n");
    for (name, (rate, cpu)) in ["governor's connect hook", "nftables' rule"].iter().zip(&f.cost) {
        let (mut rate, mut cpu) = (rate.clone(), cpu.clone());
        let range = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            format!("{lo:.2}-{hi:.2}")
        };
        let _ = writeln!(
            s,
            "| {name} | {:.3} ({}) | {:.3} ({}) |",
            bench::median(&mut rate),
            range(&rate),
            bench::median(&mut cpu),
            range(&cpu)
        );
    }
    s.push_str(
        "\nOn this virtual machine single runs swing far more than either rule costs (see the ranges); the \
         hook's own time below is the steadier figure.\n",
    );
    let _ = writeln!(
        s,
        "\n**The connect hook's own time**: {:.0} ns per call (`gov_connect4`, `kernel.bpf_stats_enabled`, during \
         the loop above).\n",
        f.hook_ns
    );
    let _ = writeln!(
        s,
        "**Breaker fail-fast.** Refused connects make the endpoint unhealthy and its breaker opens; then \
         {LATENCY_SAMPLES} connects are timed from the call to its `EPERM`: p50 **{:.1} µs**, p99 **{:.1} µs** \
         (target under 100 µs).",
        f.latency.0, f.latency.1
    );
    s
}

pub fn splice(report: &str, section: &str) -> String {
    crate::deregister::splice_at(report, HEADING, section)
}

/// The enforcement section of an existing report, if it has one.
pub fn existing(report: &str) -> Option<&str> {
    let start = report.find(HEADING)?;
    let after = start + HEADING.len();
    let end = report[after..].find("\n## ").map_or(report.len(), |i| after + i + 1);
    Some(&report[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_run_keeps_the_enforcement_section() {
        let old = "# B\n\n## A\n\nold a\n\n## Enforcement compared with nftables\n\nkept\n\n## Z\n\nz\n";
        let kept = existing(old).unwrap();
        assert_eq!(kept.trim_end(), "## Enforcement compared with nftables\n\nkept");
        let new = "# B\n\n## A\n\nnew a\n";
        assert_eq!(splice(new, kept), "# B\n\n## A\n\nnew a\n\n## Enforcement compared with nftables\n\nkept\n");
        assert_eq!(existing("# B\n"), None);
    }
}
