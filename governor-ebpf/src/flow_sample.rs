//! The sweep of the per-socket table: tells user space of the connections
//! that stay open or wait in `CLOSE_WAIT` (`connection::announce`), and
//! when flows are counted copies every established connection's byte and
//! packet counts from its socket into its entry (`flow.rs`). It is
//! attached to nothing: user space runs it (`BPF_PROG_TEST_RUN`) on a
//! timer and before it reads the flows or the connections, so the cost
//! follows how many connections are open and how often governor looks,
//! not how many connections the host makes or how much traffic they
//! carry. The section names a tracepoint only because raw tracepoint
//! programs need one.
//!
//! One run walks at most `budget` entries after skipping `skip` (its two
//! arguments), so that no run keeps a CPU for long; user space runs it
//! again from where it stopped until a run ends short. Sockets that come
//! and go between runs may be sampled twice or wait for the next sweep:
//! a sample only copies counts, and a close makes its own.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_for_each_map_elem, macros::map, maps::PerCpuArray, programs::RawTracePointContext,
};
use governor_common::{KernelConfig, SockEntry, announce};

use crate::{
    connection,
    flow::sample,
    maps::{GOVERNOR_CONFIG, SOCKETS},
    record::Probed,
};

/// Where a walk is. It lives in a map value, not on the stack: the
/// verifier follows stack values exactly and would walk every count of
/// `seen` through the callback, a map value's it leaves unknown.
#[repr(C)]
pub struct Walk {
    skip: u64,
    budget: u64,
    seen: u64,
}

/// One walk per CPU (a run stays on its CPU).
#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// Written out rather than with `#[raw_tracepoint]`, whose wrapper returns
/// 0 whatever the program returns: the return value is how user space
/// learns where the walk stopped.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tp/governor_flow_sample")]
pub extern "C" fn gov_flow_sample(ctx: *mut c_void) -> u32 {
    let ctx = RawTracePointContext::new(ctx);
    let Some(walk) = WALK.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's map value; nothing else runs on it meanwhile.
    unsafe {
        (*walk).skip = ctx.arg(0);
        (*walk).budget = ctx.arg(1);
        (*walk).seen = 0;
    }
    // The callback's context must be on the stack: it holds the pointer.
    let mut at = walk;
    // SAFETY: the map and callback pointers are relocated by the loader;
    // the callback has the signature the helper expects and `at` outlives
    // the call.
    unsafe {
        bpf_for_each_map_elem(
            (&raw const SOCKETS).cast_mut().cast::<c_void>(),
            sample_one as *mut c_void,
            (&raw mut at).cast::<c_void>(),
            0,
        );
    }
    // Entries walked past `skip`: fewer than `budget` ends the sweep.
    // SAFETY: as above.
    let (seen, skip) = unsafe { ((*walk).seen, (*walk).skip) };
    u32::try_from(seen.saturating_sub(skip)).unwrap_or(u32::MAX)
}

/// One entry of the walk (key: the socket's address); 0 goes on to the
/// next, 1 stops. Sockets still in their handshake have no counts yet and
/// are not announced.
#[inline(never)]
extern "C" fn sample_one(_map: *mut c_void, key: *mut c_void, value: *mut c_void, at: *mut c_void) -> i64 {
    // SAFETY: the helper passes a live key and value of this map and the
    // context given to it, which holds this CPU's walk.
    let walk = unsafe { &mut **at.cast::<*mut Walk>() };
    walk.seen += 1;
    if walk.seen <= walk.skip {
        return 0;
    }
    let entry = value.cast::<SockEntry>();
    // SAFETY: as above.
    let (sk, word) = unsafe { (*key.cast::<u64>(), core::ptr::read_volatile(&raw const (*entry).info.announce)) };
    if word & announce::ESTABLISHED != 0 {
        // SAFETY: plain read of an immutable global set at load.
        let flags = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.flags) };
        if flags & KernelConfig::COUNT_FLOWS != 0 {
            sample(entry, &Probed(sk));
        }
        connection::announce(entry, sk);
    }
    i64::from(walk.seen - walk.skip >= walk.budget)
}
