//! End to end with the real Prometheus and Alertmanager: Prometheus scrapes
//! a real governor with the shipped rules (`deploy/alerts/rules.yml`; only
//! the scrape and evaluation intervals are the test's) and a reset spike
//! made in a test namespace arrives in Alertmanager with its endpoint, then
//! resolves; governor's direct push delivers a deregistration the same way.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use governor_tests::{
    Etcd, Netns,
    alerting::{alertmanager, prometheus, wait_alerts},
    registry::{governor_with, wait_listed},
    require_root, series,
};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn a_reset_spike_fires_the_shipped_rule_in_alertmanager_with_its_endpoint_and_resolves_after_recovery() {
    require_root();
    let ns = Netns::new("alert-spike");
    ns.add_address("10.235.15.1/32");
    let mut am = alertmanager();
    // With a registry and a policy key on a real etcd, so that every metric
    // the rules query is registered; short recovery windows (as the
    // registry tests).
    let etcd = Etcd::start();
    let mut gov = governor_with(
        &etcd,
        "10.235.15.0/24",
        &[("gozero", "/gozero/", "host_port")],
        &[("etcd.policy_key", "\"/governor/test/policies\"")],
    );
    let mut prom = prometheus(gov.addr, &repo_file("deploy/alerts/rules.yml"), am.addr);
    // Prometheus scrapes governor and has loaded every shipped rule.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let up = prom.json("/api/v1/query?query=up%7Bjob%3D%22governor%22%7D");
        if up["data"]["result"][0]["value"][1] == "1" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "governor never up in Prometheus: {up}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let rules = prom.json("/api/v1/rules");
    let loaded = rules["data"]["groups"]
        .as_array()
        .map_or(0, |g| g.iter().map(|g| g["rules"].as_array().map_or(0, Vec::len)).sum::<usize>());
    let shipped = std::fs::read_to_string(repo_file("deploy/alerts/rules.yml")).expect("rules");
    assert_eq!(loaded, shipped.matches("- alert:").count(), "every shipped rule is loaded: {rules}");
    // Every metric the rules query is on this governor's /metrics.
    let (_, exposed) = gov.get("/metrics").expect("metrics");
    let queried: std::collections::BTreeSet<&str> = shipped
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("governor_"))
        .collect();
    assert!(queried.len() >= 10, "{queried:?}");
    for name in queried {
        assert!(exposed.contains(&format!("# HELP {name} ")), "{name} is not on /metrics");
    }

    let name = "10.235.15.1:20180";
    let addr: SocketAddr = name.parse().expect("addr");
    assert_eq!(ns.refused_connects(addr, 10), 10);
    let fired = wait_alerts(&mut am, "GovernorEndpointResetSpike", Duration::from_mins(1), "the alert fires", |a| {
        a.iter().any(|a| a["labels"]["endpoint"] == name)
    });
    let alert = fired.iter().find(|a| a["labels"]["endpoint"] == name).expect("fired");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert:#}");
    assert_eq!(alert["labels"]["job"], "governor", "{alert:#}");
    let runbook = alert["annotations"]["runbook_url"].as_str().expect("runbook_url");
    assert!(runbook.ends_with("docs/runbook.md#governorendpointresetspike"), "{runbook}");
    assert!(alert["annotations"]["summary"].as_str().is_some_and(|s| s.contains(name)), "{alert:#}");

    // No more resets: the endpoint recovers and the alert resolves.
    wait_alerts(&mut am, "GovernorEndpointResetSpike", Duration::from_secs(90), "the alert resolves", |a| {
        !a.iter().any(|a| a["labels"]["endpoint"] == name)
    });
    for state in ["unhealthy", "recovering"] {
        let series = series("governor_endpoint_health", &[("endpoint", name), ("state", state)]);
        assert_eq!(gov.value(&series), 0, "resolved because the endpoint is no longer {state}");
    }
}

#[test]
fn a_deregistration_is_pushed_to_alertmanager_directly_and_resolved_when_the_instance_is_back() {
    require_root();
    let ns = Netns::new("alert-push");
    ns.add_address("10.235.16.1/32");
    // Two Alertmanagers (an HA pair): each gets every alert.
    let (mut am, mut peer) = (alertmanager(), alertmanager());
    let etcd = Etcd::start();
    let key = "/gozero/billing.rpc/1";
    etcd.put_with_lease(key, "10.235.16.1:20181", 600);
    etcd.put("/gozero/billing.rpc/2", "192.0.2.30:8080");
    let push = format!("[\"http://{}\", \"http://{}\"]", am.addr, peer.addr);
    let mut gov = governor_with(
        &etcd,
        "10.235.16.0/24",
        &[("gozero", "/gozero/", "host_port")],
        // Re-sent once a minute: a firing alert's `endsAt` lies four
        // minutes ahead, so only governor's resolve can end it in time.
        &[
            ("alerting.alertmanagers", &push),
            ("alerting.resend_seconds", "60"),
            ("alerting.labels", r#"{ namespace = "governor" }"#),
        ],
    );
    wait_listed(&mut gov, "gozero", "billing.rpc", 2);

    let addr: SocketAddr = "10.235.16.1:20181".parse().expect("addr");
    assert_eq!(ns.refused_connects(addr, 10), 10);
    let fired = wait_alerts(&mut am, "GovernorDeregistration", Duration::from_mins(1), "pushed", |a| {
        a.iter().any(|a| a["labels"]["key"] == key)
    });
    let alert = &fired[0];
    wait_alerts(&mut peer, "GovernorDeregistration", Duration::from_mins(1), "pushed to the peer", |a| {
        a.iter().any(|a| a["labels"]["key"] == key)
    });
    for (label, value) in [
        ("namespace", "governor"),
        ("node", "test-node"),
        ("registry", "gozero"),
        ("service", "billing.rpc"),
        ("endpoint", "10.235.16.1:20181"),
        ("severity", "warning"),
    ] {
        assert_eq!(alert["labels"][label], value, "{label}: {alert:#}");
    }
    assert!(etcd.get(key).is_none(), "the alert says what etcd shows: the key is out");
    assert!(
        alert["annotations"]["runbook_url"].as_str().is_some_and(|u| u.ends_with("#governorderegistration")),
        "{alert:#}"
    );

    // The endpoint stays quiet: governor puts the key back and resolves
    // the alert (`endsAt` now).
    wait_alerts(&mut am, "GovernorDeregistration", Duration::from_secs(90), "resolved", |a| {
        !a.iter().any(|a| a["labels"]["key"] == key)
    });
    assert!(etcd.get(key).is_some(), "resolved because the instance is back");
    wait_alerts(&mut peer, "GovernorDeregistration", Duration::from_secs(30), "resolved at the peer", |a| {
        !a.iter().any(|a| a["labels"]["key"] == key)
    });
    let url = format!("http://{}/api/v2/alerts", am.addr);
    let ok = series("governor_alertmanager_posts_total", &[("alertmanager", &url), ("result", "ok")]);
    assert!(gov.value(&ok) >= 2, "the firing and the resolving post");
    let failed = series("governor_alertmanager_posts_total", &[("alertmanager", &url), ("result", "error")]);
    assert_eq!(gov.value(&failed), 0);
}
