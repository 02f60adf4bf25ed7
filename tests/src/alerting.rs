//! The real Alertmanager and Prometheus (Debian's `prometheus-alertmanager`
//! and `prometheus`), each on 127.0.0.1 with a free port and a temp dir,
//! stopped (SIGKILL) when dropped.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::governor::{TempDir, free_port};

/// One of the two servers.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
    name: &'static str,
}

impl Server {
    fn start(name: &'static str, program: &str, config: &str, args: impl Fn(&Path, SocketAddr) -> Vec<String>) -> Self {
        let dir = TempDir::new(name);
        fs::write(dir.0.join("config.yml"), config).expect("write config");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let log = fs::File::create(dir.0.join("log")).expect("log file");
        let child = Command::new(program)
            .args(args(&dir.0, addr))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program} (cargo xtask setup installs it): {e}"));
        let mut server = Self { child, addr, dir, name };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(addr, "/-/ready").ok().map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "{name} not ready within 30 s:\n{}", server.log());
            assert!(server.child.try_wait().expect("try_wait").is_none(), "{name} exited:\n{}", server.log());
            thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("log")).unwrap_or_default()
    }

    /// GET `path` as JSON (HTTP/1.0: the whole body, never chunked).
    pub fn json(&mut self, path: &str) -> Value {
        let (status, body) = get(self.addr, path).unwrap_or_else(|e| panic!("{} does not answer: {e}", self.name));
        assert_eq!(status, 200, "{} {path}: {body}", self.name);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{} {path}: {e}: {body}", self.name))
    }
}

/// One HTTP/1.0 GET, read to the end.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("no header end"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}

/// Alertmanager with one receiver that notifies nobody: the test reads the
/// alerts it holds from its API.
pub fn alertmanager() -> Server {
    let config = "route:\n  receiver: nobody\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: nobody\n";
    Server::start("alertmanager", "prometheus-alertmanager", config, |dir, addr| {
        vec![
            format!("--config.file={}", dir.join("config.yml").display()),
            format!("--storage.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            // A single instance: no gossip port.
            "--cluster.listen-address=".to_owned(),
        ]
    })
}

/// Prometheus scraping `target` as job `governor` every second, with the
/// rules of `rules` evaluated every second, sending alerts to
/// `alertmanager`. Only the intervals are the test's.
pub fn prometheus(target: SocketAddr, rules: &Path, alertmanager: SocketAddr) -> Server {
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\nscrape_configs:\n  - job_name: governor\n    static_configs:\n      - targets: ['{target}']\n",
        rules.display()
    );
    Server::start("prometheus", "prometheus", &config, |dir, addr| {
        vec![
            format!("--config.file={}", dir.join("config.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--rules.alert.resend-delay=1s".to_owned(),
        ]
    })
}

/// The alerts named `alertname` that Alertmanager holds and that have not
/// ended (its API leaves out alerts whose `endsAt` has passed).
pub fn active_alerts(alertmanager: &mut Server, alertname: &str) -> Vec<Value> {
    let all = alertmanager.json("/api/v2/alerts");
    all.as_array()
        .expect("a list of alerts")
        .iter()
        .filter(|a| a["labels"]["alertname"] == alertname)
        .cloned()
        .collect()
}

/// Polls Alertmanager (bounded by `within`) until `done` holds for the
/// active alerts named `alertname`; returns them.
pub fn wait_alerts(
    alertmanager: &mut Server,
    alertname: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let alerts = active_alerts(alertmanager, alertname);
        if done(&alerts) {
            return alerts;
        }
        if Instant::now() >= deadline {
            let all = alertmanager.json("/api/v2/alerts");
            panic!("{what}: not within {within:?}; {alertname} alerts: {alerts:#?}; all alerts: {all:#}");
        }
        thread::sleep(Duration::from_millis(250));
    }
}
