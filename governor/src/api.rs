//! The JSON documents served under `/api/v1/` and read by `governor status`
//! and `governor top`. Both sides use these types, so they cannot drift.

use serde::{Deserialize, Serialize};

/// `GET /api/v1/endpoints`: every endpoint the health engine tracks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Endpoints {
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    /// `ip:port` or `[v6]:port`.
    pub endpoint: String,
    /// `healthy`, `suspect`, `unhealthy` or `recovering`.
    pub state: String,
    /// Seconds in the current state.
    pub state_seconds: u64,
    /// The counts inside the sliding windows now.
    pub window: Window,
    /// The last state change, if there was one.
    pub last_transition: Option<Transition>,
    /// Resets this endpoint sent (as a local endpoint), by the kernel's
    /// reason, since governor started.
    pub reset_reasons: Vec<ReasonCount>,
    /// Live connections to or from this endpoint.
    pub connections: u64,
}

/// Counts inside the sliding windows of one endpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Window {
    /// Resets within the reset window.
    pub resets: u64,
    pub reset_window_seconds: u64,
    /// Connect attempts and failures within the failure window.
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub failure_window_seconds: u64,
    /// Retransmits within the reset window.
    pub retransmits: u64,
    /// Sockets of this endpoint in `CLOSE_WAIT` now, and the oldest one's age.
    pub close_wait: u64,
    pub close_wait_oldest_seconds: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Transition {
    pub from: String,
    pub to: String,
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    /// Why, in words: "12 resets within 5 s (threshold 10)".
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
}

/// `GET /api/v1/processes`: processes that own live TCP sockets.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Processes {
    pub processes: Vec<Process>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Process {
    /// Thread group id (what `ps` calls the pid).
    pub pid: u32,
    /// The kernel's command name (at most 15 bytes).
    pub command: String,
    /// `name/pid`, or `namespace/pod` when the pod is known.
    pub label: String,
    pub attribution: Attribution,
    /// Live connections owned by this process (listeners not included).
    pub connections: u64,
    pub listeners: Vec<String>,
    pub close_wait: u64,
    pub close_wait_oldest_seconds: u64,
    /// A `CLOSE_WAIT` socket older than the leak threshold.
    pub leaking: bool,
}

/// Where a process runs, as far as it is known. Missing parts are `None`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attribution {
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
}

/// `GET /api/v1/connections?state=&pid=&endpoint=&limit=&offset=`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Connections {
    /// Connections matching the filters (before paging).
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub connections: Vec<Connection>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Connection {
    pub local: String,
    pub remote: String,
    /// Kernel state name (`ESTABLISHED`, `CLOSE_WAIT`, ...).
    pub state: String,
    /// `active` (this host connected) or `passive` (accepted).
    pub direction: String,
    pub pid: u32,
    pub command: String,
    pub age_seconds: u64,
    /// Seconds in `CLOSE_WAIT`, when it is there.
    pub close_wait_seconds: Option<u64>,
}

/// `GET /api/v1/status`: what `governor status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Endpoints that are not healthy.
    pub endpoints: Vec<Endpoint>,
    /// Processes marked leaking.
    pub leaking: Vec<Process>,
}

/// `GET /api/v1/flows?sort=rate|bytes&limit=`: the busiest established
/// connections (top talkers), from the kernel's per-flow table.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Flows {
    /// Established connections in the table.
    pub total: u64,
    /// `rate` (bytes per second now, both directions) or `bytes` (since
    /// the connection opened, both directions), busiest first.
    pub sort: String,
    pub flows: Vec<Flow>,
}

/// One established connection as this host's socket sees it: `sent` is what
/// the local socket sent. Bytes are TCP payload; packets are segments.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flow {
    pub local: String,
    pub remote: String,
    /// The service endpoint: the remote side of an active open, the local
    /// listener of a passive one.
    pub endpoint: String,
    /// `active` (this host connected) or `passive` (accepted).
    pub direction: String,
    pub pid: u32,
    pub command: String,
    pub age_seconds: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Bytes per second over the last complete second (decaying when the
    /// flow goes idle).
    pub sent_bytes_per_second: u64,
    pub received_bytes_per_second: u64,
}

/// `GET /api/v1/quarantine`: the instances this node holds out of the
/// registries.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quarantine {
    pub quarantined: Vec<crate::registry::QuarantineView>,
}

/// `POST /api/v1/quarantine/release`: put one quarantined instance back by
/// hand, through the same transaction as an automatic restore.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// The instance's key in its registry, as `/api/v1/quarantine` lists it.
    pub key: String,
}

/// The answer to a release that was carried out.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Released {
    pub key: String,
    /// `restored` (put back with its value and lease), `already_back` (the
    /// owner had registered again: records cleared) or `lease_expired`
    /// (the owner is gone: records cleared, nothing put back).
    pub outcome: String,
    /// Unix seconds until which governor will not take it out again by
    /// itself.
    pub hold_until: u64,
}
