//! A network namespace that exists for one test.

use std::{
    fs::File,
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use nix::sched::{CloneFlags, setns};

pub struct Netns {
    name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (package iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Netns {
    /// Creates `gov-<tag>-<pid>-<n>` with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("gov-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Adds an address to the namespace's loopback (IPv6 without duplicate
    /// address detection, so it is usable at once).
    pub fn add_address(&self, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", "lo", "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", "lo"]);
        }
    }

    /// Connects this namespace to `peer` with a veth pair (a real link with
    /// a 1500-byte MTU, offloads and GRO, unlike loopback) and gives each
    /// end its addresses (IPv6 ones without duplicate address detection).
    pub fn link(&self, peer: &Self, here: &[&str], there: &[&str]) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (a, b) =
            (format!("gv{}a{n}", std::process::id() % 100_000), format!("gv{}b{n}", std::process::id() % 100_000));
        self.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b, "netns", peer.name()]);
        for (ns, dev, cidrs) in [(self, &a, here), (peer, &b, there)] {
            for cidr in cidrs {
                if cidr.contains(':') {
                    ns.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
                } else {
                    ns.ip(&["addr", "add", cidr, "dev", dev]);
                }
            }
        }
        self.ip(&["link", "set", &a, "up"]);
        peer.ip(&["link", "set", &b, "up"]);
    }

    /// Loads an nftables ruleset inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft (package nftables)");
        child.stdin.take().expect("stdin").write_all(ruleset.as_bytes()).expect("write ruleset");
        let out = child.wait_with_output().expect("nft");
        assert!(out.status.success(), "nft -f: {}\n{ruleset}", String::from_utf8_lossy(&out.stderr));
    }

    /// Connects `n` times to `addr` from inside the namespace and returns
    /// how many connects were refused (answered with a RST).
    pub fn refused_connects(&self, addr: SocketAddr, n: u64) -> u64 {
        self.run(move || {
            (0..n)
                .map(|_| {
                    u64::from(matches!(TcpStream::connect(addr), Err(e) if e.kind() == ErrorKind::ConnectionRefused))
                })
                .sum()
        })
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it
    /// creates live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
