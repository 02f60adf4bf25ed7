//! An nftables rule inside the test namespace drops SYNs to a listener: the
//! client's SYN is retransmitted, and the retransmits are counted for the
//! listener's endpoint (the remote side of the retransmitting socket).

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use governor_tests::{Governor, Netns, require_root, series};

#[test]
fn dropped_syns_are_counted_as_retransmits_for_the_endpoint() {
    require_root();
    let ns = Netns::new("retx");
    ns.add_address("10.203.0.1/32");
    ns.nft("table inet loss {\n chain input {\n  type filter hook input priority 0; policy accept;\n  tcp dport 20020 tcp flags syn drop\n }\n}\n");
    let mut gov = Governor::start();
    let endpoint = series("governor_endpoint_retransmits_total", &[("endpoint", "10.203.0.1:20020")]);
    assert_eq!(gov.value(&endpoint), 0);

    let addr: SocketAddr = "10.203.0.1:20020".parse().expect("address");
    let outcome = ns.run(move || {
        let _listener = TcpListener::bind(addr).expect("bind in namespace");
        // The first SYN retransmission happens after about one second.
        TcpStream::connect_timeout(&addr, Duration::from_millis(2500)).map(drop).map_err(|e| e.kind())
    });
    assert_eq!(outcome, Err(ErrorKind::TimedOut), "the dropped handshake times out");

    let counted = gov.settle(&endpoint, 1);
    assert!(counted >= 1, "retransmits counted for 10.203.0.1:20020: {counted}");
    assert!(gov.value("governor_tcp_retransmits_total") >= counted, "host total includes the endpoint's");
}
