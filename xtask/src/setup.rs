//! Installs what the build and the tests need, when it is missing:
//! Debian packages (LLVM 22 for bpf-linker, bpftool, nftables, iproute2,
//! libbpf-tools, protoc and etcd for the registry), rust-src, clippy and rustfmt for the nightly toolchain, bpf-linker 0.13.0 built
//! against LLVM 22, and the tracefs (for the benchmark peer) and bpffs mounts.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{exec, step};

/// Debian packages and why they are needed.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22, the nightly's LLVM"),
    ("libpolly-22-dev", "LLVM 22's link dependencies"),
    ("libzstd-dev", "LLVM 22's link dependencies"),
    ("zlib1g-dev", "LLVM 22's link dependencies"),
    ("iproute2", "network namespaces in tests and benchmarks"),
    ("nftables", "packet loss in the retransmit test"),
    ("bpftool", "inspecting loaded programs"),
    ("libbpf-tools", "tcpstates, the benchmark's comparison peer"),
    ("protobuf-compiler", "etcd-client compiles etcd's protocol files with protoc"),
    ("libprotobuf-dev", "protoc's well-known types (google/protobuf/descriptor.proto) that etcd's files import"),
    ("etcd-server", "the real etcd the registry tests run against"),
    ("openssl", "certificates for the test of etcd over TLS"),
    ("iperf3", "the traffic of the bandwidth policing test"),
    ("prometheus", "promtool for the alert rules' checks, and the end-to-end alerting test"),
    ("prometheus-alertmanager", "the end-to-end alerting test"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    packages()?;
    nightly_components()?;
    bpf_linker()?;
    mounts();
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<_> = PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (p, why) in &missing {
        step(&format!("installing Debian package {p}: {why}"));
    }
    if !is_root() {
        bail!(
            "missing Debian packages and not root: run `sudo apt-get install -y {}`",
            missing.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(" ")
        );
    }
    exec(Command::new("apt-get").arg("update").arg("-q"))
        .context("apt-get update failed: are Debian's package mirrors reachable?")?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|(p, _)| *p))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed")
}

/// Nightly components: rust-src (build-std for the BPF target), clippy
/// and rustfmt (the kernel crate is linted and formatted with nightly).
const NIGHTLY_COMPONENTS: [&str; 3] = ["rust-src", "clippy", "rustfmt"];

fn nightly_components() -> anyhow::Result<()> {
    let listed = Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]).output();
    let installed = match listed {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => {
            step("installing the nightly toolchain (the eBPF programs need -Z build-std)");
            exec(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
                .context("no nightly toolchain and rustup could not install one")?;
            String::new()
        }
    };
    let missing: Vec<&str> =
        NIGHTLY_COMPONENTS.into_iter().filter(|c| !installed.lines().any(|l| l.starts_with(c))).collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("adding {} to the nightly toolchain", missing.join(", ")));
    exec(Command::new("rustup").args(["component", "add", "--toolchain", "nightly"]).args(&missing))
        .context("rustup could not add the nightly components")
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    step(&format!("building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"));
    let path = format!("{LLVM_PREFIX}/bin:{}", std::env::var("PATH").unwrap_or_default());
    exec(
        Command::new("cargo")
            .args(["install", "--locked", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
    .context("installing bpf-linker failed: is llvm-22-dev installed?")
}

/// tracefs (the benchmark's `tcpstates` peer needs it; governor does not) and
/// bpffs; without root this only warns (building needs neither).
fn mounts() {
    for (fstype, target) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounted = mountinfo.lines().any(|l| {
            l.split_once(" - ").is_some_and(|(pre, post)| {
                pre.split(' ').nth(4) == Some(target) && post.split(' ').next() == Some(fstype)
            })
        });
        if mounted || !Path::new(target).is_dir() {
            continue;
        }
        if !is_root() {
            step(&format!(
                "warning: {fstype} is not mounted at {target}; as root: mount -t {fstype} {fstype} {target}"
            ));
            continue;
        }
        step(&format!("mounting {fstype} at {target}"));
        if let Err(e) = exec(Command::new("mount").args(["-t", fstype, fstype, target])) {
            step(&format!("warning: {e:#}"));
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
