//! Deregistration against a real etcd: an instance registered on an address
//! of a test namespace starts refusing connections; governor takes its key
//! out (keeping the lease), writes a quarantine record, and puts the key back
//! exactly as it was once the endpoint is healthy again.

use std::{net::SocketAddr, time::Duration};

use governor_tests::{
    Etcd, Governor, Netns,
    registry::{
        budget, counter, deregistrations, governor, governor_with, quarantine_record, wait_counter, wait_listed,
    },
    require_root, series,
};

/// One cycle for an instance at `key` whose only address is `addr` (in the
/// namespace): refused connects take it out, quiet puts it back.
fn out_and_back(etcd: &Etcd, gov: &mut Governor, ns: &Netns, registry: &str, key: &str, addr: SocketAddr) {
    let before = etcd.get(key).expect("registered");
    assert_eq!(ns.refused_connects(addr, 10), 10);

    let (gone, done) = etcd.wait_for(key, Duration::from_secs(30), |kv| kv.is_none());
    assert!(done, "{key} still registered: {gone:?}\n{}", gov.log());
    let record_key = format!("/governor/v1/quarantine/{registry}{key}");
    let record = quarantine_record(etcd, registry, key).expect("quarantine record");
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
    assert_eq!(deregistrations(&mut gov, "kratos", "helloworld"), 1);
    let budget = budget(&etcd, "kratos", "helloworld");
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

#[test]
fn budget_of_three_instances_at_34_percent_lets_exactly_one_out() {
    require_root();
    let ns = Netns::new("reg-budget");
    ns.add_address("10.223.0.1/32");
    ns.add_address("10.223.0.2/32");
    let etcd = Etcd::start();
    let value = |addr: &str| format!(r#"{{"id":"x","name":"pay","endpoints":["http://{addr}"]}}"#);
    etcd.put("/microservices/pay/1", &value("10.223.0.1:20094"));
    etcd.put("/microservices/pay/2", &value("10.223.0.2:20094"));
    etcd.put("/microservices/pay/3", &value("192.0.2.13:20094"));
    // A long quarantine: nothing comes back while the test looks.
    let mut gov = governor_with(
        &etcd,
        "10.223.0.0/24",
        &[("kratos", "/microservices", "kratos")],
        &[("registry.max_ejection_percent", "34"), ("registry.quarantine_base_seconds", "600")],
    );
    wait_listed(&mut gov, "kratos", "pay", 3);
    assert_eq!(ns.refused_connects("10.223.0.1:20094".parse().expect("addr"), 10), 10);
    assert_eq!(ns.refused_connects("10.223.0.2:20094".parse().expect("addr"), 10), 10);

    let labels = [("registry", "kratos"), ("service", "pay")];
    wait_counter(&mut gov, "governor_registry_budget_exhausted_total", &labels, 1);
    // The instance left in stays unhealthy for several more windows: it is
    // counted once for that spell, not once a window.
    let exhausted = series("governor_registry_budget_exhausted_total", &labels);
    assert_eq!(gov.settle(&exhausted, 1), 1, "{}", gov.log());
    let out: Vec<_> =
        ["/microservices/pay/1", "/microservices/pay/2"].into_iter().filter(|k| etcd.get(k).is_none()).collect();
    assert_eq!(out.len(), 1, "exactly one instance out: {out:?}\n{}", gov.log());
    assert!(etcd.get("/microservices/pay/3").is_some());
    assert_eq!(deregistrations(&mut gov, "kratos", "pay"), 1);
    let budget = budget(&etcd, "kratos", "pay");
    assert_eq!(budget["ejected"].as_object().map(serde_json::Map::len), Some(1), "{budget:#}");
    assert_eq!(
        gov.value(&series(
            "governor_registry_instances",
            &[("registry", "kratos"), ("service", "pay"), ("state", "quarantined")]
        )),
        1
    );
}

#[test]
fn dry_run_counts_what_it_would_do_and_leaves_etcd_alone() {
    require_root();
    let ns = Netns::new("reg-dry");
    ns.add_address("10.224.0.1/32");
    let etcd = Etcd::start();
    let key = "/gozero/cart.rpc/1";
    let revision = etcd.put(key, "10.224.0.1:20095");
    etcd.put("/gozero/cart.rpc/2", "192.0.2.14:20095");
    let mut gov =
        governor_with(&etcd, "10.224.0.0/24", &[("gozero", "/gozero", "host_port")], &[("registry.dry_run", "true")]);
    wait_listed(&mut gov, "gozero", "cart.rpc", 2);
    assert_eq!(ns.refused_connects("10.224.0.1:20095".parse().expect("addr"), 10), 10);
    wait_counter(
        &mut gov,
        "governor_registry_dry_run_actions_total",
        &[("registry", "gozero"), ("service", "cart.rpc"), ("action", "deregister")],
        1,
    );
    let kv = etcd.get(key).expect("still registered");
    assert_eq!(kv.mod_revision, revision, "the key was not touched");
    assert!(etcd.get_prefix("/governor/").is_empty(), "no record written");
    assert!(gov.log().contains("dry run: would deregister"), "{}", gov.log());
}

#[test]
fn owner_putting_the_key_back_is_counted_and_not_fought() {
    require_root();
    let ns = Netns::new("reg-fight");
    ns.add_address("10.225.0.1/32");
    let etcd = Etcd::start();
    let key = "/gozero/search.rpc/1";
    let lease = etcd.put_with_lease(key, "10.225.0.1:20096", 600);
    etcd.put("/gozero/search.rpc/2", "192.0.2.15:20096");
    let mut gov = governor_with(
        &etcd,
        "10.225.0.0/24",
        &[("gozero", "/gozero", "host_port")],
        &[("registry.quarantine_base_seconds", "600")],
    );
    wait_listed(&mut gov, "gozero", "search.rpc", 2);
    let addr: SocketAddr = "10.225.0.1:20096".parse().expect("addr");
    assert_eq!(ns.refused_connects(addr, 10), 10);
    let (_, done) = etcd.wait_for(key, Duration::from_secs(30), |kv| kv.is_none());
    assert!(done, "{}", gov.log());

    // The owner registers again while the endpoint is still unhealthy.
    etcd.put_on_lease(key, "10.225.0.1:20096", lease);
    let labels = [("registry", "gozero"), ("service", "search.rpc")];
    wait_counter(&mut gov, "governor_registry_fight_back_total", &labels, 1);
    // More resets keep it unhealthy; within the quarantine period governor
    // does not delete the key again.
    assert_eq!(ns.refused_connects(addr, 10), 10);
    let windows = etcd.wait_for(key, Duration::from_secs(3), |kv| kv.is_none());
    assert!(!windows.1, "deleted again within the quarantine period:\n{}", gov.log());
    assert_eq!(deregistrations(&mut gov, "gozero", "search.rpc"), 1);
    assert_eq!(gov.value(&series("governor_registry_fight_back_total", &labels)), 1);
}
