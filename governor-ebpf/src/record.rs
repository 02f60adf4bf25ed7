//! Reading the kernel's sockets (and, for resets sent without one, the
//! packet answered) at offsets user space resolved from the running
//! kernel's BTF. Nothing here assumes one kernel's layout.
//!
//! A program copies a span of the socket onto its stack (one helper call)
//! and picks the fields out of the copy; the bounds checks give the verifier
//! the limits it needs for the variable offsets.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_probe_read_kernel};
use governor_common::{
    AF_INET, AF_INET6, EndpointKey, FlowAddrs, SOCK_COPY_MAX, SockLayout, SockOffsets, Span, TcpEvent,
};

use crate::maps::{EVENTS, GOVERNOR_CONFIG, count};

/// A copy of one span of a socket. Only the `len` bytes copied are ever
/// read: zeroing the whole buffer first would cost a memset on every event.
pub struct Record<'a> {
    bytes: &'a mut Buffer,
    start: usize,
    len: usize,
}

/// The bytes of a [`Record`]: a local of its own in the program's stack
/// frame. Inside the `Record` struct, LLVM folds the uninitialised bytes and
/// the neighbouring fields into one memset of the whole struct, which costs
/// more than the rest of the program.
pub type Buffer = MaybeUninit<[u8; SOCK_COPY_MAX]>;

impl<'a> Record<'a> {
    /// An empty copy into `bytes` (one per program: moving a filled buffer
    /// around would overflow the 512-byte BPF stack).
    #[inline(always)]
    pub fn new(bytes: &'a mut Buffer) -> Self {
        Self { bytes, start: 0, len: 0 }
    }

    /// Copies `span` of the kernel object at `base` (a socket), replacing
    /// what was copied before.
    #[inline(always)]
    pub fn fill(&mut self, base: u64, span: Span) -> Result<(), i64> {
        let len = usize::from(span.len);
        if len == 0 || len > SOCK_COPY_MAX {
            return Err(-1);
        }
        self.len = 0;
        // SAFETY: the helper copes with any source address and writes
        // exactly `len` bytes (within the buffer) or fails.
        let rc = unsafe {
            bpf_probe_read_kernel(
                self.bytes.as_mut_ptr().cast::<c_void>(),
                u32::from(span.len),
                (base + u64::from(span.start)) as *const c_void,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        self.start = usize::from(span.start);
        self.len = len;
        Ok(())
    }

    /// Does the copy hold all of `span`?
    #[inline(always)]
    pub fn holds(&self, span: Span) -> bool {
        let start = usize::from(span.start);
        self.len > 0 && start >= self.start && start + usize::from(span.len) <= self.start + self.len
    }

    #[inline(always)]
    fn array<const N: usize>(&self, offset: u16) -> Result<[u8; N], i64> {
        let offset = usize::from(offset);
        if offset < self.start {
            return Err(-1);
        }
        let at = offset - self.start;
        // `fill` keeps `len` within the buffer, but the verifier may not
        // have kept that bound: it checks the one it sees here.
        if at + N > self.len || self.len > SOCK_COPY_MAX {
            return Err(-1);
        }
        // SAFETY: `at + N <= len`: these bytes were written by `fill`.
        Ok(unsafe { self.bytes.as_ptr().cast::<u8>().add(at).cast::<[u8; N]>().read_unaligned() })
    }

    #[inline(always)]
    pub fn u8(&self, offset: u16) -> Result<u8, i64> {
        self.array::<1>(offset).map(|[b]| b)
    }

    #[inline(always)]
    pub fn u16(&self, offset: u16) -> Result<u16, i64> {
        self.array(offset).map(u16::from_ne_bytes)
    }
}

/// Both ends of a connection, local first.
pub struct Flow {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl Flow {
    /// Reads family, ports and addresses of the socket at `sk`, copying
    /// the spans that hold them unless `r` already does.
    #[inline(always)]
    pub fn read(sk: u64, r: &mut Record, l: &SockLayout) -> Result<Self, i64> {
        if !r.holds(l.addr) {
            r.fill(sk, l.addr)?;
        }
        let family = r.u16(l.family)?;
        let mut sport = r.u16(l.sport)?;
        let mut dport = r.u16(l.dport)?;
        if l.ports_be & SockLayout::SPORT_BE != 0 {
            sport = u16::from_be(sport);
        }
        if l.ports_be & SockLayout::DPORT_BE != 0 {
            dport = u16::from_be(dport);
        }
        let (saddr, daddr) = match family {
            AF_INET => (widen(r.array(l.saddr4)?), widen(r.array(l.daddr4)?)),
            AF_INET6 => {
                r.fill(sk, l.addr6)?;
                (r.array(l.saddr6)?, r.array(l.daddr6)?)
            }
            _ => return Err(-1),
        };
        Ok(Self { family, sport, dport, saddr, daddr })
    }

    /// The connection a reset sent without a socket answers, from the
    /// packet that drew it (`skb`): its destination is the local side.
    #[inline(always)]
    pub fn answered(skb: u64, o: &SockOffsets) -> Result<Self, i64> {
        if o.skb_head == SockOffsets::ABSENT
            || o.skb_network_header == SockOffsets::ABSENT
            || o.skb_transport_header == SockOffsets::ABSENT
        {
            return Err(-1);
        }
        let head: u64 = read_kernel(skb + u64::from(o.skb_head))?;
        let network: u16 = read_kernel(skb + u64::from(o.skb_network_header))?;
        let transport: u16 = read_kernel(skb + u64::from(o.skb_transport_header))?;
        let ports: [u8; 4] = read_kernel(head + u64::from(transport))?;
        let remote_port = u16::from_be_bytes([ports[0], ports[1]]);
        let local_port = u16::from_be_bytes([ports[2], ports[3]]);
        let ip = head + u64::from(network);
        let version: u8 = read_kernel(ip)?;
        let (family, remote, local) = match version >> 4 {
            4 => {
                let addrs: [u8; 8] = read_kernel(ip + 12)?;
                let (src, dst) = ([addrs[0], addrs[1], addrs[2], addrs[3]], [addrs[4], addrs[5], addrs[6], addrs[7]]);
                (AF_INET, widen(src), widen(dst))
            }
            6 => {
                let src: [u8; 16] = read_kernel(ip + 8)?;
                let dst: [u8; 16] = read_kernel(ip + 24)?;
                (AF_INET6, src, dst)
            }
            _ => return Err(-1),
        };
        Ok(Self { family, sport: local_port, dport: remote_port, saddr: local, daddr: remote })
    }

    /// The local side as an endpoint key.
    #[inline(always)]
    pub fn local(&self) -> EndpointKey {
        endpoint(self.family, self.saddr, self.sport)
    }

    /// The local side as it is, ephemeral ports included: the key of a
    /// listening socket.
    #[inline(always)]
    pub fn local_exact(&self) -> EndpointKey {
        EndpointKey { addr: self.saddr, port: self.sport, family: self.family, pad: 0 }
    }

    /// The remote side as it is: the endpoint an outgoing connection went
    /// to, counted under its own port even in the ephemeral range (a
    /// service there, gRPC's 50051 for one, has its connect failures
    /// counted under that port too).
    #[inline(always)]
    pub fn remote_exact(&self) -> EndpointKey {
        EndpointKey { addr: self.daddr, port: self.dport, family: self.family, pad: 0 }
    }

    /// Both sides as the per-socket table stores them.
    #[inline(always)]
    pub fn addrs(&self) -> FlowAddrs {
        FlowAddrs {
            saddr: self.saddr,
            daddr: self.daddr,
            family: self.family,
            sport: self.sport,
            dport: self.dport,
            pad: 0,
        }
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

/// A `T` copied from kernel memory at `addr`.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "T is a few bytes")]
pub fn read_kernel<T: Copy>(addr: u64) -> Result<T, i64> {
    let mut value = MaybeUninit::<T>::uninit();
    // SAFETY: the helper copes with any source address and writes exactly
    // `size_of::<T>()` bytes into `value` or fails.
    let rc = unsafe {
        bpf_probe_read_kernel(
            value.as_mut_ptr().cast::<c_void>(),
            core::mem::size_of::<T>() as u32,
            addr as *const c_void,
        )
    };
    if rc == 0 {
        // SAFETY: the helper succeeded and wrote every byte; `T` is plain
        // integers.
        Ok(unsafe { value.assume_init() })
    } else {
        Err(rc)
    }
}

/// A field of the kernel object at `base` (a socket) at a BTF-resolved
/// offset; `None` when this kernel lacks the field
/// ([`SockOffsets::ABSENT`]) or the read fails.
#[inline(always)]
pub fn sock_field<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if offset == SockOffsets::ABSENT {
        return None;
    }
    read_kernel(base + u64::from(offset)).ok()
}

/// An IPv4 address in the first four bytes of sixteen, the rest zero,
/// built in registers: zeroing a byte array and copying into it compiles to
/// a call of the byte-by-byte memset.
#[inline(always)]
pub fn widen(v4: [u8; 4]) -> [u8; 16] {
    u128::from(u32::from_le_bytes(v4)).to_le_bytes()
}

/// An endpoint key with client-side (ephemeral) ports collapsed to 0.
#[inline(always)]
pub fn endpoint(family: u16, addr: [u8; 16], port: u16) -> EndpointKey {
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
