//! Types shared by the kernel programs (`governor-ebpf`) and the daemon
//! (`governor`). Everything here is `#[repr(C)]`, holds only integers and
//! integer arrays, and spells its padding out, so both sides agree on the
//! layout byte for byte. User space converts the integers into enums with
//! `TryFrom`.
#![no_std]

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
/// Address families as the kernel numbers them.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`; `sock:inet_sock_set_state` also fires for SCTP and DCCP.
pub const IPPROTO_TCP: u16 = 6;

/// Slots per side of the state-transition matrix. Kernel TCP states run from
/// 1 (`TCP_ESTABLISHED`) to 13 (`TCP_BOUND_INACTIVE`); 16 leaves room.
pub const TCP_STATE_SLOTS: u32 = 16;
/// Entries of the per-CPU transition matrix, indexed `from * 16 + to`.
pub const TRANSITION_SLOTS: u32 = TCP_STATE_SLOTS * TCP_STATE_SLOTS;

/// Slots of the per-CPU array of sent resets by `enum sk_rst_reason`; larger
/// reasons are counted in the last slot.
pub const RESET_REASON_SLOTS: u32 = 64;

/// Indices of the per-CPU host counters array.
pub mod counter {
    pub const RESETS_SENT: u32 = 0;
    pub const RESETS_RECEIVED: u32 = 1;
    pub const RETRANSMITS: u32 = 2;
    /// Events the ring buffer could not take.
    pub const EVENTS_LOST: u32 = 3;
    /// Endpoint entries that could not be created in the LRU table.
    pub const ENDPOINT_UPDATE_FAILED: u32 = 4;
    /// Tracepoint records whose fields could not be read.
    pub const READ_ERRORS: u32 = 5;
    /// Size of the array.
    pub const SLOTS: u32 = 8;
}

/// The largest part of a tracepoint record a program copies. One copy of the
/// record costs one helper call; reading field by field costs one per field.
pub const TP_RECORD_MAX: usize = 128;

/// Where the fields a program needs sit inside one tracepoint's record, as
/// read from `/sys/kernel/tracing/events/<cat>/<name>/format` at start-up.
///
/// Offsets are bytes from the start of the record. [`TpLayout::ABSENT`] marks
/// a field this tracepoint does not have. Some tracepoints store addresses as
/// `struct sockaddr_in{,6}` (family, big-endian port, address); user space
/// then points the family/port/address offsets inside those structs and sets
/// `ports_be`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpLayout {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr4: u16,
    pub daddr4: u16,
    pub saddr6: u16,
    pub daddr6: u16,
    /// 1 when `sport`/`dport` hold network byte order, 0 for host order.
    pub ports_be: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub protocol: u16,
    /// `enum sk_rst_reason` of `tcp:tcp_send_reset`.
    pub reason: u16,
    pub state: u16,
    /// The fields every event needs, copied in one read.
    pub primary: Span,
    /// Family, ports and IPv4 addresses.
    pub addr: Span,
    /// IPv6 addresses, copied only for IPv6 flows.
    pub addr6: Span,
    pub pad: u16,
}

/// A run of bytes in a tracepoint record that a program copies in one
/// helper call (at most [`TP_RECORD_MAX`] bytes). The helper's cost grows
/// with the bytes copied, so programs copy only the spans they need.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u16,
    pub len: u16,
}

impl TpLayout {
    pub const ABSENT: u16 = u16::MAX;
    pub const EMPTY: Self = Self {
        family: Self::ABSENT,
        sport: Self::ABSENT,
        dport: Self::ABSENT,
        saddr4: Self::ABSENT,
        daddr4: Self::ABSENT,
        saddr6: Self::ABSENT,
        daddr6: Self::ABSENT,
        ports_be: 0,
        oldstate: Self::ABSENT,
        newstate: Self::ABSENT,
        protocol: Self::ABSENT,
        reason: Self::ABSENT,
        state: Self::ABSENT,
        primary: Span { start: 0, len: 0 },
        addr: Span { start: 0, len: 0 },
        addr6: Span { start: 0, len: 0 },
        pad: 0,
    };
}

/// Load-time configuration, written by user space into the `GOVERNOR_CONFIG`
/// global before the programs are loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    pub inet_sock_set_state: TpLayout,
    pub tcp_send_reset: TpLayout,
    pub tcp_receive_reset: TpLayout,
    pub tcp_retransmit_skb: TpLayout,
    /// Ports in `ephemeral_low..=ephemeral_high` are stored as port 0 in the
    /// endpoint table, so client-side ports do not crowd out services.
    /// `ephemeral_low > ephemeral_high` turns collapsing off.
    pub ephemeral_low: u16,
    pub ephemeral_high: u16,
    pub pad: u32,
}

impl KernelConfig {
    pub const EMPTY: Self = Self {
        inet_sock_set_state: TpLayout::EMPTY,
        tcp_send_reset: TpLayout::EMPTY,
        tcp_receive_reset: TpLayout::EMPTY,
        tcp_retransmit_skb: TpLayout::EMPTY,
        ephemeral_low: 1,
        ephemeral_high: 0,
        pad: 0,
    };
}

/// A service endpoint: address and port. IPv4 addresses fill the first four
/// bytes of `addr`, the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub addr: [u8; 16],
    /// Host byte order; 0 for a collapsed ephemeral port.
    pub port: u16,
    pub family: u16,
    pub pad: u32,
}

/// Counters per endpoint, updated with atomic adds by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Resets sent from this endpoint (it is the local side).
    pub resets_sent: u64,
    /// Resets received from this endpoint (it is the remote side).
    pub resets_received: u64,
    /// Segments retransmitted towards this endpoint (the remote side).
    pub retransmits: u64,
    pub reserved: u64,
}

/// Kinds of [`TcpEvent`].
pub mod event_kind {
    pub const RESET_SENT: u32 = 1;
    pub const RESET_RECEIVED: u32 = 2;
    /// An active open that went from `SYN_SENT` straight to `CLOSE`.
    pub const CONNECT_FAILED: u32 = 3;
}

/// A discrete event carried by the ring buffer. `saddr`/`sport` are the local
/// side, `daddr`/`dport` the remote side, ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// `bpf_ktime_get_ns()` at the event.
    pub timestamp_ns: u64,
    pub kind: u32,
    /// `enum sk_rst_reason` for a sent reset, 0 otherwise.
    pub reason: u32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    /// TCP state of the socket when the event happened (0 if unknown).
    pub state: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    use super::{EndpointKey, EndpointStats, KernelConfig, Span, TcpEvent, TpLayout};

    // SAFETY: all of these are #[repr(C)], made of integers with explicit
    // padding fields, so every bit pattern is valid and none has holes.
    unsafe impl aya::Pod for TpLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Span {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TcpEvent {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!((size_of::<Span>(), align_of::<Span>()), (4, 2));
        assert_eq!((size_of::<TpLayout>(), align_of::<TpLayout>()), (40, 2));
        assert_eq!((size_of::<KernelConfig>(), align_of::<KernelConfig>()), (168, 4));
        assert_eq!((size_of::<EndpointKey>(), align_of::<EndpointKey>()), (24, 4));
        assert_eq!((size_of::<EndpointStats>(), align_of::<EndpointStats>()), (32, 8));
        assert_eq!((size_of::<TcpEvent>(), align_of::<TcpEvent>()), (56, 8));
    }
}
