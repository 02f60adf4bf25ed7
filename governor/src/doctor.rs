//! `governor doctor`: checks the kernel and host for everything governor
//! needs and prints a table with a remedy for each failure. It changes
//! nothing on the host.

use std::{fmt::Write as _, path::Path};

use aya::{maps::MapType, programs::ProgramType};

use crate::{btf, config::Config, host, tracepoints};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Missing but governor can work around it (for example by mounting).
    Warn,
    Fail,
}

#[derive(Debug)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
    pub remedy: String,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { name: name.into(), outcome: Outcome::Pass, detail: detail.into(), remedy: String::new() }
    }

    fn not(outcome: Outcome, name: impl Into<String>, detail: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self { name: name.into(), outcome, detail: detail.into(), remedy: remedy.into() }
    }
}

/// Runs every check.
pub fn checks(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let uid = nix::unistd::geteuid().as_raw();
    let needed = host::capability::names(host::capability::NEEDED);
    out.push(match host::effective_capabilities().map(host::capability::missing) {
        Ok(missing) if missing.is_empty() => Check::pass("privileges", format!("uid {uid} with {needed}")),
        Ok(missing) => Check::not(
            Outcome::Fail,
            "privileges",
            format!("uid {uid} without {}", host::capability::names(&missing)),
            format!("run as root (sudo, a privileged container) or grant {needed}"),
        ),
        Err(e) => Check::not(Outcome::Fail, "privileges", e.to_string(), "run as root"),
    });
    out.push(if Path::new(host::BTF_PATH).exists() {
        Check::pass("kernel BTF", host::BTF_PATH)
    } else {
        Check::not(
            Outcome::Fail,
            "kernel BTF",
            format!("{} missing", host::BTF_PATH),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    });

    let mounts = host::read_mounts().unwrap_or_default();
    let mount_missing = config.ebpf.mount_missing;
    {
        let (fs, path) = (host::BPFFS, &config.ebpf.bpffs);
        let name = format!("{} mount", fs.name);
        out.push(if host::mounted_at(&mounts, fs.fstype, path) {
            Check::pass(name, path.display().to_string())
        } else {
            Check::not(
                if mount_missing { Outcome::Warn } else { Outcome::Fail },
                name,
                format!(
                    "not mounted at {}{}",
                    path.display(),
                    if mount_missing { " (governor run mounts it)" } else { "" }
                ),
                format!("mount -t {0} {0} {1}", fs.fstype, path.display()),
            )
        });
    }
    out.push(match host::cgroup2_root(&mounts) {
        Some(root) => Check::pass("cgroup v2", root.display().to_string()),
        None => Check::not(
            Outcome::Warn,
            "cgroup v2",
            "no cgroup2 mount in /proc/self/mountinfo",
            "mount -t cgroup2 none /sys/fs/cgroup (policies attach there)",
        ),
    });

    let kernel = btf::Btf::read(Path::new(btf::VMLINUX));
    for tp in &tracepoints::TRACEPOINTS {
        let name = format!("tracepoint {tp}");
        out.push(match kernel.as_ref().map_err(ToString::to_string) {
            Err(e) => Check::not(Outcome::Fail, name, e, "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
            Ok(b) => match tracepoints::check(b, tp) {
                Ok(args) => Check::pass(name, format!("passes ({})", args.join(", "))),
                Err(e) => Check::not(Outcome::Fail, name, e.to_string(), "use Linux 5.15 or later"),
            },
        });
    }
    out.push(match kernel.as_ref().map_err(ToString::to_string) {
        Err(e) => Check::not(Outcome::Fail, "socket layout", e, "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        Ok(b) => match btf::sock_layout(b) {
            Ok(_) => Check::pass("socket layout", "struct sock fields found in BTF"),
            Err(e) => Check::not(Outcome::Fail, "socket layout", e.to_string(), "use Linux 5.15 or later"),
        },
    });

    out.push(match kernel.as_ref().map_err(ToString::to_string) {
        Err(e) => Check::not(Outcome::Fail, TP_BTF, e, "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        Ok(b) => tp_btf_check(b),
    });
    out.extend(kernel_support());
    out
}

const TP_BTF: &str = "program type tracing (tp_btf)";

/// Loads the smallest `tp_btf` program for the first tracepoint: the
/// program type governor's tracepoint programs are.
fn tp_btf_check(btf: &btf::Btf) -> Check {
    let tp = &tracepoints::TRACEPOINTS[0];
    let fix = "use Linux 5.8 or later built with CONFIG_BPF_EVENTS, and run as root";
    match btf.tracepoint_type_id(tp.name) {
        Err(e) => Check::not(Outcome::Fail, TP_BTF, e.to_string(), fix),
        Ok(id) => match crate::bpf_sys::tp_btf_loads(id) {
            Ok(()) => Check::pass(TP_BTF, "supported"),
            Err(e) => Check::not(Outcome::Fail, TP_BTF, format!("loading one fails: {e}"), fix),
        },
    }
}

/// The program and map types governor loads.
fn kernel_support() -> Vec<Check> {
    let mut out = Vec::new();
    for (label, kind, missing, fix) in [
        (
            "program type cgroup_skb",
            ProgramType::CgroupSkb,
            Outcome::Warn,
            "enable CONFIG_CGROUP_BPF: inbound and bandwidth policies ([[policies]]) need it",
        ),
        (
            "program type cgroup_sock_addr",
            ProgramType::CgroupSockAddr,
            Outcome::Warn,
            "enable CONFIG_CGROUP_BPF: connect policies ([[policies]]) need it",
        ),
        (
            "program type cgroup_sock",
            ProgramType::CgroupSock,
            Outcome::Warn,
            "enable CONFIG_CGROUP_BPF: connection caps (max_connections policies) need it",
        ),
    ] {
        out.push(match aya::sys::is_program_supported(kind) {
            Ok(true) => Check::pass(label, "supported"),
            Ok(false) => Check::not(missing, label, "not supported by this kernel", fix),
            Err(e) => Check::not(Outcome::Fail, label, format!("cannot probe: {e}"), "run as root"),
        });
    }
    for (label, kind) in [
        ("map type percpu_array", MapType::PerCpuArray),
        ("map type lru_hash", MapType::LruHash),
        ("map type ringbuf", MapType::RingBuf),
    ] {
        out.push(match aya::sys::is_map_supported(kind) {
            Ok(true) => Check::pass(label, "supported"),
            Ok(false) => Check::not(Outcome::Fail, label, "not supported by this kernel", "use Linux 5.8 or later"),
            Err(e) => Check::not(Outcome::Fail, label, format!("cannot probe: {e}"), "run as root"),
        });
    }
    out
}

/// The table, one check per line.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = format!("{:<width$}  {:<6}  DETAIL\n", "CHECK", "RESULT");
    for c in checks {
        let result = match c.outcome {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        };
        let _ = writeln!(out, "{:<width$}  {result:<6}  {}", c.name, c.detail);
        if !c.remedy.is_empty() {
            let _ = writeln!(out, "{:<width$}  {:<6}  fix: {}", "", "", c.remedy);
        }
    }
    out
}

/// Does governor have everything it needs?
pub fn all_required_pass(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.outcome != Outcome::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_remedy_under_each_failure() {
        let checks = vec![
            Check::pass("kernel BTF", "/sys/kernel/btf/vmlinux"),
            Check::not(Outcome::Fail, "bpffs mount", "not mounted", "mount -t bpf bpf /sys/fs/bpf"),
        ];
        assert_eq!(
            render(&checks),
            "CHECK        RESULT  DETAIL\n\
             kernel BTF   pass    /sys/kernel/btf/vmlinux\n\
             bpffs mount  FAIL    not mounted\n\
             \x20                    fix: mount -t bpf bpf /sys/fs/bpf\n"
        );
        assert!(!all_required_pass(&checks));
        assert!(all_required_pass(&checks[..1]));
    }
}
