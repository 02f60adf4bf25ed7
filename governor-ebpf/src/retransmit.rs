//! `tcp:tcp_retransmit_skb` as a BTF tracepoint (`tp_btf`): a segment (data or SYN) is
//! sent again. Arguments: `const struct sock *sk`, the segment, and since
//! 6.17 an error code; only the socket is used.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use governor_common::counter;

use crate::{
    maps::{EndpointCounter, count, count_endpoint},
    record::Flow,
};

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn gov_retrans(ctx: BtfTracePointContext) -> i32 {
    if try_gov_retrans(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_retrans(ctx: &BtfTracePointContext) -> Result<(), i64> {
    count(counter::RETRANSMITS);
    let flow = Flow::of(ctx.arg(0))?;
    count_endpoint(&flow.remote(), EndpointCounter::Retransmits);
    Ok(())
}
