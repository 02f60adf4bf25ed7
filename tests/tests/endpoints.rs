//! How endpoints are labelled and bounded, with real traffic: client-side
//! ports collapsed to `ip:ephemeral`, endpoints beyond the series limit
//! summed under `other`, and events the full ring buffer could not take
//! counted.

use std::{
    io::{ErrorKind, Read as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use governor_tests::{Governor, Netns, require_root, series};

/// Closes with RST (`SO_LINGER` 0), as a crashing client would.
fn abort(s: TcpStream) {
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("setsockopt(SO_LINGER)");
    drop(s);
}

#[test]
fn client_resets_from_ephemeral_ports_share_one_series() {
    const CONNECTIONS: u64 = 40;
    require_root();
    let ns = Netns::new("eph");
    ns.add_address("10.204.0.1/32");
    let mut gov = Governor::start();
    let addr: SocketAddr = "10.204.0.1:20040".parse().expect("address");
    ns.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        for _ in 0..CONNECTIONS {
            let client = TcpStream::connect(addr).expect("connect");
            let (mut server, _) = listener.accept().expect("accept");
            // The client aborts from its ephemeral port; the server, still
            // open, sees the reset before it is closed (so its close sends
            // nothing that could draw a second reset).
            abort(client);
            server.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let outcome = server.read(&mut [0u8; 1]).map_err(|e| e.kind());
            assert_eq!(outcome, Err(ErrorKind::ConnectionReset), "the server sees the client's reset");
            drop(server);
        }
    });
    let sent = series("governor_endpoint_resets_total", &[("endpoint", "10.204.0.1:ephemeral"), ("direction", "sent")]);
    let received =
        series("governor_endpoint_resets_total", &[("endpoint", "10.204.0.1:ephemeral"), ("direction", "received")]);
    assert_eq!(gov.settle(&sent, CONNECTIONS), CONNECTIONS, "resets sent from the client's ephemeral ports");
    assert_eq!(gov.settle(&received, CONNECTIONS), CONNECTIONS, "resets received from them");
    let per_port = gov
        .metrics()
        .keys()
        .filter(|k| k.contains("endpoint=\"10.204.0.1:") && !k.contains(":ephemeral\"") && !k.contains(":20040\""))
        .count();
    assert_eq!(per_port, 0, "no series per client port");
}

#[test]
fn endpoints_beyond_the_series_limit_are_summed_under_other() {
    const PER_PORT: u64 = 30;
    require_root();
    let ns = Netns::new("card");
    ns.add_address("10.205.0.1/32");
    let mut gov = Governor::start_with(&[("metrics.max_endpoint_series", "1")]);
    for port in [20051u16, 20052, 20053] {
        let refused = ns.refused_connects(SocketAddr::from(([10, 205, 0, 1], port)), PER_PORT);
        assert_eq!(refused, PER_PORT, "connects to closed port {port}");
    }
    let other = series("governor_endpoint_resets_total", &[("endpoint", "other"), ("direction", "sent")]);
    // 90 resets in all; at least two of the three endpoints end up in other.
    let other_count = gov.settle(&other, 2 * PER_PORT);
    let metrics = gov.metrics();
    let own: Vec<(&String, &f64)> = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("governor_endpoint_resets_total{direction=\"sent\"") && !k.contains("\"other\""))
        .collect();
    assert!(own.len() <= 1, "at most one endpoint series: {own:?}");
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "integer counters")]
    let own_total: u64 = own.iter().map(|(_, v)| **v as u64).sum();
    // Other host traffic may add to both, never take from them.
    assert!(own_total + other_count >= 3 * PER_PORT, "nothing lost: {own_total} + {other_count}");
    assert!(other_count >= 2 * PER_PORT, "two endpoints summed under other: {other_count}");
}

#[test]
fn events_the_full_ring_buffer_cannot_take_are_counted() {
    const CONNECTS: u64 = 300;
    require_root();
    let ns = Netns::new("lost");
    ns.add_address("10.206.0.1/32");
    // One page of ring buffer (about 60 events) drained once a second:
    // 300 refused connects make 300 connect-failure events within one
    // drain interval (and a few reset events: see the test below).
    let mut gov = Governor::start_with(&[("ebpf.ring_buffer_bytes", "4096"), ("ebpf.event_drain_interval_ms", "1000")]);
    let addr: SocketAddr = "10.206.0.1:20060".parse().expect("address");
    assert_eq!(ns.refused_connects(addr, CONNECTS), CONNECTS, "closed port");
    let kinds = ["reset_sent", "reset_received", "connect_failed"];
    let mut read = || {
        let delivered: u64 =
            kinds.iter().map(|k| gov.value(&series("governor_ebpf_events_total", &[("kind", k)]))).sum();
        (delivered, gov.value("governor_ebpf_events_lost_total"))
    };
    // Bounded wait for the next drain (once a second) to deliver what fit.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut delivered, mut lost) = read();
    while delivered + lost < CONNECTS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        (delivered, lost) = read();
    }
    assert!(lost > 0, "a full ring buffer loses events and counts them");
    assert!(delivered > 0, "what fit was delivered");
    // Every event was either delivered or counted as lost.
    assert!(delivered + lost >= CONNECTS, "delivered {delivered} + lost {lost} < {CONNECTS}");
    // The endpoint counters do not depend on the ring buffer.
    let sent = series("governor_endpoint_resets_total", &[("endpoint", "10.206.0.1:20060"), ("direction", "sent")]);
    assert_eq!(gov.settle(&sent, CONNECTS), CONNECTS);
}

#[test]
fn the_series_budget_and_the_time_to_live_bound_the_series() {
    const CONNECTS: u64 = 20;
    require_root();
    let ns = Netns::new("budget");
    ns.add_address("10.207.0.1/32");
    // Without flow counting: the bytes of the test's own scrapes of the
    // daemon would compete for the one series the budget allows.
    let mut gov = Governor::start_with(&[
        ("metrics.max_series_total", "1"),
        ("metrics.series_ttl_seconds", "3"),
        ("ebpf.count_flows", "false"),
    ]);
    let refuse = |port: u16| {
        let refused = ns.refused_connects(SocketAddr::from(([10, 207, 0, 1], port)), CONNECTS);
        assert_eq!(refused, CONNECTS, "connects to closed port {port}");
    };
    let sent =
        |endpoint: &str| series("governor_endpoint_resets_total", &[("endpoint", endpoint), ("direction", "sent")]);

    // The first endpoint takes the only series the budget allows.
    refuse(20071);
    assert_eq!(gov.settle(&sent("10.207.0.1:20071"), CONNECTS), CONNECTS);
    // The second is summed under other and counted as dropped.
    refuse(20072);
    assert!(gov.settle(&sent("other"), CONNECTS) >= CONNECTS);
    assert_eq!(gov.value(&sent("10.207.0.1:20072")), 0);
    assert!(gov.value("governor_metrics_series_dropped_total") >= 1);

    // Idle for longer than the time to live, the first series goes away
    // (bounded wait) and frees the budget for the second endpoint.
    let deadline = Instant::now() + Duration::from_secs(20);
    while gov.metrics().contains_key(&sent("10.207.0.1:20071")) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    assert!(!gov.metrics().contains_key(&sent("10.207.0.1:20071")), "idle series removed after its time to live");
    refuse(20072);
    assert_eq!(gov.settle(&sent("10.207.0.1:20072"), CONNECTS), CONNECTS, "a fresh series for the second endpoint");
}

#[test]
fn reset_events_per_endpoint_are_limited_between_readings() {
    const CONNECTS: u64 = 300;
    require_root();
    let ns = Netns::new("rst-limit");
    ns.add_address("10.206.0.2/32");
    // Readings every 5 s, and early ones only while the endpoint crosses
    // the reset threshold (10): the burst sees a handful of readings, each
    // letting 2 x 10 reset events through for the endpoint.
    let mut gov = Governor::start_with(&[("daemon.poll_interval_ms", "5000")]);
    let addr: SocketAddr = "10.206.0.2:20061".parse().expect("address");
    assert_eq!(ns.refused_connects(addr, CONNECTS), CONNECTS, "closed port");
    let endpoint = "10.206.0.2:20061";
    for direction in ["sent", "received"] {
        let name = series("governor_endpoint_resets_total", &[("endpoint", endpoint), ("direction", direction)]);
        assert_eq!(gov.settle(&name, CONNECTS), CONNECTS, "every reset is counted: {name}");
    }
    let events = |gov: &mut Governor, kind| gov.value(&series("governor_ebpf_events_total", &[("kind", kind)]));
    assert_eq!(events(&mut gov, "connect_failed"), CONNECTS, "failures are not limited");
    let resets = events(&mut gov, "reset_sent") + events(&mut gov, "reset_received");
    assert!(resets >= 20, "the first 20 reset events of a reading go out: {resets}");
    assert!(resets <= 200, "{resets} reset events for {} resets: not limited", 2 * CONNECTS);
    assert_eq!(gov.value("governor_ebpf_events_lost_total"), 0);
}
