//! Full connect/accept/close cycles inside a test namespace move the host's
//! transition counters by exactly the number of cycles.
//!
//! The transition counters are host-wide, so any other TCP connection made
//! on the host during the test shows up too. The scraper uses one kept-alive
//! connection opened before the first reading and the integration tests run
//! one at a time; beyond that the test cannot silence the host. So: every
//! attempt must count at least the test's cycles (nothing lost), and at
//! least one of a few attempts must count exactly them (nothing counted
//! twice). A daemon that miscounts fails every attempt.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use governor_tests::{Governor, Netns, require_root, series};

const CYCLES: u64 = 50;
const ATTEMPTS: usize = 3;

/// `CYCLES` orderly connect/accept/close cycles inside `ns`.
fn cycles(ns: &Netns, addr: SocketAddr) {
    let completed = ns.run(move || {
        let listener = TcpListener::bind(addr).expect("bind in namespace");
        let server = thread::spawn(move || {
            for _ in 0..CYCLES {
                let (mut s, _) = listener.accept().expect("accept");
                // Wait for the client's FIN, then close: an orderly close.
                let mut buf = [0u8; 1];
                let _ = s.read(&mut buf);
            }
        });
        let mut done = 0;
        for _ in 0..CYCLES {
            drop(TcpStream::connect(addr).expect("connect in namespace"));
            done += 1;
        }
        server.join().expect("server");
        done
    });
    assert_eq!(completed, CYCLES);
}

#[test]
fn handshakes_are_counted_exactly() {
    require_root();
    let ns = Netns::new("trans");
    ns.add_address("10.202.0.1/32");
    let mut gov = Governor::start();
    let active = series("governor_tcp_state_transitions_total", &[("from", "SYN_SENT"), ("to", "ESTABLISHED")]);
    let passive = series("governor_tcp_state_transitions_total", &[("from", "SYN_RECV"), ("to", "ESTABLISHED")]);

    let mut seen = Vec::new();
    for attempt in 0..ATTEMPTS {
        // One more poll so that the baseline includes everything before now.
        let _ = gov.settle("governor_ebpf_programs_attached", 4);
        let (active_before, passive_before) = (gov.value(&active), gov.value(&passive));
        let port = 20010 + u16::try_from(attempt).expect("few attempts");
        cycles(&ns, SocketAddr::from(([10, 202, 0, 1], port)));
        let a = gov.settle(&active, active_before + CYCLES) - active_before;
        let p = gov.settle(&passive, passive_before + CYCLES) - passive_before;
        assert!(a >= CYCLES && p >= CYCLES, "handshakes lost: SYN_SENT->ESTABLISHED +{a}, SYN_RECV->ESTABLISHED +{p}");
        seen.push((a, p));
        if (a, p) == (CYCLES, CYCLES) {
            break;
        }
        eprintln!("attempt {attempt}: other host traffic during the test: +{a}/+{p} for {CYCLES} cycles; again");
    }
    assert_eq!(seen.last(), Some(&(CYCLES, CYCLES)), "never exactly {CYCLES} in {ATTEMPTS} attempts: {seen:?}");
}
