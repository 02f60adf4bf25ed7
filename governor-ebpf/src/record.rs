//! Reading tracepoint records at offsets user space found in the
//! tracepoints' `format` files. Nothing here assumes one kernel's layout.
//!
//! A program copies the record once onto its stack (one helper call) and
//! picks the fields out of the copy; the bounds checks give the verifier the
//! limits it needs for the variable offsets.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    programs::TracePointContext,
};
use governor_common::{AF_INET, AF_INET6, EndpointKey, TP_RECORD_MAX, TcpEvent, TpLayout};

use crate::maps::{EVENTS, GOVERNOR_CONFIG, count};

/// A copy of (the start of) one tracepoint record.
pub struct Record {
    bytes: [u8; TP_RECORD_MAX],
}

impl Record {
    /// An empty copy, made once in the program's own stack frame (moving a
    /// filled one around would overflow the 512-byte BPF stack).
    #[inline(always)]
    pub const fn new() -> Self {
        Self { bytes: [0u8; TP_RECORD_MAX] }
    }

    /// Copies the first `layout.record_size` bytes of the record.
    #[inline(always)]
    pub fn fill(&mut self, ctx: &TracePointContext, layout: &TpLayout) -> Result<(), i64> {
        let size = usize::from(layout.record_size);
        if size == 0 || size > TP_RECORD_MAX {
            return Err(-1);
        }
        // SAFETY: the helper copes with any source address; the destination
        // is a buffer of at least `size` bytes.
        unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr().cast::<u8>(), &mut self.bytes[..size]) }.map_err(i64::from)
    }

    #[inline(always)]
    fn array<const N: usize>(&self, offset: u16) -> Result<[u8; N], i64> {
        if offset == TpLayout::ABSENT {
            return Err(-1);
        }
        let start = usize::from(offset);
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes.get(start..start + N).ok_or(-1i64)?);
        Ok(out)
    }

    #[inline(always)]
    pub fn u16(&self, offset: u16) -> Result<u16, i64> {
        self.array(offset).map(u16::from_ne_bytes)
    }

    #[inline(always)]
    pub fn i32(&self, offset: u16) -> Result<i32, i64> {
        self.array(offset).map(i32::from_ne_bytes)
    }

    #[inline(always)]
    pub fn u32(&self, offset: u16) -> Result<u32, i64> {
        self.array(offset).map(u32::from_ne_bytes)
    }
}

/// Both ends of a connection as the tracepoint reports them.
pub struct Flow {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl Flow {
    #[inline(always)]
    pub fn read(r: &Record, l: &TpLayout) -> Result<Self, i64> {
        let family = r.u16(l.family)?;
        let mut sport = r.u16(l.sport)?;
        let mut dport = r.u16(l.dport)?;
        if l.ports_be != 0 {
            sport = u16::from_be(sport);
            dport = u16::from_be(dport);
        }
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        match family {
            AF_INET => {
                saddr[..4].copy_from_slice(&r.array::<4>(l.saddr4)?);
                daddr[..4].copy_from_slice(&r.array::<4>(l.daddr4)?);
            }
            AF_INET6 => {
                saddr = r.array(l.saddr6)?;
                daddr = r.array(l.daddr6)?;
            }
            _ => return Err(-1),
        }
        Ok(Self { family, sport, dport, saddr, daddr })
    }

    /// The local side as an endpoint key.
    #[inline(always)]
    pub fn local(&self) -> EndpointKey {
        endpoint(self.family, self.saddr, self.sport)
    }

    /// The remote side as an endpoint key.
    #[inline(always)]
    pub fn remote(&self) -> EndpointKey {
        endpoint(self.family, self.daddr, self.dport)
    }

    /// Sends this flow to user space as an event; a full ring buffer is
    /// counted, never waited for.
    #[inline(always)]
    pub fn emit(&self, kind: u32, state: u16, reason: u32) {
        let Some(mut entry) = EVENTS.reserve::<TcpEvent>(0) else {
            count(governor_common::counter::EVENTS_LOST);
            return;
        };
        entry.write(TcpEvent {
            // SAFETY: helper without preconditions.
            timestamp_ns: unsafe { bpf_ktime_get_ns() },
            kind,
            reason,
            family: self.family,
            sport: self.sport,
            dport: self.dport,
            state,
            saddr: self.saddr,
            daddr: self.daddr,
        });
        // User space drains the ring on a short timer; waking it for every
        // event would cost more than the event itself.
        entry.submit(u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP));
    }
}

/// An endpoint key with client-side (ephemeral) ports collapsed to 0.
#[inline(always)]
fn endpoint(family: u16, addr: [u8; 16], port: u16) -> EndpointKey {
    // SAFETY: plain reads of immutable globals set at load.
    let (low, high) = unsafe {
        (
            core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.ephemeral_low),
            core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.ephemeral_high),
        )
    };
    let port = if port >= low && port <= high { 0 } else { port };
    EndpointKey { addr, port, family, pad: 0 }
}
