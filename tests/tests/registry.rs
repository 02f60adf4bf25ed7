//! Deregistration against a real etcd: an instance registered on an address
//! of a test namespace starts refusing connections; governor takes its key
//! out (keeping the lease), writes a quarantine record, and puts the key back
//! exactly as it was once the endpoint is healthy again.

use std::{net::SocketAddr, time::Duration};

use governor_tests::{Etcd, Governor, Netns, require_root, series};
use serde_json::Value;

/// Starts governor on the registries given as (name, prefix, format), with
/// short windows and quarantine so that a whole cycle fits in a test.
fn governor(etcd: &Etcd, local_cidr: &str, registries: &[(&str, &str, &str)]) -> Governor {
    let list: Vec<String> = registries
        .iter()
        .map(|(name, prefix, format)| format!("{{ name = \"{name}\", prefix = \"{prefix}\", format = \"{format}\" }}"))
        .collect();
    let keys = [
        ("etcd.endpoints", format!("[\"{}\"]", etcd.url())),
        ("registry.local_cidrs", format!("[\"{local_cidr}\"]")),
        ("registry.node", "\"test-node\"".to_owned()),
        ("registry.window_ms", "200".to_owned()),
        ("registry.restore_after_windows", "3".to_owned()),
        ("registry.quarantine_base_seconds", "1".to_owned()),
        ("health.recovery_window_seconds", "1".to_owned()),
        ("health.recovery_windows", "2".to_owned()),
        ("registries", format!("[{}]", list.join(", "))),
    ];
    let keys: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Governor::start_with(&keys)
}

fn registered(gov: &mut Governor, registry: &str, service: &str) -> u64 {
    gov.value(&series(
        "governor_registry_instances",
        &[("registry", registry), ("service", service), ("state", "registered")],
    ))
}

/// Waits until governor has listed `n` instances of the service.
fn wait_listed(gov: &mut Governor, registry: &str, service: &str, n: u64) {
    for _ in 0..300 {
        if registered(gov, registry, service) == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("governor did not list {n} instances of {registry}/{service}:\n{}", gov.log());
}

/// One cycle for an instance at `key` whose only address is `addr` (in the
/// namespace): refused connects take it out, quiet puts it back.
fn out_and_back(etcd: &Etcd, gov: &mut Governor, ns: &Netns, registry: &str, key: &str, addr: SocketAddr) {
    let before = etcd.get(key).expect("registered");
    assert_eq!(ns.refused_connects(addr, 10), 10);

    let (gone, done) = etcd.wait_for(key, Duration::from_secs(30), |kv| kv.is_none());
    assert!(done, "{key} still registered: {gone:?}\n{}", gov.log());
    let record_key = format!("/governor/v1/quarantine/{registry}{key}");
    let record = etcd.get(&record_key).expect("quarantine record");
    let record: Value = serde_json::from_str(&record.value).expect("record is JSON");
    assert_eq!(record["key"], key);
    assert_eq!(record["value"], before.value.as_str());
    assert_eq!(record["lease"], before.lease);
    assert_eq!(record["mod_revision"], before.mod_revision);
    assert_eq!(record["endpoint"], addr.to_string());
    assert_eq!(record["node"], "test-node");
    assert_eq!(record["attempt"], 1);
    assert!(record["reason"].as_str().is_some_and(|r| r.starts_with("resets: 10 resets")), "{record:#}");
    if before.lease != 0 {
        assert!(etcd.lease_ttl(before.lease).is_some(), "the instance's lease must never be revoked");
    }
    let quarantine = gov.json("/api/v1/quarantine");
    assert!(quarantine["quarantined"].as_array().is_some_and(|l| l.iter().any(|r| r["key"] == key)), "{quarantine:#}");

    // No more refusals: recovering after the 5 s reset window, healthy two
    // clean seconds later, restored after three healthy windows.
    let (back, done) = etcd.wait_for(key, Duration::from_mins(1), |kv| kv.is_some());
    assert!(done, "{key} not restored:\n{}", gov.log());
    let back = back.expect("restored");
    assert_eq!(back.value, before.value);
    assert_eq!(back.lease, before.lease);
    assert!(etcd.get(&record_key).is_none(), "the quarantine record is cleared");
}

fn counter(gov: &mut Governor, name: &str, labels: &[(&str, &str)]) -> u64 {
    gov.value(&series(name, labels))
}

#[test]
fn kratos_instance_that_refuses_connections_is_deregistered_and_restored_with_its_lease() {
    require_root();
    let ns = Netns::new("reg-kratos");
    ns.add_address("10.220.0.1/32");
    let etcd = Etcd::start();
    let value = r#"{"id":"1","name":"helloworld","version":"v1","metadata":{},"endpoints":["http://10.220.0.1:20090","grpc://10.220.0.1:20091"]}"#;
    let key = "/microservices/helloworld/1";
    etcd.put_with_lease(key, value, 600);
    // A second instance elsewhere, so that the budget allows one out.
    etcd.put("/microservices/helloworld/2", r#"{"id":"2","name":"helloworld","endpoints":["http://192.0.2.10:8000"]}"#);
    let mut gov = governor(&etcd, "10.220.0.0/24", &[("kratos", "/microservices", "kratos")]);
    wait_listed(&mut gov, "kratos", "helloworld", 2);

    out_and_back(&etcd, &mut gov, &ns, "kratos", key, "10.220.0.1:20090".parse().expect("addr"));
    let labels = [("registry", "kratos"), ("service", "helloworld")];
    assert_eq!(counter(&mut gov, "governor_registry_restorations_total", &labels), 1);
    assert_eq!(
        counter(
            &mut gov,
            "governor_registry_deregistrations_total",
            &[("registry", "kratos"), ("service", "helloworld"), ("reason", "resets")]
        ),
        1
    );
    let budget = etcd.get("/governor/v1/budget/kratos/helloworld").expect("budget record");
    let budget: Value = serde_json::from_str(&budget.value).expect("JSON");
    assert_eq!(budget["ejected"], serde_json::json!({}), "{budget:#}");
    assert_eq!(budget["history"][key]["ejections"], 1, "{budget:#}");
    assert_eq!(gov.value("governor_etcd_up"), 1);
}

#[test]
fn host_port_and_naming_instances_are_deregistered_and_restored() {
    require_root();
    let ns = Netns::new("reg-plain");
    ns.add_address("10.221.0.1/32");
    let etcd = Etcd::start();
    etcd.put_with_lease("/gozero/user.rpc/7587", "10.221.0.1:20092", 600);
    etcd.put("/gozero/user.rpc/7588", "192.0.2.11:8080");
    etcd.put("/naming/orders/10.221.0.1:20093", r#"{"Op":0,"Addr":"10.221.0.1:20093","Metadata":null}"#);
    etcd.put("/naming/orders/192.0.2.12:80", r#"{"Addr":"192.0.2.12:80"}"#);
    // Bad values are counted and never acted on.
    etcd.put("/naming/orders/broken", "{not json");
    etcd.put("/gozero/user.rpc/noport", "10.221.0.1");
    let mut gov =
        governor(&etcd, "10.221.0.0/24", &[("gozero", "/gozero/", "host_port"), ("naming", "/naming", "naming")]);
    wait_listed(&mut gov, "gozero", "user.rpc", 2);
    wait_listed(&mut gov, "naming", "orders", 2);
    assert_eq!(counter(&mut gov, "governor_registry_invalid_values_total", &[("registry", "naming")]), 1);
    assert_eq!(counter(&mut gov, "governor_registry_invalid_values_total", &[("registry", "gozero")]), 1);

    out_and_back(&etcd, &mut gov, &ns, "gozero", "/gozero/user.rpc/7587", "10.221.0.1:20092".parse().expect("addr"));
    out_and_back(
        &etcd,
        &mut gov,
        &ns,
        "naming",
        "/naming/orders/10.221.0.1:20093",
        "10.221.0.1:20093".parse().expect("addr"),
    );
    assert!(etcd.get("/naming/orders/broken").is_some() && etcd.get("/gozero/user.rpc/noport").is_some());
    for (registry, service) in [("gozero", "user.rpc"), ("naming", "orders")] {
        let labels = [("registry", registry), ("service", service)];
        assert_eq!(counter(&mut gov, "governor_registry_restorations_total", &labels), 1);
    }
}
