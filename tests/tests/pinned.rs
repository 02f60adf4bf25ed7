//! Pinned mode: policies stay in force while the daemon is away (killed,
//! restarted for an upgrade), the next daemon takes over the kernel's
//! counts and open connections without a duplicate program, and a daemon
//! that never comes back lets its rules lapse at the end of the lease.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use governor_tests::{
    Governor, Netns,
    governor::{bin, free_port, run_to_exit},
    require_root, series,
};

const EPERM: i32 = nix::errno::Errno::EPERM as i32;

/// The test's own pin directory; removed (which detaches the pinned links)
/// even when the test fails.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How many programs named `name` are attached at the cgroup v2 root
/// (bpftool shows the name from BTF, or the kernel's first 15 characters).
fn attached_at_root(name: &str) -> usize {
    let short = &name[..name.len().min(15)];
    let mounts = governor::host::read_mounts().expect("read mounts");
    let root = governor::host::cgroup2_root(&mounts).expect("cgroup v2 is mounted").to_path_buf();
    let out = run_to_exit(Command::new("bpftool").args(["cgroup", "show"]).arg(&root));
    assert!(out.status.success(), "bpftool cgroup show: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == name || w == short))
        .count()
}

#[test]
fn pinned_policies_survive_a_killed_daemon_carry_their_counts_to_the_next_and_lapse_without_one() {
    require_root();
    let ns = Netns::new("pinned");
    ns.add_address("10.235.13.1/32");
    let pins = PinDir(PathBuf::from(format!("/sys/fs/bpf/governor-test-{}", std::process::id())));
    let pin_dir = format!("\"{}\"", pins.0.display());
    let list = r#"[
        { name = "cap3", kind = "max_connections", destination = "10.235.13.1", ports = "20170", max_connections = 3 },
        { name = "blocked", kind = "block", destination = "10.235.13.1", ports = "20171" },
    ]"#;
    let config = [
        ("policies", list),
        ("enforcement.pinned", "true"),
        ("enforcement.pin_dir", pin_dir.as_str()),
        ("enforcement.lease_seconds", "5"),
    ];
    let capped: SocketAddr = "10.235.13.1:20170".parse().expect("addr");
    let blocked: SocketAddr = "10.235.13.1:20171".parse().expect("addr");
    let listeners =
        ns.run(move || (TcpListener::bind(capped).expect("bind"), TcpListener::bind(blocked).expect("bind")));
    let connect = move |addr: SocketAddr| TcpStream::connect(addr).map_err(|e| e.raw_os_error());
    let refused = move |addr: SocketAddr| ns_refused(connect(addr));

    let mut first = Governor::start_with(&config);
    let mut held: Vec<TcpStream> = ns.run(move || (0..3).map(|_| connect(capped).expect("under the cap")).collect());
    assert!(ns.run(move || refused(capped)), "the fourth connect is over the cap");
    assert!(ns.run(move || refused(blocked)));
    let log = first.log();
    first.kill();

    // The daemon is gone; its policies are not.
    assert!(ns.run(move || refused(capped)), "the cap holds without a daemon (log of the first daemon:\n{log})");
    assert!(ns.run(move || refused(blocked)), "the block holds without a daemon");

    // The next daemon takes over: the three connections opened under the
    // first still count, and closing one frees exactly one place.
    let mut second = Governor::start_with(&config);
    assert!(ns.run(move || refused(capped)), "the places taken before the restart are still taken");
    // A third daemon on the same pins is refused while the second runs.
    let metrics = format!("127.0.0.1:{}", free_port());
    let out = run_to_exit(
        Command::new(bin()).args(["run", "--metrics-addr", &metrics, "--config"]).arg(second.config_path()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("in use by another governor on this host"), "{stderr}");
    for (name, expected) in [("gov_connect4", 1), ("gov_connect6", 1), ("gov_sock_release", 1)] {
        assert_eq!(attached_at_root(name), expected, "{name}: the refused daemon attached nothing that stayed");
    }
    held.pop();
    let more = ns.run(move || connect(capped)).expect("the place given back after the restart");
    assert!(ns.run(move || refused(capped)));
    assert!(ns.run(move || refused(blocked)));
    for (name, expected) in [("gov_connect4", 1), ("gov_connect6", 1), ("gov_sock_release", 1)] {
        assert_eq!(attached_at_root(name), expected, "{name}: the pinned link was taken over, not doubled");
    }
    // The kernel's counters went on through the restart: allowed 3 + 1,
    // denied 1 + 1 before the second daemon and 2 under it.
    let decisions = |action: &str| {
        series("governor_policy_decisions_total", &[("policy", "cap3"), ("action", action), ("reason", "concurrency")])
    };
    assert_eq!(second.settle(&decisions("allow"), 4), 4);
    assert_eq!(second.settle(&decisions("deny"), 4), 4);
    let log = second.log();
    assert!(log.contains("took over a pinned enforcement program"), "{log}");

    // No daemon comes back: the lease (5 s) runs out and everything is let
    // through again, while the pins are still there.
    second.kill();
    assert!(ns.run(move || refused(blocked)), "right after the kill the lease still holds");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lapsed = false;
    while !lapsed && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
        lapsed = ns.run(move || connect(blocked)).is_ok();
    }
    assert!(lapsed, "the block lapsed with its lease");
    assert!(ns.run(move || connect(capped)).is_ok(), "the cap lapsed too");
    assert!(pins.0.exists(), "lapsing needs no one to remove the pins");

    // `governor unpin` removes them, and with them the programs.
    let path = second.config_path();
    let out = run_to_exit(Command::new(bin()).args(["unpin", "--config"]).arg(&path));
    assert!(out.status.success(), "governor unpin: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!pins.0.exists());
    assert_eq!(attached_at_root("gov_connect4"), 0, "unpinning detached the program");
    drop((held, more, listeners));
}

#[test]
fn a_policed_cgroup_removed_while_no_daemon_runs_does_not_stop_the_next_one() {
    require_root();
    let pins = PinDir(PathBuf::from(format!("/sys/fs/bpf/governor-test-police-{}", std::process::id())));
    let pin_dir = format!("\"{}\"", pins.0.display());
    let mounts = governor::host::read_mounts().expect("read mounts");
    let root = governor::host::cgroup2_root(&mounts).expect("cgroup v2 is mounted").to_path_buf();
    let name = format!("governor-test-pinned-{}", std::process::id());
    let cgroup = Cgroup(root.join(&name));
    std::fs::create_dir(&cgroup.0).expect("create the test cgroup");
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cgroup.0).expect("cgroup"));
    let policed = format!(
        r#"[{{ name = "bw", kind = "bandwidth", cgroup = "{name}", bytes_per_second = 1000000, direction = "egress" }}]"#
    );
    let pinned = [("enforcement.pinned", "true"), ("enforcement.pin_dir", pin_dir.as_str())];
    let mut first = Governor::start_with(&[pinned[0], pinned[1], ("policies", policed.as_str())]);
    let links = pins.0.join("v1/links");
    let police = [links.join(format!("gov_police_out-{id}")), links.join(format!("gov_police_in-{id}"))];
    assert!(police.iter().all(|p| p.exists()), "the policing links are pinned");
    first.kill();
    // The pod goes away while no daemon runs: its cgroup is removed and the
    // kernel lets go of the links attached there.
    std::fs::remove_dir(&cgroup.0).expect("remove the empty test cgroup");

    let second = Governor::start_with(&pinned);
    assert!(police.iter().all(|p| !p.exists()), "the pins of the gone cgroup are dropped:\n{}", second.log());
    drop(second);
    let out = run_to_exit(Command::new(bin()).args(["unpin", "--config"]).arg(first.config_path()));
    assert!(out.status.success(), "governor unpin: {}", String::from_utf8_lossy(&out.stderr));
}

/// A test cgroup, removed on drop if it is still there.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn ns_refused(result: Result<TcpStream, Option<i32>>) -> bool {
    match result {
        Err(Some(EPERM)) => true,
        Err(e) => panic!("connect failed with {e:?}, not EPERM"),
        Ok(stream) => {
            drop(stream);
            false
        }
    }
}
