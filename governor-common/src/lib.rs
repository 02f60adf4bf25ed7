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

/// The connection histograms the kernel keeps (`HISTOGRAMS`, per CPU):
/// handshake time of active and of passive opens, and connection
/// lifetime. Each has `HISTOGRAM_BOUNDS + 1` bucket counts (the last for
/// values above every bound, or at padding bounds), then the sum of the
/// values in nanoseconds.
pub mod histogram {
    pub const HANDSHAKE_ACTIVE: u32 = 0;
    pub const HANDSHAKE_PASSIVE: u32 = 1;
    pub const DURATION: u32 = 2;
    pub const COUNT: u32 = 3;
    /// Upper bounds (inclusive, ns) per histogram; unused ones are
    /// `u64::MAX`.
    pub const BOUNDS: usize = 16;
    /// Slots per histogram: the buckets, then the sum.
    #[expect(clippy::cast_possible_truncation, reason = "16 fits")]
    pub const SLOTS: u32 = BOUNDS as u32 + 2;
    /// The sum's slot within a histogram.
    pub const SUM: u32 = SLOTS - 1;
}

/// Indices of the per-CPU host counters array.
pub mod counter {
    pub const RESETS_SENT: u32 = 0;
    pub const RESETS_RECEIVED: u32 = 1;
    pub const RETRANSMITS: u32 = 2;
    /// Events the ring buffer could not take.
    pub const EVENTS_LOST: u32 = 3;
    /// Endpoint entries that could not be created in the LRU table.
    pub const ENDPOINT_UPDATE_FAILED: u32 = 4;
    /// Sockets or packets whose fields could not be read.
    pub const READ_ERRORS: u32 = 5;
    /// Sockets the per-socket table could not take.
    pub const SOCKET_UPDATE_FAILED: u32 = 6;
    /// Closes of established sockets the per-socket table did not know
    /// (opened before governor started, or evicted from the full table).
    pub const SOCKET_UNTRACKED: u32 = 7;
    /// Size of the array.
    pub const SLOTS: u32 = 8;
}

/// Where the fields the programs read sit inside the kernel's `struct sock`
/// (its first member, `struct sock_common`, holds the addresses), resolved
/// from the running kernel's BTF at start-up: the `tp_btf` tracepoints hand
/// the programs the socket, not a formatted record, and the programs load
/// each field with one instruction that the verifier checks against the
/// socket's BTF type.
///
/// Offsets are bytes from the start of the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockLayout {
    /// `skc_family` (`unsigned short`).
    pub family: u16,
    /// `skc_num`: the local port, host order.
    pub sport: u16,
    /// `skc_dport`: the remote port, network order.
    pub dport: u16,
    /// `skc_rcv_saddr`, `skc_daddr` (`__be32`).
    pub saddr4: u16,
    pub daddr4: u16,
    /// `skc_v6_rcv_saddr`, `skc_v6_daddr` (`struct in6_addr`).
    pub saddr6: u16,
    pub daddr6: u16,
    /// Which ports hold network byte order: [`SockLayout::SPORT_BE`],
    /// [`SockLayout::DPORT_BE`].
    pub ports_be: u16,
    /// `skc_state` (`unsigned char`).
    pub state: u16,
    /// `sk_protocol` (`u16`), outside `sock_common`.
    pub protocol: u16,
}

impl SockLayout {
    pub const SPORT_BE: u16 = 1;
    pub const DPORT_BE: u16 = 2;
    pub const EMPTY: Self = Self {
        family: 0,
        sport: 0,
        dport: 0,
        saddr4: 0,
        daddr4: 0,
        saddr6: 0,
        daddr6: 0,
        ports_be: 0,
        state: 0,
        protocol: 0,
    };
}

/// Load-time configuration, written by user space into the `GOVERNOR_CONFIG`
/// global before the programs are loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// Where the programs find addresses, ports and state in a socket.
    pub layout: SockLayout,
    /// Ports in `ephemeral_low..=ephemeral_high` are stored as port 0 in the
    /// endpoint table, so client-side ports do not crowd out services.
    /// `ephemeral_low > ephemeral_high` turns collapsing off.
    pub ephemeral_low: u16,
    pub ephemeral_high: u16,
    /// `KernelConfig::COUNT_FLOWS`, `KernelConfig::RESET_REASON_ARG`.
    pub flags: u32,
    /// Further fields of the kernel's socket and packet structs, from the
    /// running kernel's BTF.
    pub sock: SockOffsets,
    /// Reset events per endpoint between two readings of the maps; the
    /// rest are only counted (`EndpointStats::reported`). 0: no limit.
    pub reset_events: u32,
    pub pad: u32,
    /// Bucket bounds of the handshake histograms (ns, inclusive).
    pub handshake_bounds_ns: [u64; histogram::BOUNDS],
    /// Bucket bounds of the connection lifetime histogram.
    pub duration_bounds_ns: [u64; histogram::BOUNDS],
}

/// Byte offsets of socket fields, resolved from BTF at start-up;
/// [`SockOffsets::ABSENT`] when this kernel lacks the field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// `struct sock.sk_err` (`int`): the error a failed connect or a reset
    /// connection ends with (`ECONNREFUSED`, `ETIMEDOUT`, `ECONNRESET`).
    pub sk_err: u32,
    /// `struct tcp_sock.srtt_us` (`u32`, smoothed RTT << 3): on a passive
    /// open it holds the SYN-ACK round trip when the handshake completes.
    pub srtt_us: u32,
    /// `struct sk_buff.head` (`unsigned char *`), `network_header` and
    /// `transport_header` (`__u16`, offsets from `head`): where a reset sent
    /// without a socket finds the addresses of the packet it answers.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    /// `struct tcp_sock` counters the flow table copies: `bytes_sent`,
    /// `bytes_retrans`, `bytes_received` (`u64`), `data_segs_out`,
    /// `data_segs_in` (`u32`).
    pub bytes_sent: u32,
    pub bytes_retrans: u32,
    pub bytes_received: u32,
    pub data_segs_out: u32,
    pub data_segs_in: u32,
    /// `struct sock.sk_shutdown` (`u8`): `RCV_SHUTDOWN` once a FIN arrived,
    /// whose sequence number `bytes_received` counts as a byte.
    pub sk_shutdown: u32,
    /// `struct sock_common.skc_net` (the socket's network namespace) and
    /// `struct net.ns.inum` (its inode number, as `/proc/<pid>/ns/net`
    /// shows it): listeners are told apart by namespace, so that two pods
    /// listening on the same wildcard address and port are two listeners.
    pub skc_net: u32,
    pub net_inum: u32,
    /// `struct sock.sk_socket` (the `struct socket` of a socket a process
    /// still holds) and, from there, the socket's inode number
    /// (`struct socket_alloc.vfs_inode` plus `struct inode.i_ino`): what
    /// `/proc/<pid>/fd` shows, for the owners of connections the programs
    /// did not see open.
    pub sk_socket: u32,
    pub socket_ino: u32,
}

impl SockOffsets {
    pub const ABSENT: u32 = u32::MAX;
}

impl KernelConfig {
    /// Flag: keep the per-flow table.
    pub const COUNT_FLOWS: u32 = 1;
    /// Flag: `tcp:tcp_send_reset` passes `enum sk_rst_reason` as its third
    /// argument (Linux 6.10 and later).
    pub const RESET_REASON_ARG: u32 = 2;
    pub const EMPTY: Self = Self {
        layout: SockLayout::EMPTY,
        ephemeral_low: 1,
        ephemeral_high: 0,
        flags: 0,
        reset_events: 0,
        pad: 0,
        handshake_bounds_ns: [u64::MAX; histogram::BOUNDS],
        duration_bounds_ns: [u64::MAX; histogram::BOUNDS],
        sock: SockOffsets {
            sk_err: SockOffsets::ABSENT,
            srtt_us: SockOffsets::ABSENT,
            skb_head: SockOffsets::ABSENT,
            skb_network_header: SockOffsets::ABSENT,
            skb_transport_header: SockOffsets::ABSENT,
            bytes_sent: SockOffsets::ABSENT,
            bytes_retrans: SockOffsets::ABSENT,
            bytes_received: SockOffsets::ABSENT,
            data_segs_out: SockOffsets::ABSENT,
            data_segs_in: SockOffsets::ABSENT,
            sk_shutdown: SockOffsets::ABSENT,
            skc_net: SockOffsets::ABSENT,
            net_inum: SockOffsets::ABSENT,
            sk_socket: SockOffsets::ABSENT,
            socket_ino: SockOffsets::ABSENT,
        },
    };
}

/// A service endpoint: address and port. IPv4 addresses fill the first four
/// bytes of `addr`, the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    /// TCP payload bytes this host's sockets sent on connections of this
    /// endpoint (to it when it is remote, from it when it is local).
    pub bytes_sent: u64,
    /// TCP payload bytes this host's sockets received on them.
    pub bytes_received: u64,
    /// Connections this host opened to this endpoint (it is the remote
    /// side) whose handshake completed.
    pub connects: u64,
    /// The reading of the maps (`READING`) the count below belongs to.
    pub reading: u64,
    /// Reset events sent for this endpoint since that reading.
    pub reported: u64,
}

/// Length of the rate window of [`FlowCounts`].
pub const FLOW_RATE_WINDOW_NS: u64 = 1_000_000_000;

/// The byte and packet counts of one connection, kept beside its
/// [`SockInfo`] in the per-socket table (no table of its own, so nothing
/// is inserted or removed for them). Nothing counts per packet: the kernel
/// already counts every TCP socket's bytes and segments (`struct
/// tcp_sock`), and the flow sampler (`flow_sample.rs`, run by user space)
/// and the close copy them here, adding what grew to the endpoint's
/// totals. Bytes are TCP payload, each byte once: sent (`bytes_sent` less
/// `bytes_retrans`) and received in order (`bytes_received`, less the
/// FIN's sequence number); packets are the segments that carried data
/// (`data_segs_out`, `data_segs_in`, retransmissions included).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Start of the current rate window and the bytes inside it.
    pub window_start_ns: u64,
    pub window_sent: u64,
    pub window_received: u64,
    /// The last complete window: its length and bytes (0 before the first
    /// window completed).
    pub last_window_ns: u64,
    pub last_sent: u64,
    pub last_received: u64,
    /// The socket's own `bytes_sent` and `bytes_received` when last read:
    /// a sample reads the rest only when one of them moved.
    pub seen_sent: u64,
    pub seen_received: u64,
}

/// A value of the per-socket table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEntry {
    pub info: SockInfo,
    pub flow: FlowCounts,
}

/// Kinds of ring buffer events. Every event starts with
/// `timestamp_ns: u64, kind: u32`; the kind says which struct follows.
pub mod event_kind {
    /// [`TcpEvent`](super::TcpEvent).
    pub const RESET_SENT: u32 = 1;
    /// [`TcpEvent`](super::TcpEvent).
    pub const RESET_RECEIVED: u32 = 2;
    /// [`ConnEvent`](super::ConnEvent): an active open that went from
    /// `SYN_SENT` straight to `CLOSE`; `error` says why.
    pub const CONNECT_FAILED: u32 = 3;
    /// [`ConnEvent`](super::ConnEvent), from the sweep: a connection is
    /// open (see [`announce`](super::announce)).
    pub const OPENED: u32 = 4;
    /// [`ConnEvent`](super::ConnEvent), from the sweep: the peer closed and
    /// the socket waits for its owner to close it.
    pub const CLOSE_WAIT: u32 = 5;
    /// [`ConnEvent`](super::ConnEvent): the owner closed a socket user
    /// space was told is in `CLOSE_WAIT`; `state` is the state it went to.
    pub const CLOSE_WAIT_LEFT: u32 = 6;
    /// [`ConnEvent`](super::ConnEvent): an established connection user
    /// space was told of ended, or an outgoing one was reset by its peer;
    /// `state` is the state it left, `error` set when it was reset.
    pub const CLOSED: u32 = 7;
    /// [`ConnEvent`](super::ConnEvent): a socket started listening.
    pub const LISTEN: u32 = 8;
    /// [`ConnEvent`](super::ConnEvent): a listening socket closed.
    pub const LISTEN_CLOSED: u32 = 9;
}

/// Directions of a connection.
pub mod direction {
    /// This host connected.
    pub const ACTIVE: u8 = 1;
    /// This host accepted.
    pub const PASSIVE: u8 = 2;
}

/// The process a socket belongs to: who connected or listened, captured in
/// its own context; accepted sockets take their listener's owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// cgroup v2 id (the inode of the cgroup's directory).
    pub cgroup_id: u64,
    /// Thread group id: the process id.
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// Command name, NUL padded.
    pub comm: [u8; 16],
}

/// Both ends of a connection: local is `s`, remote is `d`; ports in host
/// order; IPv4 addresses fill the first four bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowAddrs {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub pad: u16,
}

/// One socket in the per-socket table, keyed by its kernel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    /// `bpf_ktime_get_ns()` when the socket started connecting (active) or
    /// sent its SYN-ACK (passive: the handshake's end less its round trip;
    /// an incoming connection gets its entry only when the handshake
    /// completes).
    pub open_ns: u64,
    /// When the handshake completed; 0 before.
    pub established_ns: u64,
    /// When it entered `CLOSE_WAIT`; 0 when it is not there.
    pub close_wait_ns: u64,
    /// Handshake time: `SYN_SENT` to `ESTABLISHED` for active opens, the
    /// SYN-ACK round trip for passive ones.
    pub handshake_ns: u64,
    pub owner: Owner,
    /// Filled when the handshake completes (the local port of an active
    /// open is not chosen yet at `SYN_SENT`).
    pub addrs: FlowAddrs,
    /// `direction::ACTIVE` or `direction::PASSIVE`.
    pub direction: u8,
    /// Current TCP state.
    pub state: u8,
    /// The bits of [`sock_flags`].
    pub flags: u8,
    pub pad: [u8; 5],
    /// What user space was told of this connection and how far its entry
    /// is written: the bits of [`announce`], a count of the changes made
    /// to the entry, and a ticket taken from `open_ns` (so that an entry
    /// reused for another socket never matches an old reading). Read by
    /// user space only when it rebuilds its view from the table.
    pub announce: u64,
}

/// What else the per-socket table knows of an entry.
pub mod sock_flags {
    /// The programs did not see the connection open (it did before they
    /// attached, or its entry was evicted): it was found entering
    /// `CLOSE_WAIT`, its open and handshake times are unknown, and its
    /// lifetime is not counted.
    pub const OPEN_UNSEEN: u8 = 1;
}

/// Connections are not reported as they open or close: most live for less
/// than a second, and the kernel counts them itself (`histogram`, and
/// `EndpointStats::connects`). The sweep (`flow_sample.rs`) tells user
/// space of the connections still open (`OPENED`) and of those waiting in
/// `CLOSE_WAIT`, and only their closes are reported (`CLOSED`; outgoing
/// connections reset by their peer too). The per-socket entry's
/// `announce` word records what was told. Transitions and the
/// sweep both change it, only with compare-and-exchange; transitions write
/// the entry's fields first and the word last, so a sweep that read the
/// word before a transition fails its exchange and tells nothing stale.
pub mod announce {
    /// The handshake completed and the entry's fields are written.
    pub const ESTABLISHED: u64 = 1;
    /// User space was told of the connection.
    pub const OPEN: u64 = 2;
    /// User space was told the connection is in `CLOSE_WAIT`.
    pub const CLOSE_WAIT: u64 = 4;
    /// The connection is closing: nothing more is announced.
    pub const CLOSING: u64 = 8;
    /// One change made by a transition.
    pub const CHANGE: u64 = 16;
    /// The bits of the change count.
    pub const CHANGES: u64 = 0xfff0;
    /// The ticket's bits start here.
    pub const TICKET_SHIFT: u32 = 16;

    /// The word of a new entry opened at `open_ns`.
    #[must_use]
    pub const fn new(open_ns: u64) -> u64 {
        open_ns << TICKET_SHIFT
    }

    /// `word` with `set` set, `clear` cleared and one more change counted.
    #[must_use]
    pub const fn changed(word: u64, set: u64, clear: u64) -> u64 {
        let bits = (word & !clear) | set;
        (bits & !CHANGES) | (word.wrapping_add(CHANGE) & CHANGES)
    }
}

/// A listening socket's owner, keyed by its local address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerInfo {
    pub owner: Owner,
    /// Kernel address of the listening socket, so that closing one of
    /// several listeners on an address does not remove another's entry.
    pub skaddr: u64,
}

/// A connection event: the socket's table entry at the moment of the
/// transition, plus what happened.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    /// `bpf_ktime_get_ns()` at the event.
    pub timestamp_ns: u64,
    /// One of `event_kind`.
    pub kind: u32,
    /// `sk_err` at the transition (an errno), 0 when none or unknown.
    pub error: u32,
    pub skaddr: u64,
    pub info: SockInfo,
    /// The socket's inode number when the table does not know its owner
    /// (announcements only; 0 otherwise): user space finds the owner by it
    /// in `/proc`.
    pub inode: u32,
    pub pad: u32,
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

/// Enforcement rules. User space keeps two sets of `POLICY_SLOTS` rules in
/// `POLICY_RULES` and switches `POLICY_ACTIVE` between them, so a reload
/// swaps every rule at once. In a set, rules fill the slots from the first
/// (kind 0 ends the set); the cgroup `connect4` and `connect6` programs
/// check every `connect()` of the host against the active set.
pub const POLICY_SLOTS: u32 = 64;

/// Entries of `POLICY_RULES`: two sets.
pub const POLICY_RULE_ENTRIES: u32 = POLICY_SLOTS * 2;

/// `POLICY_ACTIVE` entry 0: bit 0 is the set in force; [`POLICY_HAS_CAPS`]
/// says that set has concurrency caps, so connects must look up the
/// places their socket holds (without caps, that lookup is skipped).
pub const POLICY_HAS_CAPS: u32 = 2;

/// The layout of the maps pinned in pinned mode. A daemon finding pins of
/// another layout removes them instead of reusing maps it would misread;
/// raise it whenever a pinned map's key, value or size changes.
pub const PIN_LAYOUT: u32 = 1;

/// What a policy does (`PolicyRule::kind`).
pub mod policy_kind {
    /// Empty slot: the end of the set.
    pub const NONE: u8 = 0;
    /// Every matching connect is denied.
    pub const BLOCK: u8 = 1;
    /// New connections per second with a burst (a token bucket).
    pub const RATE: u8 = 2;
    /// Connections open at once (counted from `connect()` to the socket's
    /// release).
    pub const CONCURRENCY: u8 = 3;
    /// A circuit breaker per upstream endpoint: user space opens and
    /// closes it in `BREAKERS`; the rule only selects the endpoints.
    pub const BREAKER: u8 = 4;
}

/// Bandwidth policing: one entry of `BANDWIDTH` per policy cgroup and
/// direction. The `cgroup_skb` programs attached at the cgroup find it by
/// the packet's socket's cgroup or its nearest ancestor that has one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BandwidthKey {
    /// The cgroup v2 id (the inode number of its directory).
    pub cgroup_id: u64,
    /// [`BandwidthKey::EGRESS`] or [`BandwidthKey::INGRESS`].
    pub direction: u32,
    pub pad: u32,
}

impl BandwidthKey {
    pub const EGRESS: u32 = 1;
    pub const INGRESS: u32 = 2;
}

/// A byte-rate token bucket (GCRA, as the connect rate limit) and its
/// policy's state entry for the counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BandwidthRule {
    pub bytes_per_second: u64,
    /// How far ahead of now the bucket may be booked: the burst in time.
    pub tolerance_ns: u64,
    /// When the bucket will next be empty (changed by the kernel).
    pub tat_ns: u64,
    /// The policy's entry in `POLICY_DECISIONS` and `BANDWIDTH_DROPPED`.
    pub state: u32,
    /// [`PolicyRule::DRY_RUN`].
    pub flags: u32,
}

/// One upstream endpoint's breaker in `BREAKERS` (keyed by
/// [`EndpointKey`], the exact port). No entry: closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakerEntry {
    /// [`BreakerEntry::OPEN`] or [`BreakerEntry::HALF_OPEN`].
    pub state: u32,
    pub pad: u32,
    /// Half-open: connects let through as probes.
    pub probes: u64,
    /// Half-open: probes spent so far (a fetch-and-add per connect).
    pub used: u64,
}

impl BreakerEntry {
    /// Every connect is denied.
    pub const OPEN: u32 = 1;
    /// `probes` connects go through, the rest are denied.
    pub const HALF_OPEN: u32 = 2;
}

/// One outbound admission rule. A connect matches when its destination is
/// in the network (`net` and `mask` over the sixteen address bytes, IPv4
/// in the first four) and its port in `port_low..=port_high`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyRule {
    /// The address bytes as two native-endian words, already masked.
    pub net: [u64; 2],
    pub mask: [u64; 2],
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub port_low: u16,
    pub port_high: u16,
    /// `policy_kind`.
    pub kind: u8,
    /// [`PolicyRule::DRY_RUN`].
    pub flags: u8,
    /// The policy's entry in `POLICY_STATE` and `POLICY_DECISIONS` (below
    /// `POLICY_SLOTS`). It stays the same across reloads while the policy
    /// keeps its name and kind, so buckets, open counts and counters carry
    /// over.
    pub state: u32,
    /// With `cgroup_id`: the cgroup's level below the root (1 for a child
    /// of the root).
    pub cgroup_level: u32,
    /// Rate: nanoseconds between two tokens (10^9 / rate).
    pub interval_ns: u64,
    /// Rate: how far ahead of now the bucket may be booked, `(burst - 1) *
    /// interval_ns`: a full bucket lets `burst` connects through at once.
    pub tolerance_ns: u64,
    /// Concurrency: connections open at once.
    pub max_connections: u64,
    /// Not 0: the rule governs only processes in this cgroup (v2 id) or
    /// below it, checked with the connecting task's ancestor at
    /// `cgroup_level`.
    pub cgroup_id: u64,
}

impl PolicyRule {
    /// Count the decision, never deny.
    pub const DRY_RUN: u8 = 1;
    /// An inbound rule: it governs SYNs arriving at local listeners whose
    /// port is in `port_low..=port_high` (any address, either family), not
    /// connects.
    pub const INBOUND: u8 = 2;
}

/// Shared state of one policy, changed with atomic adds by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// Rate: the theoretical arrival time of the next connect (GCRA), on
    /// the `bpf_ktime_get_ns` clock.
    pub tat_ns: u64,
    /// Concurrency: connections admitted and not released yet.
    pub open: u64,
}

/// Decision counters per policy state entry: `state * 2` allowed,
/// `state * 2 + 1` denied.
pub const POLICY_DECISION_SLOTS: u32 = POLICY_SLOTS * 2;

#[cfg(feature = "user")]
mod pod {
    use super::{
        BandwidthKey, BandwidthRule, BreakerEntry, ConnEvent, EndpointKey, EndpointStats, FlowAddrs, KernelConfig,
        ListenerInfo, Owner, PolicyRule, PolicyState, SockEntry, SockInfo, SockLayout, SockOffsets, TcpEvent,
    };

    // SAFETY: all of these are #[repr(C)], made of integers with explicit
    // padding fields, so every bit pattern is valid and none has holes.
    unsafe impl aya::Pod for SockLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TcpEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Owner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowAddrs {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenerInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BreakerEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BandwidthKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BandwidthRule {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!((size_of::<SockLayout>(), align_of::<SockLayout>()), (20, 2));
        assert_eq!((size_of::<KernelConfig>(), align_of::<KernelConfig>()), (352, 8));
        assert_eq!((size_of::<SockOffsets>(), align_of::<SockOffsets>()), (60, 4));
        assert_eq!((size_of::<Owner>(), align_of::<Owner>()), (32, 8));
        assert_eq!((size_of::<FlowAddrs>(), align_of::<FlowAddrs>()), (40, 2));
        assert_eq!((size_of::<SockInfo>(), align_of::<SockInfo>()), (120, 8));
        assert_eq!((size_of::<ListenerInfo>(), align_of::<ListenerInfo>()), (40, 8));
        assert_eq!((size_of::<ConnEvent>(), align_of::<ConnEvent>()), (152, 8));
        assert_eq!((size_of::<EndpointKey>(), align_of::<EndpointKey>()), (24, 4));
        assert_eq!((size_of::<EndpointStats>(), align_of::<EndpointStats>()), (64, 8));
        assert_eq!((size_of::<FlowCounts>(), align_of::<FlowCounts>()), (96, 8));
        assert_eq!((size_of::<SockEntry>(), align_of::<SockEntry>()), (216, 8));
        assert_eq!((size_of::<TcpEvent>(), align_of::<TcpEvent>()), (56, 8));
        assert_eq!((size_of::<PolicyRule>(), align_of::<PolicyRule>()), (80, 8));
        assert_eq!((size_of::<PolicyState>(), align_of::<PolicyState>()), (16, 8));
        assert_eq!((size_of::<BreakerEntry>(), align_of::<BreakerEntry>()), (24, 8));
        assert_eq!((size_of::<BandwidthKey>(), align_of::<BandwidthKey>()), (16, 8));
        assert_eq!((size_of::<BandwidthRule>(), align_of::<BandwidthRule>()), (32, 8));
    }
}
