//! The deregistration latency measurement of `cargo xtask bench` (it builds
//! and runs this binary, as root). A real etcd on loopback; one kratos-style
//! service per trial, with an instance on an address of a network namespace
//! (local to this node through `registry.local_cidrs`) and one elsewhere;
//! governor with its defaults otherwise. Each trial makes ten connects to
//! the local instance's closed port (ten resets: unhealthy at once) and
//! times the deletion of its key two ways.
//!
//! ```text
//! deregister-bench TRIALS
//! ```
//! prints one line per trial: `INTERNAL_MS END_TO_END_MS`, where `INTERNAL` is
//! governor's `governor_registry_action_seconds` (the health transition to
//! the committed transaction) and `END_TO_END` runs from the tenth refused
//! connect to an etcd watcher receiving the delete.

use std::{net::SocketAddr, time::Duration};

use governor_tests::{Etcd, Governor, Netns, series};

const PORT: u16 = 20_100;

fn main() {
    let trials: u8 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .filter(|n| (1..=250).contains(n))
        .unwrap_or_else(|| panic!("usage: deregister-bench TRIALS (1 to 250)"));
    let ns = Netns::new("dereg-bench");
    let etcd = Etcd::start();
    let local = |i: u8| SocketAddr::from(([10, 231, 0, i], PORT));
    for i in 1..=trials {
        ns.add_address(&format!("{}/32", local(i).ip()));
        let instance =
            |id: u8, addr: String| format!(r#"{{"id":"{id}","name":"svc{i}","endpoints":["http://{addr}"]}}"#);
        etcd.put(&format!("/microservices/svc{i}/1"), &instance(1, local(i).to_string()));
        etcd.put(&format!("/microservices/svc{i}/2"), &instance(2, format!("192.0.2.1:{PORT}")));
    }
    let endpoints = format!("[\"{}\"]", etcd.url());
    let mut gov = Governor::start_with(&[
        // governor's own defaults, not the tests' short intervals.
        ("daemon.poll_interval_ms", "1000"),
        ("ebpf.event_drain_interval_ms", "100"),
        ("etcd.endpoints", &endpoints),
        ("registry.node", "\"bench\""),
        ("registry.local_cidrs", "[\"10.231.0.0/24\"]"),
        ("registry.quarantine_base_seconds", "3600"),
        ("registry.quarantine_max_seconds", "3600"),
        ("registries", "[{ name = \"kratos\", prefix = \"/microservices\", format = \"kratos\" }]"),
    ]);
    let last = format!("svc{trials}");
    let listed =
        series("governor_registry_instances", &[("registry", "kratos"), ("service", &last), ("state", "registered")]);
    wait(&mut gov, &listed, 2);

    let sum = series("governor_registry_action_seconds_sum", &[("registry", "kratos")]);
    let count = series("governor_registry_action_seconds_count", &[("registry", "kratos")]);
    for i in 1..=trials {
        let key = format!("/microservices/svc{i}/1");
        let sum_before = gov.metrics().get(&sum).copied().unwrap_or(0.0);
        let count_before = gov.value(&count);
        let mut stream = etcd.watch(&key);
        // Trials would otherwise fall at the same point of governor's
        // one-second poll each time: spread them over it.
        std::thread::sleep(Duration::from_millis(u64::from(i) * 379 % 1000));
        assert_eq!(ns.refused_connects(local(i), 10), 10, "trial {i}: the connects were not refused");
        let tenth = std::time::Instant::now();
        let deleted = etcd
            .wait_delete(&mut stream, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("trial {i}: {key} not deregistered within 30 s:\n{}", gov.log()));
        wait(&mut gov, &count, count_before + 1);
        let internal = gov.metrics().get(&sum).copied().unwrap_or(0.0) - sum_before;
        println!("{:.3} {:.3}", internal * 1000.0, deleted.duration_since(tenth).as_secs_f64() * 1000.0);
    }
}

/// Reads `series` until it reaches `at_least` (bounded: 30 s).
fn wait(gov: &mut Governor, series: &str, at_least: u64) {
    for _ in 0..300 {
        if gov.value(series) >= at_least {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{series} did not reach {at_least}:\n{}", gov.log());
}
