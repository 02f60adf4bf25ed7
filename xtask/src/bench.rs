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
    os::fd::AsRawFd as _,
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
}

#[derive(clap::Args)]
pub struct LoadgenArgs {
    #[arg(long)]
    seconds: u64,
}

/// A namespace that is removed on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> anyhow::Result<Self> {
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
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        // SIGTERM first so governor detaches cleanly, then make sure.
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attached {
    Nothing,
    Governor,
    Tcpstates,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.rounds < 5 {
        bail!("--rounds must be at least 5 for a meaningful median");
    }
    let ns = Netns::new(format!("govbench{}", std::process::id()))?;
    let mut gov_ratios = Vec::new();
    let mut peer_ratios = Vec::new();
    let mut raw = String::new();
    for round in 1..=args.rounds {
        let base1 = measure(&ns, Attached::Nothing, args.seconds)?;
        let gov = measure(&ns, Attached::Governor, args.seconds)?;
        let base2 = measure(&ns, Attached::Nothing, args.seconds)?;
        let peer = measure(&ns, Attached::Tcpstates, args.seconds)?;
        let (g, p) = (gov / base1, peer / base2);
        step(&format!(
            "round {round}: plain {base1:.0}/s, governor {gov:.0}/s ({g:.3}); plain {base2:.0}/s, tcpstates {peer:.0}/s ({p:.3})"
        ));
        writeln!(raw, "| {round} | {base1:.0} | {gov:.0} | {g:.3} | {base2:.0} | {peer:.0} | {p:.3} |")?;
        gov_ratios.push(g);
        peer_ratios.push(p);
    }
    let (g, p) = (median(&mut gov_ratios), median(&mut peer_ratios));
    let report = report(args, g, p, &raw);
    let path = root().join(&args.output);
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    step(&format!("median ratio: governor {g:.3}, tcpstates {p:.3}; written to {}", path.display()));
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) }
}

fn report(args: &BenchArgs, g: f64, p: f64, raw: &str) -> String {
    let sh = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let verdict = |r: f64| if r >= 0.97 { "meets the target (≥ 0.97)" } else { "misses the target (≥ 0.97)" };
    format!(
        "# Benchmarks\n\n\
         ## Overhead on a connect/accept/close loop\n\n\
         Produced by `cargo xtask bench --rounds {rounds} --seconds {seconds}` (as root) on {date}.\n\
         Machine: {cpus} CPUs, kernel {kernel}.\n\n\
         A load generator in its own network namespace connects to a listener on\n\
         127.0.0.1, the listener accepts and closes, the client closes with RST\n\
         (SO_LINGER 0), for {seconds} s per run, one client and one server thread.\n\
         Each round runs: nothing attached, `governor run` attached (defaults),\n\
         nothing attached, `tcpstates` from Debian's libbpf-tools attached (it\n\
         sends every state change to user space). The ratio is connections per\n\
         second with the tool divided by the neighbouring plain run; the result\n\
         is the median over rounds.\n\n\
         | | median ratio (with / without) |\n|---|---|\n\
         | governor | **{g:.3}** — {gv} |\n\
         | tcpstates (peer) | {p:.3} |\n\n\
         Raw runs (connections per second):\n\n\
         | round | plain | governor | ratio | plain | tcpstates | ratio |\n\
         |---|---|---|---|---|---|---|\n{raw}\n\
         Single runs vary by several percent on this 2-CPU machine; only the\n\
         medians are meaningful.\n",
        rounds = args.rounds,
        seconds = args.seconds,
        date = sh("date -u +%Y-%m-%d"),
        cpus = sh("nproc"),
        kernel = sh("uname -r"),
        gv = verdict(g),
    )
}

fn measure(ns: &Netns, attached: Attached, seconds: u64) -> anyhow::Result<f64> {
    let _tool = match attached {
        Attached::Nothing => None,
        Attached::Governor => Some(start_governor()?),
        Attached::Tcpstates => Some(start_tcpstates()?),
    };
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
    text.trim().parse::<f64>().with_context(|| format!("load generator printed {text:?}"))
}

fn start_governor() -> anyhow::Result<Background> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
    let bin = root().join("target/release/governor");
    let child = Command::new(&bin)
        .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}"), "--log", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let child = Background(child);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for _ in 0..200 {
        if ready(addr) {
            return Ok(child);
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
    println!("{rate:.1}");
    Ok(())
}

/// `SO_LINGER` with a zero timeout: `close()` sends RST.
fn abort_on_close(s: &TcpStream) -> anyhow::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid socket fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>()).expect("small"),
        )
    };
    if rc != 0 {
        bail!("setsockopt(SO_LINGER): {}", std::io::Error::last_os_error());
    }
    Ok(())
}
