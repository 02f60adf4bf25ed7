//! `governor registry list` and `governor registry release`: the real CLI
//! against the real daemon and a real etcd.

use std::{net::SocketAddr, process::Command, time::Duration};

use governor_tests::{
    Etcd, Netns,
    governor::{bin, run_to_exit},
    registry::{counter, deregistrations, governor_with, quarantine_record, wait_listed},
    require_root,
};
use serde_json::Value;

/// Runs `governor ARGS --addr <the daemon>`; returns success, stdout and
/// stderr.
fn cli(addr: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let out = run_to_exit(Command::new(bin()).args(args).args(["--addr", &addr.to_string()]));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn release_by_hand_puts_the_instance_back_with_its_lease_and_holds_it() {
    require_root();
    let ns = Netns::new("reg-cli");
    ns.add_address("10.232.0.1/32");
    let etcd = Etcd::start();
    let key = "/gozero/cli.rpc/1";
    let lease = etcd.put_with_lease(key, "10.232.0.1:20097", 600);
    etcd.put("/gozero/cli.rpc/2", "192.0.2.16:20097");
    let mut gov = governor_with(
        &etcd,
        "10.232.0.0/24",
        &[("gozero", "/gozero", "host_port")],
        &[("registry.quarantine_base_seconds", "600")],
    );
    wait_listed(&mut gov, "gozero", "cli.rpc", 2);
    let (ok, out, _) = cli(gov.addr, &["registry", "list"]);
    assert!(ok && out == "No instance is quarantined by this node.\n", "{out}");

    let addr: SocketAddr = "10.232.0.1:20097".parse().expect("addr");
    assert_eq!(ns.refused_connects(addr, 10), 10);
    let (_, done) = etcd.wait_for(key, Duration::from_secs(30), |kv| kv.is_none());
    assert!(done, "not deregistered:\n{}", gov.log());

    let (ok, out, err) = cli(gov.addr, &["registry", "list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Quarantined instances (1)", "{out}");
    assert!(lines[2].starts_with("gozero    cli.rpc  /gozero/cli.rpc/1  10.232.0.1:20097"), "{out}");
    assert!(lines[2].contains("resets: 10 resets"), "{out}");
    let (ok, out, err) = cli(gov.addr, &["registry", "list", "--json"]);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(doc["quarantined"][0]["key"], key, "{doc:#}");
    assert_eq!(doc["quarantined"][0]["lease"], lease, "{doc:#}");

    // A key this node does not hold out: refused with the daemon's words.
    let (ok, _, err) = cli(gov.addr, &["registry", "release", "/gozero/cli.rpc/2"]);
    assert!(!ok, "{err}");
    assert!(err.contains("/gozero/cli.rpc/2 is not quarantined by this node") && err.contains("(HTTP 404)"), "{err}");

    // Released by hand while the endpoint is still unhealthy: back with its
    // value and lease at once, records cleared.
    let (ok, out, err) = cli(gov.addr, &["registry", "release", key]);
    assert!(ok, "{err}\n{}", gov.log());
    assert!(out.starts_with("/gozero/cli.rpc/1: put back with its value and lease.\n"), "{out}");
    let back = etcd.get(key).expect("restored");
    assert_eq!((back.value.as_str(), back.lease), ("10.232.0.1:20097", lease));
    assert!(quarantine_record(&etcd, "gozero", key).is_none(), "record cleared");
    let labels = [("registry", "gozero"), ("service", "cli.rpc")];
    assert_eq!(counter(&mut gov, "governor_registry_restorations_total", &labels), 1);

    // More resets keep it unhealthy; the hold keeps governor from taking it
    // out again.
    assert_eq!(ns.refused_connects(addr, 10), 10);
    let (_, deleted) = etcd.wait_for(key, Duration::from_secs(3), |kv| kv.is_none());
    assert!(!deleted, "taken out again during the hold:\n{}", gov.log());
    assert_eq!(deregistrations(&mut gov, "gozero", "cli.rpc"), 1);
    let (ok, _, err) = cli(gov.addr, &["registry", "release", key]);
    assert!(!ok && err.contains("is not quarantined by this node"), "{err}");
}

#[test]
fn registry_commands_without_a_registry_say_so() {
    require_root();
    let mut gov = governor_tests::Governor::start();
    let (ok, _, err) = cli(gov.addr, &["registry", "list"]);
    assert!(!ok && err.contains("no registry is watched: set etcd.endpoints and [[registries]] (HTTP 404)"), "{err}");
    let (ok, _, err) = cli(gov.addr, &["registry", "release", "/x/y/1"]);
    assert!(!ok && err.contains("no registry is watched"), "{err}\n{}", gov.log());
    assert!(gov.get("/healthz").is_some_and(|(status, _)| status == 200));
}
