//! `cgroup/connect4`: outbound admission for IPv4 TCP connects
//! (`admission.rs`). Attached at the cgroup v2 root only when policies
//! exist.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use governor_common::AF_INET;

use crate::admission::{ALLOW, Destination, admit, words};

const IPPROTO_TCP: u32 = 6;

#[cgroup_sock_addr(connect4)]
pub fn gov_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: fields of the context the kernel passed in.
    let (protocol, ip, port) = unsafe {
        let a = ctx.sock_addr;
        (
            core::ptr::read_volatile(&raw const (*a).protocol),
            core::ptr::read_volatile(&raw const (*a).user_ip4),
            core::ptr::read_volatile(&raw const (*a).user_port),
        )
    };
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // Both are in network order: the address's bytes in memory are the
    // address bytes, the port sits in the low 16 bits.
    #[expect(clippy::cast_possible_truncation, reason = "the port is the low half")]
    let port = u16::from_be(port as u16);
    admit(&ctx, Destination { addr: [words(ip, 0), 0], family: AF_INET, port })
}
