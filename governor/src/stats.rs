//! Turns successive readings of the kernel maps into increments.
//!
//! The per-CPU arrays only grow, so their increments are plain differences.
//! Endpoint entries live in an LRU table: an entry that was evicted and
//! created again starts from zero, which shows as a value below the last
//! reading; its whole value is then new. (Counts made between an eviction
//! and the next reading of an entry that was evicted are lost; the table
//! size is configurable and its fill level exported.)

use std::collections::HashMap;

use governor_common::{EndpointKey, EndpointStats, RESET_REASON_SLOTS, TCP_STATE_SLOTS, TRANSITION_SLOTS, counter};

use crate::connections::FailureReason;

/// One reading of the kernel maps, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelSnapshot {
    /// `from * 16 + to` → transitions.
    pub transitions: Vec<u64>,
    /// Indexed by `governor_common::counter`.
    pub counters: Vec<u64>,
    /// Resets sent, indexed by `enum sk_rst_reason`.
    pub reset_reasons: Vec<u64>,
    pub endpoints: Vec<(EndpointKey, EndpointStats)>,
    /// The connection histograms' totals (`governor_common::histogram`).
    pub histograms: Vec<u64>,
}

/// What happened since the previous reading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Increments {
    /// `(from, to, count)` for every transition that happened.
    pub transitions: Vec<(u32, u32, u64)>,
    pub counters: [u64; counter::SLOTS as usize],
    /// `(reason, count)` for every reason that happened.
    pub reset_reasons: Vec<(u32, u64)>,
    pub endpoints: Vec<(EndpointKey, EndpointStats)>,
    /// Failed connects since the previous reading, from connection events,
    /// by remote endpoint and reason.
    pub connect_failures: Vec<((String, FailureReason), u64)>,
}

#[derive(Debug, Default)]
pub struct Aggregator {
    transitions: Vec<u64>,
    counters: Vec<u64>,
    reset_reasons: Vec<u64>,
    endpoints: HashMap<EndpointKey, EndpointStats>,
}

fn grown(now: u64, before: u64) -> u64 {
    // Below the last reading: the entry was created again and all of it is
    // new. Per-CPU arrays never shrink, so this only happens for LRU entries.
    if now >= before { now - before } else { now }
}

impl Aggregator {
    pub fn advance(&mut self, snap: &KernelSnapshot) -> Increments {
        let mut out = Increments::default();

        self.transitions.resize(TRANSITION_SLOTS as usize, 0);
        for (slot, (&now, before)) in snap.transitions.iter().zip(self.transitions.iter_mut()).enumerate() {
            let d = grown(now, *before);
            *before = now;
            if d > 0 {
                let slot = u32::try_from(slot).expect("slot fits u32");
                out.transitions.push((slot / TCP_STATE_SLOTS, slot % TCP_STATE_SLOTS, d));
            }
        }

        self.reset_reasons.resize(RESET_REASON_SLOTS as usize, 0);
        for (slot, (&now, before)) in snap.reset_reasons.iter().zip(self.reset_reasons.iter_mut()).enumerate() {
            let d = grown(now, *before);
            *before = now;
            if d > 0 {
                out.reset_reasons.push((u32::try_from(slot).expect("slot fits u32"), d));
            }
        }

        self.counters.resize(counter::SLOTS as usize, 0);
        for ((now, before), d) in snap.counters.iter().zip(self.counters.iter_mut()).zip(out.counters.iter_mut()) {
            *d = grown(*now, *before);
            *before = *now;
        }

        let mut seen = HashMap::with_capacity(snap.endpoints.len());
        for (key, now) in &snap.endpoints {
            let before = self.endpoints.get(key).copied().unwrap_or_default();
            let d = EndpointStats {
                resets_sent: grown(now.resets_sent, before.resets_sent),
                resets_received: grown(now.resets_received, before.resets_received),
                retransmits: grown(now.retransmits, before.retransmits),
                bytes_sent: grown(now.bytes_sent, before.bytes_sent),
                bytes_received: grown(now.bytes_received, before.bytes_received),
                connects: grown(now.connects, before.connects),
                ..EndpointStats::default()
            };
            if d != EndpointStats::default() {
                out.endpoints.push((*key, d));
            }
            seen.insert(*key, *now);
        }
        // Entries gone from the table were evicted; forget them.
        self.endpoints = seen;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> EndpointKey {
        EndpointKey { addr: [0; 16], port, family: governor_common::AF_INET, pad: 0 }
    }

    fn stats(sent: u64, received: u64, retransmits: u64) -> EndpointStats {
        EndpointStats { resets_sent: sent, resets_received: received, retransmits, ..EndpointStats::default() }
    }

    fn snap(
        transitions: &[(usize, u64)],
        counters: &[(usize, u64)],
        endpoints: &[(u16, EndpointStats)],
    ) -> KernelSnapshot {
        let mut t = vec![0; TRANSITION_SLOTS as usize];
        for &(i, v) in transitions {
            t[i] = v;
        }
        let mut c = vec![0; counter::SLOTS as usize];
        for &(i, v) in counters {
            c[i] = v;
        }
        // Every sent reset here has reason 1 (NO_SOCKET).
        let mut reasons = vec![0; RESET_REASON_SLOTS as usize];
        reasons[1] = c[counter::RESETS_SENT as usize];
        KernelSnapshot {
            transitions: t,
            counters: c,
            reset_reasons: reasons,
            endpoints: endpoints.iter().map(|(p, s)| (key(*p), *s)).collect(),
            histograms: Vec::new(),
        }
    }

    #[test]
    fn first_reading_is_all_new_then_differences() {
        let mut a = Aggregator::default();
        let i = a.advance(&snap(&[(2 * 16 + 1, 5)], &[(0, 3)], &[(80, stats(1, 2, 3))]));
        assert_eq!(i.transitions, vec![(2, 1, 5)]);
        assert_eq!(i.counters[0], 3);
        assert_eq!(i.reset_reasons, vec![(1, 3)]);
        assert_eq!(i.endpoints, vec![(key(80), stats(1, 2, 3))]);

        let i = a.advance(&snap(&[(2 * 16 + 1, 9)], &[(0, 3)], &[(80, stats(1, 4, 3))]));
        assert_eq!(i.transitions, vec![(2, 1, 4)]);
        assert_eq!(i.counters[0], 0);
        assert_eq!(i.reset_reasons, vec![]);
        assert_eq!(i.endpoints, vec![(key(80), stats(0, 2, 0))]);

        let i = a.advance(&snap(&[(2 * 16 + 1, 9)], &[(0, 3)], &[(80, stats(1, 4, 3))]));
        assert_eq!(i, Increments::default());
    }

    #[test]
    fn evicted_and_recreated_entries_count_from_zero() {
        let mut a = Aggregator::default();
        a.advance(&snap(&[], &[], &[(80, stats(10, 0, 0))]));
        // Recreated with a smaller value: all of it is new.
        let i = a.advance(&snap(&[], &[], &[(80, stats(2, 0, 0))]));
        assert_eq!(i.endpoints, vec![(key(80), stats(2, 0, 0))]);
        // Gone, then back with a larger value than ever: still all new.
        a.advance(&snap(&[], &[], &[]));
        let i = a.advance(&snap(&[], &[], &[(80, stats(30, 0, 0))]));
        assert_eq!(i.endpoints, vec![(key(80), stats(30, 0, 0))]);
    }
}
