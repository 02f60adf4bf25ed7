//! `tcp:tcp_send_reset` as a BTF tracepoint (`tp_btf`): this host sends a RST.
//! Arguments: `const struct sock *sk` (NULL when no socket matched the
//! packet), `const struct sk_buff *skb` (the packet answered), and since
//! 6.10 `enum sk_rst_reason` (`KernelConfig::RESET_REASON_ARG`). With a
//! socket the addresses are its own; without one they come from the
//! packet, whose destination is the local side.

#![expect(clippy::cast_possible_truncation, reason = "the reason is a C enum passed in a 64-bit argument slot")]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use governor_common::{KernelConfig, counter, event_kind};

use crate::{
    maps::{EndpointCounter, GOVERNOR_CONFIG, count, count_endpoint, count_reset_reason, report_reset},
    record::{Flow, direct, layout},
};

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn gov_rst_sent(ctx: BtfTracePointContext) -> i32 {
    if try_gov_rst_sent(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_rst_sent(ctx: &BtfTracePointContext) -> Result<(), i64> {
    // SAFETY: plain read of an immutable global set at load.
    let flags = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.flags) };
    count(counter::RESETS_SENT);
    // Kernels before 6.10 pass no reason: nothing to count then.
    let reason = if flags & KernelConfig::RESET_REASON_ARG != 0 {
        let reason = ctx.arg::<u64>(2) as u32;
        count_reset_reason(reason);
        reason
    } else {
        0
    };
    let sk: u64 = ctx.arg(0);
    let (flow, state) = if sk == 0 {
        // SAFETY: plain read of an immutable global set at load.
        let offsets = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.sock) };
        (Flow::answered(ctx.arg(1), &offsets)?, 0)
    } else {
        (Flow::of(sk)?, direct::<u8>(sk, layout!(state)))
    };
    if report_reset(count_endpoint(&flow.local(), EndpointCounter::ResetsSent)) {
        flow.emit(event_kind::RESET_SENT, u16::from(state), reason);
    }
    Ok(())
}
