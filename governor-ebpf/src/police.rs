//! Bandwidth policing per cgroup, shared by `police_egress.rs` and
//! `police_ingress.rs`. The programs are attached at each cgroup a
//! bandwidth policy names; the packet's socket's cgroup, or its nearest
//! ancestor with a rule, selects the rule in `BANDWIDTH`.
//!
//! A byte-rate GCRA decides (as the connect rate limit in `admission.rs`,
//! booking `len / rate` seconds per packet). On egress a packet past the
//! burst still goes, with congestion notification (verdict 3): TCP reduces
//! its congestion window at once (`tcp_enter_cwr`) without losing anything.
//! Only a sender that keeps on past twice the burst has packets dropped
//! (verdict 2: dropped, and TCP told so). Ingress can only drop.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    },
    programs::SkBuffContext,
};
use governor_common::{BandwidthKey, BandwidthRule, PolicyRule};

use crate::maps::{BANDWIDTH, BANDWIDTH_DROPPED, POLICY_DECISIONS, add, fetch_add, rules_hold};

/// `cgroup_skb` verdicts.
pub const PASS: i32 = 1;
pub const DROP: i32 = 0;
/// Egress only: drop, and tell TCP it met congestion.
pub const DROP_CONGESTED: i32 = 2;
/// Egress only: let it through, and tell TCP it met congestion.
pub const PASS_CONGESTED: i32 = 3;

/// Deepest cgroup level looked at for an ancestor with a rule.
const MAX_LEVEL: i32 = 16;

#[inline(always)]
pub fn police(ctx: &SkBuffContext, direction: u32) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: helpers that take the program's own packet.
    let own = unsafe { bpf_skb_cgroup_id(skb.cast()) };
    let mut rule = BANDWIDTH.get_ptr_mut(BandwidthKey { cgroup_id: own, direction, pad: 0 });
    if rule.is_none() {
        // A process in a cgroup below the policy's: the nearest ancestor
        // with a rule, from the root down.
        let mut level = 1;
        while level < MAX_LEVEL {
            // SAFETY: as above.
            let id = unsafe { bpf_skb_ancestor_cgroup_id(skb.cast(), level) };
            if id == 0 || id == own {
                break;
            }
            if let Some(r) = BANDWIDTH.get_ptr_mut(BandwidthKey { cgroup_id: id, direction, pad: 0 }) {
                rule = Some(r);
            }
            level += 1;
        }
    }
    let Some(rule) = rule else { return PASS };
    if !rules_hold() {
        return PASS;
    }
    // SAFETY: a live map value; `tat_ns` changes only atomically or by
    // the idle store in `take`, the rest only when user space replaces it.
    let (verdict, entry, flags) = unsafe { (take(rule, ctx.len()), (*rule).state, (*rule).flags) };
    count(entry, verdict != Verdict::Drop, ctx.len());
    let egress = direction == BandwidthKey::EGRESS;
    match verdict {
        _ if flags & u32::from(PolicyRule::DRY_RUN) != 0 => PASS,
        Verdict::Pass => PASS,
        // Ingress has no congestion signal to give: past the burst is a
        // drop there.
        Verdict::Slow if egress => PASS_CONGESTED,
        Verdict::Slow | Verdict::Drop if !egress => DROP,
        _ => DROP_CONGESTED,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Within the burst.
    Pass,
    /// Past the burst, within twice it: sent, and TCP is told to slow down.
    Slow,
    /// Past twice the burst: dropped.
    Drop,
}

/// Books `len` bytes. Past the burst the packet still goes (and TCP is
/// told to slow down) until the booking runs twice the burst ahead; there
/// it is dropped and not booked.
#[inline(always)]
unsafe fn take(rule: *mut BandwidthRule, len: u32) -> Verdict {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the caller passes a live map value.
    unsafe {
        let rate = (*rule).bytes_per_second;
        if rate == 0 {
            return Verdict::Pass;
        }
        let cost = u64::from(len) * 1_000_000_000 / rate;
        let tat = &raw mut (*rule).tat_ns;
        if core::ptr::read_volatile(tat) < now {
            core::ptr::write_volatile(tat, now);
        }
        let ahead = fetch_add(tat, cost).saturating_sub(now);
        let tolerance = (*rule).tolerance_ns;
        if ahead <= tolerance {
            Verdict::Pass
        } else if ahead <= tolerance.saturating_mul(2) {
            Verdict::Slow
        } else {
            add(tat, cost.wrapping_neg());
            Verdict::Drop
        }
    }
}

#[inline(always)]
fn count(entry: u32, allowed: bool, len: u32) {
    if let Some(n) = POLICY_DECISIONS.get_ptr_mut(entry * 2 + u32::from(!allowed)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *n += 1 };
    }
    if !allowed && let Some(n) = BANDWIDTH_DROPPED.get_ptr_mut(entry) {
        // SAFETY: as above.
        unsafe { *n += u64::from(len) };
    }
}
