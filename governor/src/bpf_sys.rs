//! The `bpf(2)` system call for the commands aya has no API for
//! (`BPF_PROG_TEST_RUN` here; `BPF_OBJ_GET` and `BPF_LINK_UPDATE` in
//! `pin.rs`).

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

/// `enum bpf_cmd` (the libc crate has none).
const BPF_PROG_TEST_RUN: libc::c_int = 10;

/// `BPF_PROG_TEST_RUN` of a raw tracepoint program run on its own (the
/// flow sampler) with `args` as its arguments; its return value. aya has
/// no API for it.
pub fn test_run(program: BorrowedFd<'_>, args: &[u64]) -> io::Result<u32> {
    #[repr(C)]
    #[derive(Default)]
    struct TestRun {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        /// Spelled out: the kernel refuses non-zero bytes past the last
        /// field, and padding would be left uninitialised.
        pad: u32,
    }
    let mut attr = TestRun {
        prog_fd: fd_u32(program.as_raw_fd()),
        ctx_size_in: u32::try_from(size_of_val(args)).map_err(io::Error::other)?,
        ctx_in: args.as_ptr() as u64,
        ..TestRun::default()
    };
    // SAFETY: `attr` is the `test` member of `union bpf_attr`, and the size
    // passed is its size; `args` outlives the call and is `ctx_size_in`
    // bytes long.
    bpf(BPF_PROG_TEST_RUN, (&raw mut attr).cast(), size_of::<TestRun>())?;
    Ok(attr.retval)
}

/// Can a `tp_btf` program be loaded for the tracepoint whose
/// `btf_trace_<name>` typedef has id `btf_id` in the kernel's BTF? Loads
/// the smallest one (`r0 = 0; exit`) and closes it. aya's probe of the
/// tracing type fails on kernels where this works, as bpftool's does.
pub fn tp_btf_loads(btf_id: u32) -> io::Result<()> {
    /// The `prog_load` member of `union bpf_attr`, up to `attach_btf_id`.
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
        prog_btf_fd: u32,
        func_info_rec_size: u32,
        func_info: u64,
        func_info_cnt: u32,
        line_info_rec_size: u32,
        line_info: u64,
        line_info_cnt: u32,
        attach_btf_id: u32,
    }
    const BPF_PROG_LOAD: libc::c_int = 5;
    const BPF_PROG_TYPE_TRACING: u32 = 26;
    const BPF_TRACE_RAW_TP: u32 = 23;
    // `r0 = 0` (BPF_ALU64 | BPF_MOV | BPF_K), then `exit`.
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_TRACE_RAW_TP,
        attach_btf_id: btf_id,
        ..ProgLoad::default()
    };
    // SAFETY: `attr` is laid out as the kernel's `prog_load`, its pointers
    // outlive the call.
    let fd = bpf(BPF_PROG_LOAD, (&raw mut attr).cast(), size_of::<ProgLoad>())?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

pub(crate) fn fd_u32(fd: i32) -> u32 {
    u32::try_from(fd).expect("open descriptors are not negative")
}

/// The `bpf(2)` system call.
pub(crate) fn bpf(cmd: libc::c_int, attr: *mut libc::c_void, size: usize) -> io::Result<i32> {
    // SAFETY: callers pass an attribute of `size` bytes laid out as the
    // kernel expects for `cmd`.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::try_from(ret).expect("bpf(2) returns an int"))
}
