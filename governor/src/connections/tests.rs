use governor_common::{AF_INET, ConnEvent, EndpointKey, FlowAddrs, Owner, SockInfo, announce, direction, event_kind};

use super::*;

const S: u64 = 1_000_000_000;

fn addrs(local: u8, lport: u16, remote: u8, rport: u16) -> FlowAddrs {
    let mut a = FlowAddrs { family: AF_INET, sport: lport, dport: rport, ..Default::default() };
    a.saddr[..4].copy_from_slice(&[10, 0, 0, local]);
    a.daddr[..4].copy_from_slice(&[10, 0, 0, remote]);
    a
}

fn key(addr: [u8; 4], port: u16) -> EndpointKey {
    let mut key = EndpointKey { port, family: AF_INET, ..Default::default() };
    key.addr[..4].copy_from_slice(&addr);
    key
}

fn owner(tgid: u32) -> Owner {
    let mut comm = [0; 16];
    comm[..3].copy_from_slice(b"srv");
    Owner { cgroup_id: 7, tgid, pid: tgid, comm }
}

fn event(kind: u32, skaddr: u64, at: u64, info: SockInfo, error: u32) -> ConnEvent {
    ConnEvent { timestamp_ns: at, kind, error, skaddr, info, ..ConnEvent::default() }
}

fn passive(tgid: u32, remote: u8) -> SockInfo {
    SockInfo {
        open_ns: S,
        established_ns: S,
        handshake_ns: S / 1000,
        owner: owner(tgid),
        addrs: addrs(1, 80, remote, 40_000),
        direction: direction::PASSIVE,
        state: 1,
        ..Default::default()
    }
}

/// `info` as events show it once user space was told of the connection.
fn told(info: SockInfo) -> SockInfo {
    SockInfo { announce: info.announce | announce::OPEN, ..info }
}

#[test]
fn follows_a_connection_through_close_wait() {
    let mut t = Tracker::default();
    let info = passive(42, 2);
    assert_eq!(t.apply(&event(event_kind::OPENED, 1, S, info, 0)), Outcome::None);
    let cw = SockInfo { close_wait_ns: 3 * S, state: 8, ..told(info) };
    assert_eq!(t.apply(&event(event_kind::CLOSE_WAIT, 1, 3 * S, cw, 0)), Outcome::None);
    let p = by_process(&t);
    assert_eq!((p.len(), p[0].owner.tgid, p[0].connections, p[0].close_wait), (1, 42, 1, 1));
    assert_eq!(p[0].close_wait_age_seconds(40 * S), 37);
    assert_eq!(by_endpoint(&t)["10.0.0.1:80"], (1, 1, 3 * S));

    let left = SockInfo { state: 9, ..cw };
    t.apply(&event(event_kind::CLOSE_WAIT_LEFT, 1, 41 * S, left, 0));
    assert_eq!(by_process(&t)[0].close_wait, 0);
    assert_eq!(t.apply(&event(event_kind::CLOSED, 1, 42 * S, left, 0)), Outcome::Closed { reset: None });
    assert_eq!(t.len(), 0);
}

#[test]
fn a_connection_first_told_of_in_close_wait_is_added_with_its_close_wait() {
    let mut t = Tracker::default();
    let cw = SockInfo { close_wait_ns: 2 * S, state: 8, ..passive(42, 2) };
    assert_eq!(t.apply(&event(event_kind::CLOSE_WAIT, 2, 2 * S, cw, 0)), Outcome::None);
    let p = close_wait_by_process(&t);
    assert_eq!((p.len(), p[0].owner.tgid, p[0].close_wait, p[0].oldest_close_wait_ns), (1, 42, 1, 2 * S));
    assert_eq!(t.apply(&event(event_kind::CLOSED, 2, 4 * S, told(cw), 0)), Outcome::Closed { reset: None });
    assert!(t.is_empty());
    assert!(close_wait_by_process(&t).is_empty());
}

#[test]
fn failures_and_resets_get_their_reasons() {
    let mut t = Tracker::default();
    let active = SockInfo { direction: direction::ACTIVE, addrs: addrs(2, 40_000, 1, 81), ..Default::default() };
    for (error, reason) in [
        (errno::ECONNREFUSED, FailureReason::Refused),
        (errno::ETIMEDOUT, FailureReason::Timeout),
        (113, FailureReason::Other),
        (0, FailureReason::Other),
    ] {
        assert_eq!(
            t.apply(&event(event_kind::CONNECT_FAILED, 9, S, active, error)),
            Outcome::ConnectFailed { endpoint: key([10, 0, 0, 1], 81), reason }
        );
    }
    let est = SockInfo { established_ns: S, ..active };
    t.apply(&event(event_kind::OPENED, 9, S, est, 0));
    assert_eq!(
        t.apply(&event(event_kind::CLOSED, 9, 2 * S, told(est), errno::ECONNRESET)),
        Outcome::Closed { reset: Some(key([10, 0, 0, 1], 81)) }
    );
    // A passive connection reset by its client is no connect failure.
    let p = passive(1, 3);
    t.apply(&event(event_kind::OPENED, 10, S, p, 0));
    assert_eq!(
        t.apply(&event(event_kind::CLOSED, 10, 2 * S, told(p), errno::ECONNRESET)),
        Outcome::Closed { reset: None }
    );
}

#[test]
fn listeners_belong_to_their_process_and_the_table_can_be_reloaded() {
    let mut t = Tracker::default();
    let l = SockInfo { owner: owner(42), addrs: addrs(1, 80, 0, 0), state: 10, ..Default::default() };
    t.apply(&event(event_kind::LISTEN, 5, S, l, 0));
    t.apply(&event(event_kind::OPENED, 1, S, passive(42, 2), 0));
    let p = by_process(&t);
    assert_eq!((p[0].connections, p[0].listeners.clone()), (1, vec!["10.0.0.1:80".to_owned()]));

    // After lost events: the kernel's table wins; entries still in the
    // handshake are not connections yet, and those not told of yet (nor
    // closing) come with a later sweep.
    let half_open = SockInfo { established_ns: 0, ..told(passive(42, 4)) };
    let untold = passive(42, 6);
    let closing = SockInfo { announce: announce::OPEN | announce::CLOSING, ..passive(42, 7) };
    t.replace([(2, told(passive(42, 3))), (3, told(passive(43, 5))), (4, half_open), (6, untold), (7, closing)]);
    assert_eq!(t.len(), 2);
    assert_eq!(by_process(&t).iter().map(|p| (p.owner.tgid, p.connections)).collect::<Vec<_>>(), [(42, 1), (43, 1)]);
    t.apply(&event(event_kind::LISTEN_CLOSED, 5, S, l, 0));
    assert!(by_process(&t).iter().all(|p| p.listeners.is_empty()));
}

#[test]
fn listeners_open_before_the_programs_stay_until_the_kernel_reports_their_close() {
    let mut t = Tracker::default();
    let listener = |tgid, port| crate::listening::Listener {
        key: EndpointKey { pad: 4_026_531_840, ..key([10, 0, 0, 1], port) },
        owner: owner(tgid),
        inode: u64::from(tgid) << 16 | u64::from(port),
    };
    t.add_preexisting(&[listener(42, 80), listener(42, 443), listener(43, 80)]);
    let listening = |t: &Tracker| by_process(t).into_iter().map(|p| (p.owner.tgid, p.listeners)).collect::<Vec<_>>();
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(listening(&t), [(42, names(&["10.0.0.1:443", "10.0.0.1:80"])), (43, names(&["10.0.0.1:80"]))]);
    // The kernel reports the close of one of them with the owner it was
    // given and a socket address the mirror never heard of.
    let closed = SockInfo { owner: owner(42), addrs: addrs(1, 80, 0, 0), state: 7, ..Default::default() };
    t.apply(&event(event_kind::LISTEN_CLOSED, 0xffff_8880_0000_1000, S, closed, 0));
    assert_eq!(listening(&t), [(42, names(&["10.0.0.1:443"])), (43, names(&["10.0.0.1:80"]))]);
    // A close the mirror knows by its address leaves them alone.
    let l = SockInfo { owner: owner(43), addrs: addrs(1, 8080, 0, 0), state: 10, ..Default::default() };
    t.apply(&event(event_kind::LISTEN, 9, S, l, 0));
    t.apply(&event(event_kind::LISTEN_CLOSED, 9, S, SockInfo { owner: owner(43), ..closed }, 0));
    assert_eq!(listening(&t), [(42, names(&["10.0.0.1:443"])), (43, names(&["10.0.0.1:80"]))]);
}

#[test]
fn connections_without_an_owner_take_the_one_found_holding_their_socket() {
    let mut t = Tracker::default();
    let unowned = |remote| SockInfo { owner: Owner::default(), close_wait_ns: 2 * S, state: 8, ..passive(0, remote) };
    let with_inode = |kind, skaddr, info, inode| ConnEvent { inode, ..event(kind, skaddr, 2 * S, info, 0) };
    t.apply(&with_inode(event_kind::CLOSE_WAIT, 1, unowned(3), 501));
    t.apply(&with_inode(event_kind::CLOSE_WAIT, 2, unowned(4), 502));
    t.apply(&with_inode(event_kind::CLOSE_WAIT, 3, unowned(5), 503));
    // An owned connection's inode is not wanted.
    t.apply(&with_inode(event_kind::OPENED, 4, passive(42, 6), 504));
    let mut wanted = t.unowned();
    wanted.sort_unstable();
    assert_eq!(wanted, [(1, 501), (2, 502), (3, 503)]);
    t.adopt(1, 501, Some(owner(77)));
    // Another socket at the address meanwhile: not this one's owner.
    t.adopt(2, 999, Some(owner(78)));
    // Not found: not looked for again.
    t.adopt(3, 503, None);
    let mut wanted = t.unowned();
    wanted.sort_unstable();
    assert_eq!(wanted, [(2, 502)]);
    let by_pid: Vec<(u32, u64)> = close_wait_by_process(&t).iter().map(|p| (p.owner.tgid, p.close_wait)).collect();
    assert_eq!(by_pid, [(0, 2), (77, 1)]);
    // A rebuild from the kernel's table keeps the owner found, for the
    // same connection only, and what is still to look up.
    let told =
        |info: SockInfo| SockInfo { announce: announce::ESTABLISHED | announce::OPEN | announce::CLOSE_WAIT, ..info };
    t.replace([
        (1, told(unowned(3))),
        (2, told(unowned(4))),
        (3, told(SockInfo { established_ns: 9 * S, ..unowned(5) })),
    ]);
    let by_pid: Vec<(u32, u64)> = close_wait_by_process(&t).iter().map(|p| (p.owner.tgid, p.close_wait)).collect();
    assert_eq!(by_pid, [(0, 2), (77, 1)]);
    assert_eq!(t.unowned(), [(2, 502)]);
    // Closed: nothing left to look up.
    t.apply(&event(event_kind::CLOSED, 2, 3 * S, told(unowned(4)), 0));
    assert!(t.unowned().is_empty());
}

#[test]
fn connections_in_close_wait_at_start_stay_until_the_kernel_tells_of_their_inode() {
    let mut t = Tracker::default();
    let held = |inode, tgid| crate::listening::Held {
        addrs: addrs(1, 80, 2, 40000),
        direction: direction::PASSIVE,
        owner: owner(tgid),
        inode,
    };
    t.add_close_waiting(&[held(7001, 42), held(7002, 42), held(7003, 43)], 5 * S);
    let waiting = |t: &Tracker| {
        close_wait_by_process(t)
            .iter()
            .map(|p| (p.owner.tgid, p.close_wait, p.oldest_close_wait_ns))
            .collect::<Vec<_>>()
    };
    assert_eq!(waiting(&t), [(42, 2, 5 * S), (43, 1, 5 * S)]);
    // The kernel tells of one leaving CLOSE_WAIT by its inode (its address
    // is one the mirror never heard of), and of another closing at once.
    let left = SockInfo { state: 9, ..Default::default() };
    t.apply(&ConnEvent { inode: 7001, ..event(event_kind::CLOSE_WAIT_LEFT, 0xffff_8880_0000_2000, 6 * S, left, 0) });
    let closed = SockInfo { state: 7, ..Default::default() };
    t.apply(&ConnEvent { inode: 7003, ..event(event_kind::CLOSED, 0xffff_8880_0000_3000, 6 * S, closed, 0) });
    assert_eq!(waiting(&t), [(42, 1, 5 * S)]);
    assert_eq!(t.len(), 1, "nothing added for the addresses the kernel named");
    // A rebuild from the kernel's table (which never held it) keeps it.
    t.replace([(0xffff_8880_0000_4000, told(passive(44, 9)))]);
    assert_eq!(waiting(&t), [(42, 1, 5 * S)]);
    assert_eq!(t.len(), 2);
}

#[test]
fn the_close_wait_index_follows_every_change() {
    let mut t = Tracker::default();
    for (skaddr, tgid) in [(1, 42), (2, 42), (3, 43)] {
        t.apply(&event(event_kind::OPENED, skaddr, S, passive(tgid, u8::try_from(skaddr).expect("small")), 0));
    }
    assert!(close_wait_by_endpoint(&t).is_empty());
    assert!(close_wait_by_process(&t).is_empty());

    for (skaddr, at) in [(1, 5), (2, 3), (3, 4)] {
        let info = SockInfo { close_wait_ns: at * S, state: 8, ..passive(if skaddr == 3 { 43 } else { 42 }, 2) };
        t.apply(&event(event_kind::CLOSE_WAIT, skaddr, at * S, info, 0));
    }
    assert_eq!(close_wait_by_endpoint(&t)["10.0.0.1:80"], (3, 3, 3 * S));
    let p = close_wait_by_process(&t);
    let seen: Vec<_> = p.iter().map(|p| (p.owner.tgid, p.close_wait, p.oldest_close_wait_ns)).collect();
    assert_eq!(seen, [(42, 2, 3 * S), (43, 1, 4 * S)]);

    // Leaving CLOSE_WAIT, closing, and a rebuild from the kernel's table
    // all keep the index right.
    t.apply(&event(event_kind::CLOSE_WAIT_LEFT, 2, 6 * S, SockInfo { state: 9, ..passive(42, 2) }, 0));
    t.apply(&event(event_kind::CLOSED, 3, 7 * S, told(passive(43, 2)), 0));
    assert_eq!(close_wait_by_endpoint(&t)["10.0.0.1:80"], (1, 1, 5 * S));
    assert_eq!(t.len(), 2);
    // A rebuild counts a socket in CLOSE_WAIT only once it was told of.
    let cw = |at| SockInfo { close_wait_ns: at * S, announce: announce::OPEN | announce::CLOSE_WAIT, ..passive(44, 2) };
    let cw_untold = SockInfo { close_wait_ns: 9 * S, ..told(passive(44, 4)) };
    t.replace([(9, cw(8)), (10, told(passive(44, 3))), (11, cw_untold)]);
    assert_eq!(t.len(), 3);
    let p = close_wait_by_process(&t);
    assert_eq!((p.len(), p[0].owner.tgid, p[0].close_wait), (1, 44, 1));
    assert_eq!(by_endpoint(&t)["10.0.0.1:80"], (3, 1, 8 * S));
}
