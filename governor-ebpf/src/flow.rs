//! Byte and packet counting per established connection, shared by the
//! `cgroup_skb` ingress and egress programs (`flow_ingress.rs`,
//! `flow_egress.rs`). Attached at the cgroup v2 root, they see every packet
//! of every socket on the host; they never drop one.
//!
//! The flow is found by the addresses of the packet's socket (`__sk_buff`
//! exposes the socket's family, addresses and ports to `cgroup_skb`
//! programs), so nothing is parsed for packets of sockets the table does
//! not know. Only the payload length is read from the headers.

#![expect(clippy::cast_possible_truncation, reason = "ports are 16-bit values in 32-bit context fields")]

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::SkBuffContext};
use governor_common::{AF_INET, AF_INET6, FLOW_RATE_WINDOW_NS, FlowAddrs, FlowStats};

use crate::maps::{FLOWS, add, endpoint_entry};

/// `cgroup_skb` verdict: let the packet through.
pub const PASS: i32 = 1;

const IPPROTO_TCP: u8 = 6;
const IPV6_HEADER: usize = 40;

/// Counts one packet of the socket it belongs to; `sent` for egress.
#[inline(always)]
pub fn account(ctx: &SkBuffContext, sent: bool) {
    let Some(key) = flow_key(ctx) else { return };
    let Some(flow) = FLOWS.get_ptr_mut(&key) else { return };
    let Some(payload) = payload(ctx) else { return };
    if payload == 0 {
        return;
    }
    // SAFETY: context field read; the kernel fills it for every skb.
    let segments = u64::from(unsafe { (*ctx.skb.skb).gso_segs }).max(1);
    let payload = u64::from(payload);
    // SAFETY: `flow` is a live map value; the counters are only changed
    // with atomic adds, the window fields by whichever CPU sees the window
    // end (a race there shifts bytes between two windows, nothing more).
    unsafe {
        let f = &mut *flow;
        let (bytes, packets, window) = if sent {
            (&raw mut f.bytes_sent, &raw mut f.packets_sent, &raw mut f.window_sent)
        } else {
            (&raw mut f.bytes_received, &raw mut f.packets_received, &raw mut f.window_received)
        };
        add(bytes, payload);
        add(packets, segments);
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
    let skb = &ctx.skb;
    let family = skb.family() as u16;
    let (saddr, daddr) = match family {
        // The addresses are in network order in memory: their native-endian
        // bytes are the address bytes.
        AF_INET => (widen(skb.local_ipv4()), widen(skb.remote_ipv4())),
        AF_INET6 => (v6(skb.local_ipv6()), v6(skb.remote_ipv6())),
        _ => return None,
    };
    Some(FlowAddrs {
        saddr,
        daddr,
        family,
        sport: skb.local_port() as u16,
        // `remote_port` holds the network-order port in its upper half on
        // little-endian machines (the kernel shifts it there).
        dport: remote_port(skb.remote_port()),
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
fn widen(addr: u32) -> [u8; 16] {
    u128::from(u32::from_le(addr)).to_le_bytes()
}

#[inline(always)]
fn v6(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

/// TCP payload bytes of the packet (which starts at its IP header); `None`
/// when it is not TCP or the headers cannot be read. The IP version comes
/// from the packet: an IPv6 socket talks IPv4 to IPv4-mapped peers.
#[inline(always)]
fn payload(ctx: &SkBuffContext) -> Option<u32> {
    let mut first = [0u8; 10];
    ctx.load_bytes(0, &mut first).ok()?;
    let (ip_header, protocol) = match first[0] >> 4 {
        4 => (usize::from(first[0] & 0x0f) * 4, first[9]),
        // Extension headers before TCP are not followed: such packets are
        // not counted.
        6 => (IPV6_HEADER, first[6]),
        _ => return None,
    };
    if protocol != IPPROTO_TCP {
        return None;
    }
    let mut offset_byte = [0u8; 1];
    ctx.load_bytes(ip_header + 12, &mut offset_byte).ok()?;
    let headers = (ip_header + usize::from(offset_byte[0] >> 4) * 4) as u32;
    Some(ctx.len().saturating_sub(headers))
}
