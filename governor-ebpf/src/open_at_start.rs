//! `iter/tcp`: a walk over the TCP sockets of one network namespace, run
//! by user space once per namespace at start-up, after the other programs
//! attached. Each established connection the per-socket table does not
//! hold gets an entry (`connection::track_found`): the connections opened
//! before governor started, which are every long-lived connection of the
//! node after a restart or an upgrade, are then tracked, swept and
//! counted like the rest from here on. Listeners the listener table does
//! not hold (in namespaces no process is in, where `/proc` shows nothing)
//! are added without an owner, so that their connections are known as
//! accepted ones. Connections waiting in `CLOSE_WAIT`
//! are found through `/proc` instead (user space knows their owners
//! there); the other states are about to close.
//!
//! The kernel holds each socket's lock while the program looks at it, so
//! no transition of that socket runs meanwhile: a connection closing
//! during the walk is either still there (and its close removes the entry)
//! or gone already (and skipped).

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_seq_write};

use crate::{
    connection::{self, TCP_ESTABLISHED, TCP_LISTEN},
    record::{direct, layout},
};

/// The context (`struct bpf_iter__tcp`): the iterator's `meta`, whose
/// first field is the output `seq_file`, then the socket (NULL once the
/// walk is over), then its owner's uid.
#[repr(C)]
struct IterTcp {
    meta: u64,
    sk_common: u64,
}

/// Written out, as aya-ebpf has no macro for iterators. Writes one byte to
/// the iterator's output per connection it starts tracking: what user
/// space reads is their count.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn gov_open_at_start(ctx: *mut c_void) -> i32 {
    let ctx = ctx.cast::<IterTcp>();
    // SAFETY: the kernel passes its `bpf_iter__tcp`; the verifier checks
    // both loads against it.
    let (meta, sk) = unsafe {
        (core::ptr::read_volatile(&raw const (*ctx).meta), core::ptr::read_volatile(&raw const (*ctx).sk_common))
    };
    if sk == 0 {
        return 0;
    }
    // `struct sock_common` holds the state, addresses, ports and
    // namespace: all the loads below stay inside it, and the flow counts
    // come from the socket as a `tcp_sock`.
    let state = i32::from(direct::<u8>(sk, layout!(state)));
    // The kernel walks the listening sockets first: the established ones
    // after them find the listeners they were accepted by.
    if state == TCP_LISTEN {
        connection::track_found_listener(sk);
        return 0;
    }
    if state != TCP_ESTABLISHED {
        return 0;
    }
    // SAFETY: helper without preconditions.
    let at = unsafe { bpf_ktime_get_ns() };
    if connection::track_found(sk, TCP_ESTABLISHED, at) == 1 && meta != 0 {
        let seq: u64 = direct(meta, 0_u32);
        // SAFETY: `seq` is the iterator's `seq_file` as the verifier typed
        // it; one byte is read from `MARK`, a global.
        unsafe { bpf_seq_write(seq as *mut _, (&raw const MARK).cast_mut().cast::<c_void>(), 1) };
    }
    0
}

/// What the program writes per connection: not on the stack, which
/// `track_found` needs nearly all of.
static MARK: u8 = 1;
