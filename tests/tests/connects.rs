//! Connect failures by reason, opened connections and the histograms, with
//! clients and servers inside a test namespace.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use governor_tests::{Governor, Netns, require_root, series};
use socket2::{Domain, Socket, Type};

/// Connections of the histogram test.
const N: u64 = 40;

fn failures(endpoint: &str, reason: &str) -> String {
    series("governor_tcp_connect_failures_total", &[("endpoint", endpoint), ("reason", reason)])
}

#[test]
fn refused_connects_are_counted_as_refused() {
    require_root();
    let ns = Netns::new("refused");
    ns.add_address("10.212.0.1/32");
    let mut gov = Governor::start();
    let name = "10.212.0.1:20085";
    assert_eq!(ns.refused_connects(name.parse().expect("addr"), 7), 7);
    assert_eq!(gov.settle(&failures(name, "refused"), 7), 7);
    assert_eq!(gov.value(&failures(name, "timeout")), 0);
}

#[test]
fn connects_whose_syns_are_dropped_time_out() {
    require_root();
    let ns = Netns::new("timeout");
    ns.add_address("10.213.0.1/32");
    // One SYN retry: connect() gives up after about 3 s.
    // /proc/sys/net belongs to the namespace of the thread that opens it.
    ns.run(|| std::fs::write("/proc/sys/net/ipv4/tcp_syn_retries", "1").expect("set tcp_syn_retries in the namespace"));
    ns.nft("table inet loss {\n chain input {\n  type filter hook input priority 0; policy accept;\n  tcp dport 20086 tcp flags syn drop\n }\n}\n");
    let mut gov = Governor::start();
    let name = "10.213.0.1:20086";
    let addr: SocketAddr = name.parse().expect("addr");
    // Each connect's outcome as text, so that a failure says what the
    // kernel did instead of giving up.
    let outcomes = ns.run(move || {
        let clients: Vec<_> =
            (0..3).map(|_| thread::spawn(move || TcpStream::connect_timeout(&addr, Duration::from_secs(30)))).collect();
        clients
            .into_iter()
            .map(|c| match c.join().expect("connect thread") {
                Ok(s) => format!("connected from {:?}", s.local_addr()),
                Err(e) => format!("{:?}: {e}", e.kind()),
            })
            .collect::<Vec<_>>()
    });
    let timed_out = outcomes.iter().filter(|o| o.starts_with("TimedOut:")).count();
    assert_eq!(timed_out, 3, "the kernel gave up on each connect: {outcomes:?}");
    assert_eq!(gov.settle(&failures(name, "timeout"), 3), 3);
    assert_eq!(gov.value(&failures(name, "refused")), 0);
}

#[test]
fn connections_reset_after_establishment_are_counted_as_reset() {
    require_root();
    let ns = Netns::new("reset");
    ns.add_address("10.214.0.1/32");
    let mut gov = Governor::start();
    let name = "10.214.0.1:20087";
    let addr: SocketAddr = name.parse().expect("addr");
    ns.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        for _ in 0..5 {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            // SO_LINGER 0: close() sends a reset instead of a FIN.
            let server = Socket::from(server);
            server.set_linger(Some(Duration::ZERO)).expect("linger");
            drop(server);
            // Wait (bounded by the read timeout) until the client saw it.
            client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut buf = [0u8; 1];
            let err = std::io::Read::read(&mut &client, &mut buf).expect_err("reset");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        }
    });
    assert_eq!(gov.settle(&failures(name, "reset"), 5), 5);
    assert_eq!(gov.value(&failures(name, "refused")), 0);
}

/// Host-wide histograms also count any other TCP traffic of the host, so a
/// run is repeated (up to three times) until it saw exactly its own
/// connections.
#[test]
fn histograms_count_exactly_the_connections_made() {
    require_root();
    let ns = Netns::new("hist");
    ns.add_address("10.215.0.1/32");
    let mut gov = Governor::start();
    let addr: SocketAddr = "10.215.0.1:20088".parse().expect("addr");
    counts_exactly(&mut gov, |_| {
        ns.run(move || {
            let listener = TcpListener::bind(addr).expect("bind");
            for _ in 0..N {
                let client = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                client.connect(&addr.into()).expect("connect");
                let (server, _) = listener.accept().expect("accept");
                // Both ends close at once with a reset: no TIME_WAIT, both
                // sockets reach CLOSE now.
                client.set_linger(Some(Duration::ZERO)).expect("linger");
                drop(client);
                Socket::from(server).set_linger(Some(Duration::ZERO)).expect("linger");
            }
        });
    });
}

/// Connections the kernel told of while open (the connection API sweeps
/// the table) are counted once too: at the sweep, not again at the close.
#[test]
fn connections_told_of_while_open_are_counted_once() {
    require_root();
    let ns = Netns::new("hist-open");
    ns.add_address("10.215.0.2/32");
    let mut gov = Governor::start();
    let addr: SocketAddr = "10.215.0.2:20089".parse().expect("addr");
    let listener = std::sync::Arc::new(ns.run(move || TcpListener::bind(addr).expect("bind")));
    counts_exactly(&mut gov, |gov| {
        let listener = std::sync::Arc::clone(&listener);
        let pairs: Vec<(Socket, Socket)> = ns.run(move || {
            (0..N)
                .map(|_| {
                    let client = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                    client.connect(&addr.into()).expect("connect");
                    let (server, _) = listener.accept().expect("accept");
                    (client, Socket::from(server))
                })
                .collect()
        });
        let open = gov.json("/api/v1/connections?endpoint=10.215.0.2:20089&limit=1");
        assert_eq!(open["total"], 2 * N, "both ends of every connection are told of: {open:#}");
        for (client, server) in pairs {
            client.set_linger(Some(Duration::ZERO)).expect("linger");
            server.set_linger(Some(Duration::ZERO)).expect("linger");
        }
    });
}

/// Runs `make` (which makes `N` connections inside a namespace) until the
/// handshake histograms, the opened counters and the duration histogram
/// grow by exactly `N`, `N` and `2 N`: the host's own connections (the
/// test's scrapes among them) are counted too, so a few attempts are
/// allowed for one without any.
fn counts_exactly(gov: &mut Governor, mut make: impl FnMut(&mut Governor)) {
    let handshakes = |d: &str| series("governor_tcp_handshake_duration_seconds_count", &[("direction", d)]);
    let opened = |d: &str| series("governor_tcp_connections_opened_total", &[("direction", d)]);
    let durations = "governor_tcp_connection_duration_seconds_count";
    let names =
        [handshakes("active"), handshakes("passive"), opened("active"), opened("passive"), durations.to_owned()];
    let read = |gov: &mut Governor| -> Vec<u64> {
        let m = gov.metrics();
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "integer-valued series")]
        names.iter().map(|n| m.get(n).map_or(0, |v| *v as u64)).collect()
    };
    let mut last = Vec::new();
    for _attempt in 0..3 {
        let before = read(gov);
        make(gov);
        gov.settle(durations, before[4] + 2 * N);
        let after = read(gov);
        last = before.iter().zip(&after).map(|(b, a)| a - b).collect();
        if last == [N, N, N, N, 2 * N] {
            return;
        }
    }
    panic!(
        "handshakes active/passive, opened active/passive, durations: {last:?}, expected {N} each and {} durations",
        2 * N
    );
}

/// Connect attempts per endpoint for the failure ratio: completed connects
/// are counted in the kernel (no event each), failed ones from their
/// events; both land in the endpoint's failure window.
#[test]
fn completed_and_failed_connects_are_both_attempts() {
    attempts_are_counted("attempts", "10.215.0.3/32", "10.215.0.3:20090");
}

/// The same for a service on a port inside the client port range (gRPC's
/// 50051 in the default 32768-60999): not collapsed as a client port.
#[test]
fn attempts_to_a_service_in_the_client_port_range_keep_its_port() {
    attempts_are_counted("attempts-eph", "10.215.0.4/32", "10.215.0.4:50051");
}

fn attempts_are_counted(tag: &str, address: &str, name: &'static str) {
    const COMPLETED: u64 = 6;
    const REFUSED: u64 = 4;
    require_root();
    let ns = Netns::new(tag);
    ns.add_address(address);
    let mut gov = Governor::start_with(&[("health.failure_window_seconds", "600")]);
    let addr: SocketAddr = name.parse().expect("addr");
    ns.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        for _ in 0..COMPLETED {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            drop((client, server));
        }
    });
    assert_eq!(ns.refused_connects(addr, REFUSED), REFUSED, "the listener is gone");
    let doc = gov.wait_json("/api/v1/endpoints", "attempts counted", |d| {
        d["endpoints"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["endpoint"] == name && e["window"]["connect_failures"] == REFUSED))
    });
    let e = doc["endpoints"].as_array().and_then(|a| a.iter().find(|e| e["endpoint"] == name)).expect("tracked");
    assert_eq!(e["window"]["connect_attempts"], COMPLETED + REFUSED, "{e:#}");
}
