//! Every map and global of the kernel side. User space writes
//! `GOVERNOR_CONFIG` before loading and resizes the maps with
//! `set_max_entries`; the programs only write the maps below.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use governor_common::{
    BandwidthKey, BandwidthRule, BreakerEntry, EndpointKey, EndpointStats, KernelConfig, ListenerInfo,
    POLICY_DECISION_SLOTS, POLICY_RULE_ENTRIES, POLICY_SLOTS, PolicyRule, PolicyState, RESET_REASON_SLOTS, SockEntry,
    TRANSITION_SLOTS, counter, histogram,
};

/// Tracepoint field offsets and the ephemeral port range; set by user space.
#[unsafe(no_mangle)]
pub static GOVERNOR_CONFIG: KernelConfig = KernelConfig::EMPTY;

/// Host-wide TCP state transitions, indexed `from * 16 + to`.
#[map]
pub static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITION_SLOTS, 0);

/// Resets sent, by the kernel's reason (`enum sk_rst_reason`).
#[map]
pub static RESET_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RESET_REASON_SLOTS, 0);

/// The connection histograms (`governor_common::histogram`).
#[map]
pub static HISTOGRAMS: PerCpuArray<u64> = PerCpuArray::with_max_entries(histogram::COUNT * histogram::SLOTS, 0);

/// Host-wide counters, indexed by `governor_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

/// Resets and retransmits per service endpoint (ip:port), bounded, least
/// recently used entries evicted first.
#[map]
pub static ENDPOINTS: LruHashMap<EndpointKey, EndpointStats> = LruHashMap::with_max_entries(16_384, 0);

/// Every TCP socket the programs saw open, keyed by its kernel address,
/// with its byte and packet counts once established. Bounded: when it is
/// full the least recently used socket is evicted, and its close is
/// counted as untracked. Resized at load time.
#[map]
pub static SOCKETS: LruHashMap<u64, SockEntry> = LruHashMap::with_max_entries(65_536, 0);

/// Owners of listening sockets by local address and port (no ephemeral
/// collapsing) and network namespace (the key's `pad`), so that accepted
/// connections take their listener's owner.
#[map]
pub static LISTENERS: LruHashMap<EndpointKey, ListenerInfo> = LruHashMap::with_max_entries(4096, 0);

/// Outbound admission rules: two sets of `POLICY_SLOTS` (`admission.rs`).
#[map]
pub static POLICY_RULES: Array<PolicyRule> = Array::with_max_entries(POLICY_RULE_ENTRIES, 0);

/// Entry 0: which set of `POLICY_RULES` is in force (bit 0), and whether
/// it has caps (`POLICY_HAS_CAPS`).
#[map]
pub static POLICY_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Entry 0: the monotonic time (ns, `bpf_ktime_get_ns`) until which the
/// rules hold; 0 for always. In pinned mode the daemon keeps moving it
/// ahead, so rules of a daemon that never comes back lapse (`in_force`).
#[map]
pub static POLICY_LEASE: Array<u64> = Array::with_max_entries(1, 0);

/// By state entry: a hash of the owning policy's name and kind, 0 when
/// free. Only user space reads it: a daemon restarted in pinned mode
/// finds its policies' entries (buckets, open counts) again.
#[map]
pub static POLICY_OWNERS: Array<u64> = Array::with_max_entries(POLICY_SLOTS, 0);

/// The policies' token buckets and open-connection counts, by
/// `PolicyRule::state`.
#[map]
pub static POLICY_STATE: Array<PolicyState> = Array::with_max_entries(POLICY_SLOTS, 0);

/// Admission decisions by `PolicyRule::state`: `state * 2` allowed,
/// `state * 2 + 1` denied.
#[map]
pub static POLICY_DECISIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(POLICY_DECISION_SLOTS, 0);

/// Open and half-open circuit breakers by upstream endpoint (exact port);
/// written by user space, probes spent by `admission.rs`.
#[map]
pub static BREAKERS: HashMap<EndpointKey, BreakerEntry> = HashMap::with_max_entries(4096, 0);

/// Bandwidth policing by cgroup and direction (`police.rs`).
#[map]
pub static BANDWIDTH: HashMap<BandwidthKey, BandwidthRule> = HashMap::with_max_entries(128, 0);

/// Bytes dropped by bandwidth policing, by policy state entry.
#[map]
pub static BANDWIDTH_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(POLICY_SLOTS, 0);

/// Sockets holding places under concurrency caps, by socket cookie: one
/// bit per rule slot. When it is full, connects are admitted without
/// holding a place.
#[map]
pub static ADMITTED: HashMap<u64, u64> = HashMap::with_max_entries(65_536, 0);

/// Entry 0: how many times user space has read the maps; reset events
/// per endpoint are limited per reading (`report_reset`).
#[map]
pub static READING: Array<u64> = Array::with_max_entries(1, 0);

/// Discrete events for user space. Resized at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Adds one to a per-CPU host counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Adds one to the sent resets of `reason` (the last slot takes reasons
/// beyond the array).
#[inline(always)]
pub fn count_reset_reason(reason: u32) {
    let slot = if reason < RESET_REASON_SLOTS { reason } else { RESET_REASON_SLOTS - 1 };
    if let Some(slot) = RESET_REASONS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Counts `value_ns` in histogram `which` (`governor_common::histogram`):
/// the first bucket whose bound it does not exceed, and the sum.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "bucket indexes are below 17")]
pub fn observe(which: u32, value_ns: u64) {
    let bounds = if which == histogram::DURATION {
        &raw const GOVERNOR_CONFIG.duration_bounds_ns
    } else {
        &raw const GOVERNOR_CONFIG.handshake_bounds_ns
    };
    let mut bucket = histogram::BOUNDS as u32;
    for i in 0..histogram::BOUNDS {
        // SAFETY: plain read of an immutable global set at load; `i` is
        // within the array.
        if value_ns <= unsafe { core::ptr::read_volatile(bounds.cast::<u64>().add(i)) } {
            bucket = i as u32;
            break;
        }
    }
    let base = which * histogram::SLOTS;
    if let Some(slot) = HISTOGRAMS.get_ptr_mut(base + bucket) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
    if let Some(slot) = HISTOGRAMS.get_ptr_mut(base + histogram::SUM) {
        // SAFETY: as above.
        unsafe { *slot += value_ns };
    }
}

/// Adds one to the transition `from -> to`; states outside the matrix are
/// ignored.
#[inline(always)]
pub fn count_transition(from: u32, to: u32) {
    let slots = governor_common::TCP_STATE_SLOTS;
    if from >= slots || to >= slots {
        return;
    }
    if let Some(slot) = TRANSITIONS.get_ptr_mut(from * slots + to) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Which endpoint counter to bump.
#[derive(Clone, Copy)]
pub enum EndpointCounter {
    ResetsSent,
    ResetsReceived,
    Retransmits,
    Connects,
}

/// Adds one to an endpoint's counter, creating the entry when it is
/// missing; returns the entry.
#[inline(always)]
pub fn count_endpoint(key: &EndpointKey, which: EndpointCounter) -> Option<*mut EndpointStats> {
    let entry = endpoint_entry(key)?;
    // SAFETY: `entry` points at a live map value; the field pointers stay in it.
    let field = unsafe {
        match which {
            EndpointCounter::ResetsSent => &raw mut (*entry).resets_sent,
            EndpointCounter::ResetsReceived => &raw mut (*entry).resets_received,
            EndpointCounter::Retransmits => &raw mut (*entry).retransmits,
            EndpointCounter::Connects => &raw mut (*entry).connects,
        }
    };
    add(field, 1);
    Some(entry)
}

/// Should a reset at this endpoint go to user space as an event? Its
/// counts are in the endpoint table either way; the events are what lets
/// user space judge an endpoint crossing the reset threshold before the
/// next reading, and the first `GOVERNOR_CONFIG.reset_events` of each
/// endpoint between two readings are enough for that. A host resetting
/// thousands of connections a second so costs a few events per reading,
/// not one per reset. (Two CPUs starting a reading's count at once may
/// let a few more through.)
#[inline(always)]
pub fn report_reset(entry: Option<*mut EndpointStats>) -> bool {
    // SAFETY: plain read of an immutable global set at load.
    let limit = unsafe { core::ptr::read_volatile(&raw const GOVERNOR_CONFIG.reset_events) };
    let Some(entry) = entry else { return true };
    if limit == 0 {
        return true;
    }
    let reading = READING.get(0).copied().unwrap_or(0);
    // SAFETY: a live map value; its fields are only changed atomically.
    unsafe {
        if core::ptr::read_volatile(&raw const (*entry).reading) != reading {
            swap(&raw mut (*entry).reading, reading);
            swap(&raw mut (*entry).reported, 0);
        }
        fetch_add(&raw mut (*entry).reported, 1) < u64::from(limit)
    }
}

/// The endpoint's entry, created when it is missing; `None` (counted) when
/// the table cannot take it.
#[inline(always)]
pub fn endpoint_entry(key: &EndpointKey) -> Option<*mut EndpointStats> {
    if let Some(entry) = ENDPOINTS.get_ptr_mut(key) {
        return Some(entry);
    }
    // Another CPU may insert the same key between the lookup and here;
    // NOEXIST keeps its counts and the lookup below finds it.
    let _ = ENDPOINTS.insert(key, EndpointStats::default(), u64::from(BPF_NOEXIST));
    let entry = ENDPOINTS.get_ptr_mut(key);
    if entry.is_none() {
        count(counter::ENDPOINT_UPDATE_FAILED);
    }
    entry
}

/// Adds `n` to a counter in a map value shared by all CPUs.
///
/// `AtomicU64::fetch_add` does not exist on the BPF target (no
/// compare-and-swap), but the instruction set has an atomic add.
#[inline(always)]
pub fn add(field: *mut u64, n: u64) {
    // SAFETY: callers pass an 8-byte aligned field of a live map value;
    // other CPUs only touch it atomically.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, n) };
}

/// Adds `n` to a value shared by all CPUs and returns the value before.
///
/// The instruction (`BPF_ADD | BPF_FETCH`, kernel 5.12+) belongs to BPF
/// CPU version 3, and the programs are built for the generic CPU (aya-build
/// passes no `-C target-cpu`): LLVM then refuses a used result of an atomic
/// add, so the one instruction is written out here.
#[inline(always)]
pub fn fetch_add(field: *mut u64, n: u64) -> u64 {
    let mut v = n;
    // SAFETY: callers pass an 8-byte aligned field of a live map value;
    // other CPUs only touch it atomically. The instruction reads and
    // writes only that field and the register.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) field,
            v = inout(reg) v,
        );
    }
    v
}

/// Stores `new` in a value shared by all CPUs and returns the value
/// before, in one atomic exchange (`BPF_XCHG`, kernel 5.12+; written out
/// like [`fetch_add`]).
#[inline(always)]
pub fn swap(field: *mut u64, new: u64) -> u64 {
    let mut v = new;
    // SAFETY: callers pass an 8-byte aligned field of a live map value;
    // other CPUs only touch it atomically. The instruction reads and
    // writes only that field and the register.
    unsafe {
        core::arch::asm!(
            "{v} = xchg_64({p} + 0, {v})",
            p = in(reg) field,
            v = inout(reg) v,
        );
    }
    v
}

/// Stores `new` in a value shared by all CPUs if it still holds
/// `current`; returns the value it held (`current` when the store
/// happened). One `BPF_CMPXCHG` (kernel 5.12+; written out like
/// [`fetch_add`], and its comparand lives in `r0`).
#[inline(always)]
pub fn compare_exchange(field: *mut u64, current: u64, new: u64) -> u64 {
    let mut r0 = current;
    // SAFETY: callers pass an 8-byte aligned field of a live map value;
    // other CPUs only touch it atomically. The instruction reads and
    // writes only that field and `r0`.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {n})",
            p = in(reg) field,
            n = in(reg) new,
            inout("r0") r0,
        );
    }
    r0
}

/// Updates an entry's [`announce`](governor_common::announce) word: sets
/// `set`, clears `clear` and counts a change, whatever the sweep wrote
/// meanwhile. Returns the word before. Only the sweep competes (with one
/// exchange per entry and run), so a few attempts always do.
#[inline(always)]
pub fn change_announce(word: *mut u64, set: u64, clear: u64) -> u64 {
    for _ in 0..8 {
        // SAFETY: as for `compare_exchange`.
        let current = unsafe { core::ptr::read_volatile(word) };
        let new = governor_common::announce::changed(current, set, clear);
        if compare_exchange(word, current, new) == current {
            return current;
        }
    }
    // SAFETY: as for `compare_exchange`.
    let current = unsafe { core::ptr::read_volatile(word) };
    swap(word, governor_common::announce::changed(current, set, clear))
}

/// Do the policies hold now? Always, unless pinned mode gave them a lease
/// (`POLICY_LEASE`) that ran out: then every program lets everything
/// through, as if no policy were loaded.
#[inline(always)]
pub fn rules_hold() -> bool {
    let lease = POLICY_LEASE.get(0).copied().unwrap_or(0);
    // SAFETY: helper without preconditions.
    lease == 0 || unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() } < lease
}
