//! `cgroup_skb/egress` at each cgroup an egress bandwidth policy names
//! (`police.rs`).

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use governor_common::BandwidthKey;

use crate::police::police;

#[cgroup_skb(egress)]
pub fn gov_police_out(ctx: SkBuffContext) -> i32 {
    police(&ctx, BandwidthKey::EGRESS)
}
