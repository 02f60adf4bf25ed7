//! Top talkers: turning the established connections of the kernel's
//! per-socket table, with their byte counts, into `/api/v1/flows`. Pure:
//! the table is read elsewhere (`ebpf::FlowTable`).

use governor_common::{EndpointKey, FLOW_RATE_WINDOW_NS, FlowCounts, SockInfo, direction};
use serde::Deserialize;

use crate::{api, attribution::command_name, labels};

/// Flows served when no limit is asked for, and the most served.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 10_000;

/// `/api/v1/flows` query parameters.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FlowQuery {
    pub sort: FlowSort,
    pub limit: usize,
}

impl Default for FlowQuery {
    fn default() -> Self {
        Self { sort: FlowSort::Rate, limit: DEFAULT_LIMIT }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FlowSort {
    /// Bytes per second now, both directions together.
    #[default]
    Rate,
    /// Bytes since the connection opened, both directions together.
    Bytes,
}

impl FlowSort {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::Bytes => "bytes",
        }
    }
}

/// One established connection: its socket entry and byte counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRow {
    /// The socket's kernel address (the table's key).
    pub skaddr: u64,
    pub info: SockInfo,
    pub counts: FlowCounts,
}

/// The service endpoint a connection belongs to, as the kernel keys its
/// byte totals: the remote side of an active open, the local listener of a
/// passive one, ports in `ephemeral` (the host's client port range)
/// collapsed to 0.
pub fn endpoint_key(info: &SockInfo, ephemeral: (u16, u16)) -> EndpointKey {
    let a = &info.addrs;
    let (addr, port) = if info.direction == direction::ACTIVE { (a.daddr, a.dport) } else { (a.saddr, a.sport) };
    let port = if (ephemeral.0..=ephemeral.1).contains(&port) { 0 } else { port };
    EndpointKey { addr, port, family: a.family, pad: 0 }
}

/// Bytes per second sent and received by a flow at `now_ns` (the kernel's
/// monotonic clock).
///
/// The kernel closes a window when the first sample after its end finds
/// new bytes.
/// While the current window runs, the rate is the last complete window's;
/// once it is over without a packet closing it, the bytes in it are spread
/// over the time since it began, so an idle flow's rate decays to zero.
pub fn rates(f: &FlowCounts, now_ns: u64) -> (u64, u64) {
    let elapsed = now_ns.saturating_sub(f.window_start_ns);
    let (sent, received, over) = if elapsed < FLOW_RATE_WINDOW_NS && f.last_window_ns > 0 {
        (f.last_sent, f.last_received, f.last_window_ns)
    } else {
        (f.window_sent, f.window_received, elapsed.max(FLOW_RATE_WINDOW_NS))
    };
    (per_second(sent, over), per_second(received, over))
}

fn per_second(bytes: u64, over_ns: u64) -> u64 {
    let rate = u128::from(bytes) * 1_000_000_000 / u128::from(over_ns.max(1));
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// The busiest `query.limit` flows of `table`, busiest first (ties broken
/// by the addresses, so the order is stable); `ephemeral` as for
/// [`endpoint_key`].
pub fn top(table: &[FlowRow], query: FlowQuery, now_ns: u64, ephemeral: (u16, u16)) -> api::Flows {
    let mut flows: Vec<api::Flow> = table.iter().map(|row| flow(row, now_ns, ephemeral)).collect();
    let busy = |f: &api::Flow| match query.sort {
        FlowSort::Rate => f.sent_bytes_per_second.saturating_add(f.received_bytes_per_second),
        FlowSort::Bytes => f.bytes_sent.saturating_add(f.bytes_received),
    };
    flows.sort_by(|a, b| busy(b).cmp(&busy(a)).then_with(|| (&a.local, &a.remote).cmp(&(&b.local, &b.remote))));
    flows.truncate(query.limit);
    api::Flows { total: table.len() as u64, sort: query.sort.as_str().to_owned(), flows }
}

fn flow(row: &FlowRow, now_ns: u64, ephemeral: (u16, u16)) -> api::Flow {
    let (i, s) = (&row.info, &row.counts);
    let a = &i.addrs;
    let (sent_rate, received_rate) = rates(s, now_ns);
    api::Flow {
        local: labels::endpoint_of(a.family, &a.saddr, a.sport),
        remote: labels::endpoint_of(a.family, &a.daddr, a.dport),
        endpoint: labels::endpoint(&endpoint_key(i, ephemeral)),
        direction: labels::direction_name(i.direction).to_owned(),
        pid: i.owner.tgid,
        command: command_name(&i.owner.comm),
        age_seconds: now_ns.saturating_sub(i.established_ns) / 1_000_000_000,
        bytes_sent: s.bytes_sent,
        bytes_received: s.bytes_received,
        packets_sent: s.packets_sent,
        packets_received: s.packets_received,
        sent_bytes_per_second: sent_rate,
        received_bytes_per_second: received_rate,
    }
}

#[cfg(test)]
mod tests {
    use governor_common::{AF_INET, FlowAddrs, Owner, direction};
    use proptest::prelude::*;

    use super::*;

    const SECOND: u64 = 1_000_000_000;
    /// A client port range that leaves the ports below alone.
    const EPHEMERAL: (u16, u16) = (32768, 60999);

    fn addrs(last: u8, sport: u16) -> FlowAddrs {
        let mut saddr = [0; 16];
        saddr[..4].copy_from_slice(&[10, 0, 0, last]);
        let mut daddr = [0; 16];
        daddr[..4].copy_from_slice(&[10, 0, 1, 1]);
        FlowAddrs { saddr, daddr, family: AF_INET, sport, dport: 443, pad: 0 }
    }

    fn counts(sent: u64, received: u64, last_sent: u64) -> FlowCounts {
        FlowCounts {
            bytes_sent: sent,
            bytes_received: received,
            packets_sent: 3,
            packets_received: 4,
            window_start_ns: 20 * SECOND,
            window_sent: 0,
            window_received: 0,
            last_window_ns: SECOND,
            last_sent,
            last_received: 0,
            ..FlowCounts::default()
        }
    }

    fn row(addrs: FlowAddrs, counts: FlowCounts) -> FlowRow {
        let mut comm = [0; 16];
        comm[..4].copy_from_slice(b"curl");
        let info = SockInfo {
            owner: Owner { tgid: 42, pid: 43, comm, cgroup_id: 1 },
            established_ns: 10 * SECOND,
            addrs,
            direction: direction::ACTIVE,
            state: 1,
            ..SockInfo::default()
        };
        FlowRow { skaddr: 0, info, counts }
    }

    #[test]
    fn rate_is_the_last_window_while_the_current_one_runs() {
        let s = FlowCounts { window_sent: 500, ..counts(0, 0, 2000) };
        assert_eq!(rates(&s, 20 * SECOND + SECOND / 2), (2000, 0));
        // The last window lasted two seconds (an idle gap closed it late).
        let s = FlowCounts { last_window_ns: 2 * SECOND, ..s };
        assert_eq!(rates(&s, 20 * SECOND), (1000, 0));
    }

    #[test]
    fn an_unclosed_window_decays_with_time() {
        let s = FlowCounts { window_sent: 4000, window_received: 1000, ..counts(0, 0, 2000) };
        assert_eq!(rates(&s, 21 * SECOND), (4000, 1000));
        assert_eq!(rates(&s, 24 * SECOND), (1000, 250));
        assert_eq!(rates(&s, 8020 * SECOND), (0, 0));
    }

    #[test]
    fn a_new_flow_without_a_complete_window_uses_its_first_window() {
        let s = FlowCounts { last_window_ns: 0, last_sent: 0, window_sent: 300, ..counts(0, 0, 0) };
        // Less than a window old: spread over a whole window.
        assert_eq!(rates(&s, 20 * SECOND + SECOND / 10), (300, 0));
    }

    #[test]
    fn top_sorts_by_rate_or_bytes_and_cuts() {
        let table = vec![
            row(addrs(1, 40_000), counts(100, 0, 10)),
            row(addrs(2, 40_001), counts(5, 0, 900)),
            row(addrs(3, 40_002), counts(50, 60, 20)),
        ];
        let now = 20 * SECOND + 1;
        let by_rate = top(&table, FlowQuery { sort: FlowSort::Rate, limit: 2 }, now, EPHEMERAL);
        assert_eq!(by_rate.total, 3);
        assert_eq!(by_rate.sort, "rate");
        let locals: Vec<&str> = by_rate.flows.iter().map(|f| f.local.as_str()).collect();
        assert_eq!(locals, ["10.0.0.2:40001", "10.0.0.3:40002"]);
        let by_bytes = top(&table, FlowQuery { sort: FlowSort::Bytes, limit: 10 }, now, EPHEMERAL);
        let locals: Vec<&str> = by_bytes.flows.iter().map(|f| f.local.as_str()).collect();
        assert_eq!(locals, ["10.0.0.3:40002", "10.0.0.1:40000", "10.0.0.2:40001"]);
        let f = &by_bytes.flows[1];
        assert_eq!(
            (f.remote.as_str(), f.endpoint.as_str(), f.direction.as_str(), f.pid, f.command.as_str()),
            ("10.0.1.1:443", "10.0.1.1:443", "active", 42, "curl")
        );
        assert_eq!((f.age_seconds, f.packets_sent, f.packets_received, f.sent_bytes_per_second), (10, 3, 4, 10));
    }

    #[test]
    fn the_endpoint_is_the_service_side_with_client_ports_collapsed() {
        let mut r = row(addrs(1, 40_000), counts(0, 0, 0));
        assert_eq!(labels::endpoint(&endpoint_key(&r.info, EPHEMERAL)), "10.0.1.1:443");
        r.info.direction = direction::PASSIVE;
        assert_eq!(labels::endpoint(&endpoint_key(&r.info, EPHEMERAL)), "10.0.0.1:ephemeral");
        r.info.addrs.sport = 8080;
        assert_eq!(labels::endpoint(&endpoint_key(&r.info, EPHEMERAL)), "10.0.0.1:8080");
    }

    #[test]
    fn query_defaults_and_names() {
        let q: FlowQuery = serde_json::from_str("{}").expect("defaults");
        assert_eq!(q, FlowQuery { sort: FlowSort::Rate, limit: DEFAULT_LIMIT });
        let q: FlowQuery = serde_json::from_str(r#"{"sort":"bytes","limit":3}"#).expect("parse");
        assert_eq!(q, FlowQuery { sort: FlowSort::Bytes, limit: 3 });
        assert!(serde_json::from_str::<FlowQuery>(r#"{"sort":"speed"}"#).is_err());
    }

    proptest! {
        /// A rate never exceeds the bytes of the window it comes from per
        /// second of a full window, whatever the clock says.
        #[test]
        fn rates_are_bounded_by_window_bytes(
            window in 0u64..1 << 40, last in 0u64..1 << 40, last_ns in 0u64..10 * SECOND, ahead in 0u64..100 * SECOND,
        ) {
            let s = FlowCounts { window_sent: window, last_sent: last, last_window_ns: last_ns, ..counts(0, 0, 0) };
            let (sent, _) = rates(&s, s.window_start_ns + ahead);
            let bound = window.max(per_second(last, last_ns));
            prop_assert!(sent <= bound, "{sent} > {bound}");
        }
    }
}
