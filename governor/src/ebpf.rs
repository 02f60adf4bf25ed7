//! Loading, attaching and reading the kernel programs: the thin edge between
//! the daemon and aya.

use std::{
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkbAttachType, Iter, Program, RawTracePoint, iter::IterLink,
        links::FdLink,
    },
};
use governor_common::{
    BandwidthKey, BandwidthRule, BreakerEntry, ConnEvent, EndpointKey, EndpointStats, KernelConfig, ListenerInfo,
    POLICY_DECISION_SLOTS, POLICY_HAS_CAPS, POLICY_SLOTS, PolicyRule, PolicyState, RESET_REASON_SLOTS, SockEntry,
    SockInfo, TRANSITION_SLOTS, TcpEvent, counter, event_kind, policy_kind,
};

use crate::{pin::Pins, policy::Compiled, stats::KernelSnapshot, tracepoints::TRACEPOINTS};

/// `bpf_map_update_elem` flag: add, never replace (`include/uapi/linux/bpf.h`).
const BPF_NOEXIST: u64 = 1;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/governor"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {program} ({hook}): {source}")]
    Program { program: &'static str, hook: String, source: aya::programs::ProgramError },
    #[error("the eBPF object has no {kind} named {name}")]
    Missing { kind: &'static str, name: &'static str },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("flow sampling: {0}")]
    Sampler(std::io::Error),
    #[error("cannot open the cgroup {path} to attach the admission programs: {source}")]
    PolicyCgroup { path: PathBuf, source: std::io::Error },
    #[error("pinned mode: {path}: {source}")]
    Pin { path: PathBuf, source: std::io::Error },
}

/// Sizes chosen by the operator.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub endpoint_table_entries: u32,
    pub socket_table_entries: u32,
    pub ring_buffer_bytes: u32,
}

/// The loaded programs. Dropping this detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    attached: usize,
    endpoint_capacity: u32,
    socket_capacity: u32,
    admission: bool,
    /// The inbound SYN program is attached.
    inbound: bool,
    /// The `sock_ops` program that counts inbound connections under caps
    /// is attached.
    inbound_caps: bool,
    /// Cgroups (by id) the bandwidth programs are attached at.
    policed: Vec<u64>,
    /// Pinned mode: where the enforcement maps and links are pinned, and
    /// the links this daemon runs there.
    pins: Option<Pins>,
    pinned_links: Vec<PathBuf>,
    /// The sweep of the per-socket table.
    sampler: FlowSampler,
    /// What the programs were loaded with.
    config: KernelConfig,
}

impl Probes {
    /// Loads the object with `config` and attaches every program; with a
    /// `cgroup` (the cgroup v2 root) the per-flow programs too, and flows
    /// are counted. On error whatever was attached is detached again (the
    /// `Ebpf` is dropped).
    ///
    /// With `pins` (pinned mode) the enforcement maps are the pinned ones
    /// when they exist (an earlier daemon's rules, counts and open
    /// connections) and are pinned when not, and the programs of the
    /// pinned links are replaced by this object's at once.
    pub fn load(config: &KernelConfig, sizes: Sizes, flows: bool, pins: Option<Pins>) -> Result<Self, EbpfError> {
        let mut config = *config;
        if flows {
            config.flags |= KernelConfig::COUNT_FLOWS;
        }
        let mut loader = EbpfLoader::new();
        loader
            .override_global("GOVERNOR_CONFIG", &config, true)
            .map_max_entries("ENDPOINTS", sizes.endpoint_table_entries)
            .map_max_entries("SOCKETS", sizes.socket_table_entries)
            .map_max_entries("EVENTS", sizes.ring_buffer_bytes);
        if let Some(pins) = &pins {
            for name in crate::pin::MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader.load(OBJECT)?;
        let mut attached = 0;
        let btf = aya::Btf::from_sys_fs().map_err(|e| EbpfError::Program {
            program: "gov_state",
            hook: "the kernel's BTF".to_owned(),
            source: e.into(),
        })?;
        for tp in &TRACEPOINTS {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(tp.program)
                .ok_or(EbpfError::Missing { kind: "program", name: tp.program })?
                .try_into()
                .map_err(|source| EbpfError::Program { program: tp.program, hook: tp.to_string(), source })?;
            let fail = |source| EbpfError::Program { program: tp.program, hook: tp.to_string(), source };
            program.load(tp.name, &btf).map_err(fail)?;
            program.attach().map_err(fail)?;
            attached += 1;
        }
        let sampler = FlowSampler::load(&mut ebpf)?;
        let mut probes = Self {
            ebpf,
            attached,
            endpoint_capacity: sizes.endpoint_table_entries,
            socket_capacity: sizes.socket_table_entries,
            admission: false,
            inbound: false,
            inbound_caps: false,
            policed: Vec::new(),
            pins,
            pinned_links: Vec::new(),
            sampler,
            config,
        };
        probes.take_over_pins()?;
        Ok(probes)
    }

    /// Pinned mode: runs this object's programs in the links an earlier
    /// daemon pinned (one atomic swap each), so enforcement has no gap.
    /// Pins of programs this version does not have are removed.
    fn take_over_pins(&mut self) -> Result<(), EbpfError> {
        let Some(pins) = &self.pins else { return Ok(()) };
        let links = pins.links().map_err(|source| EbpfError::Pin { path: pins.link("", 0), source })?;
        for link in links {
            let pin_error = |source| EbpfError::Pin { path: link.path.clone(), source };
            let Some(name) = ENFORCEMENT_PROGRAMS.iter().copied().find(|p| *p == link.program) else {
                tracing::warn!(pin = %link.path.display(), "removing a pinned link of an unknown program");
                crate::pin::remove(&link.path).map_err(pin_error)?;
                continue;
            };
            let program = loaded(&mut self.ebpf, name, "pinned link")?;
            let fd = program.fd().map_err(|source| EbpfError::Program {
                program: name,
                hook: "pinned link".to_owned(),
                source,
            })?;
            if let Err(e) = crate::pin::replace_program(&link.path, fd.as_fd()) {
                // The kernel released the link (its cgroup was removed,
                // ENOLINK) or it is otherwise unusable: drop the pin; a
                // policy that still needs the hook attaches it afresh.
                tracing::warn!(pin = %link.path.display(), error = %e, "removing a pinned link that cannot be taken over");
                crate::pin::remove(&link.path).map_err(pin_error)?;
                continue;
            }
            self.pinned_links.push(link.path.clone());
            self.attached += 1;
            match name {
                "gov_connect4" => self.admission = true,
                "gov_syn_in" => self.inbound = true,
                "gov_sock_ops" => self.inbound_caps = true,
                "gov_police_out" => self.policed.push(link.cgroup_id),
                _ => {}
            }
            tracing::info!(pin = %link.path.display(), "took over a pinned enforcement program");
        }
        Ok(())
    }

    /// Pinned mode: the monotonic time until which the policies hold (0:
    /// always).
    pub fn lease(&self) -> Result<u64, EbpfError> {
        let map: Array<&MapData, u64> = Array::try_from(self.map("POLICY_LEASE")?)
            .map_err(|source| EbpfError::Map { map: "POLICY_LEASE", source })?;
        map.get(&0, 0).map_err(|source| EbpfError::Map { map: "POLICY_LEASE", source })
    }

    /// Pinned mode: the policies hold until the monotonic time `until_ns`
    /// (0: always).
    pub fn renew_lease(&mut self, until_ns: u64) -> Result<(), EbpfError> {
        let mut map: Array<&mut MapData, u64> = Array::try_from(self.map_mut("POLICY_LEASE")?)
            .map_err(|source| EbpfError::Map { map: "POLICY_LEASE", source })?;
        map.set(0, until_ns, 0).map_err(|source| EbpfError::Map { map: "POLICY_LEASE", source })
    }

    /// By state entry, the owner hashes (`policy::owner`) the last daemon
    /// wrote: with pinned maps, how the entries were used before a restart.
    pub fn policy_owners(&self) -> Result<Vec<u64>, EbpfError> {
        let map: Array<&MapData, u64> = Array::try_from(self.map("POLICY_OWNERS")?)
            .map_err(|source| EbpfError::Map { map: "POLICY_OWNERS", source })?;
        (0..POLICY_SLOTS)
            .map(|e| map.get(&e, 0).map_err(|source| EbpfError::Map { map: "POLICY_OWNERS", source }))
            .collect()
    }

    /// Puts `compiled` in force at once: writes it into the rule set not in
    /// force, clears the state entries it uses for the first time, then
    /// switches sets. The admission programs are attached at `cgroup` the
    /// first time there are rules; an empty set leaves them attached and
    /// checking nothing.
    pub fn apply_policies(&mut self, compiled: &Compiled, cgroup: &Path) -> Result<(), EbpfError> {
        let active = {
            let map: Array<&MapData, u32> = Array::try_from(self.map("POLICY_ACTIVE")?)
                .map_err(|source| EbpfError::Map { map: "POLICY_ACTIVE", source })?;
            map.get(&0, 0).map_err(|source| EbpfError::Map { map: "POLICY_ACTIVE", source })? & 1
        };
        let next = 1 - active;
        {
            let mut rules: Array<&mut MapData, PolicyRule> = Array::try_from(self.map_mut("POLICY_RULES")?)
                .map_err(|source| EbpfError::Map { map: "POLICY_RULES", source })?;
            let empty = PolicyRule::default();
            for slot in 0..POLICY_SLOTS {
                let rule = compiled.rules.get(slot as usize).unwrap_or(&empty);
                rules
                    .set(next * POLICY_SLOTS + slot, rule, 0)
                    .map_err(|source| EbpfError::Map { map: "POLICY_RULES", source })?;
            }
        }
        {
            let mut state: Array<&mut MapData, PolicyState> = Array::try_from(self.map_mut("POLICY_STATE")?)
                .map_err(|source| EbpfError::Map { map: "POLICY_STATE", source })?;
            for entry in &compiled.fresh {
                state
                    .set(*entry, PolicyState::default(), 0)
                    .map_err(|source| EbpfError::Map { map: "POLICY_STATE", source })?;
            }
        }
        {
            let mut owners: Array<&mut MapData, u64> = Array::try_from(self.map_mut("POLICY_OWNERS")?)
                .map_err(|source| EbpfError::Map { map: "POLICY_OWNERS", source })?;
            for entry in 0..POLICY_SLOTS {
                let owner = compiled
                    .policies
                    .iter()
                    .find(|p| p.entry == entry)
                    .map_or(0, |p| crate::policy::owner(&p.name, p.kind));
                owners.set(entry, owner, 0).map_err(|source| EbpfError::Map { map: "POLICY_OWNERS", source })?;
            }
        }
        {
            // Outbound caps: inbound ones are counted by `gov_sock_ops`.
            let caps =
                compiled.rules.iter().any(|r| r.kind == policy_kind::CONCURRENCY && r.flags & PolicyRule::INBOUND == 0);
            let mut map: Array<&mut MapData, u32> = Array::try_from(self.map_mut("POLICY_ACTIVE")?)
                .map_err(|source| EbpfError::Map { map: "POLICY_ACTIVE", source })?;
            map.set(0, next | if caps { POLICY_HAS_CAPS } else { 0 }, 0)
                .map_err(|source| EbpfError::Map { map: "POLICY_ACTIVE", source })?;
        }
        if !self.admission && compiled.rules.iter().any(|r| r.flags & PolicyRule::INBOUND == 0) {
            // The release program first: a socket admitted under a cap
            // must always give its place back.
            for (name, hook) in [
                ("gov_sock_release", "cgroup/sock_release"),
                ("gov_connect4", "cgroup/connect4"),
                ("gov_connect6", "cgroup/connect6"),
            ] {
                self.attach(name, hook, cgroup)?;
            }
            self.admission = true;
        }
        if !self.inbound && compiled.rules.iter().any(|r| r.flags & PolicyRule::INBOUND != 0) {
            self.attach("gov_syn_in", "cgroup_skb/ingress", cgroup)?;
            self.inbound = true;
        }
        let inbound_caps =
            compiled.rules.iter().any(|r| r.kind == policy_kind::CONCURRENCY && r.flags & PolicyRule::INBOUND != 0);
        if !self.inbound_caps && inbound_caps {
            self.attach("gov_sock_ops", "sock_ops", cgroup)?;
            self.inbound_caps = true;
        }
        Ok(())
    }

    /// Puts the bandwidth rules in force: attaches the policing programs
    /// at cgroups that have none yet, then replaces the rules (a cgroup
    /// whose policy is gone keeps the programs, which find no rule and let
    /// everything through).
    pub fn apply_bandwidth(&mut self, rules: &[(PathBuf, BandwidthKey, BandwidthRule)]) -> Result<(), EbpfError> {
        for (path, key, _) in rules {
            if !self.policed.contains(&key.cgroup_id) {
                for (name, hook) in [("gov_police_out", "cgroup_skb/egress"), ("gov_police_in", "cgroup_skb/ingress")] {
                    self.attach(name, hook, path)?;
                }
                self.policed.push(key.cgroup_id);
            }
        }
        // Pinned mode: cgroups no policy polices any more lose their
        // programs (and pins), so pins do not pile up as pods come and go.
        if let Some(pins) = &self.pins {
            let stale: Vec<u64> =
                self.policed.iter().copied().filter(|id| !rules.iter().any(|(_, k, _)| k.cgroup_id == *id)).collect();
            for id in stale {
                for name in ["gov_police_out", "gov_police_in"] {
                    let path = pins.link(name, id);
                    let _ = crate::pin::remove(&path);
                    self.pinned_links.retain(|p| *p != path);
                    self.attached = self.attached.saturating_sub(1);
                }
                self.policed.retain(|p| *p != id);
            }
        }
        let mut map: HashMap<&mut MapData, BandwidthKey, BandwidthRule> = HashMap::try_from(self.map_mut("BANDWIDTH")?)
            .map_err(|source| EbpfError::Map { map: "BANDWIDTH", source })?;
        let stale: Vec<BandwidthKey> =
            map.keys().filter_map(Result::ok).filter(|k| !rules.iter().any(|(_, key, _)| key == k)).collect();
        for (_, key, rule) in rules {
            map.insert(key, rule, 0).map_err(|source| EbpfError::Map { map: "BANDWIDTH", source })?;
        }
        for key in stale {
            let _ = map.remove(&key);
        }
        Ok(())
    }

    /// Bytes dropped by bandwidth policing, per policy state entry; empty
    /// while no policing program is attached.
    pub fn bandwidth_dropped(&self) -> Result<Vec<u64>, EbpfError> {
        if self.policed.is_empty() {
            return Ok(Vec::new());
        }
        read_per_cpu(self.map("BANDWIDTH_DROPPED")?, "BANDWIDTH_DROPPED", POLICY_SLOTS)
    }

    /// Decisions per policy state entry, `(allowed, denied)` (connects, or
    /// packets for bandwidth); empty while no policy program is attached.
    pub fn policy_decisions(&self) -> Result<Vec<(u64, u64)>, EbpfError> {
        if !self.enforcing() {
            return Ok(Vec::new());
        }
        let counts = read_per_cpu(self.map("POLICY_DECISIONS")?, "POLICY_DECISIONS", POLICY_DECISION_SLOTS)?;
        Ok(counts.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    /// Connections holding a place, per policy state entry.
    pub fn policy_open(&self) -> Result<Vec<u64>, EbpfError> {
        let map: Array<&MapData, PolicyState> = Array::try_from(self.map("POLICY_STATE")?)
            .map_err(|source| EbpfError::Map { map: "POLICY_STATE", source })?;
        (0..POLICY_SLOTS)
            .map(|e| map.get(&e, 0).map(|s| s.open).map_err(|source| EbpfError::Map { map: "POLICY_STATE", source }))
            .collect()
    }

    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Pinned mode: the programs this daemon pinned whose pin is gone
    /// (`governor unpin`, or a cgroup removed): they no longer run.
    pub fn unpinned(&self) -> usize {
        self.pinned_links.iter().filter(|p| !p.exists()).count()
    }

    /// The programs attached that still run (`attached` less `unpinned`).
    pub fn running(&self) -> usize {
        self.attached.saturating_sub(self.unpinned())
    }

    /// Is any enforcement program attached?
    fn enforcing(&self) -> bool {
        self.admission || self.inbound || self.inbound_caps || !self.policed.is_empty()
    }

    /// Attaches the cgroup program `name` at `cgroup` (see
    /// `attach_cgroup`) and counts it.
    fn attach(&mut self, name: &'static str, hook: &'static str, cgroup: &Path) -> Result<(), EbpfError> {
        if let Some(pin) = attach_cgroup(&mut self.ebpf, name, hook, cgroup, self.pins.as_ref())?
            && !self.pinned_links.contains(&pin)
        {
            self.pinned_links.push(pin);
        }
        self.attached += 1;
        Ok(())
    }

    pub fn endpoint_capacity(&self) -> u32 {
        self.endpoint_capacity
    }

    pub fn socket_capacity(&self) -> u32 {
        self.socket_capacity
    }

    /// Tells the programs of listeners that were open before they attached
    /// (see `listening`), so that the connections those accept have an
    /// owner. A listener the programs saw meanwhile keeps their entry,
    /// which is newer. Returns how many were added.
    pub fn seed_listeners(&mut self, listeners: &[crate::listening::Listener]) -> Result<usize, EbpfError> {
        let fail = |source| EbpfError::Map { map: "LISTENERS", source };
        let mut map: HashMap<&mut MapData, EndpointKey, ListenerInfo> =
            HashMap::try_from(self.map_mut("LISTENERS")?).map_err(fail)?;
        let mut added = 0;
        for l in listeners {
            // No socket address: /proc does not show it. The programs take
            // such an entry's owner when its listener closes, and leave the
            // entry for the next listen() on the address to replace.
            let info = ListenerInfo { owner: l.owner, skaddr: 0 };
            match map.insert(l.key, info, BPF_NOEXIST) {
                Ok(()) => added += 1,
                Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(fail(e)),
            }
        }
        Ok(added)
    }

    /// Tracks the established connections the per-socket table does not
    /// hold, those opened before the programs attached, in each network
    /// namespace of `namespaces` (`/proc/<pid>/ns/net` files): the
    /// iterator program walks each namespace's TCP sockets from a thread
    /// that joined it. A namespace that cannot be joined (its processes
    /// exited) is counted and skipped.
    pub fn track_open(&mut self, namespaces: &[PathBuf]) -> Result<TrackedOpen, EbpfError> {
        const NAME: &str = "gov_open_at_start";
        let fail = |source| EbpfError::Program { program: NAME, hook: "iter/tcp".to_owned(), source };
        let btf = aya::Btf::from_sys_fs().map_err(|e| fail(e.into()))?;
        let program: &mut Iter = self
            .ebpf
            .program_mut(NAME)
            .ok_or(EbpfError::Missing { kind: "program", name: NAME })?
            .try_into()
            .map_err(fail)?;
        program.load("tcp", &btf).map_err(fail)?;
        let mut tracked = TrackedOpen::default();
        for path in namespaces {
            let walked = match program.attach().and_then(|id| program.take_link(id)) {
                Ok(link) => walk_in(path, link),
                Err(e) => Err(std::io::Error::other(e)),
            };
            match walked {
                Ok(n) => tracked.connections += n,
                Err(e) => {
                    tracing::debug!(namespace = %path.display(), error = %e, "cannot walk a network namespace's sockets");
                    tracked.failed_namespaces += 1;
                }
            }
        }
        // Needed once: the walks hold their own references while they run.
        program.unload().map_err(fail)?;
        Ok(tracked)
    }

    /// Every entry of the kernel's per-socket table (after lost events).
    pub fn sockets(&self) -> Result<Vec<(u64, SockInfo)>, EbpfError> {
        let map: HashMap<&MapData, u64, SockEntry> =
            HashMap::try_from(self.map("SOCKETS")?).map_err(|source| EbpfError::Map { map: "SOCKETS", source })?;
        // Sockets close while we walk: skip what vanished.
        Ok(map.iter().filter_map(Result::ok).map(|(k, e)| (k, e.info)).collect())
    }

    /// The flows, for readers outside the daemon loop: a second handle on
    /// the per-socket table and the sweep.
    pub fn flows(&self) -> Result<FlowTable, EbpfError> {
        let sampler = self.sampler.clone();
        let fail = |source| EbpfError::Map { map: "SOCKETS", source };
        let fd = match self.map("SOCKETS")? {
            aya::maps::Map::LruHashMap(data) => data.fd().as_fd().try_clone_to_owned().map_err(EbpfError::Sampler)?,
            _ => return Err(EbpfError::Missing { kind: "LRU hash map", name: "SOCKETS" }),
        };
        let map = HashMap::try_from(aya::maps::Map::LruHashMap(MapData::from_fd(fd).map_err(fail)?)).map_err(fail)?;
        let ephemeral = (self.config.ephemeral_low, self.config.ephemeral_high);
        Ok(FlowTable { map, sampler, capacity: self.socket_capacity, ephemeral })
    }

    /// Takes the circuit breaker table out, for the breaker driver; call
    /// once.
    pub fn take_breakers(&mut self) -> Result<BreakerTable, EbpfError> {
        let map = self.ebpf.take_map("BREAKERS").ok_or(EbpfError::Missing { kind: "map", name: "BREAKERS" })?;
        HashMap::try_from(map).map(BreakerTable).map_err(|source| EbpfError::Map { map: "BREAKERS", source })
    }

    /// Takes the event ring buffer out; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, EbpfError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(EbpfError::Missing { kind: "map", name: "EVENTS" })?;
        RingBuf::try_from(map).map_err(|source| EbpfError::Map { map: "EVENTS", source })
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, EbpfError> {
        self.ebpf.map(name).ok_or(EbpfError::Missing { kind: "map", name })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, EbpfError> {
        self.ebpf.map_mut(name).ok_or(EbpfError::Missing { kind: "map", name })
    }

    /// The sweep and the size of the table it sweeps: the daemon sweeps on
    /// a timer of its own, so that a long sweep never holds up the event
    /// drain.
    pub fn sampler(&self) -> (FlowSampler, u32) {
        (self.sampler.clone(), self.socket_capacity)
    }

    /// Starts reading `n` of the maps: the kernel's limit on reset events
    /// per endpoint counts from here (`READING`).
    pub fn begin_reading(&mut self, n: u64) -> Result<(), EbpfError> {
        let fail = |source| EbpfError::Map { map: "READING", source };
        let mut array: aya::maps::Array<&mut MapData, u64> =
            aya::maps::Array::try_from(self.map_mut("READING")?).map_err(fail)?;
        array.set(0, n, 0).map_err(fail)
    }

    /// Reads every counter map once.
    pub fn read(&self) -> Result<KernelSnapshot, EbpfError> {
        Ok(KernelSnapshot {
            transitions: read_per_cpu(self.map("TRANSITIONS")?, "TRANSITIONS", TRANSITION_SLOTS)?,
            counters: read_per_cpu(self.map("COUNTERS")?, "COUNTERS", counter::SLOTS)?,
            reset_reasons: read_per_cpu(self.map("RESET_REASONS")?, "RESET_REASONS", RESET_REASON_SLOTS)?,
            histograms: read_per_cpu(
                self.map("HISTOGRAMS")?,
                "HISTOGRAMS",
                governor_common::histogram::COUNT * governor_common::histogram::SLOTS,
            )?,
            endpoints: {
                let map: HashMap<&MapData, EndpointKey, EndpointStats> = HashMap::try_from(self.map("ENDPOINTS")?)
                    .map_err(|source| EbpfError::Map { map: "ENDPOINTS", source })?;
                // aya reads LRU tables through HashMap. An entry can be
                // evicted while we walk the table; skip it.
                map.iter().filter_map(Result::ok).collect()
            },
        })
    }
}

/// The programs pinned mode pins links of.
const ENFORCEMENT_PROGRAMS: [&str; 7] = [
    "gov_sock_release",
    "gov_connect4",
    "gov_connect6",
    "gov_syn_in",
    "gov_sock_ops",
    "gov_police_out",
    "gov_police_in",
];

/// The cgroup program `name`, loaded (once).
fn loaded<'a>(ebpf: &'a mut Ebpf, name: &'static str, hook: &str) -> Result<&'a mut Program, EbpfError> {
    let program = ebpf.program_mut(name).ok_or(EbpfError::Missing { kind: "program", name })?;
    if program.fd().is_err() {
        let fail = |source| EbpfError::Program { program: name, hook: hook.to_owned(), source };
        match program {
            Program::CgroupSkb(p) => p.load().map_err(fail)?,
            Program::CgroupSock(p) => p.load().map_err(fail)?,
            Program::CgroupSockAddr(p) => p.load().map_err(fail)?,
            Program::SockOps(p) => p.load().map_err(fail)?,
            _ => return Err(EbpfError::Missing { kind: "cgroup program", name }),
        }
    }
    Ok(program)
}

/// Attaches the cgroup program `name` at `hook` of `cgroup`, loading it
/// the first time. In pinned mode the link is pinned, or, when an earlier
/// daemon's link is pinned there, that link takes this program instead.
///
/// aya attaches through a BPF link (kernel 5.7+): `link_create` takes no
/// flags, and a cgroup link always runs beside the programs other tools
/// attached to the same cgroup.
fn attach_cgroup(
    ebpf: &mut Ebpf,
    name: &'static str,
    hook: &'static str,
    cgroup: &Path,
    pins: Option<&Pins>,
) -> Result<Option<PathBuf>, EbpfError> {
    let where_ = format!("{hook} on {}", cgroup.display());
    let file =
        std::fs::File::open(cgroup).map_err(|source| EbpfError::PolicyCgroup { path: cgroup.to_path_buf(), source })?;
    let cgroup_id =
        file.metadata().map_err(|source| EbpfError::PolicyCgroup { path: cgroup.to_path_buf(), source })?.ino();
    let program = loaded(ebpf, name, &where_)?;
    let fail = |source| EbpfError::Program { program: name, hook: where_.clone(), source };
    let pin = pins.map(|p| p.link(name, cgroup_id));
    if pin.as_ref().is_some_and(|p| p.exists()) {
        // An earlier daemon's link, already running this program (taken
        // over at load).
        return Ok(pin);
    }
    // In pinned mode the link is taken from the program (which would
    // detach it when dropped) and pinned.
    let take = pin.is_some();
    let link: Option<Result<FdLink, aya::programs::links::LinkError>> = match program {
        Program::CgroupSkb(p) => {
            let attach_type =
                if hook.ends_with("egress") { CgroupSkbAttachType::Egress } else { CgroupSkbAttachType::Ingress };
            let id = p.attach(&file, attach_type, CgroupAttachMode::Single).map_err(fail)?;
            take.then(|| p.take_link(id).map_err(fail)).transpose()?.map(FdLink::try_from)
        }
        Program::CgroupSock(p) => {
            let id = p.attach(&file, CgroupAttachMode::Single).map_err(fail)?;
            take.then(|| p.take_link(id).map_err(fail)).transpose()?.map(FdLink::try_from)
        }
        Program::CgroupSockAddr(p) => {
            let id = p.attach(&file, CgroupAttachMode::Single).map_err(fail)?;
            take.then(|| p.take_link(id).map_err(fail)).transpose()?.map(FdLink::try_from)
        }
        Program::SockOps(p) => {
            let id = p.attach(&file, CgroupAttachMode::Single).map_err(fail)?;
            take.then(|| p.take_link(id).map_err(fail)).transpose()?.map(FdLink::try_from)
        }
        _ => return Err(EbpfError::Missing { kind: "cgroup program", name }),
    };
    if let (Some(link), Some(path)) = (link, &pin) {
        let pinned = link.map_err(std::io::Error::other).and_then(|l| l.pin(path).map_err(std::io::Error::other));
        pinned.map_err(|source| EbpfError::Pin { path: path.clone(), source })?;
    }
    Ok(pin)
}

/// The kernel's open and half-open circuit breakers by endpoint.
pub struct BreakerTable(HashMap<MapData, EndpointKey, BreakerEntry>);

impl BreakerTable {
    pub fn set(&mut self, key: EndpointKey, entry: BreakerEntry) -> Result<(), aya::maps::MapError> {
        self.0.insert(key, entry, 0)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        let keys: Vec<EndpointKey> = self.0.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.0.remove(&key);
        }
    }

    /// Removes the entry; a missing one is fine.
    pub fn remove(&mut self, key: EndpointKey) -> Result<(), aya::maps::MapError> {
        match self.0.remove(&key) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            other => other,
        }
    }
}

/// The established connections of the kernel's per-socket table with
/// their byte counts.
pub struct FlowTable {
    map: HashMap<MapData, u64, SockEntry>,
    sampler: FlowSampler,
    /// Size of the per-socket table.
    capacity: u32,
    /// The client port range the kernel collapses in endpoint keys.
    pub ephemeral: (u16, u16),
}

impl FlowTable {
    /// Every established connection, counts brought up to date first: two
    /// system calls per socket, so read on demand only.
    pub fn read(&self) -> Result<Vec<crate::flows::FlowRow>, EbpfError> {
        self.sampler.run(self.capacity)?;
        // Connections close while we walk: skip what vanished.
        Ok(self
            .map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| e.info.established_ns != 0)
            .map(|(skaddr, e)| crate::flows::FlowRow { skaddr, info: e.info, counts: e.flow })
            .collect())
    }
}

/// What [`Probes::track_open`] found.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrackedOpen {
    /// Connections added to the per-socket table.
    pub connections: usize,
    /// Namespaces that could not be joined or walked.
    pub failed_namespaces: usize,
}

/// Runs the iterator of `link` in the network namespace of the file at
/// `path`, from a thread of its own that joins the namespace (the walk is
/// of the namespace of the thread that starts it) and ends with it; the
/// number of connections it started tracking (one byte of output each).
/// A thread joins the namespace only when it is not governor's own: joining
/// needs `CAP_SYS_ADMIN`, which governor may run without.
fn walk_in(path: &Path, link: IterLink) -> std::io::Result<usize> {
    use std::{io::Read as _, os::fd::AsRawFd as _};
    let walk = |link: IterLink| {
        let mut output = link.into_file().map_err(std::io::Error::other)?;
        let mut marks = Vec::new();
        // The kernel ends a read after a million sockets that wrote
        // nothing (EAGAIN); the next read goes on from there.
        for _ in 0..1000 {
            match output.read_to_end(&mut marks) {
                Ok(_) => return Ok(marks.len()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("the walk did not end after a thousand reads"))
    };
    let namespace = std::fs::File::open(path)?;
    let own = std::fs::metadata("/proc/thread-self/ns/net")?;
    if namespace.metadata()?.ino() == own.ino() {
        return walk(link);
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("governor-netns-walk".to_owned())
            .spawn_scoped(scope, move || {
                // SAFETY: plain system call on a descriptor this closure
                // owns; it changes only this thread, which ends here.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                walk(link)
            })?
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace walk panicked")))
    })
}

/// The flow sampler program (`gov_flow_sample`), attached to nothing: each
/// sweep copies every flow's counts from its socket into the socket table.
/// Sweeps are serialised: two at once could add the same bytes twice.
#[derive(Clone)]
pub struct FlowSampler(std::sync::Arc<std::sync::Mutex<std::os::fd::OwnedFd>>);

impl FlowSampler {
    fn load(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        let name = "gov_flow_sample";
        let fail = |source| EbpfError::Program { program: name, hook: "run by governor".to_owned(), source };
        let program: &mut RawTracePoint =
            ebpf.program_mut(name).ok_or(EbpfError::Missing { kind: "program", name })?.try_into().map_err(fail)?;
        program.load().map_err(fail)?;
        let fd = program.fd().map_err(fail)?.as_fd().try_clone_to_owned().map_err(EbpfError::Sampler)?;
        Ok(Self(std::sync::Arc::new(std::sync::Mutex::new(fd))))
    }

    /// Sockets one run of the program walks at most: it keeps a CPU
    /// (without preemption) for a few milliseconds.
    const BUDGET: u64 = 16_384;

    /// One sweep of the socket table (`BPF_PROG_TEST_RUN`), in runs of
    /// `BUDGET` sockets, each from where the last stopped, until one ends
    /// short; bounded by `capacity`, the table's size.
    pub fn run(&self, capacity: u32) -> Result<(), EbpfError> {
        let fd = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut skip = 0;
        for _ in 0..=u64::from(capacity) / (Self::BUDGET - Self::OVERLAP) + 1 {
            let walked = crate::bpf_sys::test_run(fd.as_fd(), &[skip, Self::BUDGET]).map_err(EbpfError::Sampler)?;
            if u64::from(walked) < Self::BUDGET {
                break;
            }
            skip += u64::from(walked) - Self::OVERLAP;
        }
        Ok(())
    }

    /// Sockets each run walks again from the run before: sockets that
    /// closed meanwhile shift the rest of the table forward, and without
    /// the overlap the sockets at a run's end could be missed sweep after
    /// sweep on a host that opens and closes connections all the time.
    /// Walking a socket twice only copies its counts twice.
    const OVERLAP: u64 = 512;
}

fn read_per_cpu(map: &aya::maps::Map, name: &'static str, slots: u32) -> Result<Vec<u64>, EbpfError> {
    let array: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(|source| EbpfError::Map { map: name, source })?;
    (0..slots)
        .map(|i| {
            array.get(&i, 0).map(|per_cpu| per_cpu.iter().sum()).map_err(|source| EbpfError::Map { map: name, source })
        })
        .collect()
}

/// One ring buffer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Tcp(TcpEvent),
    Conn(ConnEvent),
}

/// Decodes one ring buffer record by its kind; `None` for an unknown kind
/// or a record of the wrong size.
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    let kind = u32::from_ne_bytes(bytes.get(8..12)?.try_into().ok()?);
    match kind {
        event_kind::RESET_SENT | event_kind::RESET_RECEIVED => read_pod(bytes).map(Event::Tcp),
        event_kind::CONNECT_FAILED..=event_kind::LISTEN_CLOSED => read_pod(bytes).map(Event::Conn),
        _ => None,
    }
}

fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != size_of::<T>() {
        return None;
    }
    // SAFETY: the length matches and T is plain old data (any bit pattern
    // is valid); the read is unaligned-safe.
    Some(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}
