//! `cgroup/sock_release`: a socket is closed for good. If outbound
//! admission let it in under concurrency caps, its places are given back
//! (`admission.rs`). Attached with the connect programs. (An inbound
//! connection gives its places back when it reaches CLOSE, `sock_ops.rs`;
//! whichever comes first does.)

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext,
};

use crate::admission::release_socket;

#[cgroup_sock(sock_release)]
pub fn gov_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    release_socket(cookie);
    // A release cannot be refused.
    1
}
