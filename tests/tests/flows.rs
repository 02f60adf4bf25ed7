//! Per-flow bytes and packets, copied from the kernel's own per-socket
//! counts by the flow sampler and at close: transfers of a known size
//! between two namespaces joined by a veth pair.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use governor_tests::{Governor, Netns, require_root, series};
use serde_json::Value;

/// 10 MiB each way.
const BYTES: u64 = 10 << 20;
/// TCP payload per segment on a 1500-byte link with timestamps: 1448
/// (1460 without): a lower bound on the segments either way.
const MAX_SEGMENT: u64 = 1460;

fn within_one_percent(value: &Value, expected: u64) -> bool {
    value.as_u64().is_some_and(|v| v.abs_diff(expected) * 100 <= expected)
}

fn send_all(stream: &mut TcpStream, bytes: u64) {
    let chunk = vec![0x5a_u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64);
        stream.write_all(&chunk[..usize::try_from(n).expect("chunk")]).expect("send");
        left -= n;
    }
}

fn receive_exactly(stream: &mut TcpStream, bytes: u64) {
    let mut buf = vec![0_u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).expect("chunk");
        let n = stream.read(&mut buf[..want]).expect("receive");
        assert!(n > 0, "peer closed with {left} bytes to go");
        left -= n as u64;
    }
}

fn flow<'a>(doc: &'a Value, local: &str) -> Option<&'a Value> {
    doc["flows"].as_array()?.iter().find(|f| f["local"] == local)
}

#[test]
fn a_transfer_between_two_namespaces_is_counted_per_flow_and_per_endpoint() {
    require_root();
    let (client_ns, server_ns) = (Netns::new("flow-c"), Netns::new("flow-s"));
    client_ns.link(&server_ns, &["10.216.0.1/24", "fd00:216::1/64"], &["10.216.0.2/24", "fd00:216::2/64"]);
    let mut gov = Governor::start();
    for (server, label) in [("10.216.0.2:20161", "10.216.0.2:20161"), ("[fd00:216::2]:20162", "[fd00:216::2]:20162")] {
        transfer_is_counted(&mut gov, &client_ns, &server_ns, server.parse().expect("addr"), label);
    }
    assert_eq!(gov.value("governor_ebpf_socket_update_failures_total"), 0);
}

/// 10 MiB each way between a client in `client_ns` and a server at
/// `server_addr` in `server_ns`; `label` is how governor writes the
/// server's endpoint.
fn transfer_is_counted(gov: &mut Governor, client_ns: &Netns, server_ns: &Netns, server_addr: SocketAddr, label: &str) {
    let listener = server_ns.run(move || TcpListener::bind(server_addr).expect("listen"));
    // The server reads everything, then answers with as much.
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        receive_exactly(&mut stream, BYTES);
        send_all(&mut stream, BYTES);
        stream
    });
    let mut client = client_ns.run(move || TcpStream::connect(server_addr).expect("connect"));
    send_all(&mut client, BYTES);
    receive_exactly(&mut client, BYTES);
    // Both ends stay open while governor is asked: flows are live
    // connections.
    let server_stream = server.join().expect("server thread");
    let client_local = client.local_addr().expect("client address").to_string();

    let doc = gov.json("/api/v1/flows?sort=bytes&limit=100");
    for (local, direction) in [(client_local.as_str(), "active"), (label, "passive")] {
        let f = flow(&doc, local).unwrap_or_else(|| panic!("flow {local} not listed:\n{doc:#}"));
        assert_eq!(f["endpoint"], label, "{f:#}");
        assert_eq!(f["direction"], direction, "{f:#}");
        assert_eq!(f["pid"], std::process::id(), "{f:#}");
        // Payload bytes: exact unless segments were retransmitted.
        assert!(within_one_percent(&f["bytes_sent"], BYTES), "sent: {f:#}");
        assert!(within_one_percent(&f["bytes_received"], BYTES), "received: {f:#}");
        for packets in ["packets_sent", "packets_received"] {
            assert!(f[packets].as_u64().expect(packets) >= BYTES.div_ceil(MAX_SEGMENT), "{packets}: {f:#}");
        }
    }
    let client_flow = flow(&doc, &client_local).expect("client flow");
    assert_eq!(client_flow["remote"], label);
    assert!(doc["total"].as_u64().expect("total") >= 2, "{doc:#}");

    // Both ends are on this host, so the endpoint's totals hold both
    // sockets' bytes: 2 × 10 MiB each way.
    for direction in ["sent", "received"] {
        let name = series("governor_endpoint_bytes_total", &[("direction", direction), ("endpoint", label)]);
        let value = gov.settle(&name, 2 * BYTES);
        assert!(value.abs_diff(2 * BYTES) * 100 <= 2 * BYTES, "{name} = {value}");
    }

    // Closed connections leave the table.
    drop(client);
    drop(server_stream);
    gov.wait_json("/api/v1/flows?limit=100", "flows gone after close", |d| {
        flow(d, &client_local).is_none() && flow(d, label).is_none()
    });
}

#[test]
fn retransmitted_segments_are_counted_once() {
    require_root();
    let (client_ns, server_ns) = (Netns::new("flow-lc"), Netns::new("flow-ls"));
    client_ns.link(&server_ns, &["10.217.0.1/24"], &["10.217.0.2/24"]);
    // Lose about 2% of the data segments arriving on either side: the
    // senders retransmit them, and receivers see later segments first.
    let lossy = "table inet loss {\n chain input {\n  type filter hook input priority 0;\n  \
                 meta l4proto tcp meta length > 200 numgen random mod 100 < 2 drop\n }\n}\n";
    client_ns.nft(lossy);
    server_ns.nft(lossy);
    let mut gov = Governor::start();
    let retransmits = gov.value("governor_tcp_retransmits_total");
    transfer_is_counted(
        &mut gov,
        &client_ns,
        &server_ns,
        "10.217.0.2:20163".parse().expect("addr"),
        "10.217.0.2:20163",
    );
    let now = gov.value("governor_tcp_retransmits_total");
    assert!(now > retransmits, "no segment was retransmitted: the test proves nothing ({retransmits} -> {now})");
}

/// Connections established before governor started (every long-lived
/// connection of a node, after a restart or an upgrade of governor) are
/// tracked from its start: listed as flows with their owners, and only the
/// bytes they move from then on are added to their endpoint.
#[test]
fn connections_open_before_governor_started_are_tracked_and_only_their_later_bytes_counted() {
    require_root();
    let (client_ns, server_ns) = (Netns::new("flow-pc"), Netns::new("flow-ps"));
    client_ns.link(&server_ns, &["10.218.0.1/24", "fd00:218::1/64"], &["10.218.0.2/24", "fd00:218::2/64"]);
    // One connection of each family, established and used before governor
    // starts.
    let mut open =
        ["10.218.0.2:20164", "[fd00:218::2]:20165"].map(|label| OpenBefore::connect(&client_ns, &server_ns, label));
    let mut gov = Governor::start();
    assert!(gov.log().contains("tracking the connections opened before start"), "{}", gov.log());
    // Both ends are this process's, found by their sockets' inodes in
    // /proc: no process is in these namespaces, so the listeners' owners
    // are not read from /proc at start, and the walk adds them without one
    // (which makes the accepted ends passive).
    let pid = std::process::id();
    gov.wait_json("/api/v1/flows?sort=bytes&limit=100", "every end listed with its owner", |d| {
        open.iter().flat_map(OpenBefore::ends).all(|(local, _)| flow(d, &local).is_some_and(|f| f["pid"] == pid))
    });
    for conn in &mut open {
        exchange(&mut conn.client, &mut conn.server, BYTES);
    }

    let doc = gov.json("/api/v1/flows?sort=bytes&limit=100");
    for conn in &open {
        for (local, direction) in conn.ends() {
            let f = flow(&doc, &local).unwrap_or_else(|| panic!("flow {local} not listed:\n{doc:#}"));
            assert_eq!((&f["endpoint"], &f["direction"]), (&conn.label.into(), &direction.into()), "{f:#}");
            // A flow's totals are its socket's, from before governor too.
            assert!(within_one_percent(&f["bytes_sent"], OpenBefore::EARLIER + BYTES), "sent: {f:#}");
            assert!(within_one_percent(&f["bytes_received"], OpenBefore::EARLIER + BYTES), "received: {f:#}");
        }
        // The endpoint gets what both ends moved since governor started:
        // 2 × 10 MiB each way, not 2 × 14 MiB.
        for direction in ["sent", "received"] {
            let name = series("governor_endpoint_bytes_total", &[("direction", direction), ("endpoint", conn.label)]);
            let value = gov.settle(&name, 2 * BYTES);
            assert!(value.abs_diff(2 * BYTES) * 100 <= 2 * BYTES, "{name} = {value}");
        }
    }
    assert_eq!(gov.value("governor_ebpf_socket_update_failures_total"), 0);
    let ends: Vec<(String, &str)> = open.iter().flat_map(OpenBefore::ends).collect();
    drop(open);
    gov.wait_json("/api/v1/flows?limit=100", "flows gone after close", |d| {
        ends.iter().all(|(local, _)| flow(d, local).is_none())
    });
}

/// A connection from `client_ns` to `label` in `server_ns`, made and
/// used before governor starts. Its listener stays open: what tells an
/// accepted connection found open from an outgoing one is a listener on
/// its local address.
struct OpenBefore {
    label: &'static str,
    client: TcpStream,
    server: TcpStream,
    _listener: TcpListener,
}

impl OpenBefore {
    /// Moved each way before governor starts: in the flows' own totals,
    /// not in the endpoint's.
    const EARLIER: u64 = 4 << 20;

    fn connect(client_ns: &Netns, server_ns: &Netns, label: &'static str) -> Self {
        let addr: SocketAddr = label.parse().expect("addr");
        let listener = server_ns.run(move || TcpListener::bind(addr).expect("listen"));
        let mut client = client_ns.run(move || TcpStream::connect(addr).expect("connect"));
        let (mut server, _) = listener.accept().expect("accept");
        exchange(&mut client, &mut server, Self::EARLIER);
        Self { label, client, server, _listener: listener }
    }

    /// Each end's local address as governor writes it, and its direction.
    fn ends(&self) -> [(String, &'static str); 2] {
        [(self.client.local_addr().expect("client address").to_string(), "active"), (self.label.to_owned(), "passive")]
    }
}

/// `bytes` from `client` to `server`, then as many back.
fn exchange(client: &mut TcpStream, server: &mut TcpStream, bytes: u64) {
    thread::scope(|scope| {
        scope.spawn(|| {
            receive_exactly(server, bytes);
            send_all(server, bytes);
        });
        send_all(client, bytes);
        receive_exactly(client, bytes);
    });
}

/// Ids of the flow sampler programs loaded now. An earlier test's daemon
/// may have left one that the kernel frees a little after it exited, so
/// tests compare before and after their own daemon starts.
fn sampler_ids() -> std::collections::HashSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name() == b"gov_flow_sample")
        .map(|p| p.id())
        .collect()
}

#[test]
fn connections_that_close_are_counted_exactly_at_their_endpoint() {
    const CONNECTIONS: u64 = 5;
    const EACH: u64 = 1 << 20;
    require_root();
    let (client_ns, server_ns) = (Netns::new("flow-xc"), Netns::new("flow-xs"));
    client_ns.link(&server_ns, &["10.218.0.1/24"], &["10.218.0.2/24"]);
    let before = sampler_ids();
    let mut gov = Governor::start();
    assert!(sampler_ids().difference(&before).next().is_some(), "the daemon loaded no flow sampler");
    let server_addr: SocketAddr = "10.218.0.2:20164".parse().expect("addr");
    let listener = server_ns.run(move || TcpListener::bind(server_addr).expect("listen"));
    // Five short connections of 1 MiB each way, each closed before the
    // next: most of their bytes reach the endpoint through the copy made
    // at close, whatever the sampler saw meanwhile.
    let server = thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            let (mut stream, _) = listener.accept().expect("accept");
            receive_exactly(&mut stream, EACH);
            send_all(&mut stream, EACH);
            // Wait for the client's close, so that everything was acknowledged.
            assert_eq!(stream.read(&mut [0_u8; 1]).expect("end"), 0);
        }
    });
    for _ in 0..CONNECTIONS {
        let mut client = client_ns.run(move || TcpStream::connect(server_addr).expect("connect"));
        send_all(&mut client, EACH);
        receive_exactly(&mut client, EACH);
    }
    server.join().expect("server thread");
    // Both ends are on this host: each direction counts every byte twice.
    for direction in ["sent", "received"] {
        let name =
            series("governor_endpoint_bytes_total", &[("direction", direction), ("endpoint", "10.218.0.2:20164")]);
        assert_eq!(gov.settle(&name, 2 * CONNECTIONS * EACH), 2 * CONNECTIONS * EACH, "{name}");
    }
    assert_eq!(gov.value("governor_ebpf_sockets_untracked_total"), 0);
}

#[test]
fn a_sweep_reaches_every_socket_of_a_table_larger_than_one_run() {
    // Two sockets per connection: 12,000 sockets, more than the 8192 one
    // run of the sampler walks, all holding data the sweep must find.
    const CONNECTIONS: usize = 6000;
    require_root();
    let fds = u64::try_from(3 * CONNECTIONS).expect("small");
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("file limit");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft.max(fds), hard.max(fds))
        .expect("raise the file limit");
    let ns = Netns::new("flow-sweep");
    let mut gov = Governor::start_with(&[("ebpf.socket_table_entries", "32768"), ("ebpf.sweep_interval_ms", "1000")]);
    let server_addr: SocketAddr = "127.0.0.1:20165".parse().expect("addr");
    let listener = ns.run(move || TcpListener::bind(server_addr).expect("listen"));
    let server = thread::spawn(move || {
        (0..CONNECTIONS)
            .map(|_| {
                let (mut s, _) = listener.accept().expect("accept");
                let mut byte = [0_u8; 1];
                s.read_exact(&mut byte).expect("the client's byte");
                s
            })
            .collect::<Vec<TcpStream>>()
    });
    let clients = ns.run(move || {
        (0..CONNECTIONS)
            .map(|_| {
                let mut c = TcpStream::connect(server_addr).expect("connect");
                c.write_all(b"x").expect("send");
                c
            })
            .collect::<Vec<TcpStream>>()
    });
    let servers = server.join().expect("server thread");
    let total = u64::try_from(CONNECTIONS).expect("small");
    for direction in ["sent", "received"] {
        let name =
            series("governor_endpoint_bytes_total", &[("direction", direction), ("endpoint", "127.0.0.1:20165")]);
        let value = gov.settle(&name, total);
        assert_eq!(value, total, "{name}: one byte per open connection");
    }
    drop((clients, servers));
}

#[test]
fn without_flow_counting_connections_are_still_told_of_but_no_bytes_counted() {
    require_root();
    let ns = Netns::new("flow-off");
    let mut gov = Governor::start_with(&[("ebpf.count_flows", "false")]);
    assert_eq!(gov.value("governor_ebpf_programs_attached"), 4);
    let server_addr: SocketAddr = "127.0.0.1:20166".parse().expect("addr");
    let listener = ns.run(move || TcpListener::bind(server_addr).expect("listen"));
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        receive_exactly(&mut s, 1000);
        s
    });
    let mut client = ns.run(move || TcpStream::connect(server_addr).expect("connect"));
    send_all(&mut client, 1000);
    let server = server.join().expect("server thread");
    // The kernel tells of open connections at a sweep, and the connection
    // API sweeps before it answers: both ends are there at once, though
    // the daemon's own sweep (every 5 s) may not have run yet.
    let doc = gov.json("/api/v1/connections?endpoint=127.0.0.1:20166");
    assert_eq!(doc["total"], 2, "{doc:#}");
    let (status, body) = gov.get("/api/v1/flows").expect("answer");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("ebpf.count_flows"), "{body}");
    drop((client, server));
    // The kernel reports the closes of connections it told of; the close
    // is where bytes would be copied last, and none were.
    gov.wait_json("/api/v1/connections?endpoint=127.0.0.1:20166", "both ends closed", |d| d["total"] == 0);
    for direction in ["sent", "received"] {
        let name =
            series("governor_endpoint_bytes_total", &[("direction", direction), ("endpoint", "127.0.0.1:20166")]);
        assert_eq!(gov.value(&name), 0, "{name}");
    }
}

#[test]
fn flows_api_rejects_bad_parameters() {
    require_root();
    let mut gov = Governor::start();
    for path in ["/api/v1/flows?limit=0", "/api/v1/flows?limit=10001", "/api/v1/flows?sort=speed"] {
        let (status, body) = gov.get(path).expect("answer");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("error"), "{path}: {body}");
    }
    let doc = gov.json("/api/v1/flows?limit=1");
    assert_eq!(doc["sort"], "rate");
    assert!(doc["flows"].as_array().expect("flows").len() <= 1, "{doc:#}");
}
