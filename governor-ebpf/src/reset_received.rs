//! `tcp:tcp_receive_reset` as a raw tracepoint: a socket of this host
//! receives a RST. Argument: `struct sock *sk`; the addresses are read from
//! it, local first, and the peer that reset it is the remote side.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use governor_common::{counter, event_kind};

use crate::{
    maps::{EndpointCounter, GOVERNOR_CONFIG, count, count_endpoint, report_reset},
    record::{Buffer, Flow, Record},
};

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn gov_rst_recv(ctx: RawTracePointContext) -> i32 {
    if try_gov_rst_recv(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_rst_recv(ctx: &RawTracePointContext) -> Result<(), i64> {
    // SAFETY: plain read of an immutable global set at load.
    let l = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.layout) };
    count(counter::RESETS_RECEIVED);
    let mut buffer = Buffer::uninit();
    let mut r = Record::new(&mut buffer);
    let flow = Flow::read(ctx.arg(0), &mut r, &l)?;
    if report_reset(count_endpoint(&flow.remote(), EndpointCounter::ResetsReceived)) {
        flow.emit(event_kind::RESET_RECEIVED, 0, 0);
    }
    Ok(())
}
