//! `sock:inet_sock_set_state` as a BTF tracepoint (`tp_btf`): every TCP state change
//! on the host. Arguments: `const struct sock *sk`, `int oldstate`,
//! `int newstate` (checked against the kernel's BTF at start-up). Fields
//! are read from the socket at BTF offsets only by the transitions that
//! need them; what each transition does with the per-socket table is in
//! `connection.rs`.

#![expect(clippy::cast_possible_truncation, reason = "the states are C ints passed in 64-bit argument slots")]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use governor_common::{IPPROTO_TCP, counter};

use crate::{
    connection,
    maps::{count, count_transition},
    record::{direct, layout},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn gov_state(ctx: BtfTracePointContext) -> i32 {
    if try_gov_state(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let sk: u64 = ctx.arg(0);
    let protocol: u16 = direct(sk, layout!(protocol));
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    count_transition(old.cast_unsigned(), new.cast_unsigned());
    connection::transition(sk, old, new)
}
