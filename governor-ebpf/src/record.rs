//! Reading tracepoint records at offsets user space found in the
//! tracepoints' `format` files. Nothing here assumes one kernel's layout.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use governor_common::{AF_INET, AF_INET6, EndpointKey, TcpEvent, TpLayout};

use crate::maps::{EVENTS, GOVERNOR_CONFIG, count};

/// Reads a field of type `T` at `offset`; fails for absent fields.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u16) -> Result<T, i64> {
    if offset == TpLayout::ABSENT {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel copes with any address; the offset comes
    // from the tracepoint's own format description.
    unsafe { ctx.read_at::<T>(usize::from(offset)) }.map_err(i64::from)
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
    pub fn read(ctx: &TracePointContext, l: &TpLayout) -> Result<Self, i64> {
        let family: u16 = field(ctx, l.family)?;
        let mut sport: u16 = field(ctx, l.sport)?;
        let mut dport: u16 = field(ctx, l.dport)?;
        if l.ports_be != 0 {
            sport = u16::from_be(sport);
            dport = u16::from_be(dport);
        }
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        match family {
            AF_INET => {
                let s: [u8; 4] = field(ctx, l.saddr4)?;
                let d: [u8; 4] = field(ctx, l.daddr4)?;
                saddr[..4].copy_from_slice(&s);
                daddr[..4].copy_from_slice(&d);
            }
            AF_INET6 => {
                saddr = field(ctx, l.saddr6)?;
                daddr = field(ctx, l.daddr6)?;
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
