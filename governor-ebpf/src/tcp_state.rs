//! `sock:inet_sock_set_state`: every TCP state change on the host.
//!
//! Fields used (offsets from the format file): `const void *skaddr`,
//! `int oldstate`, `int newstate`, `__u16 protocol`, `__u16 family`,
//! `__u16 sport`, `__u16 dport` (host order), `__u8 saddr[4]`, `daddr[4]`,
//! `saddr_v6[16]`, `daddr_v6[16]`. What each transition does with the
//! per-socket table is in `connection.rs`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use governor_common::{IPPROTO_TCP, counter};

use crate::{
    connection,
    maps::{GOVERNOR_CONFIG, count, count_transition},
    record::{Buffer, Record},
};

#[tracepoint]
pub fn gov_state(ctx: TracePointContext) -> u32 {
    if try_gov_state(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_gov_state(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: plain read of an immutable global set at load.
    let l = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.inet_sock_set_state) };
    let mut buffer = Buffer::uninit();
    let mut r = Record::new(&mut buffer);
    r.fill(ctx, l.primary)?;
    if r.u16(l.protocol)? != IPPROTO_TCP {
        return Ok(());
    }
    let old = r.i32(l.oldstate)?;
    let new = r.i32(l.newstate)?;
    count_transition(old.cast_unsigned(), new.cast_unsigned());
    let skaddr = r.u64(l.skaddr)?;
    connection::transition(ctx, &mut r, &l, skaddr, old, new)
}
