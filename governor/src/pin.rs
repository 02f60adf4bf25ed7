//! Pinned mode: the enforcement maps and the links of the enforcement
//! programs are pinned in bpffs, so policies stay in force while the
//! daemon restarts (an upgrade). Layout, under `enforcement.pin_dir`:
//!
//! ```text
//! v<PIN_LAYOUT>/maps/<MAP>               reused by the next daemon
//! v<PIN_LAYOUT>/links/<program>-<cgroup> replaced by the next daemon
//! ```
//!
//! A restarted daemon loads its programs against the pinned maps and swaps
//! them into the pinned links with `BPF_LINK_UPDATE`: no gap in which
//! nothing is enforced and no moment in which two programs count the same
//! connect. The rules carry a lease (`POLICY_LEASE`) the daemon renews; a
//! daemon that never comes back lets them lapse.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use governor_common::PIN_LAYOUT;

use crate::bpf_sys::{bpf, fd_u32};

/// `bpf(2)` commands (`enum bpf_cmd`; the libc crate has none).
const BPF_OBJ_GET: libc::c_int = 7;
const BPF_LINK_UPDATE: libc::c_int = 29;

/// The maps the enforcement programs keep their rules and state in.
pub const MAPS: [&str; 10] = [
    "POLICY_RULES",
    "POLICY_ACTIVE",
    "POLICY_LEASE",
    "POLICY_OWNERS",
    "POLICY_STATE",
    "POLICY_DECISIONS",
    "ADMITTED",
    "BREAKERS",
    "BANDWIDTH",
    "BANDWIDTH_DROPPED",
];

/// The pin directory of this layout, and the lock that makes it this
/// daemon's alone while it runs.
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
    /// `root`, locked (`flock`): the kernel releases it when the daemon
    /// exits, however it exits.
    _lock: std::sync::Arc<std::fs::File>,
}

/// One pinned link: the program it runs and the cgroup it is attached at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedLink {
    pub program: String,
    pub cgroup_id: u64,
    pub path: PathBuf,
}

impl Pins {
    /// Creates `root/v<PIN_LAYOUT>/{maps,links}` and locks `root` for this
    /// daemon: a second daemon on the same pins would take over the first
    /// one's programs and write its rules into the same maps, so it is
    /// refused. Pins of another layout are removed (their links detach):
    /// the maps they name would be misread. Returns the removed
    /// directories, for the log.
    pub fn prepare(root: &Path) -> io::Result<(Self, Vec<PathBuf>)> {
        refuse_mount_root(root)?;
        std::fs::create_dir_all(root)?;
        let lock = std::fs::File::open(root)?;
        if let Err(e) = lock.try_lock() {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => io::Error::other(format!(
                    "{} is in use by another governor on this host: one pinned daemon per enforcement.pin_dir (stop \
                     the other one, or give this one a pin_dir of its own)",
                    root.display()
                )),
                std::fs::TryLockError::Error(e) => e,
            });
        }
        let dir = root.join(format!("v{PIN_LAYOUT}"));
        let mut removed = Vec::new();
        for layout in layouts(root) {
            if layout != dir {
                remove(&layout)?;
                removed.push(layout);
            }
        }
        std::fs::create_dir_all(dir.join("maps"))?;
        std::fs::create_dir_all(dir.join("links"))?;
        Ok((Self { dir, _lock: std::sync::Arc::new(lock) }, removed))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn link(&self, program: &str, cgroup_id: u64) -> PathBuf {
        // bpffs refuses names with a dot.
        self.dir.join("links").join(format!("{program}-{cgroup_id}"))
    }

    /// The links pinned by an earlier daemon (names it cannot parse are
    /// skipped: not ours).
    pub fn links(&self) -> io::Result<Vec<PinnedLink>> {
        let mut links = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("links"))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some((program, cgroup)) = name.to_str().and_then(|n| n.rsplit_once('-')) else { continue };
            let Ok(cgroup_id) = cgroup.parse() else { continue };
            links.push(PinnedLink { program: program.to_owned(), cgroup_id, path: entry.path() });
        }
        links.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(links)
    }
}

/// The layout directories (`v<n>`) under `root`: governor's pins, and
/// nothing else there.
fn layouts(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix('v'))
                .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    dirs.sort();
    dirs
}

/// A pin directory must be governor's own, below the bpffs mount: never
/// the mount itself, where other tools keep their pins.
fn refuse_mount_root(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(dir), Some(Ok(parent))) = (std::fs::metadata(root), root.parent().map(std::fs::metadata)) else {
        return Ok(());
    };
    if dir.dev() != parent.dev() || root.parent().is_none() {
        return Err(io::Error::other(format!(
            "{} is a mount point: enforcement.pin_dir must be a directory of governor's own below it (for example \
             {}/governor)",
            root.display(),
            root.display()
        )));
    }
    Ok(())
}

/// Removes governor's pins under `root` (the layout directories, then
/// `root` when that leaves it empty); other entries stay. Their
/// enforcement stops at once. Returns whether anything was pinned.
pub fn unpin(root: &Path) -> io::Result<bool> {
    refuse_mount_root(root)?;
    let layouts = layouts(root);
    for layout in &layouts {
        remove(layout)?;
    }
    if std::fs::read_dir(root).is_ok_and(|mut e| e.next().is_none()) {
        std::fs::remove_dir(root)?;
    }
    Ok(!layouts.is_empty())
}

/// Removes a pin or a directory of pins. Unpinning a link that no process
/// holds detaches it.
pub fn remove(path: &Path) -> io::Result<()> {
    if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }
}

/// Makes the pinned link at `link` run the program `program` from now on
/// (`BPF_LINK_UPDATE`: one atomic swap).
pub fn replace_program(link: &Path, program: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let link = obj_get(link)?;
    let mut attr = LinkUpdate {
        link_fd: fd_u32(link.as_raw_fd()),
        new_prog_fd: fd_u32(program.as_raw_fd()),
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: `attr` is the `link_update` member of `union bpf_attr`, and
    // the size passed is its size (the kernel zero-fills the rest).
    bpf(BPF_LINK_UPDATE, (&raw mut attr).cast(), size_of::<LinkUpdate>()).map(drop)
}

/// `BPF_OBJ_GET`: opens the pinned object at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let name = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = ObjGet { pathname: name.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: `attr` is the `obj_get` member of `union bpf_attr`, its
    // pathname outlives the call.
    let fd = bpf(BPF_OBJ_GET, (&raw mut attr).cast(), size_of::<ObjGet>())?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_carry_the_program_and_the_cgroup() {
        let dir = std::env::temp_dir().join(format!("governor-pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("v0/maps")).unwrap();
        std::fs::create_dir_all(dir.join("other-tool")).unwrap();
        let (pins, removed) = Pins::prepare(&dir).unwrap();
        assert_eq!(removed, [dir.join("v0")], "another layout's pins are removed");
        assert!(dir.join("other-tool").exists(), "what is not governor's stays");
        std::fs::write(pins.link("gov_connect4", 1), "").unwrap();
        std::fs::write(pins.link("gov_police_out", 4242), "").unwrap();
        std::fs::write(pins.dir.join("links/stray"), "").unwrap();
        let links = pins.links().unwrap();
        let got: Vec<(&str, u64)> = links.iter().map(|l| (l.program.as_str(), l.cgroup_id)).collect();
        assert_eq!(got, [("gov_connect4", 1), ("gov_police_out", 4242)]);
        let error = Pins::prepare(&dir).expect_err("the pins are this daemon's while it holds them");
        assert!(error.to_string().contains("in use by another governor"), "{error}");
        drop(pins);
        let (pins, removed) = Pins::prepare(&dir).unwrap();
        assert!(removed.is_empty(), "the same layout is kept");
        drop(pins);
        assert!(unpin(&dir).unwrap());
        assert!(dir.join("other-tool").exists() && !dir.join(format!("v{PIN_LAYOUT}")).exists());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Pins::prepare(Path::new("/proc")).is_err(), "a mount point is refused");
    }
}
