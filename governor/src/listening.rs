//! Sockets that were open before the programs attached, and their owners,
//! from `/proc`.
//!
//! The kernel programs learn who owns a listener when it calls `listen()`,
//! and accepted connections take their listener's owner. A service that was
//! already listening when governor started (after every restart or upgrade
//! of governor) would leave its accepted connections, and their
//! `CLOSE_WAIT` leaks, without an owner until it listened again. So at
//! start-up governor reads those listeners ([`scan`]): each network
//! namespace's `net/tcp` and `net/tcp6` name the listening sockets by
//! inode, and each process's `fd` directory tells who holds them. The
//! owners of connections opened before governor started, which the kernel
//! tracks from the moment they enter `CLOSE_WAIT` without knowing whose
//! they are, are found the same way by their sockets' inodes
//! ([`holders`]). Connections already in `CLOSE_WAIT` at start-up (a
//! leak that began before governor did) are read from the same tables.
//!
//! Best effort and bounded: a process that exits meanwhile, or whose entries
//! cannot be read, is skipped and counted; nothing here fails the daemon.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::Path,
};

use governor_common::{AF_INET, AF_INET6, EndpointKey, FlowAddrs, Owner, direction};

/// States as `include/net/tcp_states.h` numbers them (`/proc/net/tcp`
/// prints them in hex).
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LISTEN: u8 = 10;
/// Processes looked at, at most.
const MAX_PROCESSES: usize = 200_000;
/// File descriptors looked at, at most, over all processes.
const MAX_FDS: usize = 2_000_000;

/// A listening socket and the process that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// As the kernel programs key listeners: the local address and port,
    /// and the network namespace's inode number in the spare word.
    pub key: EndpointKey,
    pub owner: Owner,
    /// The socket's inode number.
    pub inode: u64,
}

/// A connection in `CLOSE_WAIT` and the process that holds it (none found:
/// the default owner).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub addrs: FlowAddrs,
    /// Accepted (a listener of its namespace has its local port) or not.
    pub direction: u8,
    pub owner: Owner,
    pub inode: u64,
}

/// What one look through `/proc` found.
#[derive(Debug, Default)]
pub struct Scan {
    pub listeners: Vec<Listener>,
    /// Connections already in `CLOSE_WAIT`: leaks that started before
    /// governor did, or soon will be.
    pub close_wait: Vec<Held>,
    /// Processes whose namespace or descriptors could not be read.
    pub unreadable: usize,
    /// Listening sockets no readable process holds.
    pub unowned: usize,
    /// One `ns/net` file per network namespace found: the namespaces to
    /// walk for the connections open before start.
    pub namespaces: Vec<std::path::PathBuf>,
}

/// A socket of interest as `/proc/<pid>/net/tcp{,6}` shows it: listening,
/// or in `CLOSE_WAIT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    /// `TCP_LISTEN` or `TCP_CLOSE_WAIT`.
    pub state: u8,
    /// Both ends as the kernel stores them (an IPv4 address in the first
    /// four bytes), ports in host order.
    pub addrs: FlowAddrs,
    pub inode: u64,
}

/// The listening and `CLOSE_WAIT` sockets of one `/proc/net/tcp` (`family`
/// `AF_INET`) or `/proc/net/tcp6` (`AF_INET6`) table; lines that do not
/// parse are skipped.
pub fn parse_table(text: &str, family: u16) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            if state != TCP_LISTEN && state != TCP_CLOSE_WAIT {
                return None;
            }
            let (saddr, sport) = fields.get(1)?.split_once(':')?;
            let (daddr, dport) = fields.get(2)?.split_once(':')?;
            let addrs = FlowAddrs {
                saddr: parse_addr(saddr, family)?,
                daddr: parse_addr(daddr, family)?,
                family,
                sport: u16::from_str_radix(sport, 16).ok()?,
                dport: u16::from_str_radix(dport, 16).ok()?,
                pad: 0,
            };
            Some(Socket { state, addrs, inode: fields.get(9)?.parse().ok()? })
        })
        .filter(|s| s.inode != 0)
        .collect()
}

/// An address as the tables print it: each 32-bit word of the address as
/// it sits in memory, printed as a host-order hex number.
fn parse_addr(hex: &str, family: u16) -> Option<[u8; 16]> {
    let words = match family {
        AF_INET => 1,
        AF_INET6 => 4,
        _ => return None,
    };
    if hex.len() != words * 8 {
        return None;
    }
    let mut addr = [0u8; 16];
    for (i, chunk) in addr.chunks_exact_mut(4).take(words).enumerate() {
        let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Some(addr)
}

/// The inode of a `socket:[N]` descriptor link.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The cgroup v2 path in a `/proc/<pid>/cgroup` file.
pub fn cgroup_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The listening sockets under `proc_root` (the host's `/proc`) and their
/// owners, keyed as the kernel programs key them. Cgroup ids are the
/// inode numbers of the owners' directories under `cgroup_root`.
pub fn scan(proc_root: &Path, cgroup_root: &Path) -> Scan {
    let mut scan = Scan::default();
    let pids = processes(proc_root);
    // One process per network namespace is enough to read its tables.
    let mut namespaces: BTreeMap<u64, u32> = BTreeMap::new();
    for &pid in &pids {
        match fs::metadata(proc_root.join(format!("{pid}/ns/net"))) {
            Ok(meta) => {
                namespaces.entry(meta.ino()).or_insert(pid);
            }
            Err(_) => scan.unreadable += 1,
        }
    }
    let mut wanted: HashMap<u64, (u64, Socket)> = HashMap::new();
    scan.namespaces = namespaces_to_walk(proc_root, &namespaces);
    for (&netns, &pid) in &namespaces {
        for (file, family) in [("tcp", AF_INET), ("tcp6", AF_INET6)] {
            // A namespace without IPv6 has no tcp6 table.
            let Ok(text) = fs::read_to_string(proc_root.join(format!("{pid}/net/{file}"))) else { continue };
            for socket in parse_table(&text, family) {
                wanted.insert(socket.inode, (netns, socket));
            }
        }
    }
    let holders = holders_among(proc_root, cgroup_root, &pids, &wanted.keys().copied().collect());
    scan.unreadable += holders.unreadable;
    // Listening ports by namespace and address (the wildcard address too).
    let listening: HashSet<(u64, u16, [u8; 16], u16)> = wanted
        .values()
        .filter(|(_, socket)| socket.state == TCP_LISTEN)
        .map(|&(netns, socket)| (netns, socket.addrs.family, socket.addrs.saddr, socket.addrs.sport))
        .collect();
    for (inode, (netns, socket)) in wanted {
        let owner = holders.owners.get(&inode).copied();
        if socket.state == TCP_CLOSE_WAIT {
            let a = socket.addrs;
            let accepted = listening.contains(&(netns, a.family, a.saddr, a.sport))
                || listening.contains(&(netns, a.family, [0; 16], a.sport));
            let direction = if accepted { direction::PASSIVE } else { direction::ACTIVE };
            scan.close_wait.push(Held { addrs: a, direction, owner: owner.unwrap_or_default(), inode });
            continue;
        }
        let Some(owner) = owner else {
            scan.unowned += 1;
            continue;
        };
        let a = socket.addrs;
        scan.listeners.push(Listener {
            key: EndpointKey {
                addr: a.saddr,
                port: a.sport,
                family: a.family,
                // The namespace's inode number is what the kernel's
                // `net->ns.inum` holds: 32 bits.
                pad: u32::try_from(netns).unwrap_or(0),
            },
            owner,
            inode,
        });
    }
    scan.listeners.sort_by_key(|l| l.inode);
    scan.close_wait.sort_by_key(|h| h.inode);
    scan
}

/// One file per network namespace to walk for the connections open before
/// start: those of the processes found (`namespaces`, by inode), governor's
/// own (even when `proc_root` shows no process of it), and those that no
/// process is in but a file keeps (`ip netns add`, CNI plugins), which may
/// still hold sockets of processes in other namespaces: bind mounts in
/// governor's mount namespace, and with a host `/proc` mounted elsewhere,
/// in the host's (through its pid 1).
fn namespaces_to_walk(proc_root: &Path, namespaces: &BTreeMap<u64, u32>) -> Vec<std::path::PathBuf> {
    let mut seen: HashSet<u64> = namespaces.keys().copied().collect();
    let mut paths: Vec<std::path::PathBuf> =
        namespaces.values().map(|pid| proc_root.join(format!("{pid}/ns/net"))).collect();
    let mut mount_tables = vec![(Path::new("/proc/self/mountinfo").to_owned(), std::path::PathBuf::from("/"))];
    if proc_root != Path::new("/proc") {
        mount_tables.push((proc_root.join("1/mountinfo"), proc_root.join("1/root")));
    }
    let bound = mount_tables.into_iter().flat_map(|(table, root)| {
        let points = fs::read(&table).map(|text| bound_namespaces(&text)).unwrap_or_default();
        points.into_iter().map(move |point| root.join(point.strip_prefix("/").unwrap_or(&point)))
    });
    let own = std::iter::once(std::path::PathBuf::from("/proc/thread-self/ns/net"));
    for path in own.chain(bound) {
        if fs::metadata(&path).is_ok_and(|meta| seen.insert(meta.ino())) {
            paths.push(path);
        }
    }
    paths
}

/// The files network namespaces are bound to, from a `mountinfo` text:
/// the mount points of `nsfs` mounts of a `net:[inode]`. Mount points are
/// written with octal escapes for blanks and backslashes.
/// Paths are bytes: a mount point need not be UTF-8.
pub fn bound_namespaces(mountinfo: &[u8]) -> Vec<std::path::PathBuf> {
    use std::os::unix::ffi::OsStringExt as _;
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let split = line.windows(3).position(|w| w == b" - ")?;
            let (fields, tail) = (&line[..split], &line[split + 3..]);
            let mut fields = fields.split(|&b| b == b' ');
            let root = fields.nth(3)?;
            let point = fields.next()?;
            let fstype = tail.split(|&b| b == b' ').next()?;
            (fstype == b"nsfs" && root.starts_with(b"net:["))
                .then(|| std::ffi::OsString::from_vec(unescape(point)).into())
        })
        .collect()
}

/// `mountinfo`'s octal escapes (`\040` for a space) undone.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while let Some(&byte) = field.get(i) {
        let octal = field.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        if let (b'\\', Some(decoded)) = (byte, octal) {
            out.push(decoded);
            i += 4;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    out
}

/// Who holds some sockets.
#[derive(Debug, Default)]
pub struct Holders {
    /// By socket inode number.
    pub owners: HashMap<u64, Owner>,
    /// Processes whose descriptors could not be read.
    pub unreadable: usize,
}

/// The processes under `proc_root` holding the sockets with the inode
/// numbers `inodes` (the lowest pid of those holding one), as owners.
pub fn holders(proc_root: &Path, cgroup_root: &Path, inodes: impl IntoIterator<Item = u64>) -> Holders {
    holders_among(proc_root, cgroup_root, &processes(proc_root), &inodes.into_iter().collect())
}

fn holders_among(proc_root: &Path, cgroup_root: &Path, pids: &[u32], inodes: &HashSet<u64>) -> Holders {
    let mut holders = Holders::default();
    let mut owners = Owners::new(cgroup_root);
    let mut fds = 0;
    // Lowest pid first: a socket shared by a parent and its workers is the
    // parent's, which opened it.
    for &pid in pids {
        if holders.owners.len() == inodes.len() || fds >= MAX_FDS {
            break;
        }
        let Ok(entries) = fs::read_dir(proc_root.join(format!("{pid}/fd"))) else {
            holders.unreadable += 1;
            continue;
        };
        let mut denied = false;
        for entry in entries.flatten() {
            fds += 1;
            // The directory lists for anyone; its links need the right to
            // trace the process (`CAP_SYS_PTRACE` for most others').
            let link = match fs::read_link(entry.path()) {
                Ok(link) => link,
                Err(e) => {
                    denied |= e.kind() == std::io::ErrorKind::PermissionDenied;
                    continue;
                }
            };
            let Some(inode) = socket_inode(&link.to_string_lossy()) else { continue };
            if !inodes.contains(&inode) || holders.owners.contains_key(&inode) {
                continue;
            }
            if let Some(owner) = owners.of(proc_root, pid) {
                holders.owners.insert(inode, owner);
            }
        }
        holders.unreadable += usize::from(denied);
    }
    holders
}

/// The process ids under `proc_root`, ascending.
fn processes(proc_root: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir(proc_root)
        .map(|entries| {
            entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).take(MAX_PROCESSES).collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Owners of processes, as the kernel programs would have captured them in
/// `listen()`: the process as thread group and thread, its command name,
/// its cgroup's id.
struct Owners<'a> {
    cgroup_root: &'a Path,
    /// Cgroup directories by path, read once and only when a process sits
    /// in another cgroup namespace (its path then starts with `/..`).
    walked: Option<HashMap<String, u64>>,
    seen: HashSet<u32>,
    known: HashMap<u32, Owner>,
}

impl<'a> Owners<'a> {
    fn new(cgroup_root: &'a Path) -> Self {
        Self { cgroup_root, walked: None, seen: HashSet::new(), known: HashMap::new() }
    }

    fn of(&mut self, proc_root: &Path, pid: u32) -> Option<Owner> {
        if self.seen.insert(pid) {
            let comm = fs::read_to_string(proc_root.join(format!("{pid}/comm"))).ok()?;
            let cgroup = fs::read_to_string(proc_root.join(format!("{pid}/cgroup"))).unwrap_or_default();
            let cgroup_id = cgroup_path(&cgroup).map_or(0, |path| self.cgroup_id(path));
            let mut name = [0u8; 16];
            let comm = comm.trim_end_matches('\n').as_bytes();
            let len = comm.len().min(15);
            name[..len].copy_from_slice(&comm[..len]);
            self.known.insert(pid, Owner { cgroup_id, tgid: pid, pid, comm: name });
        }
        self.known.get(&pid).copied()
    }

    /// The id of the cgroup at `path` (as `/proc/<pid>/cgroup` shows it);
    /// 0 when it is not found.
    fn cgroup_id(&mut self, path: &str) -> u64 {
        let relative = path.trim_start_matches('/');
        if !relative.starts_with("..") {
            return fs::metadata(self.cgroup_root.join(relative)).map_or(0, |m| m.ino());
        }
        // Seen from another cgroup namespace: the path is relative to that
        // namespace's root, which this process cannot name. The part after
        // the `..` steps names the process's own cgroup well enough (a
        // container's cgroup carries its id): take the one directory that
        // ends with it.
        let mut tail = relative;
        while let Some(rest) = tail.strip_prefix("..") {
            tail = rest.trim_start_matches('/');
        }
        if tail.is_empty() {
            return 0;
        }
        let walked = self.walked.get_or_insert_with(|| {
            crate::attribution::cgroup_paths(self.cgroup_root).into_iter().map(|(id, path)| (path, id)).collect()
        });
        let suffix = format!("/{tail}");
        let mut found = walked.iter().filter(|(path, _)| path.ends_with(&suffix)).map(|(_, &id)| id);
        match (found.next(), found.next()) {
            (Some(id), None) => id,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests;
