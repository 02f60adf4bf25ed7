//! Connects to a closed port inside a test namespace: every SYN is answered
//! with a RST (sent by the namespace's stack) which the client receives.
//! Both ends are the same endpoint, so its counters rise by exactly the
//! number of connects in each direction.

use std::net::SocketAddr;

use governor_tests::{Governor, Netns, require_root, series};

const CONNECTS: u64 = 200;

fn resets_to_closed_port(address: &str, cidr: &str, port: u16, endpoint: &str) {
    require_root();
    let ns = Netns::new("rst");
    ns.add_address(cidr);
    let mut gov = Governor::start();
    let sent = series("governor_endpoint_resets_total", &[("endpoint", endpoint), ("direction", "sent")]);
    let received = series("governor_endpoint_resets_total", &[("endpoint", endpoint), ("direction", "received")]);
    let host_sent = series("governor_tcp_resets_total", &[("direction", "sent")]);
    // The kernel's own name for the reason, read from its BTF.
    let no_socket = series("governor_tcp_resets_sent_by_reason_total", &[("reason", "NO_SOCKET")]);
    let before_host = gov.value(&host_sent);
    let before_no_socket = gov.value(&no_socket);
    assert_eq!(gov.value(&sent), 0, "fresh daemon, unused address");

    let addr: SocketAddr = format!("{address}:{port}").parse().expect("address");
    let refused = ns.refused_connects(addr, CONNECTS);
    assert_eq!(refused, CONNECTS, "every connect to the closed port is refused");

    assert_eq!(gov.settle(&sent, CONNECTS), CONNECTS, "resets sent by {endpoint}");
    assert_eq!(gov.settle(&received, CONNECTS), CONNECTS, "resets received from {endpoint}");
    // The host totals include this traffic (and possibly other host traffic).
    let host_delta = gov.value(&host_sent) - before_host;
    assert!(host_delta >= CONNECTS);
    // Answers to SYNs for a closed port are NO_SOCKET resets.
    let no_socket_delta = gov.value(&no_socket) - before_no_socket;
    assert!((CONNECTS..=host_delta).contains(&no_socket_delta), "NO_SOCKET +{no_socket_delta}, all sent +{host_delta}");
    let failed = series("governor_ebpf_events_total", &[("kind", "connect_failed")]);
    assert!(gov.value(&failed) >= CONNECTS, "every refused connect is a failed-connect event");
    assert_eq!(gov.value("governor_ebpf_events_lost_total"), 0);
}

#[test]
fn ipv4_resets_to_a_closed_port_are_counted_exactly() {
    resets_to_closed_port("10.201.0.1", "10.201.0.1/32", 20001, "10.201.0.1:20001");
}

#[test]
fn ipv6_resets_to_a_closed_port_are_counted_exactly() {
    resets_to_closed_port("[fd00:201::1]", "fd00:201::1/128", 20002, "[fd00:201::1]:20002");
}
