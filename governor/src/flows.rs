//! Top talkers: turning the kernel's per-flow table into
//! `/api/v1/flows`. Pure: the table is read elsewhere (`ebpf::FlowTable`).

use governor_common::{FLOW_RATE_WINDOW_NS, FlowAddrs, FlowStats};
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

/// Bytes per second sent and received by a flow at `now_ns` (the kernel's
/// monotonic clock).
///
/// The kernel closes a window when the first packet after its end arrives.
/// While the current window runs, the rate is the last complete window's;
/// once it is over without a packet closing it, the bytes in it are spread
/// over the time since it began, so an idle flow's rate decays to zero.
pub fn rates(f: &FlowStats, now_ns: u64) -> (u64, u64) {
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
/// by the addresses, so the order is stable).
pub fn top(table: &[(FlowAddrs, FlowStats)], query: FlowQuery, now_ns: u64) -> api::Flows {
    let mut flows: Vec<api::Flow> = table.iter().map(|(addrs, stats)| flow(addrs, stats, now_ns)).collect();
    let busy = |f: &api::Flow| match query.sort {
        FlowSort::Rate => f.sent_bytes_per_second.saturating_add(f.received_bytes_per_second),
        FlowSort::Bytes => f.bytes_sent.saturating_add(f.bytes_received),
    };
    flows.sort_by(|a, b| busy(b).cmp(&busy(a)).then_with(|| (&a.local, &a.remote).cmp(&(&b.local, &b.remote))));
    flows.truncate(query.limit);
    api::Flows { total: table.len() as u64, sort: query.sort.as_str().to_owned(), flows }
}

fn flow(a: &FlowAddrs, s: &FlowStats, now_ns: u64) -> api::Flow {
    let (sent_rate, received_rate) = rates(s, now_ns);
    api::Flow {
        local: labels::endpoint_of(a.family, &a.saddr, a.sport),
        remote: labels::endpoint_of(a.family, &a.daddr, a.dport),
        endpoint: labels::endpoint(&s.endpoint),
        direction: labels::direction_name(s.direction).to_owned(),
        pid: s.owner.tgid,
        command: command_name(&s.owner.comm),
        age_seconds: now_ns.saturating_sub(s.established_ns) / 1_000_000_000,
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
    use governor_common::{AF_INET, EndpointKey, Owner, direction};
    use proptest::prelude::*;

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn addrs(last: u8, sport: u16) -> FlowAddrs {
        let mut saddr = [0; 16];
        saddr[..4].copy_from_slice(&[10, 0, 0, last]);
        let mut daddr = [0; 16];
        daddr[..4].copy_from_slice(&[10, 0, 1, 1]);
        FlowAddrs { saddr, daddr, family: AF_INET, sport, dport: 443, pad: 0 }
    }

    fn stats(sent: u64, received: u64, last_sent: u64) -> FlowStats {
        let mut comm = [0; 16];
        comm[..4].copy_from_slice(b"curl");
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[10, 0, 1, 1]);
        FlowStats {
            owner: Owner { tgid: 42, pid: 43, comm, cgroup_id: 1 },
            endpoint: EndpointKey { addr, port: 443, family: AF_INET, pad: 0 },
            established_ns: 10 * SECOND,
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
            skaddr: 0,
            direction: direction::ACTIVE,
            pad: [0; 7],
        }
    }

    #[test]
    fn rate_is_the_last_window_while_the_current_one_runs() {
        let s = FlowStats { window_sent: 500, ..stats(0, 0, 2000) };
        assert_eq!(rates(&s, 20 * SECOND + SECOND / 2), (2000, 0));
        // The last window lasted two seconds (an idle gap closed it late).
        let s = FlowStats { last_window_ns: 2 * SECOND, ..s };
        assert_eq!(rates(&s, 20 * SECOND), (1000, 0));
    }

    #[test]
    fn an_unclosed_window_decays_with_time() {
        let s = FlowStats { window_sent: 4000, window_received: 1000, ..stats(0, 0, 2000) };
        assert_eq!(rates(&s, 21 * SECOND), (4000, 1000));
        assert_eq!(rates(&s, 24 * SECOND), (1000, 250));
        assert_eq!(rates(&s, 8020 * SECOND), (0, 0));
    }

    #[test]
    fn a_new_flow_without_a_complete_window_uses_its_first_window() {
        let s = FlowStats { last_window_ns: 0, last_sent: 0, window_sent: 300, ..stats(0, 0, 0) };
        // Less than a window old: spread over a whole window.
        assert_eq!(rates(&s, 20 * SECOND + SECOND / 10), (300, 0));
    }

    #[test]
    fn top_sorts_by_rate_or_bytes_and_cuts() {
        let table = vec![
            (addrs(1, 40_000), stats(100, 0, 10)),
            (addrs(2, 40_001), stats(5, 0, 900)),
            (addrs(3, 40_002), stats(50, 60, 20)),
        ];
        let now = 20 * SECOND + 1;
        let by_rate = top(&table, FlowQuery { sort: FlowSort::Rate, limit: 2 }, now);
        assert_eq!(by_rate.total, 3);
        assert_eq!(by_rate.sort, "rate");
        let locals: Vec<&str> = by_rate.flows.iter().map(|f| f.local.as_str()).collect();
        assert_eq!(locals, ["10.0.0.2:40001", "10.0.0.3:40002"]);
        let by_bytes = top(&table, FlowQuery { sort: FlowSort::Bytes, limit: 10 }, now);
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
            let s = FlowStats { window_sent: window, last_sent: last, last_window_ns: last_ns, ..stats(0, 0, 0) };
            let (sent, _) = rates(&s, s.window_start_ns + ahead);
            let bound = window.max(per_second(last, last_ns));
            prop_assert!(sent <= bound, "{sent} > {bound}");
        }
    }
}
