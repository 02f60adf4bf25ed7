//! The scale part of `cargo xtask bench`: governor's own memory and CPU
//! with many connections open at once, and at a steady rate of new
//! connections. Both loads run in a network namespace of their own, on its
//! loopback, driven by hidden `xtask` subcommands (`hold`, `paced`).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::bench::{Netns, cpu_time, rss_kib, start_governor_with, status_kib};

#[derive(clap::Args, Clone, Copy)]
pub struct ScaleArgs {
    /// Connections held open at once in the first scale run.
    #[arg(long, default_value_t = 100_000)]
    pub connections: u64,
    /// New connections per second in the second scale run.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Seconds each scale measurement lasts.
    #[arg(long, default_value_t = 10)]
    pub scale_seconds: u64,
}

#[derive(clap::Args)]
pub struct HoldArgs {
    #[arg(long)]
    connections: u64,
}

#[derive(clap::Args)]
pub struct PacedArgs {
    #[arg(long)]
    rate: u64,
    #[arg(long)]
    seconds: u64,
}

/// What the scale runs saw.
pub struct ScaleFigures {
    pub args: ScaleArgs,
    /// Connections opened by the hold run and the seconds it took.
    pub opened: u64,
    pub open_seconds: f64,
    /// Governor's CPU (share of one CPU) while they opened, and while they
    /// were held.
    pub open_cpu: f64,
    pub hold_cpu: f64,
    /// Resident memory with all of them open, and the peak (KiB).
    pub hold_rss_kib: u64,
    pub hold_peak_kib: u64,
    /// Connections governor's own table held at the end of the hold.
    pub tracked: u64,
    /// The paced run: connections made, the rate reached, governor's CPU
    /// and memory.
    pub paced_connections: u64,
    pub paced_rate: f64,
    pub paced_cpu: f64,
    pub paced_rss_kib: u64,
    /// Events lost by the kernel across both runs (ring buffer full).
    pub events_lost: u64,
}

fn table_entries(connections: u64) -> u64 {
    (connections * 2 + 16_384).next_power_of_two().min(4_194_304)
}

/// Sockets of both ends must fit the kernel's tables (each connection on
/// loopback is two sockets).
fn config(connections: u64) -> String {
    let entries = table_entries(connections);
    format!("[ebpf]\nsocket_table_entries = {entries}\n")
}

pub fn run(args: ScaleArgs) -> anyhow::Result<ScaleFigures> {
    let dir = std::env::temp_dir().join(format!("govscale{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("governor.toml");
    std::fs::write(&config_path, config(args.connections))?;
    let result = run_with(args, &config_path);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_with(args: ScaleArgs, config_path: &std::path::Path) -> anyhow::Result<ScaleFigures> {
    let (gov, addr) = start_governor_with(Some(config_path))?;
    let pid = gov.0.id();
    let lost_before = metric(addr, "governor_ebpf_events_lost_total")?;

    let per_process = connections_per_process()?;
    let processes = args.connections.div_ceil(per_process);
    crate::step(&format!(
        "scale: opening {} connections in a namespace ({processes} processes: the open file limit allows {per_process} \
         connections each)",
        args.connections
    ));
    let ns = Netns::new(format!("govscale{}", std::process::id()))?;
    let cpu0 = cpu_time(pid).context("governor's CPU time")?;
    let t0 = Instant::now();
    let mut holders = Vec::new();
    for i in 0..processes {
        let n = per_process.min(args.connections - i * per_process);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(std::env::current_exe()?)
            .args(["hold", "--connections", &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the hold load")?;
        holders.push(child);
    }
    let mut opened = 0;
    for child in &mut holders {
        let mut lines = BufReader::new(child.stdout.take().context("hold stdout")?).lines();
        let line = lines.next().context("hold load ended early")??;
        opened += line
            .strip_prefix("open ")
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("hold load said {line:?}"))?;
    }
    let open_wall = t0.elapsed();
    let cpu1 = cpu_time(pid).context("governor's CPU time")?;
    crate::step(&format!(
        "scale: {opened} open after {:.1} s; holding them for {} s",
        open_wall.as_secs_f64(),
        args.scale_seconds
    ));
    thread::sleep(Duration::from_secs(args.scale_seconds));
    let cpu2 = cpu_time(pid).context("governor's CPU time")?;
    let hold_rss_kib = rss_kib(pid).unwrap_or(0);
    let tracked = metric(addr, r#"governor_tracked_entries{table="connections"}"#)?;
    for mut child in holders {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    drop(ns);

    crate::step(&format!("scale: {} new connections per second for {} s", args.rate, args.scale_seconds));
    let ns = Netns::new(format!("govpaced{}", std::process::id()))?;
    let cpu3 = cpu_time(pid).context("governor's CPU time")?;
    let t3 = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe()?)
        .args(["paced", "--rate", &args.rate.to_string(), "--seconds", &args.scale_seconds.to_string()])
        .output()
        .context("running the paced load")?;
    if !out.status.success() {
        bail!("paced load failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let paced_wall = t3.elapsed();
    let cpu4 = cpu_time(pid).context("governor's CPU time")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (paced_rate, paced_connections) = text
        .trim()
        .split_once(' ')
        .and_then(|(r, n)| Some((r.parse().ok()?, n.parse().ok()?)))
        .with_context(|| format!("paced load printed {text:?}"))?;
    let paced_rss_kib = rss_kib(pid).unwrap_or(0);
    let events_lost = metric(addr, "governor_ebpf_events_lost_total")? - lost_before;
    let hold_peak_kib = status_kib(pid, "VmHWM:").unwrap_or(0);
    drop(ns);
    drop(gov);

    let share = |d: Duration, wall: Duration| d.as_secs_f64() / wall.as_secs_f64();
    Ok(ScaleFigures {
        args,
        opened,
        open_seconds: open_wall.as_secs_f64(),
        open_cpu: share(cpu1.saturating_sub(cpu0), open_wall),
        hold_cpu: share(cpu2.saturating_sub(cpu1), Duration::from_secs(args.scale_seconds)),
        hold_rss_kib,
        hold_peak_kib,
        tracked,
        paced_connections,
        paced_rate,
        paced_cpu: share(cpu4.saturating_sub(cpu3), paced_wall),
        paced_rss_kib,
        events_lost,
    })
}

/// One integer series from governor's `/metrics` (0 when absent).
fn metric(addr: SocketAddr, series: &str) -> anyhow::Result<u64> {
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "integer-valued series")]
    Ok(metric_value(addr, series)? as u64)
}

/// One series from governor's `/metrics` (0 when absent).
pub fn metric_value(addr: SocketAddr, series: &str) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).context("connecting to governor")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok()).unwrap_or(0.0))
}

/// Descriptors a process keeps for itself besides the sockets.
const SPARE_FILES: u64 = 64;

/// Raises the soft open-file limit to the hard one (without
/// `CAP_SYS_RESOURCE` the hard limit cannot be raised); returns it.
fn raise_file_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        bail!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        bail!("cannot raise the open file limit to {}: {}", limit.rlim_max, std::io::Error::last_os_error());
    }
    Ok(limit.rlim_max)
}

/// Connections one holding process can keep (two descriptors each: it
/// holds both ends).
fn connections_per_process() -> anyhow::Result<u64> {
    let files = raise_file_limit()?;
    if files < 2 * SPARE_FILES {
        bail!("the open file limit ({files}) is too low to hold connections");
    }
    Ok((files - SPARE_FILES) / 2)
}

/// Widens the namespace's client port range: one client address reaches
/// one server port from at most this many ports.
fn widen_port_range() -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")
        .context("setting ip_local_port_range inside the namespace")
}

/// Holds `connections` loopback connections open, spread over enough
/// listening ports; prints `open N` when they are, then waits for stdin to
/// close.
pub fn hold(args: &HoldArgs) -> anyhow::Result<()> {
    const PER_PORT: u64 = 60_000;
    let files = raise_file_limit()?;
    if args.connections * 2 + SPARE_FILES > files {
        bail!("{} connections need {} descriptors; the limit is {files}", args.connections, args.connections * 2);
    }
    widen_port_range()?;
    let ports = args.connections.div_ceil(PER_PORT).max(1);
    let accepted = Arc::new(AtomicU64::new(0));
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..ports {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        addrs.push(listener.local_addr()?);
        let accepted = Arc::clone(&accepted);
        let quota = args.connections.div_ceil(ports);
        servers.push(thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().take(usize::try_from(quota).unwrap_or(usize::MAX)) {
                match stream {
                    Ok(s) => held.push(s),
                    Err(_) => break,
                }
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            held
        }));
    }
    let mut clients = Vec::new();
    let per_port = args.connections.div_ceil(ports);
    let deadline = Instant::now() + Duration::from_mins(5);
    for (i, addr) in addrs.iter().enumerate() {
        let n = per_port.min(args.connections - per_port * i as u64);
        for _ in 0..n {
            clients.push(TcpStream::connect(addr).with_context(|| format!("connect {} to {addr}", clients.len()))?);
            // Stay close to the acceptors so the accept queue never overflows.
            while clients.len() as u64 > accepted.load(Ordering::Relaxed) + 256 {
                if Instant::now() > deadline {
                    bail!("the acceptors fell behind for 300 s");
                }
                thread::yield_now();
            }
        }
    }
    // Ports with a smaller share: wake their acceptors so they finish.
    while accepted.load(Ordering::Relaxed) < args.connections && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    println!("open {}", clients.len());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(clients);
    drop(servers);
    Ok(())
}

/// Makes `rate` connections per second for `seconds`: the server accepts
/// and closes, the client reads the end and closes (as a short HTTP/1.0
/// exchange would). Prints the rate reached and the connections made.
pub fn paced(args: &PacedArgs) -> anyhow::Result<()> {
    widen_port_range()?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let total = args.rate * args.seconds;
    let server = thread::spawn(move || {
        for stream in listener.incoming().take(usize::try_from(total).unwrap_or(usize::MAX)) {
            drop(stream);
        }
    });
    let start = Instant::now();
    let mut made = 0u64;
    let mut buf = [0u8; 16];
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / args.rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        if start.elapsed() > Duration::from_secs(args.seconds * 3) {
            break;
        }
        let mut s = TcpStream::connect(addr).context("connect")?;
        // Until the server's close arrives.
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
        made += 1;
    }
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let rate = made as f64 / start.elapsed().as_secs_f64();
    let _ = server.join();
    println!("{rate:.1} {made}");
    Ok(())
}

/// The report section.
#[expect(clippy::cast_precision_loss, reason = "memory sizes and counts are far below 2^52")]
pub fn section(f: &ScaleFigures) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let verdict = |ok: bool| if ok { "meets the target" } else { "misses the target" };
    format!(
        "\n## Scale: {connections} connections open, {rate} new connections per second\n\n\
         Produced by the same command, after the rounds above. governor runs with\n\
         its defaults except the kernel's socket table, sized for both ends of\n\
         every connection (`ebpf.socket_table_entries` = {entries}; flows live\n\
         in it). The loads run in network namespaces of their own, on loopback.\n\n\
         - **Open connections**: {opened} connections opened (file limit raised,\n\
         \x20 client port range widened inside the namespace) in {open_s:.1} s, then\n\
         \x20 held for {secs} s. governor's table held {tracked} sockets at the end\n\
         \x20 (both ends of each connection, plus the host's own).\n\
         - **New connections**: the client connects, the server accepts and\n\
         \x20 closes, the client reads the end and closes; paced at {rate} per\n\
         \x20 second for {secs} s: {paced_n} connections, {paced_rate:.0} per second reached.\n\n\
         | | measured | target |\n|---|---|---|\n\
         | resident memory, {opened} connections open | {hold_rss:.1} MiB (peak over both runs {peak:.1} MiB) | ≤ 64 MiB: {mem_verdict} |\n\
         | CPU while they opened ({open_rate:.0} per second) | {open_cpu:.1}% of one CPU | |\n\
         | CPU while they were held | {hold_cpu:.1}% of one CPU | |\n\
         | CPU at {paced_rate:.0} new connections per second | {paced_cpu:.1}% of one CPU | ≤ 5%: {cpu_verdict} |\n\
         | resident memory after the paced run | {paced_rss:.1} MiB | |\n\
         | events lost (ring buffer full) across both runs | {lost} | |\n\n",
        connections = f.args.connections,
        rate = f.args.rate,
        entries = table_entries(f.args.connections),
        opened = f.opened,
        open_s = f.open_seconds,
        secs = f.args.scale_seconds,
        tracked = f.tracked,
        paced_n = f.paced_connections,
        paced_rate = f.paced_rate,
        hold_rss = mib(f.hold_rss_kib),
        peak = mib(f.hold_peak_kib),
        mem_verdict = verdict(f.hold_peak_kib <= 64 * 1024),
        open_rate = f.opened as f64 / f.open_seconds.max(0.001),
        open_cpu = f.open_cpu * 100.0,
        hold_cpu = f.hold_cpu * 100.0,
        paced_cpu = f.paced_cpu * 100.0,
        cpu_verdict = verdict(f.paced_cpu <= 0.05),
        paced_rss = mib(f.paced_rss_kib),
        lost = f.events_lost,
    )
}

#[cfg(test)]
mod tests {
    use super::config;

    #[test]
    fn tables_hold_both_ends_of_every_connection() {
        assert_eq!(config(100_000), "[ebpf]\nsocket_table_entries = 262144\n");
        assert_eq!(config(10), "[ebpf]\nsocket_table_entries = 32768\n");
    }
}
