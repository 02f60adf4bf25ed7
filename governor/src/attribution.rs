//! Where a socket's owner runs. The kernel gives a pid, a command name and a
//! cgroup v2 id (the inode number of the cgroup's directory); this module
//! turns the id into the cgroup's path, the container and the Kubernetes pod.
//!
//! Anything missing degrades to what is known, never to an error: an unknown
//! cgroup id gives an empty [`Attribution`], a cgroup that belongs to no
//! container gives just its path, a pod without a log directory gives its uid
//! without a name.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::api::Attribution;

/// Seconds between two walks of the cgroup tree (or two reads of the pod log
/// directory) caused by ids that are not known.
pub const DEFAULT_RESCAN_INTERVAL_SECONDS: u64 = 5;
/// The walk of the cgroup tree stops this deep below the root...
const MAX_CGROUP_DEPTH: usize = 32;
/// ...and after this many directories.
const MAX_CGROUP_DIRS: usize = 100_000;
/// Pod log directories read at most (a node runs a few hundred pods at most).
const MAX_POD_DIRS: usize = 10_000;

/// The container and pod a cgroup path names. At least one of the two ids is
/// set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerRef {
    /// 64 lowercase hex digits.
    pub container_id: Option<String>,
    /// The pod's uid with dashes, as the API server shows it.
    pub pod_uid: Option<String>,
    /// `containerd`, `cri-o`, `docker` or `podman` when the path says so
    /// (the kubelet's cgroupfs driver names containers by their id alone).
    pub runtime: Option<&'static str>,
}

/// What one component of a cgroup path says.
enum Part {
    Pod(String),
    Container {
        id: String,
        runtime: Option<&'static str>,
    },
    /// A runtime's monitor of one container (CRI-O's and podman's conmon).
    Monitor {
        runtime: &'static str,
    },
    Other,
}

/// What came before a component, for the names that are a bare id.
#[derive(Clone, Copy)]
enum Parent {
    /// Under `/kubepods` (cgroupfs driver) but not directly under a pod.
    Kubepods,
    /// Directly under a pod's cgroup.
    Pod,
    /// Directly under `/docker` (docker's cgroupfs driver).
    Docker,
    Other,
}

/// `<prefix><64 hex>[.scope]` names as `(prefix, runtime, is the runtime's
/// monitor)`, monitors before the containers whose prefix they extend.
const PREFIXES: [(&str, &str, bool); 6] = [
    ("cri-containerd-", "containerd", false),
    ("crio-conmon-", "cri-o", true),
    ("crio-", "cri-o", false),
    ("docker-", "docker", false),
    ("libpod-conmon-", "podman", true),
    ("libpod-", "podman", false),
];

/// The container and pod of a cgroup path relative to the cgroup2 root, for
/// both kubelet cgroup drivers and the containerd, CRI-O and docker names:
///
/// - `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`
/// - `/kubepods/burstable/pod<uid>/<id>`
/// - `/system.slice/docker-<id>.scope`, `/docker/<id>`
///
/// A pod's own cgroup gives its uid alone. Sub-cgroups of a container belong
/// to it, and the innermost container and pod win (nested runtimes, kind).
/// A conmon scope (`crio-conmon-<id>.scope`) is the runtime's monitor, which
/// runs outside the container: it gets the pod but no container id, so its
/// sockets are never counted as the container's. Paths that name neither a
/// pod nor a container give `None`.
pub fn parse_container(cgroup_path: &str) -> Option<ContainerRef> {
    let mut found = ContainerRef::default();
    let mut parent = Parent::Other;
    for part in cgroup_path.split('/').filter(|p| !p.is_empty()) {
        match classify(part, parent) {
            Part::Pod(uid) => {
                // A container above a pod holds the whole node (kind), not this pod.
                found = ContainerRef { pod_uid: Some(uid), ..ContainerRef::default() };
                parent = Parent::Pod;
                continue;
            }
            Part::Container { id, runtime } => {
                found.container_id = Some(id);
                found.runtime = runtime;
            }
            Part::Monitor { runtime } => {
                found.container_id = None;
                found.runtime = Some(runtime);
            }
            Part::Other => {}
        }
        parent = match (parent, part) {
            (_, "kubepods") | (Parent::Kubepods, _) => Parent::Kubepods,
            (_, "docker") => Parent::Docker,
            _ => Parent::Other,
        };
    }
    (found.container_id.is_some() || found.pod_uid.is_some()).then_some(found)
}

fn classify(part: &str, parent: Parent) -> Part {
    if let Some(uid) = systemd_pod_uid(part) {
        return Part::Pod(uid);
    }
    if matches!(parent, Parent::Kubepods)
        && let Some(uid) = part.strip_prefix("pod").filter(|uid| is_pod_uid(uid))
    {
        return Part::Pod(uid.to_owned());
    }
    if is_container_id(part) {
        return match parent {
            Parent::Pod => Part::Container { id: part.to_owned(), runtime: None },
            Parent::Docker => Part::Container { id: part.to_owned(), runtime: Some("docker") },
            Parent::Kubepods | Parent::Other => Part::Other,
        };
    }
    let name = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime, monitor) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            return match (is_container_id(id), monitor) {
                (false, _) => Part::Other,
                (true, true) => Part::Monitor { runtime },
                (true, false) => Part::Container { id: id.to_owned(), runtime: Some(runtime) },
            };
        }
    }
    Part::Other
}

/// `kubepods[-<qos>]-pod<uid with _ for ->.slice`, the systemd driver's pod
/// slice (also under a prefix, as kind's `kubelet-kubepods-...`).
fn systemd_pod_uid(part: &str) -> Option<String> {
    let (slices, uid) = part.strip_suffix(".slice")?.rsplit_once("-pod")?;
    if !slices.split('-').any(|s| s == "kubepods") || uid.contains('-') {
        return None;
    }
    let uid = uid.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// 64 lowercase hex digits, what containerd, CRI-O and docker use.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// A UUID (`8-4-4-4-12` lowercase hex digits), or the 32 hex digits the
/// kubelet gives static pods (a hash of their manifest).
fn is_pod_uid(s: &str) -> bool {
    match s.len() {
        32 => is_lower_hex(s),
        36 => s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => matches!(c, '0'..='9' | 'a'..='f'),
        }),
        _ => false,
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A pod's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// `<namespace>_<pod name>_<pod uid>`, the name of a pod's directory in the
/// kubelet's log directory, as `(uid, name)`. Neither a namespace (a DNS label)
/// nor a pod name (a DNS subdomain) can hold `_`, so the split is exact.
pub fn parse_pod_log_dir(name: &str) -> Option<(String, PodName)> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    let valid =
        parts.next().is_none() && is_dns_name(namespace, 63, false) && is_dns_name(pod, 253, true) && is_pod_uid(uid);
    valid.then(|| (uid.to_owned(), PodName { namespace: namespace.to_owned(), name: pod.to_owned() }))
}

/// Lowercase letters, digits and `-` (and `.` when `dots`), starting and
/// ending with a letter or digit.
fn is_dns_name(s: &str, max_len: usize, dots: bool) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            s.len() <= max_len
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|&b| alnum(b) || b == b'-' || (dots && b == b'.'))
        }
        _ => false,
    }
}

/// The pods named by the directories in the kubelet's pod log directory
/// (`/var/log/pods`), by uid. A missing or unreadable directory gives an
/// empty map; entries that are not pod directories are skipped.
pub fn read_pod_log_dirs(dir: &Path) -> HashMap<String, PodName> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::debug!(dir = %dir.display(), %error, "pod log directory not readable; pods stay unnamed");
            return HashMap::new();
        }
    };
    entries
        .flatten()
        .take(MAX_POD_DIRS)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| parse_pod_log_dir(entry.file_name().to_str()?))
        .collect()
}

/// Cgroup ids to paths relative to the cgroup2 root (`/system.slice/x.service`;
/// the root itself is `/`). The ids are the inode numbers of the cgroups'
/// directories, found by walking the tree.
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    /// Unknown ids walk the tree again at most once per this many seconds.
    pub rescan_interval: u64,
    max_depth: usize,
    max_dirs: usize,
    /// Rebuilt by each walk, so dead cgroups leave and the size stays bounded.
    paths: HashMap<u64, String>,
    scanned_at: Option<u64>,
    warned_truncated: bool,
}

impl CgroupResolver {
    /// `root` is the cgroup2 mount point (`/sys/fs/cgroup` on unified hosts).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            rescan_interval: DEFAULT_RESCAN_INTERVAL_SECONDS,
            max_depth: MAX_CGROUP_DEPTH,
            max_dirs: MAX_CGROUP_DIRS,
            paths: HashMap::new(),
            scanned_at: None,
            warned_truncated: false,
        }
    }

    /// The path of cgroup `id`, walking the tree again when the id is not
    /// known and the last walk is `rescan_interval` old. `now` is in seconds
    /// on any steady clock. Id 0 (no cgroup v2) is never known.
    pub fn resolve(&mut self, id: u64, now: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        if !due(self.scanned_at, now, self.rescan_interval) {
            return None;
        }
        self.scanned_at = Some(now);
        let (paths, truncated) = walk(&self.root, self.max_depth, self.max_dirs);
        self.paths = paths;
        if truncated && !self.warned_truncated {
            self.warned_truncated = true;
            tracing::warn!(
                root = %self.root.display(),
                max_dirs = self.max_dirs,
                "the cgroup tree has more directories than governor walks; processes in the others stay unattributed"
            );
        }
        self.paths.get(&id).cloned()
    }
}

/// Whether something last done at `last` may be done again at `now`. A clock
/// that went back by an interval or more counts as elapsed.
fn due(last: Option<u64>, now: u64, interval: u64) -> bool {
    last.is_none_or(|last| now.abs_diff(last) >= interval)
}

/// Inode number (the cgroup id) to path relative to `root` of every cgroup
/// under `root`, within the same bounds as the resolver's walks.
pub fn cgroup_paths(root: &Path) -> HashMap<u64, String> {
    walk(root, MAX_CGROUP_DEPTH, MAX_CGROUP_DIRS).0
}

/// Inode number to relative path of every directory under `root`, at most
/// `max_depth` below it and `max_dirs` in all, and whether the walk stopped
/// early. Symlinks are not followed, other file systems are not entered, and
/// directories that cannot be read are skipped.
fn walk(root: &Path, max_depth: usize, max_dirs: usize) -> (HashMap<u64, String>, bool) {
    let mut paths = HashMap::new();
    let root_meta = match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) | Err(_) => {
            tracing::debug!(root = %root.display(), "cgroup root is not a readable directory");
            return (paths, false);
        }
    };
    paths.insert(root_meta.ino(), "/".to_owned());
    let mut pending = vec![(root.to_path_buf(), String::new(), 0)];
    while let Some((dir, relative, depth)) = pending.pop() {
        if depth >= max_depth {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if paths.len() >= max_dirs {
                return (paths, true);
            }
            // `DirEntry::metadata` does not follow symlinks.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_dir() || meta.dev() != root_meta.dev() {
                continue;
            }
            let child = format!("{relative}/{}", entry.file_name().to_string_lossy());
            paths.insert(meta.ino(), child.clone());
            pending.push((entry.path(), child, depth + 1));
        }
    }
    (paths, false)
}

/// Cgroup ids to [`Attribution`]s: path, container and pod.
#[derive(Debug)]
pub struct Attributor {
    cgroups: CgroupResolver,
    /// The kubelet's pod log directory; `None` outside Kubernetes.
    pod_log_dir: Option<PathBuf>,
    pods: HashMap<String, PodName>,
    pods_read_at: Option<u64>,
}

impl Attributor {
    /// `cgroup_root` is the cgroup2 mount point, `pod_log_dir` the kubelet's
    /// pod log directory (`/var/log/pods`) when pods are to be named.
    pub fn new(cgroup_root: PathBuf, pod_log_dir: Option<PathBuf>) -> Self {
        Self { cgroups: CgroupResolver::new(cgroup_root), pod_log_dir, pods: HashMap::new(), pods_read_at: None }
    }

    /// Sets how often, at most, unknown cgroup ids walk the cgroup tree and
    /// unknown pod uids read the pod log directory.
    #[must_use]
    pub fn with_rescan_interval(mut self, seconds: u64) -> Self {
        self.cgroups.rescan_interval = seconds;
        self
    }

    /// Everything known about cgroup `cgroup_id`; `now` is in seconds on any
    /// steady clock.
    pub fn attribute(&mut self, cgroup_id: u64, now: u64) -> Attribution {
        let Some(cgroup) = self.cgroups.resolve(cgroup_id, now) else {
            return Attribution::default();
        };
        let ContainerRef { container_id, pod_uid, runtime: _ } = parse_container(&cgroup).unwrap_or_default();
        let (pod_namespace, pod_name) = match pod_uid.as_deref().and_then(|uid| self.pod_name(uid, now)) {
            Some(PodName { namespace, name }) => (Some(namespace), Some(name)),
            None => (None, None),
        };
        Attribution { cgroup: Some(cgroup), container_id, pod_uid, pod_namespace, pod_name }
    }

    /// The pod with this uid, reading the log directory again when it is not
    /// known and the last read is a rescan interval old.
    fn pod_name(&mut self, uid: &str, now: u64) -> Option<PodName> {
        if let Some(pod) = self.pods.get(uid) {
            return Some(pod.clone());
        }
        let dir = self.pod_log_dir.as_deref()?;
        if !due(self.pods_read_at, now, self.cgroups.rescan_interval) {
            return None;
        }
        self.pods_read_at = Some(now);
        self.pods = read_pod_log_dirs(dir);
        self.pods.get(uid).cloned()
    }
}

/// `namespace/pod` when both are known, else `command/pid`; `unknown` for
/// sockets whose owner is not known (pid 0).
pub fn process_label(command: &str, pid: u32, attribution: &Attribution) -> String {
    match (&attribution.pod_namespace, &attribution.pod_name) {
        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
        _ if pid == 0 => "unknown".to_owned(),
        _ => format!("{command}/{pid}"),
    }
}

/// The kernel's command name (`comm`): the bytes before the first NUL, with
/// invalid UTF-8 replaced.
pub fn command_name(comm: &[u8; 16]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

#[cfg(test)]
mod tests;
