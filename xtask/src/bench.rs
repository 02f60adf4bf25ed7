//! `cargo xtask bench`: what governor costs on a busy host.
//!
//! A load generator runs a loopback connect/accept/close loop (each close by
//! RST, as a crashing client would) inside a network namespace of its own
//! for a fixed time and reports connections per second. Rounds interleave a
//! run with nothing attached, a run with governor attached, another plain
//! run and a run with `tcpstates` (libbpf-tools) attached as the peer; the
//! report gives the median ratio of each to its neighbouring plain run.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{root, step};

#[derive(clap::Args)]
#[expect(clippy::struct_excessive_bools, reason = "one switch per part of the benchmark, as the README documents")]
pub struct BenchArgs {
    /// Rounds (each gives one governor pair and one tcpstates pair).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Where the report goes, relative to the workspace root.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: String,
    #[command(flatten)]
    scale: crate::scale::ScaleArgs,
    /// Run only the scale measurements and print their section (no report
    /// written).
    #[arg(long)]
    scale_only: bool,
    #[command(flatten)]
    registry: crate::deregister::RegistryArgs,
    /// Run only the deregistration latency and replace its section in the
    /// report (the other sections stay as they are).
    #[arg(long)]
    registry_only: bool,
    /// Run only the governor pairs of the overhead rounds and print their
    /// median and the per-program profile (no report written): for
    /// comparing configurations or builds.
    #[arg(long)]
    overhead_only: bool,
    /// A config file for the governor runs (default: built-in defaults).
    #[arg(long)]
    governor_config: Option<std::path::PathBuf>,
    /// Run only the enforcement comparison with nftables and replace its
    /// section in the report.
    #[arg(long)]
    policies_only: bool,
}

#[derive(clap::Args)]
pub struct LoadgenArgs {
    #[arg(long)]
    seconds: u64,
}

/// A namespace that is removed on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> anyhow::Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        crate::exec(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self(name);
        crate::exec(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A background process killed on drop.
pub struct Background(pub Child);

impl Background {
    /// SIGTERM, so that governor detaches cleanly; the time to exit, or
    /// `None` when it had to be killed after 5 s.
    fn stop(&mut self) -> Option<Duration> {
        if let Ok(Some(_)) = self.0.try_wait() {
            return Some(Duration::ZERO);
        }
        let started = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return Some(started.elapsed());
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// CPU time (user + system) of a process so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // first, utime and stime the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?.max(1);
    Some(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A memory figure of a process in KiB (`VmRSS:`, `VmHWM:`, ...), from
/// `/proc/<pid>/status`.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// What one measurement saw.
pub struct Measurement {
    /// Connections per second.
    pub rate: f64,
    /// Host CPU time spent per connection, in microseconds (all CPUs,
    /// kernel and user, the tool itself included; time stolen by the
    /// hypervisor excluded).
    pub cpu_us: f64,
    /// Share of CPU time the hypervisor stole during the run.
    steal: f64,
    /// For governor runs: its CPU use during the load (share of one CPU),
    /// its resident memory afterwards, and how long it took to exit after
    /// SIGTERM.
    daemon: Option<(f64, u64, Option<Duration>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Nothing,
    Governor,
    Tcpstates,
}

/// Puts `section` into the report at `path` (made when missing) with
/// `splice`, the other sections as they are, and prints it.
fn replace_section(path: &std::path::Path, section: &str, splice: fn(&str, &str) -> String) -> anyhow::Result<()> {
    let report = std::fs::read_to_string(path).unwrap_or_else(|_| String::from("# Benchmarks\n"));
    std::fs::write(path, splice(&report, section)).with_context(|| format!("writing {}", path.display()))?;
    print!("{section}");
    Ok(())
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.scale_only {
        print!("{}", crate::scale::section(&crate::scale::run(args.scale)?));
        return Ok(());
    }
    let path = root().join(&args.output);
    if args.registry_only {
        let figures = crate::deregister::run(args.registry)?;
        let command = format!("cargo xtask bench --registry-only --registry-trials {}", args.registry.registry_trials);
        let section = crate::deregister::section(&figures, &command, &sh("date -u +%Y-%m-%d"));
        return replace_section(&path, &section, crate::deregister::splice);
    }
    if args.rounds < 5 {
        bail!("--rounds must be at least 5 for a meaningful median");
    }
    if args.policies_only {
        let figures = crate::policy_bench::run(args.rounds, args.seconds)?;
        let command = format!("cargo xtask bench --policies-only --rounds {} --seconds {}", args.rounds, args.seconds);
        let section = crate::policy_bench::section(&figures, &command, &sh("date -u +%Y-%m-%d"));
        return replace_section(&path, &section, crate::policy_bench::splice);
    }
    let ns = Netns::new(format!("govbench{}", std::process::id()))?;
    let config = args.governor_config.as_deref();
    if args.overhead_only {
        let mut gov = Pairs::default();
        for round in 1..=args.rounds {
            let plain = measure(&ns, Attached::Nothing, args.seconds, config)?;
            let with = measure(&ns, Attached::Governor, args.seconds, config)?;
            let (r, c) = gov.add(round, &plain, &with)?;
            let daemon_cpu = with.daemon.map_or(0.0, |d| d.0 * 100.0);
            step(&format!("round {round}: governor {r:.3} (CPU {c:.3}), daemon {daemon_cpu:.1}% of a CPU"));
        }
        println!("median rate ratio {:.3}, median CPU ratio {:.3}", median(&mut gov.rate), median(&mut gov.cpu));
        step("profiling the kernel programs (kernel.bpf_stats_enabled, one more run)");
        for (name, per_call, calls) in profile(&ns, args.seconds)? {
            println!("{name}: {per_call:.0} ns per call, {calls:.2} calls per connection");
        }
        return Ok(());
    }
    let (mut gov, mut peer) = (Pairs::default(), Pairs::default());
    let (mut cpu, mut rss, mut shutdown) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let plain1 = measure(&ns, Attached::Nothing, args.seconds, config)?;
        let with_gov = measure(&ns, Attached::Governor, args.seconds, config)?;
        let plain2 = measure(&ns, Attached::Nothing, args.seconds, config)?;
        let with_peer = measure(&ns, Attached::Tcpstates, args.seconds, config)?;
        let (g, p) = (gov.add(round, &plain1, &with_gov)?, peer.add(round, &plain2, &with_peer)?);
        step(&format!("round {round}: governor {:.3} (CPU {:.3}), tcpstates {:.3} (CPU {:.3})", g.0, g.1, p.0, p.1));
        if let Some((c, r, s)) = with_gov.daemon {
            cpu.push(c);
            rss.push(r);
            // A daemon that had to be killed counts as the 5 s limit.
            shutdown.push(s.unwrap_or(Duration::from_secs(5)).as_secs_f64() * 1000.0);
        }
    }
    step("profiling the kernel programs (kernel.bpf_stats_enabled, one more run)");
    let programs = profile(&ns, args.seconds)?;
    drop(ns);
    let scale = crate::scale::run(args.scale)?;
    let registry = crate::deregister::run(args.registry)?;
    let daemon = DaemonFigures {
        cpu: median(&mut cpu),
        rss_kib: rss.iter().copied().max().unwrap_or(0),
        shutdown_ms: median(&mut shutdown),
        shutdown_max_ms: shutdown.iter().copied().fold(0.0, f64::max),
    };
    let command = format!(
        "cargo xtask bench --rounds {} --seconds {} --registry-trials {}",
        args.rounds, args.seconds, args.registry.registry_trials
    );
    let mut report = report(args, &mut gov, &mut peer, &daemon, &programs)
        + &crate::scale::section(&scale)
        + &crate::deregister::section(&registry, &command, &sh("date -u +%Y-%m-%d"));
    // The enforcement comparison is measured by `--policies-only` alone:
    // the report keeps the one it has.
    if let Some(kept) = std::fs::read_to_string(&path).ok().as_deref().and_then(crate::policy_bench::existing) {
        report = crate::policy_bench::splice(&report, kept);
    }
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    step(&format!(
        "median ratios: governor {:.3} (CPU {:.3}), tcpstates {:.3} (CPU {:.3}); written to {}",
        median(&mut gov.rate),
        median(&mut gov.cpu),
        median(&mut peer.rate),
        median(&mut peer.cpu),
        path.display()
    ));
    Ok(())
}

/// The pairs of one tool: ratios and the table rows.
#[derive(Default)]
struct Pairs {
    /// Connections per second with the tool / without.
    rate: Vec<f64>,
    /// CPU per connection without the tool / with it (1.0: free).
    cpu: Vec<f64>,
    rows: String,
}

impl Pairs {
    fn add(&mut self, round: usize, plain: &Measurement, with: &Measurement) -> anyhow::Result<(f64, f64)> {
        let (r, c) = (with.rate / plain.rate, plain.cpu_us / with.cpu_us);
        self.rate.push(r);
        self.cpu.push(c);
        writeln!(
            self.rows,
            "| {round} | {:.0} | {:.0} | {r:.3} | {:.1} | {:.1} | {c:.3} | {:.0}% |",
            plain.rate,
            with.rate,
            plain.cpu_us,
            with.cpu_us,
            100.0 * plain.steal.max(with.steal)
        )?;
        Ok((r, c))
    }

    fn range(v: &[f64]) -> String {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2}")
    }
}

struct DaemonFigures {
    cpu: f64,
    rss_kib: u64,
    shutdown_ms: f64,
    shutdown_max_ms: f64,
}

/// Turns `kernel.bpf_stats_enabled` on and back off on drop.
pub struct BpfStats;

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> anyhow::Result<Self> {
        std::fs::write(Self::PATH, "1").with_context(|| format!("writing {}", Self::PATH))?;
        Ok(Self)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, "0");
    }
}

/// Per program: nanoseconds per call and calls per connection, from one
/// run with the kernel's run-time statistics on (they add a little cost of
/// their own, so this run is not one of the ratio runs).
fn profile(ns: &Netns, seconds: u64) -> anyhow::Result<Vec<(&'static str, f64, f64)>> {
    const PROGRAMS: [&str; 5] = ["gov_state", "gov_rst_sent", "gov_rst_recv", "gov_retrans", "gov_flow_sample"];
    let _stats = BpfStats::enable()?;
    let _governor = start_governor()?;
    let (_, connections) = loadgen_in(ns, seconds)?;
    #[expect(clippy::cast_precision_loss, reason = "connection counts are far below 2^52")]
    let connections = connections as f64;
    let mut out = Vec::new();
    for name in PROGRAMS {
        let (per_call, count) = program_stats(name)?;
        out.push((name, per_call, count / connections));
    }
    Ok(out)
}

/// A loaded program's nanoseconds per call and calls so far, from
/// bpftool (0 without `kernel.bpf_stats_enabled`).
fn program_stats(name: &str) -> anyhow::Result<(f64, f64)> {
    let shown = Command::new("bpftool").args(["prog", "show", "name", name]).output().context("running bpftool")?;
    let text = String::from_utf8_lossy(&shown.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| -> f64 {
        words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    let (time, count) = (after("run_time_ns"), after("run_cnt"));
    Ok((if count > 0.0 { time / count } else { 0.0 }, count))
}

/// A loaded program's nanoseconds per call.
pub fn program_ns_per_call(name: &str) -> anyhow::Result<f64> {
    program_stats(name).map(|(per_call, _)| per_call)
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) }
}

/// What a shell command prints, trimmed (empty when it fails).
fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn report(
    args: &BenchArgs,
    gov: &mut Pairs,
    peer: &mut Pairs,
    daemon: &DaemonFigures,
    programs: &[(&str, f64, f64)],
) -> String {
    let verdict = |r: f64| if r >= 0.97 { "meets the target (≥ 0.97)" } else { "misses the target (≥ 0.97)" };
    let mut per_program = String::new();
    let mut in_programs = 0.0;
    for (name, ns_per_call, per_connection) in programs {
        let _ = writeln!(per_program, "| `{name}` | {ns_per_call:.0} | {per_connection:.2} |");
        in_programs += ns_per_call * per_connection;
    }
    #[expect(clippy::cast_precision_loss, reason = "memory sizes are small")]
    let rss_mib = daemon.rss_kib as f64 / 1024.0;
    let header = "| round | plain conn/s | with conn/s | ratio | plain CPU µs/conn | with CPU µs/conn | CPU ratio | steal |\n\
                  |---|---|---|---|---|---|---|---|\n";
    let (g_range, g_cpu_range) = (Pairs::range(&gov.rate), Pairs::range(&gov.cpu));
    let (p_range, p_cpu_range) = (Pairs::range(&peer.rate), Pairs::range(&peer.cpu));
    let (g, g_cpu, p, p_cpu) =
        (median(&mut gov.rate), median(&mut gov.cpu), median(&mut peer.rate), median(&mut peer.cpu));
    format!(
        "# Benchmarks\n\n\
         ## Overhead on a connect/accept/close loop\n\n\
         Produced by `cargo xtask bench --rounds {rounds} --seconds {seconds}` (as root) on {date}.\n\
         Machine: {cpus} CPUs, kernel {kernel}.\n\n\
         A load generator in its own network namespace connects to a listener on\n\
         127.0.0.1, the listener accepts and closes, the client closes with RST\n\
         (SO_LINGER 0), for {seconds} s per run, one client thread pinned to CPU 0\n\
         and one server thread pinned to CPU 1. Each round runs: nothing\n\
         attached, `governor run` attached (defaults), nothing attached,\n\
         `tcpstates` from Debian's libbpf-tools attached (it sends every state\n\
         change to user space). Each tool is compared with the plain run next to\n\
         it, in two ways:\n\n\
         - **rate ratio**: connections per second with the tool / without;\n\
         - **CPU ratio**: host CPU time per connection without the tool / with it\n\
         \x20 (all CPUs, kernel and user, the tool's own process included, time\n\
         \x20 stolen by the hypervisor left out; from `/proc/stat`).\n\n\
         Both are 1.0 for a free tool; the target is set on the rate ratio. On\n\
         this virtual machine single runs swing widely, and the CPU cost per\n\
         connection swings with the rate while little time is stolen: the\n\
         machine's own speed varies from second to second. Only medians over\n\
         many rounds mean anything; the ranges show the spread.\n\n\
         | | median rate ratio (range) | median CPU ratio (range) |\n|---|---|---|\n\
         | governor | **{g:.3}** ({g_range}) — {gv} | {g_cpu:.3} ({g_cpu_range}) |\n\
         | tcpstates (peer) | {p:.3} ({p_range}) | {p_cpu:.3} ({p_cpu_range}) |\n\n\
         ### governor, per round\n\n{header}{g_rows}\n\
         ### tcpstates, per round\n\n{header}{p_rows}\n\
         ## The daemon under this load\n\n\
         | | |\n|---|---|\n\
         | CPU, median over the governor runs | {cpu:.1}% of one CPU |\n\
         | resident memory, largest seen | {rss_mib:.1} MiB |\n\
         | SIGTERM to exit, median (largest) | {shutdown:.0} ms ({shutdown_max:.0} ms) |\n\n\
         ## Cost per kernel program\n\n\
         One further run with `kernel.bpf_stats_enabled=1` (the statistics add a\n\
         little cost of their own). Calls per connection show how often each\n\
         hook fires in this loop (the flow sampler runs once per reading of\n\
         the tables, not per connection).\n\n\
         | program | ns per call | calls per connection |\n|---|---|---|\n{per_program}\n\
         Time inside governor's programs: **{in_programs:.0} ns per connection**.\n\
         The programs are BTF tracepoints (the kernel formats no record for\n\
         them, and they load the socket's fields directly) and nothing runs\n\
         per packet. Most of their time goes to the per-socket table (an LRU\n\
         hash: one insert, lookups and one delete per socket) and the\n\
         endpoint table; the rest of the overhead is the daemon (its CPU\n\
         above) and what both do to the caches of a machine whose two CPUs\n\
         the loop keeps busy.\n",
        rounds = args.rounds,
        seconds = args.seconds,
        date = sh("date -u +%Y-%m-%d"),
        cpus = sh("nproc"),
        kernel = sh("uname -r"),
        gv = verdict(g),
        g_rows = gov.rows,
        p_rows = peer.rows,
        cpu = daemon.cpu * 100.0,
        shutdown = daemon.shutdown_ms,
        shutdown_max = daemon.shutdown_max_ms,
    )
}

pub fn measure(
    ns: &Netns,
    attached: Attached,
    seconds: u64,
    config: Option<&std::path::Path>,
) -> anyhow::Result<Measurement> {
    let mut tool = match attached {
        Attached::Nothing => None,
        Attached::Governor => Some(start_governor_with(config)?.0),
        Attached::Tcpstates => Some(start_tcpstates()?),
    };
    let pid = tool.as_ref().map(|t| t.0.id());
    let cpu_before = pid.and_then(cpu_time);
    let ticks_before = host_ticks()?;
    let started = Instant::now();
    let (rate, connections) = loadgen_in(ns, seconds)?;
    let wall = started.elapsed();
    let ticks_after = host_ticks()?;
    // SAFETY: sysconf has no preconditions.
    let tick_us = 1e6 / f64::from(u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1));
    #[expect(clippy::cast_precision_loss, reason = "tick and connection counts are far below 2^52")]
    let (cpu_us, steal) = (
        (ticks_after.0 - ticks_before.0) as f64 * tick_us / connections.max(1) as f64,
        (ticks_after.1 - ticks_before.1) as f64 / (ticks_after.2 - ticks_before.2).max(1) as f64,
    );
    let daemon = match (attached, pid, cpu_before) {
        (Attached::Governor, Some(pid), Some(before)) => {
            let cpu =
                cpu_time(pid).map_or(0.0, |after| after.saturating_sub(before).as_secs_f64() / wall.as_secs_f64());
            let rss = rss_kib(pid).unwrap_or(0);
            let shutdown = tool.as_mut().and_then(Background::stop);
            Some((cpu, rss, shutdown))
        }
        _ => None,
    };
    Ok(Measurement { rate, cpu_us, steal, daemon })
}

/// Runs the load generator inside `ns`; connections per second.
pub fn loadgen_in(ns: &Netns, seconds: u64) -> anyhow::Result<(f64, u64)> {
    let exe = std::env::current_exe()?;
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args(["loadgen", "--seconds", &seconds.to_string()])
        .output()
        .context("running the load generator")?;
    if !out.status.success() {
        bail!("load generator failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed = text.trim().split_once(' ').and_then(|(r, n)| Some((r.parse().ok()?, n.parse().ok()?)));
    parsed.with_context(|| format!("load generator printed {text:?}"))
}

/// Host-wide CPU ticks from the first line of `/proc/stat`: busy (user,
/// nice, system, irq, softirq), stolen by the hypervisor, and all.
fn host_ticks() -> anyhow::Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    Ok((busy, at(7), v.iter().take(8).sum()))
}

fn start_governor() -> anyhow::Result<Background> {
    start_governor_with(None).map(|(g, _)| g)
}

/// Starts the release build of governor (with a config file, if given) and
/// waits until it is ready; returns it and its metrics address.
pub fn start_governor_with(config: Option<&std::path::Path>) -> anyhow::Result<(Background, SocketAddr)> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
    let bin = root().join("target/release/governor");
    let mut cmd = Command::new(&bin);
    cmd.args(["run", "--metrics-addr", &format!("127.0.0.1:{port}"), "--log", "warn"]);
    if let Some(path) = config {
        cmd.arg("--config").arg(path);
    }
    let child = cmd.stdout(Stdio::null()).spawn().with_context(|| format!("starting {}", bin.display()))?;
    let child = Background(child);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for _ in 0..200 {
        if ready(addr) {
            return Ok((child, addr));
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("governor did not become ready within 10 s")
}

fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

fn start_tcpstates() -> anyhow::Result<Background> {
    let mut child = Command::new("tcpstates")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tcpstates (Debian package libbpf-tools)")?;
    // tcpstates prints nothing until it has attached; give it a moment and
    // make sure it did not fail.
    thread::sleep(Duration::from_millis(1500));
    if let Some(status) = child.try_wait()? {
        let mut err = String::new();
        if let Some(e) = child.stderr.take() {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                err.push_str(&line);
            }
        }
        bail!("tcpstates exited ({status}): {err}");
    }
    Ok(Background(child))
}

/// The loop itself. Runs inside the namespace; prints connections/second.
pub fn loadgen(args: &LoadgenArgs) -> anyhow::Result<()> {
    const MAX_CONNECTIONS: u64 = 50_000_000;
    const MAX_FAILURES: u64 = 1000;
    // The client may run at most WINDOW connections ahead of the server:
    // an overflowing accept queue drops SYNs and stalls the client for the
    // 1 s SYN retransmit, which would measure the timer, not the hooks.
    const WINDOW: u64 = 64;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let done = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let server = {
        let (done, accepted) = (Arc::clone(&done), Arc::clone(&accepted));
        thread::spawn(move || {
            pin_to_cpu(1);
            // Accept and close at once; the client's RST may already have
            // arrived, which is fine.
            for _ in listener.incoming() {
                accepted.fetch_add(1, Ordering::Relaxed);
                if done.load(Ordering::Relaxed) {
                    break;
                }
            }
        })
    };
    pin_to_cpu(0);
    let start = Instant::now();
    let stop_at = start + Duration::from_secs(args.seconds);
    let (mut n, mut failures) = (0u64, 0u64);
    while Instant::now() < stop_at && n < MAX_CONNECTIONS {
        match TcpStream::connect(addr) {
            Ok(s) => {
                abort_on_close(&s)?;
                n += 1;
                while n > accepted.load(Ordering::Relaxed) + WINDOW && Instant::now() < stop_at {
                    thread::yield_now();
                }
            }
            Err(e) => {
                failures += 1;
                if failures > MAX_FAILURES {
                    bail!("more than {MAX_FAILURES} failed connects, last: {e}");
                }
            }
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let rate = n as f64 / start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    // Wake the server so it sees `done`.
    let _ = TcpStream::connect(addr);
    let _ = server.join();
    if failures > 0 {
        eprintln!("{failures} connects failed");
    }
    println!("{rate:.1} {n}");
    Ok(())
}

/// Keeps the calling thread on one CPU, so that client and server do not
/// share a CPU in some runs and not in others (a large source of noise on a
/// 2-CPU machine). Best effort: without the CPU it stays unpinned.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read
    // and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

/// `SO_LINGER` with a zero timeout: `close()` sends RST.
fn abort_on_close(s: &TcpStream) -> anyhow::Result<()> {
    socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)).context("setsockopt(SO_LINGER)")
}
