//! governor's kernel programs. One file per hook; maps live in `maps.rs`;
//! reading tracepoint records at run-time offsets lives in `record.rs`.
#![no_std]
#![no_main]
// The atomic add on shared map values (see maps.rs).
#![feature(core_intrinsics)]
// One instruction written out: the fetch-and-add (see maps.rs).
#![feature(asm_experimental_arch)]
#![expect(internal_features, reason = "atomic_xadd is the only atomic add the BPF target offers")]
#![expect(clippy::inline_always, reason = "helpers stay inside each program: one function for the verifier")]
#![expect(clippy::needless_pass_by_value, reason = "#[tracepoint] hands the context over by value")]

mod admission;
mod connection;
mod flow;
mod maps;
mod police;
mod record;

mod connect4;
mod connect6;
mod flow_sample;
mod open_at_start;
mod police_egress;
mod police_ingress;
mod reset_received;
mod reset_sent;
mod retransmit;
mod sock_ops;
mod sock_release;
mod syn_ingress;
mod tcp_state;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; there is no
    // unwinding in the kernel.
    loop {}
}

/// The helpers used (probe reads, ring buffer) are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
