//! Outbound admission, shared by the cgroup `connect4` and `connect6`
//! programs (`connect4.rs`, `connect6.rs`): every TCP `connect()` on the
//! host is checked against the rules user space wrote into `POLICY_RULES`,
//! in slot order (user space puts blocks first, then circuit breakers, then
//! rate limits, then concurrency caps). The first rule that denies ends the check and the
//! application's `connect()` fails at once with `EPERM`; a rule in dry-run
//! mode only counts what it would have done.
//!
//! Concurrency: a connect admitted under a cap takes one of its places;
//! `sock_release.rs` gives the places back when the socket is closed. The
//! places a socket holds are kept by socket cookie in `ADMITTED`, one bit
//! per policy state entry (`PolicyRule::state`), which a reload keeps.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie, bpf_loop},
    },
    programs::SockAddrContext,
};
use governor_common::{BreakerEntry, EndpointKey, POLICY_HAS_CAPS, POLICY_SLOTS, PolicyRule, policy_kind};

use crate::maps::{
    ADMITTED, BREAKERS, POLICY_ACTIVE, POLICY_DECISIONS, POLICY_RULES, POLICY_STATE, add, fetch_add, rules_hold,
};

/// `cgroup_sock_addr` verdicts.
pub const ALLOW: i32 = 1;
pub const DENY: i32 = 0;

/// Where a connect goes: the address bytes as two native-endian words
/// (IPv4 in the first four bytes), the family and the port (host order).
pub struct Destination {
    pub addr: [u64; 2],
    pub family: u16,
    pub port: u16,
}

/// Two address words (network order in memory, as the context holds
/// them) as one native-endian word of the address bytes.
#[inline(always)]
pub fn words(first: u32, second: u32) -> u64 {
    let (a, b) = (first.to_ne_bytes(), second.to_ne_bytes());
    u64::from_ne_bytes([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]])
}

/// What the rule loop works on: the connect, and what the rules decided
/// so far.
struct Check {
    to: Destination,
    /// The first entry of the active rule set in `POLICY_RULES`.
    base: u32,
    /// Caps the socket holds places under already (a repeated connect).
    held: u64,
    /// Caps this connect took a place under.
    taken: u64,
    verdict: i32,
}

/// The verdict on one connect.
#[inline(always)]
pub fn admit(ctx: &SockAddrContext, to: Destination) -> i32 {
    if !rules_hold() {
        return ALLOW;
    }
    // Read once: a reload switching sets mid-check cannot mix two sets.
    let active = POLICY_ACTIVE.get(0).copied().unwrap_or(0);
    // A second connect() on the same socket (after EINPROGRESS, say) keeps
    // the places it holds and takes no new ones. Only caps need to know.
    let (cookie, held) = if active & POLICY_HAS_CAPS == 0 {
        (0, 0)
    } else {
        // SAFETY: the helper takes the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let held = ADMITTED.get_ptr(cookie).map_or(0, |m| {
            // SAFETY: a live map value.
            unsafe { *m }
        });
        (cookie, held)
    };
    let mut check = Check { to, base: (active & 1) * POLICY_SLOTS, held, taken: 0, verdict: ALLOW };
    // bpf_loop: the verifier checks the body once instead of once per slot
    // and path, which for 64 slots is past its instruction limit.
    // SAFETY: the callback has the signature bpf_loop calls, and `check`
    // outlives the call.
    unsafe {
        bpf_loop(POLICY_SLOTS, check_slot as *mut c_void, (&raw mut check).cast::<c_void>(), 0);
    }
    if check.verdict == DENY {
        release(check.taken);
        // A constant: the verifier wants to see that a cgroup program
        // returns 0 or 1, and the callback's writes are unknown to it.
        return DENY;
    }
    if check.taken != 0 && ADMITTED.insert(cookie, check.held | check.taken, 0).is_err() {
        // No room to remember the socket: do not hold places nobody can
        // give back.
        release(check.taken);
    }
    ALLOW
}

/// One rule slot; returns 1 to stop the loop (no more rules, or denied).
extern "C" fn check_slot(slot: u64, check: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `admit` gave it.
    let check = unsafe { &mut *check.cast::<Check>() };
    let Some(rule) = rule_at(check.base, slot) else { return 1 };
    if rule.flags & PolicyRule::INBOUND != 0 || !matches(rule, &check.to) || !in_cgroup(rule) {
        return 0;
    }
    let state = rule.state;
    let bit = 1u64 << (state & 63);
    let allowed = match rule.kind {
        policy_kind::BLOCK => false,
        policy_kind::BREAKER => breaker_allows(&check.to),
        policy_kind::RATE => take_token(state, rule),
        policy_kind::CONCURRENCY if check.held & bit != 0 => true,
        policy_kind::CONCURRENCY => {
            let ok = take_place(state, rule);
            if ok {
                check.taken |= bit;
            }
            ok
        }
        _ => true,
    };
    count(state, allowed);
    if !allowed && rule.flags & PolicyRule::DRY_RUN == 0 {
        check.verdict = DENY;
        return 1;
    }
    0
}

/// The rule in `slot` of the set at `base`; `None` past the last one
/// (rules fill a set from its first slot; kind 0 ends it).
#[inline(always)]
fn rule_at(base: u32, slot: u64) -> Option<&'static PolicyRule> {
    #[expect(clippy::cast_possible_truncation, reason = "slots are below POLICY_SLOTS")]
    POLICY_RULES.get(base + slot as u32).filter(|r| r.kind != policy_kind::NONE)
}

/// Does the inbound `rule` govern the listener on `port`?
#[inline(always)]
fn governs_listener(rule: &PolicyRule, port: u16) -> bool {
    rule.flags & PolicyRule::INBOUND != 0 && (rule.port_low..=rule.port_high).contains(&port)
}

/// Is the connecting task in the rule's cgroup (or below it)? Always for
/// a rule without one.
#[inline(always)]
fn in_cgroup(rule: &PolicyRule) -> bool {
    if rule.cgroup_id == 0 {
        return true;
    }
    #[expect(clippy::cast_possible_wrap, reason = "cgroup levels are small")]
    // SAFETY: helper without preconditions; it answers 0 for a level
    // deeper than the task's cgroup.
    let id = unsafe { bpf_get_current_ancestor_cgroup_id(rule.cgroup_level as i32) };
    id == rule.cgroup_id
}

/// What the inbound rule loop works on.
struct Inbound {
    base: u32,
    port: u16,
    /// `ALLOW` or `DENY`: an integer, not a `bool`, so that LLVM does not
    /// hand the loaded byte straight back as the verdict (the verifier
    /// cannot tell that it is 0 or 1).
    verdict: i32,
}

/// The verdict on a SYN arriving at a local listener on `port`: rate
/// limits and blocks of inbound rules (`syn_ingress.rs`).
#[inline(always)]
pub fn admit_syn(port: u16) -> bool {
    if !rules_hold() {
        return true;
    }
    let set = POLICY_ACTIVE.get(0).copied().unwrap_or(0) & 1;
    let mut check = Inbound { base: set * POLICY_SLOTS, port, verdict: ALLOW };
    // SAFETY: as in `admit`.
    unsafe {
        bpf_loop(POLICY_SLOTS, check_inbound as *mut c_void, (&raw mut check).cast::<c_void>(), 0);
    }
    check.verdict != DENY
}

/// One rule slot for a SYN; returns 1 to stop the loop.
extern "C" fn check_inbound(slot: u64, check: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `admit_syn` gave it.
    let check = unsafe { &mut *check.cast::<Inbound>() };
    let Some(rule) = rule_at(check.base, slot) else { return 1 };
    if !governs_listener(rule, check.port) {
        return 0;
    }
    let allowed = match rule.kind {
        policy_kind::BLOCK => false,
        policy_kind::RATE => take_token(rule.state, rule),
        // Checked here, counted when the connection is established
        // (`sock_ops.rs`): the SYN of a connection over the cap is
        // dropped; allowed connections are counted there.
        policy_kind::CONCURRENCY => {
            let open = POLICY_STATE.get(rule.state).map_or(0, |s| s.open);
            if open < rule.max_connections {
                return 0;
            }
            false
        }
        _ => true,
    };
    count(rule.state, allowed);
    if !allowed && rule.flags & PolicyRule::DRY_RUN == 0 {
        check.verdict = DENY;
        return 1;
    }
    0
}

/// A connection to a local listener on `port` is established: it takes a
/// place under every inbound cap of its port (even past the cap, when
/// handshakes were in flight as it filled: the place is given back at
/// close all the same). Returns the entries taken, as a mask.
#[inline(always)]
pub fn established_inbound(port: u16) -> u64 {
    if !rules_hold() {
        return 0;
    }
    let set = POLICY_ACTIVE.get(0).copied().unwrap_or(0) & 1;
    let mut check = Established { base: set * POLICY_SLOTS, port, taken: 0 };
    // SAFETY: as in `admit`.
    unsafe {
        bpf_loop(POLICY_SLOTS, take_inbound as *mut c_void, (&raw mut check).cast::<c_void>(), 0);
    }
    check.taken
}

struct Established {
    base: u32,
    port: u16,
    taken: u64,
}

/// One rule slot for an established inbound connection.
extern "C" fn take_inbound(slot: u64, check: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `established_inbound` gave it.
    let check = unsafe { &mut *check.cast::<Established>() };
    let Some(rule) = rule_at(check.base, slot) else { return 1 };
    if rule.kind != policy_kind::CONCURRENCY || !governs_listener(rule, check.port) {
        return 0;
    }
    if let Some(state) = POLICY_STATE.get_ptr_mut(rule.state) {
        // SAFETY: a live map value; `open` is 8-byte aligned.
        unsafe { add(&raw mut (*state).open, 1) };
        check.taken |= 1u64 << (rule.state & 63);
        count(rule.state, true);
    }
    0
}

/// Closed (no entry) lets the connect through; open refuses it; half-open
/// lets it through while probes are left.
#[inline(always)]
fn breaker_allows(to: &Destination) -> bool {
    let (a, b) = (to.addr[0].to_ne_bytes(), to.addr[1].to_ne_bytes());
    let key = EndpointKey {
        addr: [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]],
        port: to.port,
        family: to.family,
        pad: 0,
    };
    let Some(entry) = BREAKERS.get_ptr_mut(key) else { return true };
    // SAFETY: a live map value; `used` is 8-byte aligned and only changed
    // atomically here (user space replaces the whole entry).
    unsafe {
        if (*entry).state != BreakerEntry::HALF_OPEN {
            return false;
        }
        fetch_add(&raw mut (*entry).used, 1) < (*entry).probes
    }
}

#[inline(always)]
fn matches(rule: &PolicyRule, to: &Destination) -> bool {
    rule.family == to.family
        && to.port >= rule.port_low
        && to.port <= rule.port_high
        && to.addr[0] & rule.mask[0] == rule.net[0]
        && to.addr[1] & rule.mask[1] == rule.net[1]
}

/// GCRA, the token bucket as one number: `tat_ns` is when the bucket will
/// next be empty. A connect is admitted when its booking starts at most the
/// tolerance ahead of now; it books one interval with a fetch-and-add, so
/// CPUs booking at the same instant each get their own interval. A refused
/// booking is taken back.
#[inline(always)]
fn take_token(entry: u32, rule: &PolicyRule) -> bool {
    let Some(state) = POLICY_STATE.get_ptr_mut(entry) else { return true };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a live map value; `tat_ns` is 8-byte aligned.
    unsafe {
        let tat = &raw mut (*state).tat_ns;
        if core::ptr::read_volatile(tat) < now {
            // Idle long enough to be full again. Two CPUs may both store
            // here: a booking made in between is lost, so at that instant
            // one connect more than the burst can get through.
            core::ptr::write_volatile(tat, now);
        }
        let booked = fetch_add(tat, rule.interval_ns);
        if booked.saturating_sub(now) > rule.tolerance_ns {
            add(tat, rule.interval_ns.wrapping_neg());
            return false;
        }
    }
    true
}

/// Takes one place under a concurrency cap, if one is free. The count is
/// taken with a fetch-and-add: of many CPUs racing for the last place,
/// exactly one gets it.
#[inline(always)]
fn take_place(entry: u32, rule: &PolicyRule) -> bool {
    let Some(state) = POLICY_STATE.get_ptr_mut(entry) else { return true };
    // SAFETY: a live map value; `open` is 8-byte aligned.
    unsafe {
        let open = &raw mut (*state).open;
        if fetch_add(open, 1) >= rule.max_connections {
            add(open, u64::MAX);
            return false;
        }
    }
    true
}

/// Gives back the places the socket `cookie` holds, once: of two
/// programs releasing the same socket, only the one whose delete succeeds
/// gives them back.
#[inline(always)]
pub fn release_socket(cookie: u64) {
    if let Some(mask) = ADMITTED.get_ptr(cookie) {
        // SAFETY: a live map value.
        let mask = unsafe { *mask };
        if ADMITTED.remove(cookie).is_ok() {
            release(mask);
        }
    }
}

/// Gives back the places of the policy state entries in `mask`.
#[inline(always)]
pub fn release(mask: u64) {
    if mask == 0 {
        return;
    }
    for entry in 0..POLICY_SLOTS {
        if mask & (1u64 << entry) != 0
            && let Some(state) = POLICY_STATE.get_ptr_mut(entry)
        {
            // SAFETY: a live map value; `open` is 8-byte aligned.
            unsafe { add(&raw mut (*state).open, u64::MAX) };
        }
    }
}

#[inline(always)]
fn count(entry: u32, allowed: bool) {
    if let Some(n) = POLICY_DECISIONS.get_ptr_mut(entry * 2 + u32::from(!allowed)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *n += 1 };
    }
}
