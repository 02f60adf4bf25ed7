//! `tcp:tcp_receive_reset`: a socket of this host receives a RST.
//!
//! Fields used: `__u16 family`, `__u16 sport`, `__u16 dport` (host order),
//! `__u8 saddr[4]`, `daddr[4]`, `saddr_v6[16]`, `daddr_v6[16]`; the source is
//! the local socket, the destination the peer that reset it.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use governor_common::{counter, event_kind};

use crate::{
    maps::{EndpointCounter, GOVERNOR_CONFIG, count, count_endpoint},
    record::{Buffer, Flow, Record},
};

#[tracepoint]
pub fn gov_rst_recv(ctx: TracePointContext) -> u32 {
    if try_gov_rst_recv(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_rst_recv(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: plain read of an immutable global set at load.
    let l = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.tcp_receive_reset) };
    count(counter::RESETS_RECEIVED);
    let mut buffer = Buffer::uninit();
    let mut r = Record::new(&mut buffer);
    r.fill(ctx, l.primary)?;
    let flow = Flow::read(ctx, &mut r, &l)?;
    count_endpoint(&flow.remote(), EndpointCounter::ResetsReceived);
    flow.emit(event_kind::RESET_RECEIVED, 0, 0);
    Ok(())
}
