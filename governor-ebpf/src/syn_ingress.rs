//! `cgroup_skb/ingress` at the cgroup v2 root, attached when an inbound
//! policy is in force: a SYN (without ACK) arriving at a local listener is
//! checked against the inbound rules (`admission.rs`) by the listener's
//! port, and dropped when a rule denies it. The client's TCP retransmits
//! the SYN later, as after any loss. Every other packet passes untouched.

#![expect(clippy::cast_possible_truncation, reason = "ports are 16-bit values in 32-bit context fields")]

use core::mem::MaybeUninit;

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, macros::cgroup_skb, programs::SkBuffContext};

use crate::admission::admit_syn;

const PASS: i32 = 1;
const DROP: i32 = 0;
const IPPROTO_TCP: u8 = 6;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

#[cgroup_skb(ingress)]
pub fn gov_syn_in(ctx: SkBuffContext) -> i32 {
    if !is_syn(&ctx) {
        return PASS;
    }
    // SAFETY: a field of the context: the port the receiving socket (the
    // listener) is bound to, host order.
    let port = unsafe { core::ptr::read_volatile(&raw const (*ctx.skb.skb).local_port) } as u16;
    if admit_syn(port) { PASS } else { DROP }
}

/// A TCP segment with SYN set and ACK clear: a connection request. The
/// packet starts at its IP header; IPv6 extension headers are not followed
/// (such SYNs pass).
#[inline(always)]
fn is_syn(ctx: &SkBuffContext) -> bool {
    let Some(first) = load::<10>(ctx, 0) else { return false };
    let (header, protocol) = match first[0] >> 4 {
        4 => (u32::from(first[0] & 0x0f) * 4, first[9]),
        6 => (40, first[6]),
        _ => return false,
    };
    if protocol != IPPROTO_TCP {
        return false;
    }
    load::<1>(ctx, header + 13).is_some_and(|[flags]| flags & (SYN | ACK) == SYN)
}

#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, offset: u32) -> Option<[u8; N]> {
    let mut out = MaybeUninit::<[u8; N]>::uninit();
    // SAFETY: the helper writes exactly N bytes into `out` or fails.
    let rc = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), offset, out.as_mut_ptr().cast(), N as u32) };
    // SAFETY: on success all N bytes were written.
    (rc == 0).then(|| unsafe { out.assume_init() })
}
