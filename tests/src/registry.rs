//! Shared steps of the registry tests: governor on a real etcd with short
//! windows, and bounded waits on its series.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Etcd, Governor, series};

/// How long a wait on a series may take unless a test says otherwise.
const WAIT: Duration = Duration::from_secs(30);

/// Starts governor on the registries given as (name, prefix, format), with
/// short windows and quarantine so that a whole cycle fits in a test.
pub fn governor(etcd: &Etcd, local_cidr: &str, registries: &[(&str, &str, &str)]) -> Governor {
    governor_with(etcd, local_cidr, registries, &[])
}

/// As `governor`, with further config keys set or overridden.
pub fn governor_with(
    etcd: &Etcd,
    local_cidr: &str,
    registries: &[(&str, &str, &str)],
    extra: &[(&str, &str)],
) -> Governor {
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
    let mut keys: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
    keys.extend_from_slice(extra);
    Governor::start_with(&keys)
}

/// Waits until governor has listed `n` instances of the service.
pub fn wait_listed(gov: &mut Governor, registry: &str, service: &str, n: u64) {
    let labels = [("registry", registry), ("service", service), ("state", "registered")];
    wait_series(gov, "governor_registry_instances", &labels, |v| v == n);
}

/// Reads a series until `done` holds for its value (bounded: 30 s).
pub fn wait_series(gov: &mut Governor, name: &str, labels: &[(&str, &str)], done: impl Fn(u64) -> bool) -> u64 {
    wait_series_within(gov, WAIT, name, labels, done)
}

/// As `wait_series`, bounded by `timeout` (for waits across etcd's
/// reconnect back-off).
pub fn wait_series_within(
    gov: &mut Governor,
    timeout: Duration,
    name: &str,
    labels: &[(&str, &str)],
    done: impl Fn(u64) -> bool,
) -> u64 {
    let s = series(name, labels);
    let deadline = Instant::now() + timeout;
    loop {
        let v = gov.value(&s);
        if done(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{s} never reached the expected value within {timeout:?} (last {v}):\n{}",
            gov.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads a counter until it reaches `at_least` (bounded: 30 s).
pub fn wait_counter(gov: &mut Governor, name: &str, labels: &[(&str, &str)], at_least: u64) -> u64 {
    wait_series(gov, name, labels, |v| v >= at_least)
}

/// The value of one series (0 while it does not exist).
pub fn counter(gov: &mut Governor, name: &str, labels: &[(&str, &str)]) -> u64 {
    gov.value(&series(name, labels))
}

/// Instances of the service taken out for resets.
pub fn deregistrations(gov: &mut Governor, registry: &str, service: &str) -> u64 {
    counter(
        gov,
        "governor_registry_deregistrations_total",
        &[("registry", registry), ("service", service), ("reason", "resets")],
    )
}

/// governor's quarantine record of the instance at `key`, if any.
pub fn quarantine_record(etcd: &Etcd, registry: &str, key: &str) -> Option<Value> {
    let record = etcd.get(&format!("/governor/v1/quarantine/{registry}{key}"))?;
    Some(serde_json::from_str(&record.value).expect("quarantine record is JSON"))
}

/// The service's ejection budget record (which must exist).
pub fn budget(etcd: &Etcd, registry: &str, service: &str) -> Value {
    let budget = etcd.get(&format!("/governor/v1/budget/{registry}/{service}")).expect("budget record");
    serde_json::from_str(&budget.value).expect("budget record is JSON")
}
