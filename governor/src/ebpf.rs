//! Loading, attaching and reading the kernel programs: the thin edge between
//! the daemon and aya.

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use governor_common::{
    ConnEvent, EndpointKey, EndpointStats, KernelConfig, RESET_REASON_SLOTS, SockInfo, TRANSITION_SLOTS, TcpEvent,
    counter, event_kind,
};

use crate::{stats::KernelSnapshot, tracefs::TRACEPOINTS};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/governor"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {program} ({tracepoint}): {source}")]
    Program { program: &'static str, tracepoint: String, source: aya::programs::ProgramError },
    #[error("the eBPF object has no {kind} named {name}")]
    Missing { kind: &'static str, name: &'static str },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
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
}

impl Probes {
    /// Loads the object with `config` and attaches every program. On error
    /// whatever was attached is detached again (the `Ebpf` is dropped).
    pub fn load(config: &KernelConfig, sizes: Sizes) -> Result<Self, EbpfError> {
        let mut ebpf = EbpfLoader::new()
            .override_global("GOVERNOR_CONFIG", config, true)
            .map_max_entries("ENDPOINTS", sizes.endpoint_table_entries)
            .map_max_entries("SOCKETS", sizes.socket_table_entries)
            .map_max_entries("EVENTS", sizes.ring_buffer_bytes)
            .load(OBJECT)?;
        let mut attached = 0;
        for tp in &TRACEPOINTS {
            let program: &mut TracePoint = ebpf
                .program_mut(tp.program)
                .ok_or(EbpfError::Missing { kind: "program", name: tp.program })?
                .try_into()
                .map_err(|source| EbpfError::Program { program: tp.program, tracepoint: tp.to_string(), source })?;
            let fail = |source| EbpfError::Program { program: tp.program, tracepoint: tp.to_string(), source };
            program.load().map_err(fail)?;
            program.attach(tp.category, tp.name).map_err(fail)?;
            attached += 1;
        }
        Ok(Self {
            ebpf,
            attached,
            endpoint_capacity: sizes.endpoint_table_entries,
            socket_capacity: sizes.socket_table_entries,
        })
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

    /// Takes the event ring buffer out; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, EbpfError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(EbpfError::Missing { kind: "map", name: "EVENTS" })?;
        RingBuf::try_from(map).map_err(|source| EbpfError::Map { map: "EVENTS", source })
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, EbpfError> {
        self.ebpf.map(name).ok_or(EbpfError::Missing { kind: "map", name })
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
