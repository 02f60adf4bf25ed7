//! Linker settings for the kernel object.
//!
//! bpf-linker asks LLVM by default to keep every memcpy and memset as a
//! call (`--bpf-expand-memcpy-in-order`), to be expanded late for the
//! kernel's copy pattern matcher; memset then stays a call to a byte loop,
//! and zeroing a socket entry cost hundreds of instructions per event.
//! Without it LLVM writes small copies and fills out as plain loads and
//! stores.

fn main() {
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
