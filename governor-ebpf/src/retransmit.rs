//! `tcp:tcp_retransmit_skb`: a segment (data or SYN) is sent again.
//!
//! Fields used: `__u16 family`, `__u16 sport`, `__u16 dport` (host order),
//! `__u8 saddr[4]`, `daddr[4]`, `saddr_v6[16]`, `daddr_v6[16]`. The layout
//! changed in 6.17 (an `err` field was added), hence the run-time offsets.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use governor_common::counter;

use crate::{
    maps::{EndpointCounter, GOVERNOR_CONFIG, count, count_endpoint},
    record::{Buffer, Flow, Record},
};

#[tracepoint]
pub fn gov_retrans(ctx: TracePointContext) -> u32 {
    if try_gov_retrans(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_retrans(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: plain read of an immutable global set at load.
    let l = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.tcp_retransmit_skb) };
    count(counter::RETRANSMITS);
    let mut buffer = Buffer::uninit();
    let mut r = Record::new(&mut buffer);
    r.fill(ctx, l.primary)?;
    let flow = Flow::read(ctx, &mut r, &l)?;
    count_endpoint(&flow.remote(), EndpointCounter::Retransmits);
    Ok(())
}
