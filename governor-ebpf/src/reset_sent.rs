//! `tcp:tcp_send_reset`: this host sends a RST.
//!
//! Fields used: `int state`, `enum sk_rst_reason reason`, and the addresses.
//! Since 6.10 they are `__u8 saddr[28]`/`daddr[28]` holding a
//! `struct sockaddr_in` or `sockaddr_in6` (user space points the offsets
//! inside them); older kernels have `sport`/`dport`/`family` fields. The
//! kernel stores the local side (the sender of the reset) as the source even
//! when no socket exists and it answers from the packet alone.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use governor_common::{counter, event_kind};

use crate::{
    maps::{EndpointCounter, GOVERNOR_CONFIG, count, count_endpoint, count_reset_reason},
    record::{Buffer, Flow, Record},
};

#[tracepoint]
pub fn gov_rst_sent(ctx: TracePointContext) -> u32 {
    if try_gov_rst_sent(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_rst_sent(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: plain read of an immutable global set at load.
    let l = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.tcp_send_reset) };
    count(counter::RESETS_SENT);
    let mut buffer = Buffer::uninit();
    let mut r = Record::new(&mut buffer);
    r.fill(ctx, l.primary)?;
    // Before Flow::read: an IPv6 flow replaces the copy with its addresses.
    let state = r.i32(l.state).unwrap_or(0);
    // Kernels before 6.10 have no reason field: nothing to count then.
    let reason = r.u32(l.reason);
    if let Ok(reason) = reason {
        count_reset_reason(reason);
    }
    let reason = reason.unwrap_or(0);
    let flow = Flow::read(ctx, &mut r, &l)?;
    count_endpoint(&flow.local(), EndpointCounter::ResetsSent);
    flow.emit(event_kind::RESET_SENT, u16::try_from(state).unwrap_or(0), reason);
    Ok(())
}
