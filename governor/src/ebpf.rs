//! Loading, attaching and reading the kernel programs: the thin edge between
//! the daemon and aya.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, TracePoint},
};
use governor_common::{
    BandwidthKey, BandwidthRule, BreakerEntry, ConnEvent, EndpointKey, EndpointStats, FlowAddrs, FlowStats,
    KernelConfig, POLICY_DECISION_SLOTS, POLICY_SLOTS, PolicyRule, PolicyState, RESET_REASON_SLOTS, SockInfo,
    TRANSITION_SLOTS, TcpEvent, counter, event_kind,
};

use crate::{policy::Compiled, stats::KernelSnapshot, tracefs::TRACEPOINTS};

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
    #[error("cannot open the cgroup {path} to attach the per-flow programs: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("cannot open the cgroup {path} to attach the admission programs: {source}")]
    PolicyCgroup { path: PathBuf, source: std::io::Error },
}

/// The per-packet programs, attached at the cgroup v2 root.
const FLOW_PROGRAMS: [(&str, CgroupSkbAttachType, &str); 2] = [
    ("gov_flow_in", CgroupSkbAttachType::Ingress, "cgroup_skb/ingress"),
    ("gov_flow_out", CgroupSkbAttachType::Egress, "cgroup_skb/egress"),
];

/// Sizes chosen by the operator.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub endpoint_table_entries: u32,
    pub socket_table_entries: u32,
    pub flow_table_entries: u32,
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
    /// Cgroups the bandwidth programs are attached at.
    policed: Vec<PathBuf>,
}

impl Probes {
    /// Loads the object with `config` and attaches every program; with a
    /// `cgroup` (the cgroup v2 root) the per-flow programs too, and flows
    /// are counted. On error whatever was attached is detached again (the
    /// `Ebpf` is dropped).
    pub fn load(config: &KernelConfig, sizes: Sizes, cgroup: Option<&Path>) -> Result<Self, EbpfError> {
        let flows = cgroup.is_some();
        let mut config = *config;
        if flows {
            config.flags |= KernelConfig::COUNT_FLOWS;
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("GOVERNOR_CONFIG", &config, true)
            .map_max_entries("ENDPOINTS", sizes.endpoint_table_entries)
            .map_max_entries("SOCKETS", sizes.socket_table_entries)
            // Unused without flows: keep the preallocated table small.
            .map_max_entries("FLOWS", if flows { sizes.flow_table_entries } else { 1 })
            .map_max_entries("EVENTS", sizes.ring_buffer_bytes)
            .load(OBJECT)?;
        let mut attached = 0;
        for tp in &TRACEPOINTS {
            let program: &mut TracePoint = ebpf
                .program_mut(tp.program)
                .ok_or(EbpfError::Missing { kind: "program", name: tp.program })?
                .try_into()
                .map_err(|source| EbpfError::Program { program: tp.program, hook: tp.to_string(), source })?;
            let fail = |source| EbpfError::Program { program: tp.program, hook: tp.to_string(), source };
            program.load().map_err(fail)?;
            program.attach(tp.category, tp.name).map_err(fail)?;
            attached += 1;
        }
        if let Some(cgroup) = cgroup {
            let root = std::fs::File::open(cgroup)
                .map_err(|source| EbpfError::Cgroup { path: cgroup.to_path_buf(), source })?;
            for (name, attach_type, hook) in FLOW_PROGRAMS {
                let fail = |source| EbpfError::Program {
                    program: name,
                    hook: format!("{hook} on {}", cgroup.display()),
                    source,
                };
                let program: &mut CgroupSkb = ebpf
                    .program_mut(name)
                    .ok_or(EbpfError::Missing { kind: "program", name })?
                    .try_into()
                    .map_err(fail)?;
                program.load().map_err(fail)?;
                // aya attaches through a BPF link (kernel 5.7+): link_create
                // takes no flags, and a cgroup link always runs beside the
                // programs other tools attached to the same cgroup.
                program.attach(&root, attach_type, CgroupAttachMode::Single).map_err(fail)?;
                attached += 1;
            }
        }
        Ok(Self {
            ebpf,
            attached,
            endpoint_capacity: sizes.endpoint_table_entries,
            socket_capacity: sizes.socket_table_entries,
            admission: false,
            inbound: false,
            policed: Vec::new(),
        })
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
            let mut map: Array<&mut MapData, u32> = Array::try_from(self.map_mut("POLICY_ACTIVE")?)
                .map_err(|source| EbpfError::Map { map: "POLICY_ACTIVE", source })?;
            map.set(0, next, 0).map_err(|source| EbpfError::Map { map: "POLICY_ACTIVE", source })?;
        }
        if !self.admission && !compiled.rules.is_empty() {
            self.attached += attach_admission(&mut self.ebpf, cgroup)?;
            self.admission = true;
        }
        if !self.inbound && compiled.rules.iter().any(|r| r.flags & PolicyRule::INBOUND != 0) {
            let root = std::fs::File::open(cgroup)
                .map_err(|source| EbpfError::PolicyCgroup { path: cgroup.to_path_buf(), source })?;
            attach_skb(&mut self.ebpf, "gov_syn_in", CgroupSkbAttachType::Ingress, &root, cgroup, true)?;
            self.attached += 1;
            self.inbound = true;
        }
        Ok(())
    }

    /// Puts the bandwidth rules in force: attaches the policing programs
    /// at cgroups that have none yet, then replaces the rules (a cgroup
    /// whose policy is gone keeps the programs, which find no rule and let
    /// everything through).
    pub fn apply_bandwidth(&mut self, rules: &[(PathBuf, BandwidthKey, BandwidthRule)]) -> Result<(), EbpfError> {
        for (path, ..) in rules {
            if !self.policed.contains(path) {
                self.attached += attach_policing(&mut self.ebpf, path, self.policed.is_empty())?;
                self.policed.push(path.clone());
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
        if !self.admission && self.policed.is_empty() {
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

    pub fn endpoint_capacity(&self) -> u32 {
        self.endpoint_capacity
    }

    pub fn socket_capacity(&self) -> u32 {
        self.socket_capacity
    }

    /// Every entry of the kernel's per-socket table (after lost events).
    pub fn sockets(&self) -> Result<Vec<(u64, SockInfo)>, EbpfError> {
        let map: HashMap<&MapData, u64, SockInfo> =
            HashMap::try_from(self.map("SOCKETS")?).map_err(|source| EbpfError::Map { map: "SOCKETS", source })?;
        // Sockets close while we walk: skip what vanished.
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Takes the per-flow table out, for readers outside the daemon loop;
    /// call once.
    pub fn take_flows(&mut self) -> Result<FlowTable, EbpfError> {
        let map = self.ebpf.take_map("FLOWS").ok_or(EbpfError::Missing { kind: "map", name: "FLOWS" })?;
        HashMap::try_from(map).map(FlowTable).map_err(|source| EbpfError::Map { map: "FLOWS", source })
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

    /// Reads every counter map once.
    pub fn read(&self) -> Result<KernelSnapshot, EbpfError> {
        Ok(KernelSnapshot {
            transitions: read_per_cpu(self.map("TRANSITIONS")?, "TRANSITIONS", TRANSITION_SLOTS)?,
            counters: read_per_cpu(self.map("COUNTERS")?, "COUNTERS", counter::SLOTS)?,
            reset_reasons: read_per_cpu(self.map("RESET_REASONS")?, "RESET_REASONS", RESET_REASON_SLOTS)?,
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

/// Attaches the policing programs at `cgroup` (loading them the first
/// time).
fn attach_policing(ebpf: &mut Ebpf, cgroup: &Path, load: bool) -> Result<usize, EbpfError> {
    let file =
        std::fs::File::open(cgroup).map_err(|source| EbpfError::PolicyCgroup { path: cgroup.to_path_buf(), source })?;
    attach_skb(ebpf, "gov_police_out", CgroupSkbAttachType::Egress, &file, cgroup, load)?;
    attach_skb(ebpf, "gov_police_in", CgroupSkbAttachType::Ingress, &file, cgroup, load)?;
    Ok(2)
}

/// Attaches the `cgroup_skb` program `name` at the open cgroup `file`
/// (`path` for messages), loading it first when `load`.
fn attach_skb(
    ebpf: &mut Ebpf,
    name: &'static str,
    attach_type: CgroupSkbAttachType,
    file: &std::fs::File,
    path: &Path,
    load: bool,
) -> Result<(), EbpfError> {
    let hook = match attach_type {
        CgroupSkbAttachType::Egress => "cgroup_skb/egress",
        CgroupSkbAttachType::Ingress => "cgroup_skb/ingress",
    };
    let fail = |source| EbpfError::Program { program: name, hook: format!("{hook} on {}", path.display()), source };
    let program: &mut CgroupSkb =
        ebpf.program_mut(name).ok_or(EbpfError::Missing { kind: "program", name })?.try_into().map_err(fail)?;
    if load {
        program.load().map_err(fail)?;
    }
    program.attach(file, attach_type, CgroupAttachMode::Single).map_err(fail)?;
    Ok(())
}

/// Attaches the release program, then the connect programs, at `cgroup`.
fn attach_admission(ebpf: &mut Ebpf, cgroup: &Path) -> Result<usize, EbpfError> {
    let root =
        std::fs::File::open(cgroup).map_err(|source| EbpfError::PolicyCgroup { path: cgroup.to_path_buf(), source })?;
    let on = |hook: &str| format!("{hook} on {}", cgroup.display());
    // The release program first: a socket admitted under a cap must always
    // give its place back.
    let name = "gov_sock_release";
    let fail = |source| EbpfError::Program { program: name, hook: on("cgroup/sock_release"), source };
    let program: &mut CgroupSock =
        ebpf.program_mut(name).ok_or(EbpfError::Missing { kind: "program", name })?.try_into().map_err(fail)?;
    program.load().map_err(fail)?;
    program.attach(&root, CgroupAttachMode::Single).map_err(fail)?;
    for (name, hook) in [("gov_connect4", "cgroup/connect4"), ("gov_connect6", "cgroup/connect6")] {
        let fail = |source| EbpfError::Program { program: name, hook: on(hook), source };
        let program: &mut CgroupSockAddr =
            ebpf.program_mut(name).ok_or(EbpfError::Missing { kind: "program", name })?.try_into().map_err(fail)?;
        program.load().map_err(fail)?;
        program.attach(&root, CgroupAttachMode::Single).map_err(fail)?;
    }
    Ok(3)
}

/// The kernel's open and half-open circuit breakers by endpoint.
pub struct BreakerTable(HashMap<MapData, EndpointKey, BreakerEntry>);

impl BreakerTable {
    pub fn set(&mut self, key: EndpointKey, entry: BreakerEntry) -> Result<(), aya::maps::MapError> {
        self.0.insert(key, entry, 0)
    }

    /// Removes the entry; a missing one is fine.
    pub fn remove(&mut self, key: EndpointKey) -> Result<(), aya::maps::MapError> {
        match self.0.remove(&key) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            other => other,
        }
    }
}

/// The kernel's per-flow table (established connections with their byte
/// counts).
pub struct FlowTable(HashMap<MapData, FlowAddrs, FlowStats>);

impl FlowTable {
    /// Every entry: two system calls per flow, so read on demand only.
    pub fn read(&self) -> Vec<(FlowAddrs, FlowStats)> {
        // Connections close while we walk: skip what vanished.
        self.0.iter().filter_map(Result::ok).collect()
    }
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
