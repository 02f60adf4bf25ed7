//! `CLOSE_WAIT` leaks and attribution: a helper process accepts connections
//! and never closes them after its clients have gone.

use std::net::{SocketAddr, TcpStream};

use governor_tests::{Governor, Helper, Netns, require_root, series};
use serde_json::Value;

const HELPER: &str = env!("CARGO_BIN_EXE_tcp-helper");
const CONNECTIONS: usize = 50;
/// The leak threshold for these tests (the default is 30 s).
const LEAK_SECONDS: &str = "3";

fn process(doc: &Value, pid: u32) -> Option<&Value> {
    doc["processes"].as_array()?.iter().find(|p| p["pid"] == pid)
}

#[test]
fn a_server_holding_close_wait_sockets_is_marked_leaking_until_it_closes_them() {
    require_root();
    let ns = Netns::new("leak");
    ns.add_address("10.208.0.1/32");
    let mut gov = Governor::start_with(&[("health.leak_close_wait_seconds", LEAK_SECONDS)]);
    let mut server = Helper::start(HELPER, &ns, "serve", "10.208.0.1:20081", CONNECTIONS);
    let pid = server.pid();
    let addr: SocketAddr = "10.208.0.1:20081".parse().expect("addr");
    // The clients connect and close at once: the server's sockets go to
    // CLOSE_WAIT and stay there.
    ns.run(move || {
        let clients: Vec<TcpStream> = (0..CONNECTIONS).map(|_| TcpStream::connect(addr).expect("connect")).collect();
        drop(clients);
    });
    server.wait_ready();

    let label = format!("tcp-helper/{pid}");
    let doc =
        gov.wait_json("/api/v1/processes", "server leaking", |d| process(d, pid).is_some_and(|p| p["leaking"] == true));
    let p = process(&doc, pid).expect("server listed");
    assert_eq!(p["close_wait"], CONNECTIONS, "{p:#}");
    assert_eq!(p["command"], "tcp-helper");
    assert_eq!(p["label"], label.as_str());
    assert_eq!(p["listeners"], serde_json::json!(["10.208.0.1:20081"]));
    assert!(p["close_wait_oldest_seconds"].as_u64().expect("age") >= 3, "{p:#}");
    assert_eq!(gov.value(&series("governor_tcp_close_wait_connections", &[("process", &label)])), 50);
    assert_eq!(gov.value(&series("governor_connection_leak_suspected", &[("process", &label)])), 1);
    let status = gov.json("/api/v1/status");
    assert!(status["leaking"].as_array().expect("leaking").iter().any(|p| p["pid"] == pid), "{status:#}");
    // The listener's endpoint shows the sockets too.
    let endpoints = gov.json("/api/v1/endpoints");
    let e = endpoints["endpoints"].as_array().expect("endpoints").iter().find(|e| e["endpoint"] == "10.208.0.1:20081");
    assert_eq!(e.expect("listener endpoint")["window"]["close_wait"], CONNECTIONS);

    server.close_all();
    gov.wait_json("/api/v1/processes", "leak mark cleared", |d| {
        process(d, pid).is_none_or(|p| p["close_wait"] == 0 && p["leaking"] == false)
    });
    assert_eq!(gov.settle(&series("governor_connection_leak_suspected", &[("process", &label)]), 0), 0);
    assert_eq!(gov.value(&series("governor_tcp_close_wait_connections", &[("process", &label)])), 0);
}

/// A server and a client process in a namespace of their own, with `held`
/// connections between them, all made before governor starts: as a
/// service's pooled connections are when governor restarts or is upgraded.
fn connected_before_governor(ns: &str, ip: &str, port: u16, held: usize) -> (Netns, Helper, Helper) {
    let ns = Netns::new(ns);
    ns.add_address(&format!("{ip}/32"));
    let addr = format!("{ip}:{port}");
    let mut server = Helper::start(HELPER, &ns, "serve", &addr, held);
    let client = Helper::start(HELPER, &ns, "connect", &addr, held);
    server.wait_ready();
    (ns, server, client)
}

/// Waits until `pid` is marked leaking, then checks that it holds exactly
/// `held` sockets in `CLOSE_WAIT`, each with `direction` and `side`
/// (`"local"` or `"remote"`) at `endpoint`; returns the process.
fn leaking(gov: &mut Governor, pid: u32, held: usize, direction: &str, (side, endpoint): (&str, &str)) -> Value {
    let doc = gov
        .wait_json("/api/v1/processes", "process leaking", |d| process(d, pid).is_some_and(|p| p["leaking"] == true));
    let p = process(&doc, pid).expect("process listed").clone();
    assert_eq!((&p["close_wait"], &p["command"]), (&held.into(), &"tcp-helper".into()), "{p:#}");
    let conns = gov.json(&format!("/api/v1/connections?pid={pid}&state=CLOSE_WAIT"));
    assert_eq!(conns["total"], held, "{conns:#}");
    for c in conns["connections"].as_array().expect("connections") {
        assert_eq!((&c["direction"], &c[side]), (&direction.into(), &endpoint.into()), "{c:#}");
    }
    let label = format!("tcp-helper/{pid}");
    assert_eq!(gov.value(&series("governor_tcp_close_wait_connections", &[("process", &label)])), held as u64);
    assert_eq!(gov.value(&series("governor_connection_leak_suspected", &[("process", &label)])), 1);
    p
}

/// Waits until `pid` holds no socket in `CLOSE_WAIT` and its leak mark and
/// series are gone.
fn leak_cleared(gov: &mut Governor, pid: u32) {
    gov.wait_json("/api/v1/processes", "leak mark cleared", |d| {
        process(d, pid).is_none_or(|p| p["close_wait"] == 0 && p["leaking"] == false)
    });
    let label = format!("tcp-helper/{pid}");
    assert_eq!(gov.settle(&series("governor_connection_leak_suspected", &[("process", &label)]), 0), 0);
    assert_eq!(gov.json(&format!("/api/v1/connections?pid={pid}&state=CLOSE_WAIT"))["total"], 0);
}

#[test]
fn connections_open_before_governor_started_are_seen_leaking_once_they_enter_close_wait() {
    require_root();
    let (_ns, mut server, mut clients) = connected_before_governor("leakpre", "10.214.0.1", 20090, 20);
    let mut gov = Governor::start_with(&[("health.leak_close_wait_seconds", LEAK_SECONDS)]);
    // The clients go; the server keeps its ends, now in CLOSE_WAIT.
    clients.close_all();
    leaking(&mut gov, server.pid(), 20, "passive", ("local", "10.214.0.1:20090"));
    server.close_all();
    leak_cleared(&mut gov, server.pid());
}

#[test]
fn a_leak_that_began_before_governor_started_is_reported_until_the_server_closes() {
    require_root();
    let (_ns, mut server, mut clients) = connected_before_governor("leakold", "10.216.0.1", 20092, 15);
    // The leak is under way before governor starts: the clients are gone,
    // the server's ends sit in CLOSE_WAIT.
    clients.close_all();
    let mut gov = Governor::start_with(&[("health.leak_close_wait_seconds", LEAK_SECONDS)]);
    leaking(&mut gov, server.pid(), 15, "passive", ("local", "10.216.0.1:20092"));
    // Their closes reach governor although its table never held them.
    server.close_all();
    leak_cleared(&mut gov, server.pid());
}

#[test]
fn a_client_holding_connections_open_before_governor_started_is_found_and_marked_leaking() {
    require_root();
    let (_ns, mut server, mut client) = connected_before_governor("leakcli", "10.215.0.1", 20091, 12);
    let pid = client.pid();
    let mut gov = Governor::start_with(&[("health.leak_close_wait_seconds", LEAK_SECONDS)]);
    // The server closes; the client keeps its ends, now in CLOSE_WAIT: an
    // HTTP client that never closes what the server closed. The kernel saw
    // neither the connect nor the owner: governor finds it in /proc.
    server.close_all();
    let p = leaking(&mut gov, pid, 12, "active", ("remote", "10.215.0.1:20091"));
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("client's cgroup");
    let cgroup = cgroup.lines().find_map(|l| l.strip_prefix("0::")).expect("cgroup v2 path");
    assert_eq!(p["attribution"]["cgroup"], cgroup, "{p:#}");
    client.close_all();
    leak_cleared(&mut gov, pid);
}

#[test]
fn connections_are_attributed_to_the_connecting_and_the_listening_process() {
    require_root();
    let ns = Netns::new("attr");
    ns.add_address("10.209.0.1/32");
    let mut gov = Governor::start();
    let mut server = Helper::start(HELPER, &ns, "serve", "10.209.0.1:20082", 5);
    let mut client = Helper::start(HELPER, &ns, "connect", "10.209.0.1:20082", 5);
    server.wait_ready();
    let (server_pid, client_pid) = (server.pid(), client.pid());

    let active =
        gov.wait_json(&format!("/api/v1/connections?pid={client_pid}"), "client's connections", |d| d["total"] == 5);
    for c in active["connections"].as_array().expect("connections") {
        assert_eq!(
            (&c["direction"], &c["command"], &c["remote"]),
            (&"active".into(), &"tcp-helper".into(), &"10.209.0.1:20082".into()),
            "{c:#}"
        );
        assert_eq!(c["state"], "ESTABLISHED");
    }
    let passive =
        gov.wait_json(&format!("/api/v1/connections?pid={server_pid}"), "server's connections", |d| d["total"] == 5);
    for c in passive["connections"].as_array().expect("connections") {
        assert_eq!((&c["direction"], &c["local"]), (&"passive".into(), &"10.209.0.1:20082".into()), "{c:#}");
    }
    // Filters and pages.
    let page = gov.json(&format!("/api/v1/connections?pid={client_pid}&limit=2&offset=4"));
    assert_eq!((&page["total"], page["connections"].as_array().map(Vec::len)), (&5.into(), Some(1)));
    let by_endpoint = gov.json("/api/v1/connections?endpoint=10.209.0.1:20082&state=ESTABLISHED&limit=100");
    assert_eq!(by_endpoint["total"], 10, "both ends have 10.209.0.1:20082 as their service endpoint");
    let Some((400, body)) = gov.get("/api/v1/connections?limit=0") else { panic!("no answer") };
    assert!(body.contains("limit must be between 1 and"), "{body}");

    let doc = gov.json("/api/v1/processes");
    let cgroup = &process(&doc, client_pid).expect("client")["attribution"]["cgroup"];
    assert!(cgroup.as_str().is_some_and(|c| c.starts_with('/')), "the cgroup path is known: {cgroup}");
    client.close_all();
    server.close_all();
}

#[test]
fn connections_accepted_by_wildcard_listeners_are_attributed_to_the_listening_process() {
    require_root();
    let ns = Netns::new("attrwild");
    ns.add_address("10.210.0.1/32");
    let mut gov = Governor::start();
    // One listener on the IPv4 wildcard, one on the IPv6 wildcard taking
    // IPv4 connections (mapped addresses): neither is bound to the
    // address the connections arrive at.
    let mut v4 = Helper::start(HELPER, &ns, "serve", "0.0.0.0:20083", 3);
    let mut v6 = Helper::start(HELPER, &ns, "serve", "[::]:20084", 3);
    let mut clients = [
        Helper::start(HELPER, &ns, "connect", "10.210.0.1:20083", 3),
        Helper::start(HELPER, &ns, "connect", "10.210.0.1:20084", 3),
    ];
    v4.wait_ready();
    v6.wait_ready();
    for (server, port) in [(&v4, "20083"), (&v6, "20084")] {
        let pid = server.pid();
        let doc = gov.wait_json(&format!("/api/v1/connections?pid={pid}"), "server's connections", |d| d["total"] == 3);
        for c in doc["connections"].as_array().expect("connections") {
            assert_eq!((&c["direction"], &c["command"]), (&"passive".into(), &"tcp-helper".into()), "{c:#}");
            assert!(c["local"].as_str().is_some_and(|l| l.ends_with(port)), "{c:#}");
        }
    }
    for client in &mut clients {
        client.close_all();
    }
    v4.close_all();
    v6.close_all();
}

#[test]
fn listeners_open_before_governor_started_give_their_connections_an_owner() {
    require_root();
    let ns = Netns::new("attrpre");
    ns.add_address("10.213.0.1/32");
    // Listening before governor starts, as every service on a node is when
    // governor restarts or is upgraded: on the exact address, on the IPv4
    // wildcard, and on the IPv6 wildcard taking IPv4 connections.
    let ports = ["20087", "20088", "20089"];
    let mut servers = [
        Helper::start(HELPER, &ns, "serve", "10.213.0.1:20087", 2),
        Helper::start(HELPER, &ns, "serve", "0.0.0.0:20088", 2),
        Helper::start(HELPER, &ns, "serve", "[::]:20089", 2),
    ];
    let mut gov = Governor::start();
    let mut clients = ports.map(|port| Helper::start(HELPER, &ns, "connect", &format!("10.213.0.1:{port}"), 2));
    for server in &mut servers {
        server.wait_ready();
    }
    for (server, port) in servers.iter().zip(ports) {
        let pid = server.pid();
        let doc = gov.wait_json(&format!("/api/v1/connections?pid={pid}"), "server's connections", |d| d["total"] == 2);
        for c in doc["connections"].as_array().expect("connections") {
            assert_eq!((&c["direction"], &c["command"]), (&"passive".into(), &"tcp-helper".into()), "{c:#}");
            assert!(c["local"].as_str().is_some_and(|l| l.ends_with(port)), "{c:#}");
        }
        // The process view has the listener and the process's cgroup, as
        // for a listener opened under governor.
        let doc = gov.json("/api/v1/processes");
        let p = process(&doc, pid).unwrap_or_else(|| panic!("server {pid} in {doc:#}"));
        let listeners = p["listeners"].as_array().expect("listeners");
        assert!(listeners.len() == 1 && listeners[0].as_str().is_some_and(|l| l.ends_with(port)), "{p:#}");
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("server's cgroup");
        let cgroup = cgroup.lines().find_map(|l| l.strip_prefix("0::")).expect("cgroup v2 path");
        assert_eq!(p["attribution"]["cgroup"], cgroup, "{p:#}");
    }
    // Their close is reported with the owner governor gave them: the
    // listener leaves the process view.
    for client in &mut clients {
        client.close_all();
    }
    let pids = servers.each_ref().map(Helper::pid);
    drop(servers);
    gov.wait_json("/api/v1/processes", "the servers' listeners gone", |d| {
        pids.iter().all(|&pid| process(d, pid).is_none_or(|p| p["listeners"].as_array().is_some_and(Vec::is_empty)))
    });
}

#[test]
fn listeners_on_the_same_address_in_two_namespaces_keep_their_own_connections() {
    require_root();
    // Two pods, as it were: each namespace has the same address, and a
    // server of its own on the same wildcard address and port.
    let (a, b) = (Netns::new("attrns-a"), Netns::new("attrns-b"));
    a.add_address("10.212.0.1/32");
    b.add_address("10.212.0.1/32");
    let mut gov = Governor::start();
    let mut servers = [
        Helper::start(HELPER, &a, "serve", "0.0.0.0:20086", 2),
        Helper::start(HELPER, &b, "serve", "0.0.0.0:20086", 3),
    ];
    let mut clients = [
        Helper::start(HELPER, &a, "connect", "10.212.0.1:20086", 2),
        Helper::start(HELPER, &b, "connect", "10.212.0.1:20086", 3),
    ];
    for server in &mut servers {
        server.wait_ready();
    }
    for (server, count) in servers.iter().zip([2, 3]) {
        let pid = server.pid();
        let doc =
            gov.wait_json(&format!("/api/v1/connections?pid={pid}"), "server's connections", |d| d["total"] == count);
        for c in doc["connections"].as_array().expect("connections") {
            assert_eq!((&c["direction"], &c["command"]), (&"passive".into(), &"tcp-helper".into()), "{c:#}");
        }
    }
    for helper in clients.iter_mut().chain(servers.iter_mut()) {
        helper.close_all();
    }
}
