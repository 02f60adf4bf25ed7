//! `sock_ops` at the cgroup v2 root: inbound concurrency caps. A passive
//! connection that is established takes a place under the caps of its
//! listener's port (`admission::established_inbound`), remembered by
//! socket cookie in `ADMITTED`; asking for state callbacks, it gives them
//! back when it reaches CLOSE. The SYN check against the cap is in
//! `syn_ingress.rs`. Attached with the inbound SYN program.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG},
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};

use crate::{
    admission::{established_inbound, release, release_socket},
    maps::ADMITTED,
};

/// `TCP_CLOSE` in `enum tcp_state`.
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn gov_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            #[expect(clippy::cast_possible_truncation, reason = "a port")]
            let taken = established_inbound(ctx.local_port() as u16);
            if taken != 0 {
                // SAFETY: the helper takes the program's own context.
                let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
                // Nobody could give the places back: do not hold them.
                if ADMITTED.insert(cookie, taken, 0).is_err() {
                    release(taken);
                } else if ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG).cast_signed()).is_err() {
                    release_socket(cookie);
                }
            }
        }
        // arg(1) is the new state.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // SAFETY: as above.
            release_socket(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) });
        }
        _ => {}
    }
    1
}
