//! `governor top`: a live view of the busiest endpoints from
//! `GET /api/v1/endpoints`, refreshed on an interval. When stdout is not a
//! terminal it prints one snapshot as plain text instead.

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

use super::{REQUEST_TIMEOUT, client, print_stdout, table};
use crate::api;

pub const PATH: &str = "/api/v1/endpoints";

/// Refreshing faster than this only loads the daemon.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// How often keys and fetched documents are looked at.
const TICK: Duration = Duration::from_millis(100);
/// The order of the state counts in the header.
const STATES: [&str; 4] = ["unhealthy", "suspect", "recovering", "healthy"];

/// Shows the busiest endpoints until `q`, Esc or Ctrl-C, fetching them
/// every `interval` (at least 200 ms). While the daemon cannot be reached
/// the header says why and the last table stays. When stdout is not a
/// terminal, prints one snapshot and returns (an error if the daemon
/// cannot be reached).
pub fn top(addr: SocketAddr, interval: Duration) -> anyhow::Result<()> {
    if !io::stdout().is_terminal() {
        let endpoints: api::Endpoints = client::get_json(addr, PATH, REQUEST_TIMEOUT)?;
        let mut lines = vec![header_line(&clock(SystemTime::now()), addr, false, &summary(&endpoints))];
        lines.extend(render_top(&endpoints, usize::MAX, usize::MAX));
        print_stdout(&(lines.join("\n") + "\n")).context("cannot write to stdout")?;
        return Ok(());
    }
    let updates = spawn_fetcher(addr, interval.max(MIN_INTERVAL));
    let _terminal = TerminalGuard::enter().context("cannot take over the terminal (pipe the output for a snapshot)")?;
    let (mut width, mut height) = terminal::size().context("cannot read the terminal size")?;
    let mut view = View { addr, endpoints: None, fetched_at: String::new(), error: None };
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
                Err(TryRecvError::Disconnected) => anyhow::bail!("the thread fetching endpoints stopped"),
            }
        }
        if changed {
            view.draw(width, height)?;
        }
    }
}

/// Fetches the endpoints every `interval` on a thread of its own, so keys
/// are answered at once even while the daemon is slow to answer.
fn spawn_fetcher(addr: SocketAddr, interval: Duration) -> mpsc::Receiver<Result<api::Endpoints, client::ClientError>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        loop {
            let started = Instant::now();
            if sender.send(client::get_json(addr, PATH, REQUEST_TIMEOUT)).is_err() {
                return;
            }
            thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    });
    receiver
}

/// What the live view shows: the last endpoints fetched, and the error of
/// the last fetch if it failed.
struct View {
    addr: SocketAddr,
    endpoints: Option<api::Endpoints>,
    fetched_at: String,
    error: Option<String>,
}

impl View {
    fn update(&mut self, update: Result<api::Endpoints, client::ClientError>) {
        match update {
            Ok(endpoints) => {
                self.endpoints = Some(endpoints);
                self.fetched_at = clock(SystemTime::now());
                self.error = None;
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    fn lines(&self, width: usize, height: usize) -> Vec<String> {
        let status = match (&self.error, &self.endpoints) {
            (None, Some(endpoints)) => summary(endpoints),
            (None, None) => "connecting...".to_owned(),
            (Some(error), None) => format!("retrying: {error}"),
            (Some(error), Some(_)) => format!("retrying, table from {}: {error}", self.fetched_at),
        };
        let mut lines = vec![truncate(&header_line(&clock(SystemTime::now()), self.addr, true, &status), width)];
        if let Some(endpoints) = &self.endpoints {
            lines.extend(render_top(endpoints, width, height.saturating_sub(1)));
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

    #[test]
    fn view_keeps_the_last_table_while_retrying() {
        let addr: SocketAddr = "127.0.0.1:9966".parse().expect("address");
        let mut view = View { addr, endpoints: None, fetched_at: String::new(), error: None };
        assert!(view.lines(200, 10)[0].ends_with("q to quit  connecting..."));
        view.update(Ok(sample()));
        assert_eq!(view.lines(200, 10).len(), 6);
        view.update(Err(client::ClientError::Malformed { addr, detail: "no end of headers".to_owned() }));
        let lines = view.lines(200, 3);
        assert!(lines[0].contains("q to quit  retrying, table from "), "{}", lines[0]);
        assert!(lines[0].contains("did not answer with valid HTTP"), "{}", lines[0]);
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("ENDPOINT"));
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
