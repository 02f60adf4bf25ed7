//! `cgroup_skb/egress` at the cgroup v2 root: bytes and packets every
//! socket on the host sends, per established connection (see `flow.rs`).

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

use crate::flow::{PASS, account};

#[cgroup_skb(egress)]
pub fn gov_flow_out(ctx: SkBuffContext) -> i32 {
    account(&ctx, true);
    PASS
}
