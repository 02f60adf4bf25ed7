//! The tracepoints governor's BTF tracepoint (`tp_btf`) programs attach
//! to, and the kernel configuration they need, all from the running
//! kernel's BTF.
//!
//! BTF tracepoints hand a program the tracepoint's own arguments (the
//! socket, the states) instead of a record the kernel formats on every hit,
//! which is most of what a classic tracepoint costs, and the verifier knows
//! their types: the programs load the socket's fields directly at the
//! offsets resolved here. The arguments are checked against the
//! `btf_trace_<name>` prototype, so a kernel that passes something else is
//! refused at start-up instead of misread.

use governor_common::KernelConfig;

use crate::btf::{self, Btf, BtfError, LayoutError};

/// The tracepoints governor attaches to.
pub const TRACEPOINTS: [Tracepoint; 4] = [
    Tracepoint {
        category: "sock",
        name: "inet_sock_set_state",
        program: "gov_state",
        args: &["struct sock *", "int", "int"],
        optional: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_send_reset",
        program: "gov_rst_sent",
        args: &["struct sock *", "struct sk_buff *"],
        // Since Linux 6.10.
        optional: Some(("enum sk_rst_reason", KernelConfig::RESET_REASON_ARG)),
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_receive_reset",
        program: "gov_rst_recv",
        args: &["struct sock *"],
        optional: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_retransmit_skb",
        program: "gov_retrans",
        args: &["struct sock *"],
        optional: None,
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracepoint {
    pub category: &'static str,
    pub name: &'static str,
    /// The kernel program attached to it.
    pub program: &'static str,
    /// The leading arguments the program reads, as C types.
    pub args: &'static [&'static str],
    /// An argument after those that some kernels pass, and the
    /// `KernelConfig` flag that tells the program it is there.
    pub optional: Option<(&'static str, u32)>,
}

impl std::fmt::Display for Tracepoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.category, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("tracepoint {tracepoint}: {source} (governor needs Linux 5.15 or later with CONFIG_DEBUG_INFO_BTF)")]
    Btf { tracepoint: String, source: BtfError },
    #[error("tracepoint {tracepoint} passes ({found}) in this kernel, governor reads ({expected}): not supported")]
    Arguments { tracepoint: String, found: String, expected: String },
    #[error("struct sock: {0}")]
    Layout(#[from] LayoutError),
}

/// Checks that `tp` passes the arguments its program reads, first to last
/// (further arguments are fine); `found` is what the kernel's BTF says.
pub fn check_args(tp: &Tracepoint, found: &[String]) -> Result<(), HookError> {
    if found.len() >= tp.args.len() && tp.args.iter().zip(found).all(|(want, got)| want == got) {
        return Ok(());
    }
    Err(HookError::Arguments { tracepoint: tp.to_string(), found: found.join(", "), expected: tp.args.join(", ") })
}

/// Checks one tracepoint against the kernel's BTF; the arguments it passes.
pub fn check(btf: &Btf, tp: &Tracepoint) -> Result<Vec<String>, HookError> {
    let found = btf.tracepoint_args(tp.name).map_err(|source| HookError::Btf { tracepoint: tp.to_string(), source })?;
    check_args(tp, &found)?;
    Ok(found)
}

/// Everything the programs need to know about this kernel: every
/// tracepoint checked, the socket layout, further socket and packet fields
/// (a missing one costs detail, not the start), and whether resets come
/// with the kernel's reason.
pub fn kernel_config(btf: &Btf) -> Result<KernelConfig, HookError> {
    let mut config = KernelConfig::EMPTY;
    for tp in &TRACEPOINTS {
        let args = check(btf, tp)?;
        if let Some((arg, flag)) = tp.optional
            && args.get(tp.args.len()).is_some_and(|a| a == arg)
        {
            config.flags |= flag;
        }
    }
    config.layout = btf::sock_layout(btf)?;
    config.sock = btf::sock_offsets(btf);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use governor_common::SockLayout;

    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn arguments_must_match_from_the_first() {
        let state = &TRACEPOINTS[0];
        assert!(check_args(state, &strings(&["struct sock *", "int", "int"])).is_ok());
        let err = check_args(state, &strings(&["struct sock *", "int"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tracepoint sock:inet_sock_set_state passes (struct sock *, int) in this kernel, governor reads \
             (struct sock *, int, int): not supported"
        );
        assert!(check_args(state, &strings(&["struct sk_buff *", "int", "int"])).is_err());
        // Arguments added at the end (6.17's `err` of tcp_retransmit_skb)
        // do not matter.
        let retransmit = &TRACEPOINTS[3];
        assert!(check_args(retransmit, &strings(&["struct sock *", "struct sk_buff *", "int"])).is_ok());
    }

    #[test]
    fn the_running_kernel_is_understood() {
        // Every kernel governor supports has BTF (checked at start-up).
        let btf = Btf::read(Path::new(btf::VMLINUX)).unwrap();
        let config = kernel_config(&btf).unwrap();
        // Linux 6.18 passes the reset reason.
        assert_eq!(config.flags & KernelConfig::RESET_REASON_ARG, KernelConfig::RESET_REASON_ARG);
        let l = config.layout;
        assert_eq!(l.ports_be, SockLayout::DPORT_BE);
        // sock_common: the address pair first, then the ports, then family
        // and state; the IPv6 addresses later; sk_protocol in struct sock.
        assert_eq!((l.daddr4, l.saddr4, l.dport, l.sport, l.family, l.state), (0, 4, 12, 14, 16, 18));
        assert!(l.saddr6 > l.daddr6 && l.daddr6 > l.state);
        assert!(l.protocol > 100);
        // What a tp_btf program names as its tracepoint.
        assert!(btf.tracepoint_type_id("inet_sock_set_state").unwrap() > 0);
        assert!(btf.tracepoint_type_id("no_such_tracepoint").is_err());
        assert!(config.sock.skb_head != governor_common::SockOffsets::ABSENT);
        // The network namespace of a socket, for the listeners' keys.
        assert!(config.sock.skc_net != governor_common::SockOffsets::ABSENT);
        assert!(config.sock.net_inum != governor_common::SockOffsets::ABSENT);
        // The inode of a socket, for owners found in /proc.
        assert!(config.sock.sk_socket != governor_common::SockOffsets::ABSENT);
        assert!(config.sock.socket_ino > 0 && config.sock.socket_ino != governor_common::SockOffsets::ABSENT);
        assert_eq!(
            btf.tracepoint_args("tcp_send_reset").unwrap(),
            strings(&["struct sock *", "struct sk_buff *", "enum sk_rst_reason"])
        );
    }
}
