//! How kernel values are shown in metric labels.

use std::net::{Ipv4Addr, Ipv6Addr};

use governor_common::{AF_INET, AF_INET6, EndpointKey};

/// Kernel TCP state names without the `TCP_` prefix
/// (`include/net/tcp_states.h`).
pub fn tcp_state_name(state: u32) -> std::borrow::Cow<'static, str> {
    const NAMES: [&str; 14] = [
        "UNKNOWN_0",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
        "BOUND_INACTIVE",
    ];
    match usize::try_from(state).ok().and_then(|i| NAMES.get(i)) {
        Some(name) => (*name).into(),
        None => format!("UNKNOWN_{state}").into(),
    }
}

/// The label of a collapsed client-side port.
pub const EPHEMERAL_PORT: &str = "ephemeral";

/// `ip:port`, `[v6]:port`; IPv4-mapped IPv6 addresses are shown as IPv4 so
/// that dual-stack sockets and IPv4 sockets share one series. Port 0 is a
/// collapsed ephemeral port.
pub fn endpoint(key: &EndpointKey) -> String {
    endpoint_of(key.family, &key.addr, key.port)
}

/// `active` (this host connected) or `passive` (it accepted), from
/// `governor_common::direction`.
pub fn direction_name(direction: u8) -> &'static str {
    if direction == governor_common::direction::PASSIVE { "passive" } else { "active" }
}

pub fn endpoint_of(family: u16, addr: &[u8; 16], port: u16) -> String {
    let port = if port == 0 { EPHEMERAL_PORT.to_owned() } else { port.to_string() };
    match family {
        AF_INET => format!("{}:{port}", Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*addr);
            match v6.to_ipv4_mapped() {
                Some(v4) => format!("{v4}:{port}"),
                None => format!("[{v6}]:{port}"),
            }
        }
        other => format!("family{other}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(family: u16, addr: [u8; 16], port: u16) -> EndpointKey {
        EndpointKey { addr, port, family, pad: 0 }
    }

    #[test]
    fn state_names() {
        assert_eq!(tcp_state_name(1), "ESTABLISHED");
        assert_eq!(tcp_state_name(2), "SYN_SENT");
        assert_eq!(tcp_state_name(8), "CLOSE_WAIT");
        assert_eq!(tcp_state_name(12), "NEW_SYN_RECV");
        assert_eq!(tcp_state_name(15), "UNKNOWN_15");
    }

    #[test]
    fn endpoints() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(endpoint(&key(AF_INET, v4, 8080)), "10.0.0.1:8080");
        assert_eq!(endpoint(&key(AF_INET, v4, 0)), "10.0.0.1:ephemeral");
        let v6 = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(endpoint(&key(AF_INET6, v6, 443)), "[fd00::1]:443");
        let mapped = "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(endpoint(&key(AF_INET6, mapped, 80)), "192.0.2.7:80");
        assert_eq!(endpoint(&key(7, v4, 1)), "family7:1");
    }
}
