//! Bytes and packets per established connection, without a program per
//! packet and without a table of their own: the kernel already counts them
//! for every TCP socket (`struct tcp_sock`), so they are copied from the
//! socket into its entry of the per-socket table when user space runs the
//! flow sampler (`flow_sample.rs`) and once more when the connection closes
//! (`connection.rs`). What grew since the last copy is added to the flow's
//! rate window and to its endpoint's totals.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use governor_common::{FLOW_RATE_WINDOW_NS, FlowCounts, SockEntry, direction};

use crate::{
    maps::{add, endpoint_entry, swap},
    record::{SockRead, endpoint, offset},
};

/// `RCV_SHUTDOWN` in `sk_shutdown`.
const RCV_SHUTDOWN: u8 = 1;

/// Copies the counts of the socket `sk` into its `entry` and adds what
/// grew to its window and its endpoint. The socket's two byte counts are
/// read first: the rest is read only for a direction whose count moved, so
/// idle flows (and connections that never carried data) cost two reads.
/// (The kernel moves a segment count before the byte count it goes with,
/// so only the byte counts tell reliably that nothing changed.) The totals
/// are swapped in atomically, so the sampler and a close racing on one
/// flow add each byte once.
#[inline(always)]
pub fn sample(entry: *mut SockEntry, sk: &impl SockRead) {
    // SAFETY: `entry` is a live map value; the fields below stay inside it.
    let f = unsafe { &mut (*entry).flow };
    let mut grew = [0u64; 2];
    if let Some(raw) = sk.field::<u64>(offset!(bytes_sent))
        && raw != f.seen_sent
    {
        f.seen_sent = raw;
        f.packets_sent = u64::from(sk.field::<u32>(offset!(data_segs_out)).unwrap_or(0));
        // Each byte once: retransmissions are counted apart.
        let sent = raw.saturating_sub(sk.field(offset!(bytes_retrans)).unwrap_or(0));
        grew[0] = grown(&raw mut f.bytes_sent, sent);
    }
    if let Some(raw) = sk.field::<u64>(offset!(bytes_received))
        && raw != f.seen_received
    {
        f.seen_received = raw;
        f.packets_received = u64::from(sk.field::<u32>(offset!(data_segs_in)).unwrap_or(0));
        grew[1] = grown(&raw mut f.bytes_received, payload_received(sk, raw));
    }
    if grew == [0, 0] {
        return;
    }
    // The window is only written here; a rare race between the sampler and
    // a close shifts bytes between windows.
    roll_window(f);
    add(&raw mut f.window_sent, grew[0]);
    add(&raw mut f.window_received, grew[1]);
    // SAFETY: a live map value.
    let info = unsafe { &(*entry).info };
    let a = &info.addrs;
    // The service side: the remote end of an active open, the local
    // listener of a passive one.
    let key = if info.direction == direction::ACTIVE {
        endpoint(a.family, a.daddr, a.dport)
    } else {
        endpoint(a.family, a.saddr, a.sport)
    };
    if let Some(endpoint) = endpoint_entry(&key) {
        // SAFETY: a live map value.
        unsafe {
            add(&raw mut (*endpoint).bytes_sent, grew[0]);
            add(&raw mut (*endpoint).bytes_received, grew[1]);
        }
    }
}

/// The counts of a flow tracked from `at` on, though the socket `sk`
/// carried traffic before: they start from the socket's own totals, so
/// that [`sample`] adds only what moves from here on.
#[inline(always)]
pub fn baseline(sk: &impl SockRead, at: u64) -> FlowCounts {
    let sent: u64 = sk.field(offset!(bytes_sent)).unwrap_or(0);
    let received: u64 = sk.field(offset!(bytes_received)).unwrap_or(0);
    FlowCounts {
        seen_sent: sent,
        // Each byte once, as `sample` counts them.
        bytes_sent: sent.saturating_sub(sk.field(offset!(bytes_retrans)).unwrap_or(0)),
        packets_sent: u64::from(sk.field::<u32>(offset!(data_segs_out)).unwrap_or(0)),
        seen_received: received,
        bytes_received: payload_received(sk, received),
        packets_received: u64::from(sk.field::<u32>(offset!(data_segs_in)).unwrap_or(0)),
        window_start_ns: at,
        ..FlowCounts::default()
    }
}

/// The payload bytes in `raw`, the socket's `bytes_received`, which counts
/// a FIN's sequence number too; a reset (`sk_err` set) also shuts the
/// receive side without one.
#[inline(always)]
fn payload_received(sk: &impl SockRead, raw: u64) -> u64 {
    let fin = sk.field::<u8>(offset!(sk_shutdown)).unwrap_or(0) & RCV_SHUTDOWN != 0
        && sk.field::<u32>(offset!(sk_err)).unwrap_or(0) == 0;
    raw.saturating_sub(u64::from(fin))
}

/// Stores the total `now` and returns what it grew by; a total that went
/// back belongs to another socket at the same address (this one closed
/// meanwhile) and adds nothing.
#[inline(always)]
fn grown(total: *mut u64, now: u64) -> u64 {
    now.saturating_sub(swap(total, now))
}

/// Closes the rate window when it is over: its bytes become the last
/// complete window's.
#[inline(always)]
fn roll_window(f: &mut FlowCounts) {
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
