//! `governor top`: a live view of the busiest endpoints from
//! `GET /api/v1/endpoints` and, under them, the top talkers: the busiest
//! established connections by current byte rate from
//! `GET /api/v1/flows?sort=rate`. Both are fetched together on an interval.
//! A daemon without flows (older than this CLI, or failing to answer them)
//! still shows its endpoints, with the top talkers marked unavailable. When
//! stdout is not a terminal it prints one snapshot as plain text instead.

use std::{
    io::{self, IsTerminal as _, Write},
    net::SocketAddr,
    panic,
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, TryRecvError},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use crossterm::{
    cursor::{Hide, MoveTo, Show},
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute, queue,
    style::Print,
    terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen},
};

use super::{REQUEST_TIMEOUT, client, human_duration, print_stdout, table};
use crate::api;

pub const PATH: &str = "/api/v1/endpoints";
/// The 20 busiest flows by bytes per second now, busiest first.
pub const FLOWS_PATH: &str = "/api/v1/flows?sort=rate&limit=20";

/// Refreshing faster than this only loads the daemon.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// How often keys and fetched documents are looked at.
const TICK: Duration = Duration::from_millis(100);
/// The order of the state counts in the header.
const STATES: [&str; 4] = ["unhealthy", "suspect", "recovering", "healthy"];
/// The top talkers' blank line and title: less shows nothing of them.
const TALKERS_MIN_HEIGHT: usize = 2;

/// Shows the busiest endpoints and the top talkers until `q`, Esc or
/// Ctrl-C, fetching them every `interval` (at least 200 ms). While the
/// daemon cannot be reached the header says why and the last tables stay.
/// When stdout is not a terminal, prints one snapshot and returns (an error
/// if the daemon cannot be reached; unavailable flows are not one).
pub fn top(addr: SocketAddr, interval: Duration) -> anyhow::Result<()> {
    if !io::stdout().is_terminal() {
        let Fetched { endpoints, flows } = fetch(addr)?;
        let mut lines = vec![header_line(&clock(SystemTime::now()), addr, false, &summary(&endpoints))];
        lines.extend(render_top(&endpoints, usize::MAX, usize::MAX));
        lines.extend(render_talkers(&flows, usize::MAX, usize::MAX));
        print_stdout(&(lines.join("\n") + "\n")).context("cannot write to stdout")?;
        return Ok(());
    }
    let updates = spawn_fetcher(addr, interval.max(MIN_INTERVAL));
    let _terminal = TerminalGuard::enter().context("cannot take over the terminal (pipe the output for a snapshot)")?;
    let (mut width, mut height) = terminal::size().context("cannot read the terminal size")?;
    let mut view = View::new(addr);
    view.draw(width, height)?;
    loop {
        if event::poll(TICK)? {
            match event::read()? {
                Event::Key(key) if is_quit(key) => return Ok(()),
                Event::Resize(w, h) => {
                    (width, height) = (w, h);
                    view.draw(width, height)?;
                }
                _ => {}
            }
        }
        let mut changed = false;
        loop {
            match updates.try_recv() {
                Ok(update) => {
                    view.update(update);
                    changed = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => anyhow::bail!("the thread fetching from the daemon stopped"),
            }
        }
        if changed {
            view.draw(width, height)?;
        }
    }
}

/// One round of fetching: the endpoints, then the flows, or why the flows
/// are unavailable.
struct Fetched {
    endpoints: api::Endpoints,
    flows: Result<api::Flows, String>,
}

/// Fetches the endpoints and then the flows. Only the endpoints are needed:
/// when the flows fail the error says why in a few words.
fn fetch(addr: SocketAddr) -> Result<Fetched, client::ClientError> {
    let endpoints = client::get_json(addr, PATH, REQUEST_TIMEOUT)?;
    let flows = client::get_json(addr, FLOWS_PATH, REQUEST_TIMEOUT).map_err(|e| flows_unavailable(&e));
    Ok(Fetched { endpoints, flows })
}

/// Why the top talkers cannot be shown, short enough for their title line:
/// the daemon's own `{"error": ...}` when it sent one (it answers 404 when
/// `ebpf.count_flows` is off), else a 404 means a daemon older than the
/// flows API.
fn flows_unavailable(error: &client::ClientError) -> String {
    match error {
        client::ClientError::Status { status, body, .. } => match (status, client::error_message(body)) {
            (404, Some(message)) => message,
            (404, None) => "the daemon has no flows API (it is older than this CLI: upgrade it)".to_owned(),
            (_, message) => format!("the daemon answered {status}: {}", message.as_deref().unwrap_or(body)),
        },
        other => other.to_string(),
    }
}

/// Fetches every `interval` on a thread of its own, so keys are answered at
/// once even while the daemon is slow to answer.
fn spawn_fetcher(addr: SocketAddr, interval: Duration) -> mpsc::Receiver<Result<Fetched, client::ClientError>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        loop {
            let started = Instant::now();
            if sender.send(fetch(addr)).is_err() {
                return;
            }
            thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    });
    receiver
}

/// What the live view shows: the last endpoints and flows fetched, and the
/// error of the last fetch if it failed.
struct View {
    addr: SocketAddr,
    fetched: Option<Fetched>,
    fetched_at: String,
    error: Option<String>,
}

impl View {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, fetched: None, fetched_at: String::new(), error: None }
    }

    fn update(&mut self, update: Result<Fetched, client::ClientError>) {
        match update {
            Ok(fetched) => {
                self.fetched = Some(fetched);
                self.fetched_at = clock(SystemTime::now());
                self.error = None;
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    fn lines(&self, width: usize, height: usize) -> Vec<String> {
        let status = match (&self.error, &self.fetched) {
            (None, Some(fetched)) => summary(&fetched.endpoints),
            (None, None) => "connecting...".to_owned(),
            (Some(error), None) => format!("retrying: {error}"),
            (Some(error), Some(_)) => format!("retrying, tables from {}: {error}", self.fetched_at),
        };
        let mut lines = vec![truncate(&header_line(&clock(SystemTime::now()), self.addr, true, &status), width)];
        if let Some(Fetched { endpoints, flows }) = &self.fetched {
            let (endpoints_height, talkers_height) = split_height(
                height.saturating_sub(1),
                render_top(endpoints, width, usize::MAX).len(),
                render_talkers(flows, width, usize::MAX).len(),
            );
            lines.extend(render_top(endpoints, width, endpoints_height));
            lines.extend(render_talkers(flows, width, talkers_height));
        }
        lines.truncate(height);
        lines
    }

    /// Overwrites the screen line by line (no flicker from clearing it).
    fn draw(&self, width: u16, height: u16) -> io::Result<()> {
        let lines = self.lines(width.into(), height.into());
        let mut out = io::stdout().lock();
        for (row, line) in (0..height).zip(&lines) {
            queue!(out, MoveTo(0, row), Print(line))?;
            // At the last column the cursor stays on it: clearing would erase
            // the line's last character.
            if line.chars().count() < usize::from(width) {
                queue!(out, Clear(ClearType::UntilNewLine))?;
            }
        }
        if let Ok(row) = u16::try_from(lines.len())
            && row < height
        {
            queue!(out, MoveTo(0, row), Clear(ClearType::FromCursorDown))?;
        }
        out.flush()
    }
}

/// The endpoints table, busiest first (resets, failed connects and
/// retransmits in the windows, then live connections), at most `height`
/// lines of at most `width` characters. When rows do not fit, the last line
/// says how many were left out.
pub fn render_top(endpoints: &api::Endpoints, width: usize, height: usize) -> Vec<String> {
    if height == 0 {
        return Vec::new();
    }
    let room = height - 1;
    let mut sorted: Vec<&api::Endpoint> = endpoints.endpoints.iter().collect();
    sorted.sort_by(|a, b| {
        (activity(b), b.connections).cmp(&(activity(a), a.connections)).then_with(|| a.endpoint.cmp(&b.endpoint))
    });
    let shown = if sorted.len() <= room { sorted.len() } else { room.saturating_sub(1) };
    let rows: Vec<Vec<String>> = sorted[..shown].iter().map(|e| row(e)).collect();
    let mut lines = table(&["ENDPOINT", "STATE", "CONNS", "RESETS", "FAILED/ATTEMPTS", "RETRANS", "CLOSE_WAIT"], &rows);
    if room > 0 && sorted.is_empty() {
        lines.push("no endpoints tracked yet".to_owned());
    } else if room > 0 && shown < sorted.len() {
        lines.push(format!("... {} more endpoints", sorted.len() - shown));
    }
    lines.iter().map(|line| truncate(line, width)).collect()
}

fn row(endpoint: &api::Endpoint) -> Vec<String> {
    let api::Endpoint { endpoint, state, connections, window, .. } = endpoint;
    let api::Window { resets, connect_attempts, connect_failures, retransmits, close_wait, .. } = window;
    vec![
        endpoint.clone(),
        state.clone(),
        connections.to_string(),
        resets.to_string(),
        format!("{connect_failures}/{connect_attempts}"),
        retransmits.to_string(),
        close_wait.to_string(),
    ]
}

/// How many of `rows` lines go to the endpoints and how many to the top
/// talkers, given how many lines each would fill. When both do not fit the
/// endpoints get half the rows (rounded up), or more when the top talkers
/// need less than the other half. Fewer lines than the talkers' blank line
/// and title go to the endpoints instead.
fn split_height(rows: usize, endpoints_wanted: usize, talkers_wanted: usize) -> (usize, usize) {
    let endpoints = endpoints_wanted.min(rows.saturating_sub(talkers_wanted).max(rows.div_ceil(2)));
    match (rows - endpoints).min(talkers_wanted) {
        talkers if talkers < TALKERS_MIN_HEIGHT => (endpoints_wanted.min(rows), 0),
        talkers => (endpoints, talkers),
    }
}

/// The top talkers section, at most `height` lines of at most `width`
/// characters: a blank line, a title with the number of established flows,
/// then their table, or the title says why flows are unavailable. Nothing
/// when fewer than two lines fit.
fn render_talkers(flows: &Result<api::Flows, String>, width: usize, height: usize) -> Vec<String> {
    if height < TALKERS_MIN_HEIGHT {
        return Vec::new();
    }
    let title = match flows {
        Ok(flows) => format!("top talkers  flows: {} established, busiest by {}", flows.total, flows.sort),
        Err(reason) => format!("top talkers  unavailable: {reason}"),
    };
    let mut lines = vec![String::new(), truncate(&title, width)];
    if let Ok(flows) = flows {
        lines.extend(render_flows(flows, width, height - 2));
    }
    lines
}

/// The flows table in the order the daemon sent them (busiest first), at
/// most `height` lines of at most `width` characters. When the daemon holds
/// more flows than are shown, the last line says how many more.
pub fn render_flows(flows: &api::Flows, width: usize, height: usize) -> Vec<String> {
    if height == 0 {
        return Vec::new();
    }
    let room = height - 1;
    let fetched = flows.flows.len();
    // The daemon sends at most the limit asked for, and counts them all.
    let total = usize::try_from(flows.total).unwrap_or(usize::MAX).max(fetched);
    let shown = if fetched + usize::from(total > fetched) <= room { fetched } else { room.saturating_sub(1) };
    let rows: Vec<Vec<String>> = flows.flows[..shown].iter().map(flow_row).collect();
    let mut lines = table(&["LOCAL", "REMOTE", "PROCESS", "SEND/s", "RECV/s", "SENT", "RECEIVED", "AGE"], &rows);
    if room > 0 && fetched == 0 {
        lines
            .push("no established connections tracked (flows are counted only when ebpf.count_flows is on)".to_owned());
    } else if room > 0 && shown < total {
        lines.push(format!("... {} more flows", total - shown));
    }
    lines.iter().map(|line| truncate(line, width)).collect()
}

fn flow_row(flow: &api::Flow) -> Vec<String> {
    let api::Flow {
        local,
        remote,
        command,
        pid,
        age_seconds,
        bytes_sent,
        bytes_received,
        sent_bytes_per_second,
        received_bytes_per_second,
        ..
    } = flow;
    let process = if command.is_empty() && *pid == 0 { "-".to_owned() } else { format!("{command}/{pid}") };
    vec![
        local.clone(),
        remote.clone(),
        process,
        human_bytes(*sent_bytes_per_second),
        human_bytes(*received_bytes_per_second),
        human_bytes(*bytes_sent),
        human_bytes(*bytes_received),
        human_duration(*age_seconds),
    ]
}

/// A byte count in binary units with one decimal: `0 B`, `1023 B`,
/// `1.0 KiB`, `10.0 MiB`, `2.5 GiB`. A value that rounds to 1024 of a unit
/// is shown in the next one (`1.0 MiB`, not `1024.0 KiB`).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Tenths of a unit, rounded half up; u128 so that nothing overflows.
    let tenths = |divisor: u128| (u128::from(bytes) * 10 + divisor / 2) / divisor;
    let (mut unit, mut divisor) = (0, 1024_u128);
    while unit + 1 < UNITS.len() && tenths(divisor) >= 10_240 {
        unit += 1;
        divisor *= 1024;
    }
    let tenths = tenths(divisor);
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// What went wrong with an endpoint within its windows.
fn activity(endpoint: &api::Endpoint) -> u64 {
    let window = &endpoint.window;
    window.resets.saturating_add(window.connect_failures).saturating_add(window.retransmits)
}

/// `12 endpoints: 1 unhealthy, 2 suspect, 0 recovering, 9 healthy`, then any
/// state this CLI does not know, by name.
fn summary(endpoints: &api::Endpoints) -> String {
    let count = |state: &str| endpoints.endpoints.iter().filter(|e| e.state == state).count();
    let mut others: Vec<&str> =
        endpoints.endpoints.iter().map(|e| e.state.as_str()).filter(|s| !STATES.contains(s)).collect();
    others.sort_unstable();
    others.dedup();
    let parts: Vec<String> = STATES.iter().chain(&others).map(|state| format!("{} {state}", count(state))).collect();
    format!("{} endpoints: {}", endpoints.endpoints.len(), parts.join(", "))
}

fn header_line(clock: &str, addr: SocketAddr, interactive: bool, status: &str) -> String {
    let quit = if interactive { "  q to quit" } else { "" };
    format!("{clock}  governor {addr}{quit}  {status}")
}

/// The wall-clock time of day, `HH:MM:SS UTC` (UTC: no time zone database
/// is needed).
fn clock(now: SystemTime) -> String {
    let seconds = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", seconds / 3_600, seconds % 3_600 / 60, seconds % 60)
}

/// The first `width` characters of `line`, without trailing spaces.
fn truncate(line: &str, width: usize) -> String {
    let cut = line.char_indices().nth(width).map_or(line.len(), |(cut, _)| cut);
    line[..cut].trim_end().to_owned()
}

fn is_quit(key: KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            // Raw mode turns Ctrl-C into a key instead of SIGINT.
            KeyCode::Char('c' | 'C') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// While it lives the terminal is in raw mode on the alternate screen with
/// the cursor hidden. Dropping it restores the terminal, and so does a
/// panic hook, before the message is printed, so that it stays readable.
struct TerminalGuard;

/// Whether the terminal needs restoring: restoring happens once.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

impl TerminalGuard {
    fn enter() -> io::Result<Self> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = panic::take_hook();
            panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        terminal::enable_raw_mode()?;
        TERMINAL_TAKEN.store(true, Ordering::SeqCst);
        let guard = Self;
        execute!(io::stdout(), EnterAlternateScreen, Hide, Clear(ClearType::All))?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, Ordering::SeqCst) {
        // Best effort: there is nothing better to do with a failure here.
        let _ = execute!(io::stdout(), Show, LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, state: &str, resets: u64, retransmits: u64, connections: u64) -> api::Endpoint {
        api::Endpoint {
            endpoint: name.to_owned(),
            state: state.to_owned(),
            connections,
            window: api::Window {
                resets,
                retransmits,
                connect_attempts: 10,
                connect_failures: 1,
                close_wait: 2,
                ..api::Window::default()
            },
            ..api::Endpoint::default()
        }
    }

    fn sample() -> api::Endpoints {
        api::Endpoints {
            endpoints: vec![
                endpoint("10.0.0.1:80", "healthy", 0, 0, 50),
                endpoint("10.0.0.2:5432", "unhealthy", 12, 3, 4),
                endpoint("10.0.0.3:443", "healthy", 0, 0, 90),
                endpoint("[fd00::9]:6379", "suspect", 2, 1, 1),
            ],
        }
    }

    #[test]
    fn busiest_first_then_by_connections() {
        assert_eq!(
            render_top(&sample(), 200, 10),
            [
                "ENDPOINT        STATE      CONNS  RESETS  FAILED/ATTEMPTS  RETRANS  CLOSE_WAIT",
                "10.0.0.2:5432   unhealthy  4      12      1/10             3        2",
                "[fd00::9]:6379  suspect    1      2       1/10             1        2",
                "10.0.0.3:443    healthy    90     0       1/10             0        2",
                "10.0.0.1:80     healthy    50     0       1/10             0        2",
            ]
        );
    }

    #[test]
    fn cut_to_the_screen() {
        assert_eq!(
            render_top(&sample(), 30, 3),
            ["ENDPOINT       STATE      CONN", "10.0.0.2:5432  unhealthy  4", "... 3 more endpoints",]
        );
        assert_eq!(render_top(&sample(), 8, 1), ["ENDPOINT"]);
        assert!(render_top(&sample(), 80, 0).is_empty());
        assert_eq!(render_top(&sample(), 200, 5).len(), 5, "four rows fit exactly");
    }

    #[test]
    fn no_endpoints_says_so() {
        assert_eq!(
            render_top(&api::Endpoints::default(), 80, 5),
            ["ENDPOINT  STATE  CONNS  RESETS  FAILED/ATTEMPTS  RETRANS  CLOSE_WAIT", "no endpoints tracked yet",]
        );
    }

    #[test]
    fn summary_counts_every_state() {
        let mut endpoints = sample();
        endpoints.endpoints.push(endpoint("10.0.0.4:1", "draining", 0, 0, 0));
        assert_eq!(summary(&endpoints), "5 endpoints: 1 unhealthy, 1 suspect, 0 recovering, 2 healthy, 1 draining");
    }

    #[test]
    fn header_and_clock() {
        let addr: SocketAddr = "127.0.0.1:9966".parse().expect("address");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(19_000 * 86_400 + 3_723);
        assert_eq!(
            header_line(&clock(at), addr, true, "0 endpoints"),
            "01:02:03 UTC  governor 127.0.0.1:9966  q to quit  0 endpoints"
        );
        assert_eq!(header_line("x", addr, false, "y"), "x  governor 127.0.0.1:9966  y");
    }

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[expect(clippy::too_many_arguments, reason = "one flow per line in the tests")]
    fn flow(
        local: &str,
        remote: &str,
        command: &str,
        pid: u32,
        age_seconds: u64,
        (sent_bytes_per_second, received_bytes_per_second): (u64, u64),
        bytes_sent: u64,
        bytes_received: u64,
    ) -> api::Flow {
        api::Flow {
            local: local.to_owned(),
            remote: remote.to_owned(),
            command: command.to_owned(),
            pid,
            age_seconds,
            sent_bytes_per_second,
            received_bytes_per_second,
            bytes_sent,
            bytes_received,
            ..api::Flow::default()
        }
    }

    /// Busiest by rate first, as the daemon sends them; the second one has
    /// moved the most bytes, so sorting by bytes would change the order.
    fn sample_flows() -> api::Flows {
        api::Flows {
            total: 3,
            sort: "rate".to_owned(),
            flows: vec![
                flow("10.0.0.9:41000", "10.0.0.3:443", "curl", 4242, 75, (512, 3 * MIB / 2), 1536, 10 * MIB),
                flow("10.0.0.9:5432", "10.0.0.7:50000", "postgres", 88, 7_260, (2048, 0), 5 * GIB / 2, 1023),
                flow("[fd00::9]:6379", "[fd00::1]:40000", "", 0, 0, (0, 0), 0, 0),
            ],
        }
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:9966".parse().expect("address")
    }

    #[test]
    fn bytes_in_binary_units() {
        let cases = [
            (0, "0 B"),
            (1, "1 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (1_048_575, "1.0 MiB"),
            (10 * MIB, "10.0 MiB"),
            (10 * MIB + MIB / 4, "10.3 MiB"),
            (GIB, "1.0 GiB"),
            (5 * GIB / 2, "2.5 GiB"),
            (1 << 40, "1.0 TiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(human_bytes(bytes), expected, "{bytes} bytes");
        }
    }

    #[test]
    fn flows_in_the_daemons_order() {
        assert_eq!(
            render_flows(&sample_flows(), 200, 10),
            [
                "LOCAL           REMOTE           PROCESS      SEND/s   RECV/s   SENT     RECEIVED  AGE",
                "10.0.0.9:41000  10.0.0.3:443     curl/4242    512 B    1.5 MiB  1.5 KiB  10.0 MiB  1m15s",
                "10.0.0.9:5432   10.0.0.7:50000   postgres/88  2.0 KiB  0 B      2.5 GiB  1023 B    2h1m",
                "[fd00::9]:6379  [fd00::1]:40000  -            0 B      0 B      0 B      0 B       0s",
            ]
        );
    }

    #[test]
    fn flows_cut_to_the_screen() {
        assert_eq!(
            render_flows(&sample_flows(), 40, 3),
            ["LOCAL           REMOTE        PROCESS", "10.0.0.9:41000  10.0.0.3:443  curl/4242", "... 2 more flows"]
        );
        assert_eq!(render_flows(&sample_flows(), 5, 1), ["LOCAL"]);
        assert!(render_flows(&sample_flows(), 80, 0).is_empty());
        assert_eq!(render_flows(&sample_flows(), 200, 4).len(), 4, "three rows fit exactly");
        // The daemon holds more flows than it sent: the rest are counted.
        let mut flows = sample_flows();
        flows.total = 250;
        let lines = render_flows(&flows, 200, usize::MAX);
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[4], "... 247 more flows");
        assert_eq!(render_flows(&flows, 200, 4)[3], "... 248 more flows");
    }

    #[test]
    fn no_flows_says_how_they_are_counted() {
        let flows = api::Flows { total: 0, sort: "rate".to_owned(), flows: Vec::new() };
        assert_eq!(
            render_flows(&flows, 200, 5),
            [
                "LOCAL  REMOTE  PROCESS  SEND/s  RECV/s  SENT  RECEIVED  AGE",
                "no established connections tracked (flows are counted only when ebpf.count_flows is on)",
            ]
        );
    }

    #[test]
    fn talkers_title_counts_the_flows_or_says_why_not() {
        let lines = render_talkers(&Ok(sample_flows()), 200, usize::MAX);
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[..2], ["", "top talkers  flows: 3 established, busiest by rate"]);
        assert!(lines[2].starts_with("LOCAL"));
        assert_eq!(render_talkers(&Ok(sample_flows()), 20, 2), ["", "top talkers  flows:"]);
        assert!(render_talkers(&Ok(sample_flows()), 200, 1).is_empty());
        assert_eq!(
            render_talkers(&Err("the daemon answered 503: not ready".to_owned()), 200, 10),
            ["", "top talkers  unavailable: the daemon answered 503: not ready"]
        );
    }

    #[test]
    fn flows_unavailable_in_a_few_words() {
        let addr = addr();
        let status = |status, body: &str| client::ClientError::Status {
            addr,
            method: "GET",
            path: FLOWS_PATH.to_owned(),
            status,
            body: body.to_owned(),
        };
        // An older daemon: no route, so no JSON error.
        assert_eq!(
            flows_unavailable(&status(404, "(empty body)")),
            "the daemon has no flows API (it is older than this CLI: upgrade it)"
        );
        // A daemon not counting flows says so.
        assert_eq!(
            flows_unavailable(&status(404, r#"{"error":"flows are not counted: ebpf.count_flows is off"}"#)),
            "flows are not counted: ebpf.count_flows is off"
        );
        assert_eq!(
            flows_unavailable(&status(500, r#"{"error":"task panicked"}"#)),
            "the daemon answered 500: task panicked"
        );
        assert_eq!(flows_unavailable(&status(503, "not ready")), "the daemon answered 503: not ready");
        let malformed = client::ClientError::Malformed { addr, detail: "no end of headers".to_owned() };
        assert_eq!(flows_unavailable(&malformed), malformed.to_string());
    }

    #[test]
    fn height_split_between_endpoints_and_talkers() {
        // Both fit: each gets what it fills.
        assert_eq!(split_height(30, 5, 6), (5, 6));
        // Neither fits: the endpoints get half, rounded up.
        assert_eq!(split_height(20, 30, 23), (10, 10));
        assert_eq!(split_height(21, 30, 23), (11, 10));
        // Few endpoints leave the rest to the talkers, and the other way round.
        assert_eq!(split_height(20, 4, 23), (4, 16));
        assert_eq!(split_height(20, 30, 2), (18, 2));
        assert_eq!(split_height(20, 30, 0), (20, 0));
        // Too few lines for the talkers' title: the endpoints take them.
        assert_eq!(split_height(3, 30, 23), (3, 0));
        assert_eq!(split_height(4, 30, 23), (2, 2));
        assert_eq!(split_height(3, 2, 23), (2, 0));
        assert_eq!(split_height(1, 30, 23), (1, 0));
        assert_eq!(split_height(0, 30, 23), (0, 0));
    }

    #[test]
    fn view_shows_both_tables_within_the_screen() {
        let mut view = View::new(addr());
        view.update(Ok(Fetched { endpoints: sample(), flows: Ok(sample_flows()) }));
        let lines = view.lines(200, 30);
        assert_eq!(lines.len(), 1 + 5 + 6, "{lines:#?}");
        assert!(lines[1].starts_with("ENDPOINT"));
        assert_eq!(lines[6], "");
        assert_eq!(lines[7], "top talkers  flows: 3 established, busiest by rate");
        assert!(lines[9].contains("curl/4242"));
        let lines = view.lines(50, 9);
        assert_eq!(lines.len(), 9, "{lines:#?}");
        assert!(lines.iter().all(|line| line.chars().count() <= 50), "{lines:#?}");
        assert_eq!(lines[4], "... 2 more endpoints");
        assert_eq!(lines[5], "");
        assert_eq!(lines[8], "... 3 more flows");
    }

    #[test]
    fn view_keeps_the_endpoints_when_flows_fail() {
        let mut view = View::new(addr());
        let not_found = client::ClientError::Status {
            addr: addr(),
            method: "GET",
            path: FLOWS_PATH.to_owned(),
            status: 404,
            body: "(empty body)".to_owned(),
        };
        view.update(Ok(Fetched { endpoints: sample(), flows: Err(flows_unavailable(&not_found)) }));
        let lines = view.lines(200, 30);
        assert!(lines[0].ends_with("q to quit  4 endpoints: 1 unhealthy, 1 suspect, 0 recovering, 2 healthy"));
        assert_eq!(lines.len(), 1 + 5 + 2, "{lines:#?}");
        assert!(lines[1].starts_with("ENDPOINT"));
        assert!(lines[2].starts_with("10.0.0.2:5432"));
        assert_eq!(
            lines[7],
            "top talkers  unavailable: the daemon has no flows API (it is older than this CLI: upgrade it)"
        );
    }

    #[test]
    fn view_keeps_the_last_tables_while_retrying() {
        let addr = addr();
        let mut view = View::new(addr);
        assert!(view.lines(200, 10)[0].ends_with("q to quit  connecting..."));
        view.update(Ok(Fetched { endpoints: sample(), flows: Ok(sample_flows()) }));
        assert_eq!(view.lines(200, 10).len(), 10);
        view.update(Err(client::ClientError::Malformed { addr, detail: "no end of headers".to_owned() }));
        let lines = view.lines(200, 30);
        assert!(lines[0].contains("q to quit  retrying, tables from "), "{}", lines[0]);
        assert!(lines[0].contains("did not answer with valid HTTP"), "{}", lines[0]);
        assert_eq!(lines.len(), 12);
        assert!(lines[1].starts_with("ENDPOINT"));
        assert!(lines[9].contains("curl/4242"));
        assert_eq!(view.lines(200, 3).len(), 3);
    }

    #[test]
    fn quit_keys() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(is_quit(key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(is_quit(key(KeyCode::Char('Q'), KeyModifiers::SHIFT)));
        assert!(is_quit(key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(is_quit(key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!is_quit(key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!is_quit(key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }
}
