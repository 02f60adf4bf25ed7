//! `sock:inet_sock_set_state`: every TCP state change on the host.
//!
//! Fields used (offsets from the format file): `int oldstate`,
//! `int newstate`, `__u16 protocol`; for failed connects also `__u16 family`,
//! `__u16 sport`, `__u16 dport` (host order), `__u8 saddr[4]`, `daddr[4]`,
//! `saddr_v6[16]`, `daddr_v6[16]`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use governor_common::{IPPROTO_TCP, counter, event_kind};

use crate::{
    maps::{GOVERNOR_CONFIG, count, count_transition},
    record::{Buffer, Flow, Record},
};

const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
/// `TCP_SYN_SENT` as the event carries it.
const SYN_SENT_STATE: u16 = 2;

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
    if old == TCP_SYN_SENT && new == TCP_CLOSE {
        let flow = Flow::read(ctx, &mut r, &l)?;
        flow.emit(event_kind::CONNECT_FAILED, SYN_SENT_STATE, 0);
    }
    Ok(())
}
