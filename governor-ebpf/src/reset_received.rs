//! `tcp:tcp_receive_reset` as a BTF tracepoint (`tp_btf`): a socket of this host
//! receives a RST. Argument: `struct sock *sk`; the addresses are read from
//! it, local first, and the peer that reset it is the remote side.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use governor_common::{counter, event_kind};

use crate::{
    maps::{EndpointCounter, count, count_endpoint, report_reset},
    record::Flow,
};

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn gov_rst_recv(ctx: BtfTracePointContext) -> i32 {
    if try_gov_rst_recv(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_rst_recv(ctx: &BtfTracePointContext) -> Result<(), i64> {
    count(counter::RESETS_RECEIVED);
    let flow = Flow::of(ctx.arg(0))?;
    if report_reset(count_endpoint(&flow.remote(), EndpointCounter::ResetsReceived)) {
        flow.emit(event_kind::RESET_RECEIVED, 0, 0);
    }
    Ok(())
}
