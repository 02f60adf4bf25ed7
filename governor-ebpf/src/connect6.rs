//! `cgroup/connect6`: outbound admission for IPv6 TCP connects
//! (`admission.rs`). A connect to an IPv4-mapped address (`::ffff:a.b.c.d`)
//! is judged by the IPv4 rules, as the packets will be IPv4.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use governor_common::{AF_INET, AF_INET6};

use crate::admission::{ALLOW, Destination, admit, words};

const IPPROTO_TCP: u32 = 6;
/// The third word of an IPv4-mapped address, `00 00 ff ff` in memory.
const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[cgroup_sock_addr(connect6)]
pub fn gov_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: fields of the context the kernel passed in, each read with
    // one load at a constant offset as the verifier wants.
    let (protocol, ip, port) = unsafe {
        let a = ctx.sock_addr;
        (
            core::ptr::read_volatile(&raw const (*a).protocol),
            [
                core::ptr::read_volatile(&raw const (*a).user_ip6[0]),
                core::ptr::read_volatile(&raw const (*a).user_ip6[1]),
                core::ptr::read_volatile(&raw const (*a).user_ip6[2]),
                core::ptr::read_volatile(&raw const (*a).user_ip6[3]),
            ],
            core::ptr::read_volatile(&raw const (*a).user_port),
        )
    };
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    #[expect(clippy::cast_possible_truncation, reason = "the port is the low half")]
    let port = u16::from_be(port as u16);
    let to = if ip[0] == 0 && ip[1] == 0 && ip[2] == MAPPED {
        Destination { addr: [words(ip[3], 0), 0], family: AF_INET, port }
    } else {
        Destination { addr: [words(ip[0], ip[1]), words(ip[2], ip[3])], family: AF_INET6, port }
    };
    admit(&ctx, to)
}
