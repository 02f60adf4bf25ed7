//! The per-socket table: what `tcp_state.rs` does with each transition of a
//! TCP socket. Owners are captured where the kernel runs in the owner's
//! context (`connect()` entering `SYN_SENT`, `listen()` entering `LISTEN`);
//! accepted sockets take the owner of their listener. Openings, handshake
//! times and lifetimes are counted here (`HISTOGRAMS`, and connects per
//! endpoint). User space gets an event when a connection fails to
//! connect, when one it was told of closes or leaves `CLOSE_WAIT`, and when
//! an outgoing connection is reset; every other transition only updates
//! the table, and the sweep tells user space of the connections that stay
//! open (`governor_common::announce`).
//!
//! Addresses and ports are read only by the transitions that need them;
//! like `sk_err` and `srtt_us` they come from the socket at offsets user
//! space resolved from the kernel's BTF.

#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "TCP states fit a byte; the pid and tgid halves of bpf_get_current_pid_tgid are meant to be cut"
)]
#![expect(clippy::unnecessary_wraps, reason = "every arm has the same try_ shape")]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
};
use governor_common::{
    ConnEvent, EndpointKey, FlowCounts, KernelConfig, ListenerInfo, Owner, SockEntry, SockInfo, SockOffsets, announce,
    counter, direction, event_kind, histogram, sock_flags,
};

use crate::{
    flow,
    maps::{
        EVENTS, EndpointCounter, GOVERNOR_CONFIG, LISTENERS, SOCKETS, change_announce, count, count_endpoint, observe,
    },
    record::{Flow, Probed, SockRead, TcpSock, direct, offset},
};

pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_CLOSE_WAIT: i32 = 8;
pub const TCP_LISTEN: i32 = 10;

/// `sk_err` of a connection reset by its peer.
const ECONNRESET: u32 = 104;
const EPIPE: u32 = 32;
/// A map update refused for a key already there (`BPF_NOEXIST`).
const EEXIST: i32 = 17;

/// One transition of the socket at `skaddr`.
#[inline(always)]
pub fn transition(skaddr: u64, old: i32, new: i32) -> Result<(), i64> {
    // Each arm is a function of its own (a BPF-to-BPF call): inlined
    // together, their locals overflow the 512-byte stack. They return 0 or
    // a negative error: a `Result` would be returned through memory.
    let rc = match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => active_open(skaddr),
        // An incoming connection gets its entry when its handshake
        // completes (`established`), a few microseconds later in the same
        // softirq: most that die before never reach user space anyway.
        (TCP_LISTEN, TCP_SYN_RECV) => 0,
        (_, TCP_LISTEN) => listen(skaddr),
        (TCP_LISTEN, _) => listen_closed(skaddr),
        (TCP_SYN_SENT, TCP_CLOSE) => connect_failed(skaddr),
        (_, TCP_ESTABLISHED) => established(skaddr, old),
        (_, TCP_CLOSE) => closed(skaddr, old),
        (_, TCP_CLOSE_WAIT) => close_wait(skaddr),
        (TCP_CLOSE_WAIT, _) => close_wait_left(skaddr, new),
        _ => set_state(skaddr, new),
    };
    if rc == 0 { Ok(()) } else { Err(rc) }
}

/// The error of a `Result` as the arms return it.
#[inline(always)]
fn code(result: Result<(), i64>) -> i64 {
    match result {
        Ok(()) => 0,
        Err(e) => e,
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The task the program runs in: the owner when the kernel is in a system
/// call of the process (connect, listen).
#[inline(always)]
fn current_owner() -> Owner {
    let pid_tgid = bpf_get_current_pid_tgid();
    Owner {
        // SAFETY: helper without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Does user space want bytes counted per flow?
#[inline(always)]
fn counting_flows() -> bool {
    // SAFETY: plain read of an immutable global set at load.
    unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.flags) & KernelConfig::COUNT_FLOWS != 0 }
}

/// The key of the listener a socket at `skaddr` with `flow` belongs to:
/// its local address and port, and its network namespace in the key's
/// spare word, so that pods listening on the same wildcard address and port
/// in namespaces of their own are different listeners.
#[inline(always)]
fn listener_key(flow: &Flow, skaddr: u64) -> EndpointKey {
    EndpointKey { pad: netns(skaddr), ..flow.local_exact() }
}

/// The inode number of the network namespace of the socket at `skaddr` (a
/// `tp_btf` argument); 0 on kernels where its fields were not found.
#[inline(always)]
fn netns(skaddr: u64) -> u32 {
    let (net, inum) = (offset!(skc_net), offset!(net_inum));
    if net == SockOffsets::ABSENT || inum == SockOffsets::ABSENT {
        return 0;
    }
    // `skc_net` holds the pointer to the namespace: the verifier types the
    // loaded pointer as `struct net`, and the second load is checked
    // against that.
    let net: u64 = direct(skaddr, net);
    direct(net, inum)
}

/// `sk_err` of the socket at `skaddr` (a `tp_btf` argument); 0 on kernels
/// without it.
#[inline(always)]
fn sk_err(skaddr: u64) -> u32 {
    let at = offset!(sk_err);
    if at == SockOffsets::ABSENT {
        return 0;
    }
    direct(skaddr, at)
}

#[inline(always)]
fn insert(skaddr: u64, mut info: SockInfo) {
    info.announce = announce::new(info.open_ns);
    if SOCKETS.insert(skaddr, SockEntry { info, flow: FlowCounts::default() }, 0).is_err() {
        count(counter::SOCKET_UPDATE_FAILED);
    }
}

/// `connect()`: the calling task owns the socket. The local port is not
/// chosen yet; the addresses are filled when the handshake completes.
#[inline(never)]
fn active_open(skaddr: u64) -> i64 {
    code(try_active_open(skaddr))
}

#[inline(always)]
fn try_active_open(skaddr: u64) -> Result<(), i64> {
    let info = SockInfo {
        open_ns: now(),
        owner: current_owner(),
        direction: direction::ACTIVE,
        state: TCP_SYN_SENT as u8,
        ..SockInfo::default()
    };
    insert(skaddr, info);
    Ok(())
}

#[inline(never)]
fn listen(skaddr: u64) -> i64 {
    code(try_listen(skaddr))
}

#[inline(always)]
fn try_listen(skaddr: u64) -> Result<(), i64> {
    let flow = Flow::of(skaddr)?;
    let owner = current_owner();
    let _ = LISTENERS.insert(listener_key(&flow, skaddr), ListenerInfo { owner, skaddr }, 0);
    let info = SockInfo { open_ns: now(), owner, addrs: flow.addrs(), state: TCP_LISTEN as u8, ..SockInfo::default() };
    emit(event_kind::LISTEN, info.open_ns, skaddr, &info, 0);
    Ok(())
}

#[inline(never)]
fn listen_closed(skaddr: u64) -> i64 {
    code(try_listen_closed(skaddr))
}

#[inline(always)]
fn try_listen_closed(skaddr: u64) -> Result<(), i64> {
    let flow = Flow::of(skaddr)?;
    let key = listener_key(&flow, skaddr);
    let mut info = SockInfo { addrs: flow.addrs(), state: TCP_CLOSE as u8, ..SockInfo::default() };
    if let Some(listener) = LISTENERS.get_ptr(key) {
        // SAFETY: a live map value.
        let listener = unsafe { *listener };
        if listener.skaddr == skaddr {
            info.owner = listener.owner;
            let _ = LISTENERS.remove(key);
        } else if listener.skaddr == 0 {
            // Added by user space for a listener open before the programs
            // attached, whose address it cannot know: most likely this
            // one. The entry stays (another socket of a reuseport group
            // may still listen) until a `listen()` on the key replaces it.
            info.owner = listener.owner;
        }
    }
    emit(event_kind::LISTEN_CLOSED, now(), skaddr, &info, 0);
    Ok(())
}

#[inline(never)]
fn established(skaddr: u64, old: i32) -> i64 {
    code(try_established(skaddr, old))
}

#[inline(always)]
fn try_established(skaddr: u64, old: i32) -> Result<(), i64> {
    let flow = Flow::of(skaddr)?;
    if old == TCP_SYN_RECV {
        passive_established(&flow, skaddr);
        return Ok(());
    }
    let at = now();
    let entry = if let Some(entry) = SOCKETS.get_ptr_mut(skaddr) {
        entry
    } else {
        // Evicted, or opened before the programs were attached: track it
        // from here without an owner.
        let info =
            SockInfo { open_ns: at, direction: direction::ACTIVE, announce: announce::new(at), ..SockInfo::default() };
        let _ = SOCKETS.insert(skaddr, SockEntry { info, flow: FlowCounts::default() }, u64::from(BPF_NOEXIST));
        let Some(entry) = SOCKETS.get_ptr_mut(skaddr) else {
            count(counter::SOCKET_UPDATE_FAILED);
            return Ok(());
        };
        entry
    };
    // SAFETY: a live map value; only this socket's transitions write it and
    // the kernel serialises those under the socket lock.
    let (info, counts) = unsafe { (&mut (*entry).info, &mut (*entry).flow) };
    info.handshake_ns = at - info.open_ns;
    info.established_ns = at;
    info.addrs = flow.addrs();
    info.state = TCP_ESTABLISHED as u8;
    // The flow's first rate window; its counts start at zero, as the
    // socket's own do.
    counts.window_start_ns = at;
    observe(histogram::HANDSHAKE_ACTIVE, info.handshake_ns);
    // Under the same key as its connect failures (exact port).
    let _ = count_endpoint(&flow.remote_exact(), EndpointCounter::Connects);
    // Written last: from here the sweep may announce the connection.
    change_announce(&raw mut info.announce, announce::ESTABLISHED, 0);
    Ok(())
}

/// An incoming connection completed its handshake: its entry, whole. The
/// owner is its listener's: the one bound to the connection's local
/// address, else the one bound to the wildcard address of its family. The
/// handshake time is the SYN-ACK's round trip (`srtt_us` holds the first
/// RTT sample, in microseconds << 3), and the connection opened when the
/// SYN-ACK left.
#[inline(always)]
fn passive_established(flow: &Flow, skaddr: u64) {
    let at = now();
    let owner = listener_of(flow, skaddr).unwrap_or_default();
    // A plain load: the helper gives the socket as the `tcp_sock` it is.
    let srtt = TcpSock::of(skaddr).and_then(|tp| tp.field::<u32>(offset!(srtt_us))).unwrap_or(0);
    let handshake_ns = u64::from(srtt) * 1000 / 8;
    let open_ns = at - handshake_ns;
    let info = SockInfo {
        open_ns,
        established_ns: at,
        handshake_ns,
        owner,
        addrs: flow.addrs(),
        direction: direction::PASSIVE,
        state: TCP_ESTABLISHED as u8,
        // Nothing of it is in the table yet: the word can say so at once.
        announce: announce::changed(announce::new(open_ns), announce::ESTABLISHED, 0),
        ..SockInfo::default()
    };
    let flow = FlowCounts { window_start_ns: at, ..FlowCounts::default() };
    if SOCKETS.insert(skaddr, SockEntry { info, flow }, 0).is_err() {
        count(counter::SOCKET_UPDATE_FAILED);
    }
    observe(histogram::HANDSHAKE_PASSIVE, handshake_ns);
}

/// The owner of the listener a connection at `skaddr` with `flow` arrived
/// on: the one bound to its local address, else the one bound to the
/// wildcard address of its family; `None` when there is none (an outgoing
/// connection, or a listener nobody told the programs of).
#[inline(always)]
fn listener_of(flow: &Flow, skaddr: u64) -> Option<Owner> {
    let mut key = listener_key(flow, skaddr);
    let mut listener = LISTENERS.get_ptr(key);
    if listener.is_none() {
        key.addr = [0; 16];
        listener = LISTENERS.get_ptr(key);
    }
    // SAFETY: a live map value.
    listener.map(|listener| unsafe { (*listener).owner })
}

/// `SYN_SENT` straight to `CLOSE`: refused (`ECONNREFUSED`), timed out
/// (`ETIMEDOUT`), unreachable, or abandoned by the caller (no error).
#[inline(never)]
fn connect_failed(skaddr: u64) -> i64 {
    code(try_connect_failed(skaddr))
}

#[inline(always)]
fn try_connect_failed(skaddr: u64) -> Result<(), i64> {
    let flow = Flow::of(skaddr)?;
    let error = sk_err(skaddr);
    let mut info = match SOCKETS.get_ptr(skaddr) {
        // SAFETY: a live map value.
        Some(entry) => unsafe { (*entry).info },
        None => SockInfo { direction: direction::ACTIVE, ..SockInfo::default() },
    };
    let _ = SOCKETS.remove(skaddr);
    info.addrs = flow.addrs();
    info.state = TCP_SYN_SENT as u8;
    emit(event_kind::CONNECT_FAILED, now(), skaddr, &info, error);
    Ok(())
}

#[inline(never)]
fn closed(skaddr: u64, old: i32) -> i64 {
    code(try_closed(skaddr, old))
}

#[inline(always)]
fn try_closed(skaddr: u64, old: i32) -> Result<(), i64> {
    if old == TCP_SYN_RECV {
        // An incoming connection that never completed its handshake has
        // no entry of its own; one left under its address would be a
        // missed close's.
        let _ = SOCKETS.remove(skaddr);
        return Ok(());
    }
    let Some(entry) = SOCKETS.get_ptr_mut(skaddr) else {
        if old != TCP_CLOSE {
            count(counter::SOCKET_UNTRACKED);
        }
        if old == TCP_CLOSE_WAIT {
            untracked_left_close_wait(skaddr, TCP_CLOSE);
        }
        return Ok(());
    };
    // SAFETY: a live map value.
    let established = unsafe { (*entry).info.established_ns } != 0;
    if established && counting_flows() {
        // The last copy of the counts: the endpoint gets the bytes since
        // the sampler last ran.
        if let Some(tp) = TcpSock::of(skaddr) {
            flow::sample(entry, &tp);
        }
    }
    if !established {
        // An outgoing one that never completed its handshake.
        let _ = SOCKETS.remove(skaddr);
        return Ok(());
    }
    // No announcing from here on.
    // SAFETY: a live map value.
    let told = change_announce(unsafe { &raw mut (*entry).info.announce }, announce::CLOSING, 0) & announce::OPEN != 0;
    let at = now();
    // SAFETY: a live map value.
    let (established_ns, active, unseen) = unsafe {
        (
            (*entry).info.established_ns,
            (*entry).info.direction == direction::ACTIVE,
            (*entry).info.flags & sock_flags::OPEN_UNSEEN != 0,
        )
    };
    if !unseen {
        observe(histogram::DURATION, at - established_ns);
    }
    // User space hears of the close if it was told of the connection, or
    // when an outgoing connection was reset (a connect failure of its
    // own); every other close is only counted.
    if !told && !active {
        let _ = SOCKETS.remove(skaddr);
        return Ok(());
    }
    // SAFETY: a live map value.
    let mut info = unsafe { (*entry).info };
    let _ = SOCKETS.remove(skaddr);
    let error = sk_err(skaddr);
    if told || error == ECONNRESET || error == EPIPE {
        info.state = old as u8;
        emit(event_kind::CLOSED, at, skaddr, &info, error);
    }
    Ok(())
}

#[inline(never)]
fn close_wait(skaddr: u64) -> i64 {
    code(try_close_wait(skaddr))
}

#[inline(always)]
fn try_close_wait(skaddr: u64) -> Result<(), i64> {
    let at = now();
    if let Some(entry) = SOCKETS.get_ptr_mut(skaddr) {
        // SAFETY: a live map value, written under the socket lock.
        let info = unsafe { &mut (*entry).info };
        info.close_wait_ns = at;
        info.state = TCP_CLOSE_WAIT as u8;
        // The sweep tells user space if it stays there.
        change_announce(&raw mut info.announce, 0, 0);
        return Ok(());
    }
    // Opened before the programs attached (a restart of governor finds
    // every long-lived connection so), or evicted: a leak starts here, so
    // the connection is tracked from here.
    match track_found(skaddr, TCP_CLOSE_WAIT, at) {
        rc if rc < 0 => Err(rc),
        _ => Ok(()),
    }
}

/// Adds the listener at `skaddr`, open before the programs attached, to
/// the listener table, owner unknown, unless it is there already (user
/// space adds those whose owners it found in `/proc` first): the
/// connections it accepted are then known as accepted ones, and user space
/// finds their owners by their sockets' inodes.
#[inline(never)]
pub fn track_found_listener(skaddr: u64) -> i64 {
    let flow = match Flow::of(skaddr) {
        Ok(flow) => flow,
        Err(e) => return e,
    };
    let info = ListenerInfo { owner: Owner::default(), skaddr };
    let _ = LISTENERS.insert(listener_key(&flow, skaddr), info, u64::from(BPF_NOEXIST));
    0
}

/// Tracks from `at` an established connection (in `state`) whose opening
/// the programs did not see: it was open before they attached, or its
/// entry was evicted. A local listener on its address makes it an accepted
/// one, of the listener's owner; otherwise it is taken for an outgoing
/// one, owner unknown (user space looks for it by the socket's inode). Its
/// flow counts start from the socket's own, so that only bytes moved from
/// here on are added to its endpoint. An entry already there is kept.
/// Returns 1 when an entry was added, 0 when not, a negative error when
/// the socket could not be read (a `Result` would be returned through the
/// stack, which the callers have no room for).
#[inline(never)]
pub fn track_found(skaddr: u64, state: i32, at: u64) -> i64 {
    let flow = match Flow::of(skaddr) {
        Ok(flow) => flow,
        Err(e) => return e,
    };
    let listener = listener_of(&flow, skaddr);
    let info = SockInfo {
        open_ns: at,
        established_ns: at,
        close_wait_ns: if state == TCP_CLOSE_WAIT { at } else { 0 },
        owner: listener.unwrap_or_default(),
        addrs: flow.addrs(),
        direction: if listener.is_some() { direction::PASSIVE } else { direction::ACTIVE },
        state: state as u8,
        flags: sock_flags::OPEN_UNSEEN,
        // Written whole: the sweep may announce it at once.
        announce: announce::changed(announce::new(at), announce::ESTABLISHED, 0),
        ..SockInfo::default()
    };
    let flow = match TcpSock::of(skaddr) {
        Some(tp) => flow::baseline(&tp, at),
        None => FlowCounts { window_start_ns: at, ..FlowCounts::default() },
    };
    match SOCKETS.insert(skaddr, SockEntry { info, flow }, u64::from(BPF_NOEXIST)) {
        Ok(()) => 1,
        // Tracked already: seen opening after the programs attached.
        Err(e) if e == -EEXIST => 0,
        Err(_) => {
            count(counter::SOCKET_UPDATE_FAILED);
            0
        }
    }
}

#[inline(never)]
fn close_wait_left(skaddr: u64, new: i32) -> i64 {
    code(try_close_wait_left(skaddr, new))
}

#[inline(always)]
fn try_close_wait_left(skaddr: u64, new: i32) -> Result<(), i64> {
    if let Some(entry) = SOCKETS.get_ptr_mut(skaddr) {
        // SAFETY: a live map value, written under the socket lock.
        let info = unsafe { &mut (*entry).info };
        info.state = new as u8;
        info.close_wait_ns = 0;
        if change_announce(&raw mut info.announce, 0, announce::CLOSE_WAIT) & announce::CLOSE_WAIT != 0 {
            emit(event_kind::CLOSE_WAIT_LEFT, now(), skaddr, info, 0);
        }
    } else {
        untracked_left_close_wait(skaddr, new);
    }
    Ok(())
}

/// A socket the table does not hold left `CLOSE_WAIT` (to `new`): it was
/// there before the programs attached, and user space, which found it in
/// `/proc` at start-up, knows it by its inode, which the event carries. The
/// owner still holds the socket here (it is closing it), so the inode is
/// still there to read. Rare: most sockets enter `CLOSE_WAIT` tracked.
#[inline(never)]
fn untracked_left_close_wait(skaddr: u64, new: i32) {
    let inode = socket_inode(skaddr);
    if inode == 0 {
        return;
    }
    let info = SockInfo { state: new as u8, ..SockInfo::default() };
    emit_inode(event_kind::CLOSE_WAIT_LEFT, now(), skaddr, &info, 0, inode);
}

#[inline(always)]
fn set_state(skaddr: u64, new: i32) -> i64 {
    if let Some(entry) = SOCKETS.get_ptr_mut(skaddr) {
        // SAFETY: a live map value, written under the socket lock.
        unsafe { (*entry).info.state = new as u8 };
    }
    0
}

/// The sweep's part of [`announce`]: tells user space of the connection in
/// `entry` at `skaddr` if it has not been told of it, or not of its
/// `CLOSE_WAIT`. The event is reserved before the word is exchanged and
/// dropped when the exchange fails: a transition that sees the bits set
/// comes later in the ring than the announcement. Nothing is announced
/// while the ring is more than half full, so that a sweep never crowds
/// out the events of closing connections; the next sweep tries again.
#[inline(always)]
pub fn announce(entry: *mut SockEntry, skaddr: u64) {
    // SAFETY: a live map value; the word is only changed atomically.
    let word = unsafe { &raw mut (*entry).info.announce };
    // SAFETY: as above.
    let current = unsafe { core::ptr::read_volatile(word) };
    if current & (announce::ESTABLISHED | announce::CLOSING) != announce::ESTABLISHED {
        return;
    }
    // SAFETY: as above.
    let in_close_wait = unsafe { (*entry).info.close_wait_ns } != 0;
    let (kind, tell) = if in_close_wait && current & announce::CLOSE_WAIT == 0 {
        (event_kind::CLOSE_WAIT, announce::OPEN | announce::CLOSE_WAIT)
    } else if current & announce::OPEN == 0 {
        (event_kind::OPENED, announce::OPEN)
    } else {
        return;
    };
    let ring = aya_ebpf::bindings::BPF_RB_RING_SIZE;
    if EVENTS.query(u64::from(aya_ebpf::bindings::BPF_RB_AVAIL_DATA)) * 2 > EVENTS.query(u64::from(ring)) {
        return;
    }
    let Some(mut reserved) = EVENTS.reserve::<ConnEvent>(0) else { return };
    // SAFETY: a live map value.
    let info = unsafe { &(*entry).info };
    // Only the sweep has time for the two reads, and only an entry without
    // an owner needs them.
    let inode = if info.owner.tgid == 0 { socket_inode(skaddr) } else { 0 };
    fill(reserved.as_mut_ptr(), Event { at: now(), kind, error: 0, skaddr, inode }, info);
    if crate::maps::compare_exchange(word, current, current | tell) == current {
        reserved.submit(u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP));
    } else {
        reserved.discard(u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP));
    }
}

/// The inode number of the socket at `skaddr` (the sweep's: an address),
/// which `/proc/<pid>/fd` of its holder shows; 0 when no process holds it
/// any more or the kernel lacks the fields.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "socket inode numbers are 32-bit (get_next_ino)")]
fn socket_inode(skaddr: u64) -> u32 {
    let Some(socket) = Probed(skaddr).field::<u64>(offset!(sk_socket)) else { return 0 };
    if socket == 0 {
        return 0;
    }
    Probed(socket).field::<u64>(offset!(socket_ino)).unwrap_or(0) as u32
}

/// Sends a connection event stamped `at` (a clock reading the caller
/// already has, when it has one); a full ring buffer is counted, never
/// waited for.
#[inline(always)]
fn emit(kind: u32, at: u64, skaddr: u64, info: &SockInfo, error: u32) {
    emit_inode(kind, at, skaddr, info, error, 0);
}

/// [`emit`] with the socket's inode number.
#[inline(always)]
fn emit_inode(kind: u32, at: u64, skaddr: u64, info: &SockInfo, error: u32, inode: u32) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    fill(entry.as_mut_ptr(), Event { at, kind, error, skaddr, inode }, info);
    entry.submit(u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP));
}

/// What a connection event says besides the socket's entry.
struct Event {
    at: u64,
    kind: u32,
    error: u32,
    skaddr: u64,
    inode: u32,
}

/// Writes every field of the reserved `event`: the ring buffer entry is
/// filled in place, as a `ConnEvent` on the stack would not fit beside
/// the callers' own.
#[inline(always)]
fn fill(event: *mut ConnEvent, e: Event, info: &SockInfo) {
    // SAFETY: `event` points at reserved ring buffer memory of the right
    // size, written here before it is submitted.
    unsafe {
        (*event).timestamp_ns = e.at;
        (*event).kind = e.kind;
        (*event).error = e.error;
        (*event).skaddr = e.skaddr;
        (*event).info = *info;
        (*event).inode = e.inode;
        (*event).pad = 0;
    }
}
