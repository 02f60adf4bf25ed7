//! `sock:inet_sock_set_state` as a raw tracepoint: every TCP state change
//! on the host. Arguments: `const struct sock *sk`, `int oldstate`,
//! `int newstate` (checked against the kernel's BTF at start-up). Fields
//! are read from the socket at BTF offsets only by the transitions that
//! need them; what each transition does with the per-socket table is in
//! `connection.rs`.

#![expect(clippy::cast_possible_truncation, reason = "the states are C ints passed in 64-bit argument slots")]

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use governor_common::{IPPROTO_TCP, counter};

use crate::{
    connection,
    maps::{GOVERNOR_CONFIG, count, count_transition},
    record::{Buffer, Record, read_kernel},
};

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn gov_state(ctx: RawTracePointContext) -> i32 {
    if try_gov_state(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_state(ctx: &RawTracePointContext) -> Result<(), i64> {
    // SAFETY: plain read of an immutable global set at load.
    let l = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.layout) };
    let sk: u64 = ctx.arg(0);
    let protocol: u16 = read_kernel(sk + u64::from(l.protocol))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    count_transition(old.cast_unsigned(), new.cast_unsigned());
    let mut buffer = Buffer::uninit();
    let mut r = Record::new(&mut buffer);
    connection::transition(&mut r, &l, sk, old, new)
}
