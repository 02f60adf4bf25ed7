//! `cgroup_skb/ingress` at the cgroup v2 root: bytes and packets every
//! socket on the host receives, per established connection (see `flow.rs`).

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

use crate::flow::{PASS, account};

#[cgroup_skb(ingress)]
pub fn gov_flow_in(ctx: SkBuffContext) -> i32 {
    account(&ctx, false);
    PASS
}
