//! The real `governor` binary as a child process.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::scrape::Scraper;

/// Poll interval the tests give the daemon, in milliseconds.
pub const POLL_MS: u64 = 100;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The binary under test: `GOVERNOR_BIN`, else the workspace's release build.
pub fn bin() -> PathBuf {
    std::env::var_os("GOVERNOR_BIN").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/governor")),
        PathBuf::from,
    )
}

/// A copy of the binary that an unprivileged user can run, whatever the
/// permissions of the checkout's directories (for the tests that check what
/// a non-root user sees).
pub fn world_executable_bin(dir: &TempDir) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let copy = dir.0.join("governor");
    fs::copy(bin(), &copy).expect("copy the governor binary");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "governor-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The tests' config file: short intervals, plus `overrides`.
fn config_file(overrides: &[(&str, &str)]) -> String {
    let poll = POLL_MS.to_string();
    let mut keys: Vec<(&str, &str)> =
        vec![("daemon.poll_interval_ms", poll.as_str()), ("ebpf.event_drain_interval_ms", "20")];
    for (key, value) in overrides {
        keys.retain(|(k, _)| k != key);
        keys.push((key, value));
    }
    let mut text = String::new();
    // Keys without a table (arrays of tables such as `registries`, inline)
    // come before the first table header.
    for (key, value) in keys.iter().filter(|(k, _)| !k.contains('.')) {
        let _ = writeln!(text, "{key} = {value}");
    }
    let mut tables: Vec<&str> = keys.iter().filter_map(|(k, _)| k.split_once('.').map(|(t, _)| t)).collect();
    tables.sort_unstable();
    tables.dedup();
    for table in tables {
        let _ = writeln!(text, "[{table}]");
        for (key, value) in keys.iter().filter(|(k, _)| k.split_once('.').is_some_and(|(t, _)| t == table)) {
            let _ = writeln!(text, "{} = {value}", key.split_once('.').expect("table.key").1);
        }
    }
    text
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("free port").port()
}

pub struct Governor {
    child: Option<Child>,
    pub addr: SocketAddr,
    scraper: Scraper,
    dir: TempDir,
}

impl Governor {
    /// Starts `governor run` with a short poll interval and waits for
    /// `/readyz`.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As `start`, with config keys (`("table.key", "toml value")`) set or
    /// overridden.
    pub fn start_with(overrides: &[(&str, &str)]) -> Self {
        Self::start_with_args(overrides, &[])
    }

    /// As `start_with`, with more arguments for `governor run`.
    pub fn start_with_args(overrides: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = TempDir::new("daemon");
        let config = dir.0.join("governor.toml");
        fs::write(&config, config_file(overrides)).expect("write config");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let log = fs::File::create(dir.0.join("governor.log")).expect("log file");
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .args(["--metrics-addr", &addr.to_string()])
            .args(args)
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin().display()));
        let mut g = Self { child: Some(child), addr, scraper: Scraper::new(addr), dir };
        g.wait_ready();
        g
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("governor exited before it was ready ({status}):\n{}", self.log());
            }
            if let Some((200, _)) = self.scraper.get("/readyz") {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("governor was not ready within 30 s:\n{}", self.log());
    }

    /// The config file the daemon was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("governor.toml")
    }

    /// Rewrites the config file with `overrides` over the test defaults, as
    /// `start_with` writes it.
    pub fn rewrite_config(&self, overrides: &[(&str, &str)]) {
        fs::write(self.config_path(), config_file(overrides)).expect("rewrite config");
    }

    /// Sends SIGHUP (reload the config).
    pub fn hangup(&self) {
        signal(self.child.as_ref().expect("running"), nix::sys::signal::Signal::SIGHUP);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("governor.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn get(&mut self, path: &str) -> Option<(u16, String)> {
        self.scraper.get(path)
    }

    /// A JSON document of the API (`/api/v1/...`).
    pub fn json(&mut self, path: &str) -> serde_json::Value {
        match self.scraper.get(path) {
            Some((200, body)) => serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
            other => panic!("GET {path}: {other:?}"),
        }
    }

    /// Polls `path` (bounded, 30 s) until `done` accepts the document and
    /// returns that document; panics with the last one otherwise.
    pub fn wait_json(
        &mut self,
        path: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let doc = self.json(path);
            if done(&doc) {
                return doc;
            }
            assert!(Instant::now() < deadline, "{what}: not seen within 30 s; last {path}:\n{doc:#}");
            thread::sleep(Duration::from_millis(POLL_MS));
        }
    }

    pub fn metrics(&mut self) -> HashMap<String, f64> {
        self.scraper.metrics()
    }

    /// The value of one series, 0 when it does not exist (yet). Every
    /// series the tests read is an integer counter or gauge.
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "integer-valued series")]
    pub fn value(&mut self, series: &str) -> u64 {
        self.metrics().get(series).map_or(0, |v| *v as u64)
    }

    /// Waits (bounded) until `series` reaches `expected`, then lets a few
    /// more poll intervals pass so that anything beyond it would show too,
    /// and returns the final value.
    pub fn settle(&mut self, series: &str, expected: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.value(series) < expected && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(POLL_MS));
        }
        thread::sleep(Duration::from_millis(POLL_MS * 5));
        self.value(series)
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        signal(&child, nix::sys::signal::Signal::SIGTERM);
        let deadline = started + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (status, started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("governor did not exit within 15 s of SIGTERM:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, as a crash or the OOM killer would: no shutdown path runs.
    /// Reaps the process (bounded) and returns its exit status; the fixture
    /// stays, so its log can still be read.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(&child, nix::sys::signal::Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "governor did not die within 15 s of SIGKILL:\n{}", self.log());
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    let _ = nix::sys::signal::kill(pid, sig);
}

impl Drop for Governor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- governor log ---\n{}", self.log());
        }
    }
}

/// Runs the binary to completion (bounded to 30 s) and returns its output.
pub fn run_to_exit(cmd: &mut Command) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start governor");
    let deadline = Instant::now() + Duration::from_secs(30);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_file_groups_keys_by_table_and_overrides() {
        assert_eq!(
            super::config_file(&[("metrics.max_endpoint_series", "1"), ("ebpf.event_drain_interval_ms", "1000")]),
            "[daemon]\npoll_interval_ms = 100\n[ebpf]\nevent_drain_interval_ms = 1000\n[metrics]\nmax_endpoint_series = 1\n"
        );
        assert_eq!(
            super::config_file(&[("registry.dry_run", "true"), ("registries", "[{ name = \"a\" }]")]),
            "registries = [{ name = \"a\" }]\n[daemon]\npoll_interval_ms = 100\n[ebpf]\nevent_drain_interval_ms = 20\n[registry]\ndry_run = true\n"
        );
    }
}
