//! The health engine judged with real resets: connects to a closed port in
//! a test namespace are answered with resets by that endpoint.

use std::net::SocketAddr;

use governor_tests::{Governor, Netns, require_root, series};
use serde_json::Value;

fn endpoint<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc["endpoints"].as_array()?.iter().find(|e| e["endpoint"] == name)
}

fn state(doc: &Value, name: &str) -> String {
    endpoint(doc, name).and_then(|e| e["state"].as_str()).unwrap_or("untracked").to_owned()
}

#[test]
fn ten_resets_within_five_seconds_make_an_endpoint_unhealthy_until_clean_windows_pass() {
    require_root();
    let ns = Netns::new("spike");
    ns.add_address("10.210.0.1/32");
    // Short clean windows so that recovery is seen quickly; the thresholds
    // are the defaults (10 resets within 5 s).
    let mut gov = Governor::start_with(&[("health.recovery_window_seconds", "1"), ("health.recovery_windows", "3")]);
    let name = "10.210.0.1:20083";
    let addr: SocketAddr = name.parse().expect("addr");
    assert_eq!(ns.refused_connects(addr, 10), 10);

    let doc = gov.wait_json("/api/v1/endpoints", "unhealthy", |d| state(d, name) == "unhealthy");
    let e = endpoint(&doc, name).expect("tracked");
    assert_eq!(e["window"]["resets"], 10, "{e:#}");
    let why = e["last_transition"]["reason"].as_str().expect("reason");
    assert!(why.contains("10 resets"), "{why}");
    assert_eq!(e["reset_reasons"][0]["reason"], "NO_SOCKET");
    let unhealthy = series("governor_endpoint_health", &[("endpoint", name), ("state", "unhealthy")]);
    assert_eq!(gov.value(&unhealthy), 1);
    let status = gov.json("/api/v1/status");
    assert!(endpoint(&status, name).is_some(), "{status:#}");

    gov.wait_json("/api/v1/endpoints", "recovering", |d| state(d, name) == "recovering");
    let doc = gov.wait_json("/api/v1/endpoints", "healthy again", |d| state(d, name) == "healthy");
    let why = endpoint(&doc, name).expect("tracked")["last_transition"]["reason"].as_str().expect("reason").to_owned();
    assert!(why.contains("3 windows"), "{why}");
    assert_eq!(gov.value(&unhealthy), 0);
    let healthy = series("governor_endpoint_health", &[("endpoint", name), ("state", "healthy")]);
    assert_eq!(gov.value(&healthy), 1);
}

#[test]
fn nine_resets_within_five_seconds_are_suspect_not_unhealthy() {
    require_root();
    let ns = Netns::new("nine");
    ns.add_address("10.211.0.1/32");
    let mut gov = Governor::start();
    let name = "10.211.0.1:20084";
    let addr: SocketAddr = name.parse().expect("addr");
    assert_eq!(ns.refused_connects(addr, 9), 9);
    let doc = gov.wait_json("/api/v1/endpoints", "nine resets counted", |d| {
        endpoint(d, name).is_some_and(|e| e["window"]["resets"] == 9)
    });
    assert_eq!(state(&doc, name), "suspect");
    // Let the window pass: it never turns unhealthy.
    gov.wait_json("/api/v1/endpoints", "window passed", |d| {
        endpoint(d, name).is_some_and(|e| e["window"]["resets"] == 0)
    });
    let transitions = series("governor_endpoint_health_transitions_total", &[("state", "unhealthy")]);
    assert_eq!(gov.value(&transitions), 0, "no endpoint became unhealthy");
    assert_eq!(gov.value(&series("governor_endpoint_health", &[("endpoint", name), ("state", "unhealthy")])), 0);
}
