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
        "governor must run as root to load eBPF programs (effective uid is {uid}): run it with sudo or as a privileged container"
    )]
    NotRoot { uid: u32 },
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

pub fn check_root() -> Result<(), HostError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid == 0 { Ok(()) } else { Err(HostError::NotRoot { uid }) }
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
    }
}
