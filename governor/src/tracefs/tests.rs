use governor_common::Span;

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tracefs");

fn fixture(name: &str) -> String {
    fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture")
}

fn tp(hook: Hook) -> Tracepoint {
    *TRACEPOINTS.iter().find(|t| t.hook == hook).expect("known hook")
}

#[test]
fn parses_every_field_of_this_kernels_state_tracepoint() {
    let fields = parse_format("sock:inet_sock_set_state", &fixture("linux-6.18-inet_sock_set_state.format")).unwrap();
    let names: Vec<_> = fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "common_type",
            "common_flags",
            "common_preempt_count",
            "common_pid",
            "skaddr",
            "oldstate",
            "newstate",
            "sport",
            "dport",
            "family",
            "protocol",
            "saddr",
            "daddr",
            "saddr_v6",
            "daddr_v6"
        ]
    );
    let skaddr = &fields[4];
    assert_eq!((skaddr.c_type.as_str(), skaddr.offset, skaddr.size), ("const void *", 8, 8));
    let saddr_v6 = fields.iter().find(|f| f.name == "saddr_v6").unwrap();
    assert_eq!((saddr_v6.c_type.as_str(), saddr_v6.offset, saddr_v6.size), ("__u8 [16]", 40, 16));
}

#[test]
fn state_layout_of_linux_6_18() {
    let fields = parse_format("x", &fixture("linux-6.18-inet_sock_set_state.format")).unwrap();
    let l = layout_for(&tp(Hook::State), &fields).unwrap();
    assert_eq!((l.oldstate, l.newstate, l.protocol), (16, 20, 30));
    assert_eq!((l.sport, l.dport, l.family, l.ports_be), (24, 26, 28, 0));
    assert_eq!((l.saddr4, l.daddr4, l.saddr6, l.daddr6), (32, 36, 40, 56));
    assert_eq!((l.reason, l.state), (TpLayout::ABSENT, TpLayout::ABSENT));
    assert_eq!(l.skaddr, 8);
    // skaddr..daddr, family..daddr, saddr_v6..daddr_v6.
    assert_eq!(l.primary, Span { start: 8, len: 32 });
    assert_eq!(l.addr, Span { start: 24, len: 16 });
    assert_eq!(l.addr6, Span { start: 40, len: 32 });
}

#[test]
fn send_reset_of_linux_6_18_uses_sockaddr_arrays() {
    let fields = parse_format("x", &fixture("linux-6.18-tcp_send_reset.format")).unwrap();
    let l = layout_for(&tp(Hook::ResetSent), &fields).unwrap();
    // saddr[28] at 32, daddr[28] at 60: family, port (big-endian), addresses.
    assert_eq!((l.family, l.sport, l.dport, l.ports_be), (32, 34, 62, 1));
    assert_eq!((l.saddr4, l.daddr4, l.saddr6, l.daddr6), (36, 64, 40, 68));
    assert_eq!((l.state, l.reason), (24, 28));
    // state at 24 to the end of daddr's IPv4 address (64 + 4).
    assert_eq!(l.primary, Span { start: 24, len: 44 });
    assert_eq!(l.addr, Span { start: 32, len: 36 });
    assert_eq!(l.addr6, Span { start: 40, len: 44 });
}

#[test]
fn fields_too_far_apart_to_copy_at_once_are_refused() {
    let text = fixture("linux-6.18-tcp_receive_reset.format").replace("offset:46;\tsize:16;", "offset:150;\tsize:16;");
    let fields = parse_format("tcp:tcp_receive_reset", &text).unwrap();
    let err = layout_for(&tp(Hook::ResetReceived), &fields).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tracepoint tcp:tcp_receive_reset: the IPv6 address fields span 136 bytes, more than the 128 governor copies at once"
    );
}

#[test]
fn receive_reset_and_retransmit_of_linux_6_18() {
    let fields = parse_format("x", &fixture("linux-6.18-tcp_receive_reset.format")).unwrap();
    let l = layout_for(&tp(Hook::ResetReceived), &fields).unwrap();
    assert_eq!((l.sport, l.dport, l.family, l.saddr4, l.daddr4, l.saddr6, l.daddr6), (16, 18, 20, 22, 26, 30, 46));

    let fields = parse_format("x", &fixture("linux-6.18-tcp_retransmit_skb.format")).unwrap();
    let l = layout_for(&tp(Hook::Retransmit), &fields).unwrap();
    assert_eq!((l.sport, l.dport, l.family, l.saddr4, l.daddr4, l.saddr6, l.daddr6), (28, 30, 32, 34, 38, 42, 58));
}

/// Before 6.10 `tcp_send_reset` used the split form and had no reason.
#[test]
fn send_reset_in_the_older_split_form() {
    let fields = parse_format("x", &fixture("split-form-tcp_send_reset.format")).unwrap();
    let l = layout_for(&tp(Hook::ResetSent), &fields).unwrap();
    assert_eq!((l.sport, l.dport, l.family, l.ports_be), (28, 30, 32, 0));
    assert_eq!((l.saddr4, l.daddr4, l.saddr6, l.daddr6), (34, 38, 42, 58));
    assert_eq!((l.state, l.reason), (24, TpLayout::ABSENT));
}

#[test]
fn missing_field_names_tracepoint_and_field() {
    let text = fixture("linux-6.18-inet_sock_set_state.format").replace("newstate", "nstate");
    let fields = parse_format("sock:inet_sock_set_state", &text).unwrap();
    let err = layout_for(&tp(Hook::State), &fields).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tracepoint sock:inet_sock_set_state has no field `newstate` (this kernel's layout is not supported)"
    );
}

#[test]
fn wrong_size_is_an_error() {
    let text = fixture("linux-6.18-tcp_receive_reset.format").replace("offset:20;\tsize:2;", "offset:20;\tsize:4;");
    let fields = parse_format("x", &text).unwrap();
    let err = layout_for(&tp(Hook::ResetReceived), &fields).unwrap_err();
    assert!(matches!(err, LayoutError::WrongSize { field: "family", expected: 2, found: 4, .. }), "{err}");
}

#[test]
fn malformed_lines_are_errors_with_line_numbers() {
    for bad in [
        "format:\n\tfield:int oldstate;\toffset:16;\n",
        "format:\n\tfield:int oldstate;\toffset:x;\tsize:4;\n",
        "format:\n\tfield:;\toffset:16;\tsize:4;\n",
        "format:\n\tfield:int 9x;\toffset:16;\tsize:4;\n",
    ] {
        let err = parse_format("sock:x", bad).unwrap_err();
        assert!(matches!(err, LayoutError::Malformed { line: 2, .. }), "{bad:?}: {err}");
    }
}

#[test]
fn empty_format_misses_the_first_address_field() {
    let fields = parse_format("tcp:tcp_receive_reset", "name: x\nformat:\n").unwrap();
    assert!(fields.is_empty());
    let err = layout_for(&tp(Hook::ResetReceived), &fields).unwrap_err();
    assert!(matches!(err, LayoutError::MissingField { field: "family", .. }), "{err}");
}

#[test]
fn reads_the_real_layouts_from_a_tracefs_tree() {
    let dir = std::env::temp_dir().join(format!("governor-tracefs-{}", std::process::id()));
    for t in &TRACEPOINTS {
        let d = dir.join("events").join(t.category).join(t.name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("format"), fixture(&format!("linux-6.18-{}.format", t.name))).unwrap();
    }
    let config = read_layouts(&dir).unwrap();
    assert_eq!(config.tcp_send_reset.reason, 28);
    assert_eq!(config.inet_sock_set_state.newstate, 20);
    fs::remove_dir_all(dir.join("events/tcp/tcp_retransmit_skb")).unwrap();
    let err = read_layouts(&dir).unwrap_err();
    assert!(err.to_string().starts_with("tracepoint tcp:tcp_retransmit_skb is not available"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}
