//! Full connect/accept/close cycles inside a test namespace move the host's
//! transition counters by exactly the number of cycles. (The scraper uses one
//! kept-alive connection, opened before the first reading; the integration
//! tests run one at a time.)

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use governor_tests::{Governor, Netns, require_root, series};

const CYCLES: u64 = 50;

#[test]
fn handshakes_are_counted_exactly() {
    require_root();
    let ns = Netns::new("trans");
    ns.add_address("10.202.0.1/32");
    let mut gov = Governor::start();
    let active = series("governor_tcp_state_transitions_total", &[("from", "SYN_SENT"), ("to", "ESTABLISHED")]);
    let passive = series("governor_tcp_state_transitions_total", &[("from", "SYN_RECV"), ("to", "ESTABLISHED")]);
    // One more poll so that the baseline includes everything before now.
    let _ = gov.settle("governor_ebpf_programs_attached", 4);
    let (active_before, passive_before) = (gov.value(&active), gov.value(&passive));

    let addr: SocketAddr = "10.202.0.1:20010".parse().expect("address");
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

    assert_eq!(gov.settle(&active, active_before + CYCLES) - active_before, CYCLES, "SYN_SENT -> ESTABLISHED");
    assert_eq!(gov.settle(&passive, passive_before + CYCLES) - passive_before, CYCLES, "SYN_RECV -> ESTABLISHED");
}
