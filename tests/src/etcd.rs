//! A real etcd server as a child process, with a blocking client for the
//! tests.

use std::{
    fs,
    future::Future,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, PutOptions, TlsOptions, WatchStream,
};
use tokio::runtime::Runtime;

use crate::{
    governor::{TempDir, free_port},
    tls::Certs,
};

/// The etcd binary (Debian's etcd-server).
const ETCD_BIN: &str = "/usr/bin/etcd";

/// How long one request may take once the server is up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server may take to answer after a start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One key as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    /// The value, as UTF-8.
    pub value: String,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
    /// The revision that created the key.
    pub create_revision: i64,
    /// The revision that last changed the key.
    pub mod_revision: i64,
}

impl Kv {
    fn from_etcd(kv: &KeyValue) -> (String, Self) {
        let key = kv.key_str().expect("etcd key is UTF-8").to_owned();
        let value = kv.value_str().expect("etcd value is UTF-8").to_owned();
        (key, Self { value, lease: kv.lease(), create_revision: kv.create_revision(), mod_revision: kv.mod_revision() })
    }
}

/// A single-member etcd on 127.0.0.1, in its own temp data dir. Killed on
/// drop; the data dir goes with it.
pub struct Etcd {
    child: Option<Child>,
    client: Client,
    runtime: Runtime,
    client_port: u16,
    peer_port: u16,
    /// Set by `start_tls`: clients must present a certificate of this CA.
    tls: Option<Certs>,
    /// Set by `enable_auth`: the root user's password.
    password: Option<String>,
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd on 127.0.0.1 with free client and peer ports and a temp
    /// data dir; waits (bounded, 30 s) until a request succeeds. Panics with
    /// etcd's log on failure.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// As `start`, serving clients over TLS only and requiring a client
    /// certificate (`certs()` has the files).
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let dir = TempDir::new("etcd");
        let tls = tls.then(|| Certs::generate(&dir.0));
        let client_port = free_port();
        let peer_port = free_port();
        let placeholder = connect(&runtime, client_port, None, None);
        let mut etcd =
            Self { child: None, client: placeholder, runtime, client_port, peer_port, tls, password: None, dir };
        etcd.client = etcd.connect();
        etcd.spawn();
        etcd.wait_ready();
        etcd
    }

    /// The certificates of a `start_tls` server.
    pub fn certs(&self) -> &Certs {
        self.tls.as_ref().expect("started with start_tls")
    }

    /// Turns on etcd's authentication with a `root` user (the only user
    /// etcd 3.4 lets enable it) holding `password`; the fixture's own client
    /// signs in from then on.
    pub fn enable_auth(&mut self, password: &str) {
        self.call("add user root", |mut c| async move { c.user_add("root", password, None).await });
        self.call("grant root", |mut c| async move { c.user_grant_role("root", "root").await });
        self.call("enable auth", |mut c| async move { c.auth_enable().await });
        self.password = Some(password.to_owned());
        self.client = self.connect();
        self.wait_ready();
    }

    /// "http://127.0.0.1:PORT" (https with TLS), for governor's config.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn connect(&self) -> Client {
        connect(&self.runtime, self.client_port, self.tls.as_ref(), self.password.as_deref())
    }

    /// etcd's log (stdout and stderr of every run).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("etcd.log")).unwrap_or_default()
    }

    /// Puts a key without a lease; returns the revision of the put (header
    /// revision).
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let resp = self.call(&format!("put {key}"), |mut c| async move { c.put(key, value, None).await });
        resp.header().expect("put response header").revision()
    }

    /// Grants a lease of `ttl_seconds` and puts the key on it; returns the
    /// lease id.
    pub fn put_with_lease(&self, key: &str, value: &str, ttl_seconds: i64) -> i64 {
        let lease =
            self.call(&format!("grant a {ttl_seconds} s lease"), |mut c| async move {
                c.lease_grant(ttl_seconds, None).await
            })
            .id();
        self.put_on_lease(key, value, lease);
        lease
    }

    /// Puts a key on an existing lease.
    pub fn put_on_lease(&self, key: &str, value: &str, lease: i64) {
        self.call(&format!("put {key} on lease {lease:x}"), |mut c| async move {
            c.put(key, value, Some(PutOptions::new().with_lease(lease))).await
        });
    }

    /// Revokes a lease (its keys go).
    pub fn revoke(&self, lease: i64) {
        self.call(&format!("revoke lease {lease:x}"), |mut c| async move { c.lease_revoke(lease).await });
    }

    /// Remaining TTL of a lease in seconds, or `None` when it no longer
    /// exists.
    pub fn lease_ttl(&self, lease: i64) -> Option<i64> {
        let what = format!("time to live of lease {lease:x}");
        let resp = self.runtime.block_on(async {
            let mut c = self.client.clone();
            tokio::time::timeout(REQUEST_TIMEOUT, async move { c.lease_time_to_live(lease, None).await }).await
        });
        match resp {
            // etcd answers an unknown (or expired) lease with a TTL of -1.
            Ok(Ok(resp)) => (resp.ttl() >= 0).then(|| resp.ttl()),
            Ok(Err(e)) if e.to_string().contains("requested lease not found") => None,
            Ok(Err(e)) => panic!("etcd: {what}: {e}"),
            Err(elapsed) => panic!("etcd: {what}: no answer within {REQUEST_TIMEOUT:?} ({elapsed})"),
        }
    }

    /// The key, or `None` when it does not exist.
    pub fn get(&self, key: &str) -> Option<Kv> {
        let resp = self.call(&format!("get {key}"), |mut c| async move { c.get(key, None).await });
        resp.kvs().first().map(|kv| Kv::from_etcd(kv).1)
    }

    /// Every key under the prefix, sorted by key.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, Kv)> {
        let resp = self.call(&format!("get prefix {prefix}"), |mut c| async move {
            c.get(prefix, Some(GetOptions::new().with_prefix())).await
        });
        let mut kvs: Vec<(String, Kv)> = resp.kvs().iter().map(Kv::from_etcd).collect();
        kvs.sort_by(|a, b| a.0.cmp(&b.0));
        kvs
    }

    /// Deletes the key (nothing happens when it does not exist).
    pub fn delete(&self, key: &str) {
        self.call(&format!("delete {key}"), |mut c| async move { c.delete(key, None).await });
    }

    /// Starts watching `key` and waits (bounded) until etcd confirms the
    /// watch, so that no later change can be missed.
    pub fn watch(&self, key: &str) -> WatchStream {
        let what = format!("watch {key}");
        let mut stream = self.call(&what, |mut c| async move { c.watch(key, None).await });
        let confirmed = self.runtime.block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await });
        assert!(matches!(confirmed, Ok(Ok(Some(_)))), "etcd: {what}: not confirmed: {confirmed:?}");
        stream
    }

    /// Waits (bounded by `timeout`) for a delete on a watch and returns
    /// when it arrived, or `None` when none came in time.
    pub fn wait_delete(&self, stream: &mut WatchStream, timeout: Duration) -> Option<Instant> {
        let deleted = async {
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.events().iter().any(|e| e.event_type() == EventType::Delete) => {
                        return Instant::now();
                    }
                    Ok(Some(_)) => {}
                    other => panic!("etcd: the watch ended: {other:?}"),
                }
            }
        };
        self.runtime.block_on(async { tokio::time::timeout(timeout, deleted).await }).ok()
    }

    /// Polls `get(key)` every 50 ms until `done` holds or `timeout` passes;
    /// returns the last value read and whether `done` held.
    pub fn wait_for(&self, key: &str, timeout: Duration, done: impl Fn(Option<&Kv>) -> bool) -> (Option<Kv>, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let kv = self.get(key);
            if done(kv.as_ref()) {
                return (kv, true);
            }
            if Instant::now() >= deadline {
                return (kv, false);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s); the data dir is
    /// kept.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it again with the same ports and data dir and waits (bounded,
    /// 30 s) until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.client = self.connect();
        self.spawn();
        self.wait_ready();
    }

    fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log =
            fs::OpenOptions::new().create(true).append(true).open(self.dir.0.join("etcd.log")).expect("etcd log file");
        let child = Command::new(ETCD_BIN)
            .args(["--name", "default", "--data-dir"])
            .arg(self.dir.0.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(self.tls.iter().flat_map(|t| {
                [
                    "--cert-file".into(),
                    t.server_cert.clone().into_os_string(),
                    "--key-file".into(),
                    t.server_key.clone().into_os_string(),
                    "--trusted-ca-file".into(),
                    t.ca.clone().into_os_string(),
                    "--client-cert-auth".into(),
                ]
            }))
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdout(log.try_clone().expect("dup etcd log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {ETCD_BIN}: {e}"));
        self.child = Some(child);
    }

    /// Waits (bounded) until a read succeeds.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("etcd exited before it answered ({status}):\n{}", self.log());
            }
            let mut c = self.client.clone();
            let probe = async move { c.get("governor-tests-probe", None).await };
            match self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(1), probe).await }) {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = String::from("no answer within 1 s"),
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not answer within {START_TIMEOUT:?} (last: {last}):\n{}", self.log());
    }

    /// Runs one request on a clone of the client, bounded by
    /// `REQUEST_TIMEOUT`; panics with `what` on error or timeout.
    fn call<T, F>(&self, what: &str, request: impl FnOnce(Client) -> F) -> T
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let request = request(self.client.clone());
        match self.runtime.block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, request).await }) {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => panic!("etcd: {what}: {e}"),
            Err(elapsed) => panic!("etcd: {what}: no answer within {REQUEST_TIMEOUT:?} ({elapsed})"),
        }
    }
}

/// A client for the server on `port`. It connects lazily, so the server
/// need not be up yet.
fn connect(runtime: &Runtime, port: u16, tls: Option<&Certs>, password: Option<&str>) -> Client {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}");
    let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
    if let Some(t) = tls {
        let read = |p: &std::path::Path| fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        options = options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(&t.ca)))
                .identity(Identity::from_pem(read(&t.client_cert), read(&t.client_key))),
        );
    }
    if let Some(password) = password {
        options = options.with_user("root", password);
    }
    runtime
        .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, Client::connect([url.as_str()], Some(options))).await })
        .unwrap_or_else(|_| panic!("etcd client for {url}: no connection within {REQUEST_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("etcd client for {url}: {e}"))
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- etcd log ---\n{}", self.log());
        }
    }
}
