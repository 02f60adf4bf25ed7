//! The flow sampler: copies every established connection's byte and
//! packet counts from its socket into its entry of the per-socket table
//! (`flow.rs`). It is
//! attached to nothing: user space runs it (`BPF_PROG_TEST_RUN`) before it
//! reads the flow or endpoint tables, so the cost follows how often
//! governor looks, not how much traffic the host carries. The section
//! names a tracepoint only because raw tracepoint programs need one.

use core::{ffi::c_void, ptr};

use aya_ebpf::{helpers::generated::bpf_for_each_map_elem, macros::raw_tracepoint, programs::RawTracePointContext};
use governor_common::SockEntry;

use crate::{flow::sample, maps::SOCKETS};

#[raw_tracepoint(tracepoint = "governor_flow_sample")]
pub fn gov_flow_sample(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: the map and callback pointers are relocated by the loader;
    // the callback has the signature the helper expects.
    unsafe {
        bpf_for_each_map_elem(
            (&raw const SOCKETS).cast_mut().cast::<c_void>(),
            sample_one as *mut c_void,
            ptr::null_mut(),
            0,
        );
    }
    0
}

/// One entry of the walk (key: the socket's address); 0 goes on to the
/// next. Sockets still in their handshake have no counts yet.
#[inline(never)]
extern "C" fn sample_one(_map: *mut c_void, key: *mut c_void, value: *mut c_void, _ctx: *mut c_void) -> i64 {
    let entry = value.cast::<SockEntry>();
    // SAFETY: the helper passes a live key and value of this map.
    let (sk, established) = unsafe { (*key.cast::<u64>(), (*entry).info.established_ns != 0) };
    if established {
        sample(entry, sk);
    }
    0
}
