use std::{
    net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::Path,
};

use super::*;

// Copied from this machine's tables with a listener on 127.0.0.2, one on
// `::1`, one on `::ffff:127.0.0.1`, and an established connection; the
// last line is that connection again as it shows in CLOSE_WAIT.
const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 37 1 0000000089308071 100 0 0 10 0
   1: 0200007F:E359 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 245965750 1 00000000998d8739 100 0 0 10 0
   2: 0100007F:26E6 0100007F:A2C4 01 00000000:00000000 00:00000000 00000000     0        0 245965751 1 00000000998d8740 20 4 30 10 -1
   3: 0100007F:26E6 0100007F:A2C4 08 00000000:00000000 00:00000000 00000000     0        0 245965752 1 00000000998d8741 20 4 30 10 -1
";
const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:998B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 245965749 1 00000000e7d144ae 100 0 0 10 0
   1: 00000000000000000000000001000000:DC1F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 245965748 1 00000000a66e218f 100 0 0 10 0
";

fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&a.octets());
    addr
}

fn listening(family: u16, saddr: [u8; 16], sport: u16, inode: u64) -> Socket {
    Socket { state: TCP_LISTEN, addrs: FlowAddrs { saddr, family, sport, ..FlowAddrs::default() }, inode }
}

#[test]
fn listening_and_close_wait_sockets_of_both_tables_are_read_as_the_kernel_stores_them() {
    let localhost = v4(Ipv4Addr::LOCALHOST);
    let close_wait = Socket {
        state: TCP_CLOSE_WAIT,
        addrs: FlowAddrs { saddr: localhost, daddr: localhost, family: AF_INET, sport: 9958, dport: 41668, pad: 0 },
        inode: 245_965_752,
    };
    assert_eq!(
        parse_table(TCP, AF_INET),
        [
            listening(AF_INET, [0; 16], 2024, 37),
            listening(AF_INET, v4(Ipv4Addr::new(127, 0, 0, 2)), 58201, 245_965_750),
            close_wait,
        ],
        "the established connection is neither"
    );
    assert_eq!(
        parse_table(TCP6, AF_INET6),
        [
            listening(AF_INET6, Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 1).octets(), 39307, 245_965_749),
            listening(AF_INET6, Ipv6Addr::LOCALHOST.octets(), 56351, 245_965_748),
        ]
    );
}

#[test]
fn malformed_lines_are_skipped() {
    let text = "header\n 0: 0100007F:ZZZZ 00000000:0000 0A x x x 0 0 12\n 1: 0100:0050 00000000:0000 0A x x x 0 0 13\n \
                2: 0100007F:0050 00000000:0000 0A x x x 0 0\n 3: 0100007F:0050 00000000:0000 0A x x x 0 0 14\n \
                4: 0100007F:0050 00000000:0000 ZZ x x x 0 0 15\n 5: 0100007F:0050 00000000 08 x x x 0 0 16\n";
    assert_eq!(parse_table(text, AF_INET), [listening(AF_INET, v4(Ipv4Addr::LOCALHOST), 80, 14)]);
    assert!(parse_table(TCP, 99).is_empty(), "an unknown family");
}

#[test]
fn descriptor_links_and_cgroup_files_are_read() {
    assert_eq!(socket_inode("socket:[245965750]"), Some(245_965_750));
    assert_eq!(socket_inode("pipe:[12]"), None);
    assert_eq!(socket_inode("/dev/null"), None);
    assert_eq!(cgroup_path("0::/system.slice/x.service\n"), Some("/system.slice/x.service"));
    assert_eq!(cgroup_path("1:name=systemd:/a\n0::/../../kubepods.slice\n"), Some("/../../kubepods.slice"));
    assert_eq!(cgroup_path("1:cpu:/a\n"), None);
}

#[test]
fn cgroup_paths_seen_from_another_cgroup_namespace_are_matched_by_their_tail() {
    let root = std::env::temp_dir().join(format!("governor-listening-{}", std::process::id()));
    let pod = root.join("kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope");
    std::fs::create_dir_all(&pod).expect("mkdir");
    std::fs::create_dir_all(root.join("system.slice/cri-containerd-abc.scope.other")).expect("mkdir");
    let id = std::fs::metadata(&pod).expect("stat").ino();
    let mut owners = Owners::new(&root);
    assert_eq!(owners.cgroup_id("/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope"), id);
    assert_eq!(owners.cgroup_id("/../../kubepods-pod1.slice/cri-containerd-abc.scope"), id);
    assert_eq!(owners.cgroup_id("/../cri-containerd-abc.scope"), id, "one directory ends so");
    assert_eq!(owners.cgroup_id("/../missing.scope"), 0);
    assert_eq!(owners.cgroup_id("/../.."), 0, "no tail to match");
    std::fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
fn this_process_is_found_holding_its_own_listeners() {
    let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind v4");
    let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind v6");
    // Not a listener: neither end of it is found.
    let client = TcpStream::connect(v4.local_addr().expect("addr")).expect("connect");
    let scan = scan(Path::new("/proc"), Path::new("/sys/fs/cgroup"));
    let netns = std::fs::metadata("/proc/self/ns/net").expect("own namespace").ino();
    let pid = std::process::id();
    let mine: Vec<&Listener> = scan.listeners.iter().filter(|l| l.owner.tgid == pid).collect();
    let find = |family, port| mine.iter().find(|l| l.key.family == family && l.key.port == port);
    let l4 = find(AF_INET, v4.local_addr().expect("addr").port()).expect("the IPv4 listener");
    assert_eq!(l4.key.addr, super::tests::v4(Ipv4Addr::LOCALHOST));
    assert_eq!(u64::from(l4.key.pad), netns);
    assert_eq!(l4.owner.pid, pid);
    let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
    let name = comm.trim_end().as_bytes();
    assert_eq!(&l4.owner.comm[..name.len()], name);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    let path = cgroup_path(&cgroup).expect("cgroup v2 path");
    let expected = std::fs::metadata(Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'))).expect("stat");
    assert_eq!(l4.owner.cgroup_id, expected.ino());
    let l6 = find(AF_INET6, v6.local_addr().expect("addr").port()).expect("the IPv6 listener");
    assert_eq!(l6.key.addr, Ipv6Addr::LOCALHOST.octets());
    let client_port = client.local_addr().expect("addr").port();
    assert!(mine.iter().all(|l| l.key.port != client_port), "a connection is not a listener: {mine:?}");
}

#[test]
fn network_namespaces_bound_to_files_are_read_from_mountinfo() {
    // Lines as this machine's kernel writes them (`ip netns add`), with a
    // mount point that needs its escapes undone, one that is not UTF-8, a
    // mount namespace bound the same way (not a network one) and an
    // ordinary mount.
    let mountinfo = b"48 47 0:4 net:[4026532178] /run/netns/zz-test rw shared:2 - nsfs nsfs rw\n\
                      49 47 0:4 net:[4026532300] /run/netns/with\\040space rw shared:2 - nsfs nsfs rw\n\
                      51 47 0:4 net:[4026532302] /run/netns/caf\xe9 rw shared:2 - nsfs nsfs rw\n\
                      50 47 0:4 mnt:[4026532301] /run/mnt-ns rw shared:2 - nsfs nsfs rw\n\
                      24 1 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw\n\
                      garbage\n";
    let not_utf8: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(b"/run/netns/caf\xe9");
    assert_eq!(
        bound_namespaces(mountinfo),
        [
            std::path::PathBuf::from("/run/netns/zz-test"),
            std::path::PathBuf::from("/run/netns/with space"),
            std::path::PathBuf::from(not_utf8),
        ]
    );
}
