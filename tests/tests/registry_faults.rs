//! Deregistration under faults, against a real etcd: two nodes acting on
//! the same service, etcd down during a spike, an instance's lease gone
//! while it is quarantined, the daemon killed and started again. Each one
//! takes no unsafe action and loses no state.

use std::{
    net::SocketAddr,
    os::unix::process::ExitStatusExt as _,
    thread,
    time::{Duration, Instant},
};

use governor_tests::{
    Etcd, Governor, Netns,
    registry::{
        budget, counter, deregistrations, governor_with, quarantine_record, wait_counter, wait_listed,
        wait_series_within,
    },
    require_root,
};
use serde_json::Value;

/// Long enough for governor's reconnect back-off (up to 10 s) plus its
/// connect timeout, and for an endpoint to recover.
const ETCD_WAIT: Duration = Duration::from_mins(1);

/// A few registry windows (200 ms each), for anything beyond the expected
/// to show.
const A_FEW_WINDOWS: Duration = Duration::from_secs(2);

/// Keeps `addr` unhealthy (ten refused connects every 500 ms, well above
/// ten resets within 5 s) until `done` holds; bounded by `timeout`.
/// Returns whether `done` held.
fn refuse_until(ns: &Netns, addr: SocketAddr, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        assert_eq!(ns.refused_connects(addr, 10), 10);
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// The endpoint's state in an `/api/v1/endpoints` document, "untracked"
/// when absent.
fn state<'a>(doc: &'a Value, name: &str) -> &'a str {
    doc["endpoints"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["endpoint"] == name))
        .and_then(|e| e["state"].as_str())
        .unwrap_or("untracked")
}

fn kratos_value(id: &str, service: &str, endpoint: &str) -> String {
    format!(r#"{{"id":"{id}","name":"{service}","endpoints":["http://{endpoint}"]}}"#)
}

const KRATOS: &[(&str, &str, &str)] = &[("kratos", "/microservices", "kratos")];

#[test]
fn two_nodes_on_one_service_spend_its_budget_of_one_exactly_once() {
    require_root();
    let ns = Netns::new("reg-nodes");
    ns.add_address("10.226.0.1/32");
    ns.add_address("10.226.0.2/32");
    let etcd = Etcd::start();
    let keys = ["/microservices/ledger/1", "/microservices/ledger/2", "/microservices/ledger/3"];
    etcd.put(keys[0], &kratos_value("1", "ledger", "10.226.0.1:20097"));
    etcd.put(keys[1], &kratos_value("2", "ledger", "10.226.0.2:20097"));
    etcd.put(keys[2], &kratos_value("3", "ledger", "192.0.2.16:20097"));
    // Both nodes see the same resets (the probes are host-wide) and judge
    // both local instances unhealthy; the budget (34% of 3: one) is shared
    // in etcd. A long quarantine: nothing comes back while the test looks.
    let start = |node: &str| {
        governor_with(
            &etcd,
            "10.226.0.0/24",
            KRATOS,
            &[
                ("registry.node", node),
                ("registry.max_ejection_percent", "34"),
                ("registry.quarantine_base_seconds", "600"),
            ],
        )
    };
    let mut a = start("\"node-a\"");
    let mut b = start("\"node-b\"");
    wait_listed(&mut a, "kratos", "ledger", 3);
    wait_listed(&mut b, "kratos", "ledger", 3);
    assert_eq!(ns.refused_connects("10.226.0.1:20097".parse().expect("addr"), 10), 10);
    assert_eq!(ns.refused_connects("10.226.0.2:20097".parse().expect("addr"), 10), 10);

    let logs = |a: &Governor, b: &Governor| format!("--- node-a ---\n{}\n--- node-b ---\n{}", a.log(), b.log());
    let labels = [("registry", "kratos"), ("service", "ledger")];
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(&mut a, "governor_registry_budget_exhausted_total", &labels)
        + counter(&mut b, "governor_registry_budget_exhausted_total", &labels)
        == 0
    {
        assert!(Instant::now() < deadline, "no node ran out of budget within 30 s:\n{}", logs(&a, &b));
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(A_FEW_WINDOWS);

    let out: Vec<_> = keys.into_iter().filter(|k| etcd.get(k).is_none()).collect();
    assert_eq!(out.len(), 1, "exactly one instance out: {out:?}\n{}", logs(&a, &b));
    assert!(out[0] != keys[2], "only a local instance goes: {out:?}");
    let budget = budget(&etcd, "kratos", "ledger");
    let ejected = budget["ejected"].as_object().expect("ejected is a map");
    assert_eq!(ejected.len(), 1, "{budget:#}\n{}", logs(&a, &b));
    let node = ejected.get(out[0]).and_then(Value::as_str).expect("the key out is the one ejected").to_owned();
    let (by_a, by_b) = (deregistrations(&mut a, "kratos", "ledger"), deregistrations(&mut b, "kratos", "ledger"));
    assert_eq!(by_a + by_b, 1, "node-a {by_a}, node-b {by_b}\n{}", logs(&a, &b));
    assert_eq!(node, if by_a == 1 { "node-a" } else { "node-b" }, "{budget:#}");
    let record = quarantine_record(&etcd, "kratos", out[0]).expect("quarantine record");
    assert_eq!(record["node"], node.as_str(), "{record:#}");
    assert_eq!(etcd.get_prefix("/governor/v1/quarantine/").len(), 1, "one record in all");
}

/// Starts etcd with one local instance of `service` on a lease (and one
/// elsewhere, so that the budget lets one out) and governor watching it;
/// returns once governor has listed both.
fn one_local_instance(cidr: &str, service: &str, local: &str, extra: &[(&str, &str)]) -> (Etcd, Governor, String) {
    let etcd = Etcd::start();
    let key = format!("/microservices/{service}/1");
    etcd.put_with_lease(&key, &kratos_value("1", service, local), 600);
    etcd.put(&format!("/microservices/{service}/2"), &kratos_value("2", service, "192.0.2.17:20098"));
    let mut gov = governor_with(&etcd, cidr, KRATOS, extra);
    wait_listed(&mut gov, "kratos", service, 2);
    (etcd, gov, key)
}

/// Stops etcd and waits until governor has noticed.
fn stop_etcd(etcd: &mut Etcd, gov: &mut Governor) {
    etcd.stop();
    wait_series_within(gov, ETCD_WAIT, "governor_etcd_up", &[], |v| v == 0);
}

#[test]
fn spike_while_etcd_is_down_deregisters_once_etcd_is_back() {
    require_root();
    let ns = Netns::new("reg-down");
    ns.add_address("10.227.0.1/32");
    let name = "10.227.0.1:20098";
    let addr: SocketAddr = name.parse().expect("addr");
    let (mut etcd, mut gov, key) = one_local_instance("10.227.0.0/24", "inventory", name, &[]);
    let before = etcd.get(&key).expect("registered");
    stop_etcd(&mut etcd, &mut gov);

    let unhealthy =
        refuse_until(&ns, addr, Duration::from_secs(30), || state(&gov.json("/api/v1/endpoints"), name) == "unhealthy");
    assert!(unhealthy, "{name} not unhealthy:\n{}", gov.log());
    // Unhealthy for a while longer, still without etcd: the daemon lives.
    for _ in 0..4 {
        assert_eq!(ns.refused_connects(addr, 10), 10);
        assert_eq!(gov.get("/healthz"), Some((200, "ok\n".to_owned())), "{}", gov.log());
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(state(&gov.json("/api/v1/endpoints"), name), "unhealthy");
    assert_eq!(gov.value("governor_etcd_up"), 0);

    etcd.restart();
    let gone = refuse_until(&ns, addr, ETCD_WAIT, || etcd.get(&key).is_none());
    assert!(gone, "{key} still registered after etcd came back:\n{}", gov.log());
    assert_eq!(gov.value("governor_etcd_up"), 1);
    let record = quarantine_record(&etcd, "kratos", &key).expect("quarantine record");
    assert_eq!(record["key"], key.as_str(), "{record:#}");
    assert_eq!(record["value"], before.value.as_str(), "{record:#}");
    assert_eq!(record["lease"], before.lease, "{record:#}");
    assert_eq!(record["mod_revision"], before.mod_revision, "{record:#}");
    assert_eq!(record["endpoint"], name, "{record:#}");
    assert_eq!(record["attempt"], 1, "{record:#}");
    assert!(etcd.lease_ttl(before.lease).is_some(), "the instance's lease must never be revoked");
    assert_eq!(deregistrations(&mut gov, "kratos", "inventory"), 1, "{}", gov.log());
}

#[test]
fn spike_over_before_etcd_is_back_changes_nothing() {
    require_root();
    let ns = Netns::new("reg-over");
    ns.add_address("10.228.0.1/32");
    let name = "10.228.0.1:20099";
    let addr: SocketAddr = name.parse().expect("addr");
    let (mut etcd, mut gov, key) = one_local_instance("10.228.0.0/24", "shipping", name, &[]);
    let before = etcd.get(&key).expect("registered");
    stop_etcd(&mut etcd, &mut gov);

    assert_eq!(ns.refused_connects(addr, 10), 10);
    gov.wait_json("/api/v1/endpoints", "unhealthy", |d| state(d, name) == "unhealthy");
    // Recovering after the 5 s reset window, healthy two clean seconds later.
    gov.wait_json("/api/v1/endpoints", "healthy again", |d| state(d, name) == "healthy");
    assert_eq!(gov.value("governor_etcd_up"), 0, "etcd was down all along");

    etcd.restart();
    wait_series_within(&mut gov, ETCD_WAIT, "governor_etcd_up", &[], |v| v == 1);
    thread::sleep(A_FEW_WINDOWS);
    let after = etcd.get(&key).unwrap_or_else(|| panic!("{key} was taken out after the spike ended:\n{}", gov.log()));
    assert_eq!(after.mod_revision, before.mod_revision, "the key was not touched");
    assert_eq!(after.lease, before.lease);
    assert_eq!(deregistrations(&mut gov, "kratos", "shipping"), 0, "{}", gov.log());
    assert!(etcd.get_prefix("/governor/").is_empty(), "no record written: {:?}", etcd.get_prefix("/governor/"));
}

#[test]
fn instance_whose_lease_ends_in_quarantine_is_not_put_back() {
    require_root();
    let ns = Netns::new("reg-lease");
    ns.add_address("10.229.0.1/32");
    let name = "10.229.0.1:20100";
    let (etcd, mut gov, key) = one_local_instance("10.229.0.0/24", "billing", name, &[]);
    let lease = etcd.get(&key).expect("registered").lease;
    assert_eq!(ns.refused_connects(name.parse().expect("addr"), 10), 10);
    let (_, gone) = etcd.wait_for(&key, Duration::from_secs(30), |kv| kv.is_none());
    assert!(gone, "{key} still registered:\n{}", gov.log());
    assert!(quarantine_record(&etcd, "kratos", &key).is_some(), "quarantine record written");

    // The owner is gone: its lease ends (revoked here; the same to governor
    // as expired) while the instance is out.
    etcd.revoke(lease);
    assert_eq!(etcd.lease_ttl(lease), None);
    let record_key = format!("/governor/v1/quarantine/kratos{key}");
    let (_, cleared) = etcd.wait_for(&record_key, ETCD_WAIT, |kv| kv.is_none());
    assert!(cleared, "quarantine record never cleared:\n{}", gov.log());
    let labels = [("registry", "kratos"), ("service", "billing")];
    wait_counter(&mut gov, "governor_registry_lease_expired_total", &labels, 1);
    thread::sleep(A_FEW_WINDOWS);

    assert!(etcd.get(&key).is_none(), "put back without its owner:\n{}", gov.log());
    assert_eq!(counter(&mut gov, "governor_registry_lease_expired_total", &labels), 1, "{}", gov.log());
    assert_eq!(counter(&mut gov, "governor_registry_restorations_total", &labels), 0, "{}", gov.log());
    assert_eq!(deregistrations(&mut gov, "kratos", "billing"), 1);
    let budget = budget(&etcd, "kratos", "billing");
    assert_eq!(budget["ejected"], serde_json::json!({}), "the budget slot is freed: {budget:#}");
    let quarantine = gov.json("/api/v1/quarantine");
    assert_eq!(quarantine["quarantined"], serde_json::json!([]), "{quarantine:#}");
}

#[test]
fn daemon_killed_in_quarantine_is_restarted_and_puts_the_instance_back_once() {
    require_root();
    let ns = Netns::new("reg-kill");
    ns.add_address("10.230.0.1/32");
    let name = "10.230.0.1:20101";
    // The quarantine outlasts the restart, so that the second daemon acts
    // on the record the first one wrote.
    let config = [("registry.quarantine_base_seconds", "5")];
    let (etcd, mut first, key) = one_local_instance("10.230.0.0/24", "catalog", name, &config);
    let before = etcd.get(&key).expect("registered");
    assert_eq!(ns.refused_connects(name.parse().expect("addr"), 10), 10);
    let (_, gone) = etcd.wait_for(&key, Duration::from_secs(30), |kv| kv.is_none());
    assert!(gone, "{key} still registered:\n{}", first.log());
    let record = quarantine_record(&etcd, "kratos", &key).expect("quarantine record");
    assert_eq!(record["node"], "test-node", "{record:#}");

    let status = first.kill();
    assert_eq!(status.signal(), Some(nix::sys::signal::Signal::SIGKILL as i32), "{status}");
    assert!(!first.log().contains("shutting down"), "SIGKILL runs no shutdown path:\n{}", first.log());
    assert!(etcd.get(&key).is_none(), "nothing put back by the killed daemon");

    let mut second = governor_with(&etcd, "10.230.0.0/24", KRATOS, &config);
    let record_key = format!("/governor/v1/quarantine/kratos{key}");
    let (back, done) = etcd.wait_for(&key, ETCD_WAIT, |kv| kv.is_some());
    assert!(done, "{key} not restored by the new daemon:\n{}", second.log());
    let back = back.expect("restored");
    assert_eq!(back.value, before.value);
    assert_eq!(back.lease, before.lease, "restored on its original lease");
    let (_, cleared) = etcd.wait_for(&record_key, Duration::from_secs(5), |kv| kv.is_none());
    assert!(cleared, "the quarantine record is cleared:\n{}", second.log());
    let listed = second.log().lines().any(|l| l.contains("listed, watching") && l.contains("quarantined=1"));
    assert!(listed, "the new daemon reloaded the record:\n{}", second.log());

    let labels = [("registry", "kratos"), ("service", "catalog")];
    wait_counter(&mut second, "governor_registry_restorations_total", &labels, 1);
    thread::sleep(A_FEW_WINDOWS);
    assert_eq!(counter(&mut second, "governor_registry_restorations_total", &labels), 1, "{}", second.log());
    assert_eq!(deregistrations(&mut second, "kratos", "catalog"), 0, "{}", second.log());
    let still = etcd.get(&key).expect("still registered");
    assert_eq!(still.mod_revision, back.mod_revision, "put back once, not touched since");
    let budget = budget(&etcd, "kratos", "catalog");
    assert_eq!(budget["ejected"], serde_json::json!({}), "the budget slot is freed: {budget:#}");
    assert_eq!(budget["history"][key.as_str()]["ejections"], 1, "{budget:#}");
}
