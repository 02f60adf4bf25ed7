//! `tcp:tcp_retransmit_skb` as a raw tracepoint: a segment (data or SYN) is
//! sent again. Arguments: `const struct sock *sk`, the segment, and since
//! 6.17 an error code; only the socket is used.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use governor_common::counter;

use crate::{
    maps::{EndpointCounter, GOVERNOR_CONFIG, count, count_endpoint},
    record::{Buffer, Flow, Record},
};

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn gov_retrans(ctx: RawTracePointContext) -> i32 {
    if try_gov_retrans(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_retrans(ctx: &RawTracePointContext) -> Result<(), i64> {
    // SAFETY: plain read of an immutable global set at load.
    let l = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.layout) };
    count(counter::RETRANSMITS);
    let mut buffer = Buffer::uninit();
    let mut r = Record::new(&mut buffer);
    let flow = Flow::read(ctx.arg(0), &mut r, &l)?;
    count_endpoint(&flow.remote(), EndpointCounter::Retransmits);
    Ok(())
}
