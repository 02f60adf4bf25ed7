//! Policies from a watched etcd key (`etcd.policy_key`), against a real
//! etcd: put in force with the file's, a bad value refused, a deleted key
//! takes its policies away; the watch's gauge while etcd is away.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use governor_tests::{
    Etcd, Governor, Netns,
    registry::{wait_series, wait_series_within},
    require_root,
};

const KEY: &str = "/governor/v1/config/policies";
const EPERM: i32 = nix::errno::Errno::EPERM as i32;

fn block(name: &str, port: u16) -> String {
    format!("[[policies]]\nname = \"{name}\"\nkind = \"block\"\ndestination = \"10.235.11.1\"\nports = \"{port}\"\n")
}

#[test]
fn policies_from_an_etcd_key_are_put_in_force_and_a_bad_value_keeps_the_ones_in_force() {
    require_root();
    let etcd = Etcd::start();
    let ns = Netns::new("etcdpolicy");
    ns.add_address("10.235.11.1/32");
    etcd.put(KEY, &block("from-etcd", 20150));
    let file = r#"[{ name = "from-file", kind = "block", destination = "10.235.11.1", ports = "20151" }]"#;
    let mut gov = Governor::start_with(&[
        ("etcd.endpoints", &format!("[\"{}\"]", etcd.url())),
        ("etcd.policy_key", &format!("\"{KEY}\"")),
        ("policies", file),
    ]);
    let info = |name: &str| [("policy", name.to_owned()), ("kind", "block".to_owned())];
    let wait_info = |gov: &mut Governor, name: &str, want: u64| {
        let labels = info(name);
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        wait_series(gov, "governor_policy_info", &labels, |v| v == want);
    };
    wait_info(&mut gov, "from-etcd", 1);
    let listeners: Vec<TcpListener> = ns.run(|| {
        [20150, 20151]
            .iter()
            .map(|p| TcpListener::bind(SocketAddr::from(([10, 235, 11, 1], *p))).expect("bind"))
            .collect()
    });
    let errno = |ns: &Netns, port: u16| {
        let to = SocketAddr::from(([10, 235, 11, 1], port));
        ns.run(move || TcpStream::connect(to).err().and_then(|e| e.raw_os_error()))
    };
    assert_eq!([errno(&ns, 20150), errno(&ns, 20151)], [Some(EPERM), Some(EPERM)], "both sources in force");

    // A value that is not valid, and one whose name the file already uses:
    // both refused, the policies in force stay.
    etcd.put(KEY, "[[policies]]\nname = \"broken\"\nkind = \"rate_limit\"\ndestination = \"10.235.11.1\"\n");
    wait_series(&mut gov, "governor_config_reload_total", &[("result", "error")], |v| v == 1);
    etcd.put(KEY, &block("from-file", 20150));
    wait_series(&mut gov, "governor_config_reload_total", &[("result", "error")], |v| v == 2);
    assert!(gov.log().contains("policy `from-file`, field `name`: another policy has this name"), "{}", gov.log());
    assert_eq!([errno(&ns, 20150), errno(&ns, 20151)], [Some(EPERM), Some(EPERM)]);

    // The key deleted: its policy goes, the file's stays.
    etcd.delete(KEY);
    wait_info(&mut gov, "from-etcd", 0);
    assert_eq!([errno(&ns, 20150), errno(&ns, 20151)], [None, Some(EPERM)]);
    assert_eq!(gov.value(&governor_tests::series("governor_config_reload_total", &[("result", "ok")])), 2);
    drop(listeners);
}

#[test]
fn the_policy_key_watch_is_a_gauge_that_drops_while_etcd_is_down_and_comes_back_with_it() {
    require_root();
    let mut etcd = Etcd::start();
    let ns = Netns::new("etcdwatch");
    ns.add_address("10.235.12.1/32");
    let mut gov = Governor::start_with(&[
        ("etcd.endpoints", &format!("[\"{}\"]", etcd.url())),
        ("etcd.policy_key", &format!("\"{KEY}\"")),
    ]);
    wait_series(&mut gov, "governor_etcd_policy_key_watched", &[], |v| v == 1);
    etcd.stop();
    wait_series(&mut gov, "governor_etcd_policy_key_watched", &[], |v| v == 0);
    assert!(gov.log().contains("etcd policy key: watch failed"), "{}", gov.log());
    etcd.restart();
    // Back within the watch's back-off (at most 30 s), and watching: a
    // policy put now is put in force.
    wait_series_within(&mut gov, Duration::from_mins(1), "governor_etcd_policy_key_watched", &[], |v| v == 1);
    etcd.put(KEY, &block("after-restart", 20152).replace("10.235.11.1", "10.235.12.1"));
    wait_series(&mut gov, "governor_policy_info", &[("policy", "after-restart"), ("kind", "block")], |v| v == 1);
    let listener = ns.run(|| TcpListener::bind(SocketAddr::from(([10, 235, 12, 1], 20152))).expect("bind"));
    let to = SocketAddr::from(([10, 235, 12, 1], 20152));
    assert_eq!(ns.run(move || TcpStream::connect(to).err().and_then(|e| e.raw_os_error())), Some(EPERM));
    drop(listener);
}

#[test]
fn without_a_policy_key_there_is_no_watch_gauge() {
    require_root();
    let mut gov = Governor::start();
    let (_, metrics) = gov.get("/metrics").expect("metrics");
    assert!(metrics.contains("governor_tcp_connections_opened_total"), "the page is governor's");
    assert!(!metrics.contains("governor_etcd_policy_key_watched"), "no policy key, no gauge (and no alert)");
}
