//! `cgroup_skb/ingress` at each cgroup an ingress bandwidth policy names
//! (`police.rs`).

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use governor_common::BandwidthKey;

use crate::police::police;

#[cgroup_skb(ingress)]
pub fn gov_police_in(ctx: SkBuffContext) -> i32 {
    police(&ctx, BandwidthKey::INGRESS)
}
