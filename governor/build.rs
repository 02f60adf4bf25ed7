//! Builds the kernel programs (`governor-ebpf`) for the BPF target with the
//! nightly toolchain and bpf-linker; the daemon embeds the object from
//! `OUT_DIR`. `cargo xtask setup` installs what this needs.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("governor has no parent directory"))?
        .join("governor-ebpf");
    let root = root.to_str().context("non-UTF-8 path to governor-ebpf")?;
    aya_build::build_ebpf([Package { name: "governor-ebpf", root_dir: root, ..Default::default() }], Toolchain::Nightly)
        .context("building the eBPF programs failed; `cargo xtask setup` installs the nightly rust-src and bpf-linker they need")
}
