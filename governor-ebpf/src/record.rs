//! Reading the kernel's sockets (and, for resets sent without one, the
//! packet answered) at offsets user space resolved from the running
//! kernel's BTF. Nothing here assumes one kernel's layout.
//!
//! The tracepoint programs get the socket as a pointer the verifier knows
//! the BTF type of, and read each field with one load at its offset: the
//! offsets come from the frozen `GOVERNOR_CONFIG`, so they are constants to
//! the verifier, which checks every load against the socket's type. Fields
//! of `struct tcp_sock` (beyond `struct sock`) are loaded the same way from
//! the socket as `bpf_skc_to_tcp_sock` gives it ([`TcpSock`]). The packet
//! of a reset sent without a socket, and sockets the table sweep reaches by
//! their address ([`Probed`]), are read with `bpf_probe_read_kernel`.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::{
    bpf_ktime_get_ns,
    generated::{bpf_probe_read_kernel, bpf_skc_to_tcp_sock},
};
use governor_common::{AF_INET, AF_INET6, EndpointKey, FlowAddrs, SockLayout, SockOffsets, TcpEvent};

use crate::maps::{EVENTS, GOVERNOR_CONFIG, count};

/// A field of `GOVERNOR_CONFIG.layout`, read where it is used: a value
/// loaded from the frozen global is a constant to the verifier, which the
/// direct loads below need (copied onto the stack first, it would not be).
macro_rules! layout {
    ($field:ident) => {
        // SAFETY: plain read of an immutable global set at load.
        unsafe { core::ptr::read_volatile(&raw const crate::maps::GOVERNOR_CONFIG.layout.$field) }
    };
}
pub(crate) use layout;

/// A field of `GOVERNOR_CONFIG.sock`, read where it is used, as
/// [`layout!`] reads the layout's.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: plain read of an immutable global set at load.
        unsafe { core::ptr::read_volatile(&raw const crate::maps::GOVERNOR_CONFIG.sock.$field) }
    };
}
pub(crate) use offset;

/// Both ends of a connection, local first.
pub struct Flow {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl Flow {
    /// Reads family, ports and addresses of the socket at `sk`, a pointer
    /// the kernel passed to a `tp_btf` program: plain loads at the BTF
    /// offsets, which the verifier checks against `struct sock` (no helper
    /// call, no copy).
    #[inline(always)]
    pub fn of(sk: u64) -> Result<Self, i64> {
        let family: u16 = direct(sk, layout!(family));
        let mut sport: u16 = direct(sk, layout!(sport));
        let mut dport: u16 = direct(sk, layout!(dport));
        let ports_be = layout!(ports_be);
        if ports_be & SockLayout::SPORT_BE != 0 {
            sport = u16::from_be(sport);
        }
        if ports_be & SockLayout::DPORT_BE != 0 {
            dport = u16::from_be(dport);
        }
        let (saddr, daddr) = match family {
            AF_INET => (widen(direct(sk, layout!(saddr4))), widen(direct(sk, layout!(daddr4)))),
            // A kernel without IPv6 has no such sockets, nor offsets.
            AF_INET6 if layout!(saddr6) != 0 => (direct6(sk, layout!(saddr6)), direct6(sk, layout!(daddr6))),
            _ => return Err(-1),
        };
        Ok(Self { family, sport, dport, saddr, daddr })
    }

    /// The connection a reset sent without a socket answers, from the
    /// packet that drew it (`skb`): its destination is the local side.
    #[inline(always)]
    pub fn answered(skb: u64, o: &SockOffsets) -> Result<Self, i64> {
        // The verifier wants the null check before any arithmetic.
        if skb == 0 {
            return Err(-1);
        }
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

/// A `T` of the socket at `sk` (a `tp_btf` argument) at `offset`: one load,
/// checked by the verifier against the socket's BTF type.
#[inline(always)]
pub fn direct<T: Copy>(sk: u64, offset: impl Into<u64>) -> T {
    // SAFETY: the verifier admits the load only inside a field of the
    // socket of the right size; a bad pointer reads as zero.
    unsafe { core::ptr::read_volatile((sk + offset.into()) as *const T) }
}

/// An IPv6 address of the socket at `sk` at `offset`, in two loads.
#[inline(always)]
fn direct6(sk: u64, offset: u16) -> [u8; 16] {
    let low: u64 = direct(sk, offset);
    let high: u64 = direct(sk, offset + 8);
    (u128::from(low) | u128::from(high) << 64).to_le_bytes()
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

/// Reads a field of a socket at a BTF-resolved offset; `None` when this
/// kernel lacks the field ([`SockOffsets::ABSENT`]) or the read fails. The
/// offset must come from [`offset!`] where it is used, so that the direct
/// loads see a constant.
pub trait SockRead {
    fn field<T: Copy>(&self, offset: u32) -> Option<T>;
}

/// A socket known only by its address (the table sweep's): probe reads.
pub struct Probed(pub u64);

impl SockRead for Probed {
    #[inline(always)]
    fn field<T: Copy>(&self, offset: u32) -> Option<T> {
        sock_field(self.0, offset)
    }
}

/// A socket a `tp_btf` program was given, as the `struct tcp_sock` it is:
/// plain loads, checked by the verifier against that type, for the fields
/// past `struct sock` too.
pub struct TcpSock(u64);

impl TcpSock {
    /// `None` for a socket that is not a full TCP socket.
    #[inline(always)]
    pub fn of(sk: u64) -> Option<Self> {
        // SAFETY: `sk` is a socket pointer the kernel passed to the program;
        // the helper checks its type and returns NULL when it is not one.
        let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) };
        if tp.is_null() { None } else { Some(Self(tp as u64)) }
    }
}

impl SockRead for TcpSock {
    #[inline(always)]
    fn field<T: Copy>(&self, offset: u32) -> Option<T> {
        (offset != SockOffsets::ABSENT).then(|| direct(self.0, offset))
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
