//! Facts about the host governor needs before it loads anything: privileges,
//! BTF, mounts, the ephemeral port range. Parsing is pure and tested; the
//! functions that touch the system are thin.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const MOUNTINFO: &str = "/proc/self/mountinfo";
const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "governor needs the capabilities {needed} to load and attach its eBPF programs and has not {missing} (effective \
         uid {uid}): run it as root (sudo, a privileged container) or grant them (a container's \
         securityContext.capabilities.add)",
        needed = capability::names(capability::NEEDED),
        missing = capability::names(missing)
    )]
    MissingCapabilities { uid: u32, missing: Vec<Capability> },
    #[error(
        "kernel BTF is missing ({BTF_PATH} does not exist): governor needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error("{fs} is not mounted at {path}: run `mount -t {fstype} {fstype} {path}` or set ebpf.mount_missing = true", fs = fs.name, fstype = fs.fstype, path = path.display())]
    NotMounted { fs: Filesystem, path: PathBuf },
    #[error("{fs} is not mounted at {path} and mounting it failed ({source}): run `mount -t {fstype} {fstype} {path}`", fs = fs.name, fstype = fs.fstype, path = path.display())]
    MountFailed { fs: Filesystem, path: PathBuf, source: nix::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: &'static str, source: io::Error },
    #[error("cannot parse {PORT_RANGE}: {text:?}")]
    PortRange { text: String },
}

/// A pseudo filesystem governor depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filesystem {
    pub name: &'static str,
    pub fstype: &'static str,
}

pub const BPFFS: Filesystem = Filesystem { name: "bpffs", fstype: "bpf" };

/// One line of `/proc/self/mountinfo`, the parts governor uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// Parses `/proc/<pid>/mountinfo` (see proc(5)): the mount point is field 5,
/// the filesystem type follows the ` - ` separator. Lines that do not parse
/// are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            let fstype = post.split(' ').next()?;
            Some(Mount { mount_point: PathBuf::from(unescape(mount_point)), fstype: fstype.to_owned() })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = bytes[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn read_mounts() -> Result<Vec<Mount>, HostError> {
    let text = fs::read_to_string(MOUNTINFO).map_err(|source| HostError::Read { path: MOUNTINFO, source })?;
    Ok(parse_mountinfo(&text))
}

/// Is a filesystem of `fstype` mounted exactly at `path`?
pub fn mounted_at(mounts: &[Mount], fstype: &str, path: &Path) -> bool {
    mounts.iter().any(|m| m.fstype == fstype && m.mount_point == path)
}

/// The cgroup v2 hierarchy: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones. The first cgroup2 mount wins.
pub fn cgroup2_root(mounts: &[Mount]) -> Option<&Path> {
    mounts.iter().find(|m| m.fstype == "cgroup2").map(|m| m.mount_point.as_path())
}

/// Parses `ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high)), None) = (it.next(), it.next(), it.next()) else { return None };
    (low <= high).then_some((low, high))
}

/// This network namespace's range of client-side ports.
pub fn ephemeral_port_range() -> Result<(u16, u16), HostError> {
    let text = fs::read_to_string(PORT_RANGE).map_err(|source| HostError::Read { path: PORT_RANGE, source })?;
    parse_port_range(&text).ok_or(HostError::PortRange { text })
}

/// A capability governor needs: its name and its bit in the sets of
/// `/proc/<pid>/status` (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub bit: u32,
}

/// The capabilities of loading and attaching eBPF programs.
pub mod capability {
    use super::Capability;

    pub const NET_ADMIN: Capability = Capability { name: "CAP_NET_ADMIN", bit: 12 };
    pub const SYS_ADMIN: Capability = Capability { name: "CAP_SYS_ADMIN", bit: 21 };
    pub const PERFMON: Capability = Capability { name: "CAP_PERFMON", bit: 38 };
    pub const BPF: Capability = Capability { name: "CAP_BPF", bit: 39 };

    /// Maps and programs (`CAP_BPF`), tracing programs and their reads of
    /// kernel memory (`CAP_PERFMON`), the enforcement programs on cgroups
    /// (`CAP_NET_ADMIN`). Policies can arrive while the daemon runs (etcd),
    /// so the last is needed from the start. `CAP_SYS_ADMIN` stands in for
    /// the first two, as it does on kernels before 5.8.
    pub const NEEDED: &[Capability] = &[BPF, PERFMON, NET_ADMIN];

    /// The capabilities of `NEEDED` the effective set `effective` lacks.
    #[must_use]
    pub fn missing(effective: u64) -> Vec<Capability> {
        let has = |c: Capability| effective & (1 << c.bit) != 0;
        let stands_in = |c: Capability| c != NET_ADMIN && has(SYS_ADMIN);
        NEEDED.iter().copied().filter(|&c| !has(c) && !stands_in(c)).collect()
    }

    /// The names joined as in `CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN`.
    #[must_use]
    pub fn names(caps: &[Capability]) -> String {
        match caps {
            [] => String::new(),
            [one] => one.name.to_owned(),
            [rest @ .., last] => {
                format!("{} and {}", rest.iter().map(|c| c.name).collect::<Vec<_>>().join(", "), last.name)
            }
        }
    }
}

/// The effective capability set (`CapEff:`, hexadecimal) of a
/// `/proc/<pid>/status` text.
#[must_use]
pub fn parse_effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// This process's effective capabilities.
pub fn effective_capabilities() -> Result<u64, HostError> {
    const STATUS: &str = "/proc/self/status";
    let text = fs::read_to_string(STATUS).map_err(|source| HostError::Read { path: STATUS, source })?;
    parse_effective_capabilities(&text)
        .ok_or_else(|| HostError::Read { path: STATUS, source: io::Error::other("no CapEff line") })
}

/// Can this process load and attach governor's programs? Judged by its
/// capabilities, not its user id: root without them (a container that
/// dropped them) cannot, a user with them (ambient capabilities) can.
pub fn check_privileges() -> Result<(), HostError> {
    let missing = capability::missing(effective_capabilities()?);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(HostError::MissingCapabilities { uid: nix::unistd::geteuid().as_raw(), missing })
    }
}

pub fn check_btf() -> Result<(), HostError> {
    if Path::new(BTF_PATH).exists() { Ok(()) } else { Err(HostError::NoBtf) }
}

/// What `ensure_mounted` did.
#[derive(Debug, PartialEq, Eq)]
pub enum MountOutcome {
    AlreadyMounted,
    Mounted,
}

/// Makes sure `fs` is mounted at `path`, mounting it when `mount_missing`.
pub fn ensure_mounted(fs: Filesystem, path: &Path, mount_missing: bool) -> Result<MountOutcome, HostError> {
    if mounted_at(&read_mounts()?, fs.fstype, path) {
        return Ok(MountOutcome::AlreadyMounted);
    }
    if !mount_missing {
        return Err(HostError::NotMounted { fs, path: path.to_owned() });
    }
    nix::mount::mount(Some(fs.fstype), path, Some(fs.fstype), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|source| HostError::MountFailed { fs, path: path.to_owned(), source })?;
    Ok(MountOutcome::Mounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_are_judged_by_capabilities() {
        use capability::{BPF, NET_ADMIN, PERFMON, SYS_ADMIN, missing};
        let set = |caps: &[Capability]| caps.iter().fold(0_u64, |s, c| s | 1 << c.bit);
        // Root's full set, and just the three.
        assert!(missing(0x1ff_ffff_ffff).is_empty());
        assert!(missing(set(&[BPF, PERFMON, NET_ADMIN])).is_empty());
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, not for
        // CAP_NET_ADMIN.
        assert!(missing(set(&[SYS_ADMIN, NET_ADMIN])).is_empty());
        assert_eq!(missing(set(&[SYS_ADMIN])), [NET_ADMIN]);
        assert_eq!(missing(0), [BPF, PERFMON, NET_ADMIN]);
        assert_eq!(missing(set(&[BPF, NET_ADMIN])), [PERFMON]);
        assert_eq!(capability::names(&missing(0)), "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN");
        assert_eq!(capability::names(&[PERFMON]), "CAP_PERFMON");
    }

    #[test]
    fn the_effective_set_is_read_from_the_status_file() {
        let status = "Name:\tgovernor\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000001ffffffffff\n";
        let eff = parse_effective_capabilities(status).expect("CapEff");
        assert_eq!(eff, 1 << 39 | 1 << 38 | 1 << 12);
        assert!(capability::missing(eff).is_empty());
        assert_eq!(parse_effective_capabilities("Name:\tx\n"), None);
        assert_eq!(parse_effective_capabilities("CapEff:\tnot-hex\n"), None);
    }

    // Trimmed from this project's development machine (hybrid cgroups).
    const MOUNTINFO_HYBRID: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,name=systemd
90 25 0:40 / /sys/kernel/tracing rw,relatime shared:40 - tracefs tracefs rw
91 25 0:41 / /sys/fs/bpf rw,relatime shared:41 - bpf bpf rw
92 22 0:42 / /mnt/with\\040space rw,relatime - tmpfs tmpfs rw
garbage line
";

    #[test]
    fn mountinfo_gives_mount_points_and_types() {
        let mounts = parse_mountinfo(MOUNTINFO_HYBRID);
        assert_eq!(mounts.len(), 8);
        assert!(mounted_at(&mounts, "tracefs", Path::new("/sys/kernel/tracing")));
        assert!(mounted_at(&mounts, "bpf", Path::new("/sys/fs/bpf")));
        assert!(!mounted_at(&mounts, "bpf", Path::new("/sys/kernel/tracing")));
        assert_eq!(cgroup2_root(&mounts), Some(Path::new("/sys/fs/cgroup/unified")));
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/mnt/with space")));
    }

    #[test]
    fn unified_host_and_missing_cgroup2() {
        let unified = "30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_root(&parse_mountinfo(unified)), Some(Path::new("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root(&parse_mountinfo("")), None);
    }

    #[test]
    fn port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 1024"), Some((1024, 1024)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range("a b"), None);
    }

    #[test]
    fn errors_say_how_to_fix() {
        let e = HostError::NotMounted { fs: BPFFS, path: "/sys/fs/bpf".into() };
        assert_eq!(
            e.to_string(),
            "bpffs is not mounted at /sys/fs/bpf: run `mount -t bpf bpf /sys/fs/bpf` or set ebpf.mount_missing = true"
        );
        let e = HostError::MissingCapabilities { uid: 0, missing: vec![capability::BPF, capability::PERFMON] };
        assert_eq!(
            e.to_string(),
            "governor needs the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN to load and attach its eBPF \
             programs and has not CAP_BPF and CAP_PERFMON (effective uid 0): run it as root (sudo, a privileged \
             container) or grant them (a container's securityContext.capabilities.add)"
        );
    }
}
