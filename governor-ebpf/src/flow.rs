//! Byte and packet counting per established connection, shared by the
//! `cgroup_skb` ingress and egress programs (`flow_ingress.rs`,
//! `flow_egress.rs`). Attached at the cgroup v2 root, they see every packet
//! of every socket on the host; they never drop one.
//!
//! The flow is found by the addresses of the packet's socket (`__sk_buff`
//! exposes the socket's family, addresses and ports to `cgroup_skb`
//! programs), so nothing is parsed for packets of sockets the table does
//! not know. Only the payload length and the sequence number are read from
//! the headers: payload is counted once, up to the highest sequence number
//! seen each way, so retransmitted and duplicate segments do not count
//! twice (what the application wrote and read).

#![expect(clippy::cast_possible_truncation, reason = "ports are 16-bit values in 32-bit context fields")]

use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_skb_load_bytes},
    programs::SkBuffContext,
};
use governor_common::{AF_INET, AF_INET6, FLOW_RATE_WINDOW_NS, FlowAddrs, FlowStats, new_bytes};

use crate::{
    maps::{FLOWS, add, endpoint_entry},
    record::widen,
};

/// Reads one `u32` field of the `__sk_buff` context. The verifier wants
/// every context access as one load at a constant offset from the context
/// pointer; a volatile read keeps LLVM from sharing address arithmetic
/// between fields (the context's own accessors hand out references, which
/// it does share).
macro_rules! ctx_field {
    ($ctx:expr, $($field:tt)+) => {
        // SAFETY: a field of the context the kernel passed in.
        unsafe { core::ptr::read_volatile(&raw const (*$ctx.skb.skb).$($field)+) }
    };
}

/// `cgroup_skb` verdict: let the packet through.
pub const PASS: i32 = 1;

const IPPROTO_TCP: u8 = 6;
const IPV6_HEADER: u32 = 40;

/// Counts one packet of the socket it belongs to; `sent` for egress.
#[inline(always)]
pub fn account(ctx: &SkBuffContext, sent: bool) {
    let Some(key) = flow_key(ctx) else { return };
    let Some(flow) = FLOWS.get_ptr_mut(key) else { return };
    let Some((payload, seq)) = payload(ctx) else { return };
    if payload == 0 {
        return;
    }
    let segments = u64::from(ctx_field!(ctx, gso_segs)).max(1);
    // SAFETY: `flow` is a live map value; the counters are only changed
    // with atomic adds, the window and sequence fields by whichever CPU
    // handles the packet (packets of one direction of one socket are
    // handled one at a time; a rare race shifts bytes between two windows).
    unsafe {
        let f = &mut *flow;
        let (bytes, packets, window, end, seen) = if sent {
            (
                &raw mut f.bytes_sent,
                &raw mut f.packets_sent,
                &raw mut f.window_sent,
                &raw mut f.sent_end,
                FlowStats::SEQ_SENT,
            )
        } else {
            (
                &raw mut f.bytes_received,
                &raw mut f.packets_received,
                &raw mut f.window_received,
                &raw mut f.received_end,
                FlowStats::SEQ_RECEIVED,
            )
        };
        add(packets, segments);
        let payload = if f.seq_seen & seen == 0 {
            f.seq_seen |= seen;
            *end = seq.wrapping_add(payload);
            payload
        } else {
            let counted = new_bytes(*end, seq, payload);
            if counted == 0 {
                return;
            }
            *end = seq.wrapping_add(payload);
            counted
        };
        let payload = u64::from(payload);
        add(bytes, payload);
        roll_window(f);
        add(window, payload);
        if let Some(endpoint) = endpoint_entry(&f.endpoint) {
            add(if sent { &raw mut (*endpoint).bytes_sent } else { &raw mut (*endpoint).bytes_received }, payload);
        }
    }
}

/// Closes the rate window when it is over: its bytes become the last
/// complete window's.
#[inline(always)]
fn roll_window(f: &mut FlowStats) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let elapsed = now.wrapping_sub(f.window_start_ns);
    if elapsed < FLOW_RATE_WINDOW_NS {
        return;
    }
    f.last_window_ns = elapsed;
    f.last_sent = f.window_sent;
    f.last_received = f.window_received;
    f.window_start_ns = now;
    f.window_sent = 0;
    f.window_received = 0;
}

/// The packet's socket as the flow table keys it: local side first, ports
/// in host order, IPv4 in the first four address bytes.
#[inline(always)]
fn flow_key(ctx: &SkBuffContext) -> Option<FlowAddrs> {
    let family = ctx_field!(ctx, family) as u16;
    // Addresses are in network order in memory: their native-endian bytes
    // are the address bytes.
    let (saddr, daddr) = match family {
        AF_INET => (widen(ctx_field!(ctx, local_ip4).to_ne_bytes()), widen(ctx_field!(ctx, remote_ip4).to_ne_bytes())),
        AF_INET6 => (
            v6([
                ctx_field!(ctx, local_ip6[0]),
                ctx_field!(ctx, local_ip6[1]),
                ctx_field!(ctx, local_ip6[2]),
                ctx_field!(ctx, local_ip6[3]),
            ]),
            v6([
                ctx_field!(ctx, remote_ip6[0]),
                ctx_field!(ctx, remote_ip6[1]),
                ctx_field!(ctx, remote_ip6[2]),
                ctx_field!(ctx, remote_ip6[3]),
            ]),
        ),
        _ => return None,
    };
    Some(FlowAddrs {
        saddr,
        daddr,
        family,
        sport: ctx_field!(ctx, local_port) as u16,
        // `remote_port` holds the network-order port in its upper half on
        // little-endian machines (the kernel shifts it there).
        dport: remote_port(ctx_field!(ctx, remote_port)),
        pad: 0,
    })
}

#[cfg(target_endian = "little")]
#[inline(always)]
fn remote_port(field: u32) -> u16 {
    u16::from_be((field >> 16) as u16)
}

#[cfg(target_endian = "big")]
#[inline(always)]
fn remote_port(field: u32) -> u16 {
    field as u16
}

#[inline(always)]
fn v6(words: [u32; 4]) -> [u8; 16] {
    let [a, b, c, d] = words.map(u32::from_le);
    (u128::from(a) | u128::from(b) << 32 | u128::from(c) << 64 | u128::from(d) << 96).to_le_bytes()
}

/// TCP payload bytes of the packet (which starts at its IP header) and its
/// sequence number; `None` when it is not TCP or the headers cannot be
/// read. The IP version comes from the packet: an IPv6 socket talks IPv4
/// to IPv4-mapped peers.
#[inline(always)]
fn payload(ctx: &SkBuffContext) -> Option<(u32, u32)> {
    let first: [u8; 10] = load(ctx, 0)?;
    let (ip_header, protocol) = match first[0] >> 4 {
        4 => (u32::from(first[0] & 0x0f) * 4, first[9]),
        // Extension headers before TCP are not followed: such packets are
        // not counted.
        6 => (IPV6_HEADER, first[6]),
        _ => return None,
    };
    if protocol != IPPROTO_TCP {
        return None;
    }
    // Sequence number (bytes 4-7 of the TCP header) to data offset (12).
    let tcp: [u8; 9] = load(ctx, ip_header + 4)?;
    let seq = u32::from_be_bytes([tcp[0], tcp[1], tcp[2], tcp[3]]);
    let headers = ip_header + u32::from(tcp[8] >> 4) * 4;
    Some((ctx_field!(ctx, len).saturating_sub(headers), seq))
}

/// `N` bytes of the packet at `offset` (from the IP header), with a length
/// the verifier knows: the context's own `load_bytes` computes it at run
/// time.
#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, offset: u32) -> Option<[u8; N]> {
    let mut out = MaybeUninit::<[u8; N]>::uninit();
    // SAFETY: the helper writes exactly N bytes into `out` or fails.
    let rc = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), offset, out.as_mut_ptr().cast(), N as u32) };
    // SAFETY: on success all N bytes were written.
    (rc == 0).then(|| unsafe { out.assume_init() })
}
