//! Bounds the number of endpoint series one metric may create.
//!
//! Endpoints get their own series in order of activity: each round, the
//! not-yet-admitted endpoints with the largest increments are admitted while
//! there is room; the rest are summed under [`OTHER`]. An admitted endpoint
//! keeps its series, so every series stays a monotonic counter and the sum
//! over all series equals the sum of everything observed.

use std::collections::{HashMap, HashSet};

/// The label value under which endpoints beyond the limit are summed.
pub const OTHER: &str = "other";

#[derive(Debug)]
pub struct SeriesLimiter {
    max: usize,
    admitted: HashSet<String>,
}

impl SeriesLimiter {
    pub fn new(max: usize) -> Self {
        Self { max, admitted: HashSet::new() }
    }

    #[cfg(test)]
    pub fn admitted(&self) -> usize {
        self.admitted.len()
    }

    /// Admits the busiest new endpoints of one round while there is room.
    /// Zero increments admit nothing.
    pub fn admit(&mut self, increments: &HashMap<String, u64>) {
        let mut candidates: Vec<(&String, u64)> = increments
            .iter()
            .filter(|(endpoint, v)| **v > 0 && !self.admitted.contains(*endpoint) && endpoint.as_str() != OTHER)
            .map(|(e, v)| (e, *v))
            .collect();
        // Largest first; the name breaks ties so the outcome is deterministic.
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let room = self.max.saturating_sub(self.admitted.len());
        for (endpoint, _) in candidates.into_iter().take(room) {
            self.admitted.insert(endpoint.clone());
        }
    }

    /// The label an endpoint's increments go to.
    pub fn label<'a>(&self, endpoint: &'a str) -> &'a str {
        if self.admitted.contains(endpoint) { endpoint } else { OTHER }
    }

    /// Admits, then maps one round of increments per endpoint to increments
    /// per label. Zero increments produce no label.
    pub fn assign(&mut self, increments: &HashMap<String, u64>) -> HashMap<String, u64> {
        self.admit(increments);
        let mut out: HashMap<String, u64> = HashMap::new();
        for (endpoint, &v) in increments {
            if v == 0 {
                continue;
            }
            *out.entry(self.label(endpoint).to_owned()).or_default() += v;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn busiest_endpoints_are_admitted_first() {
        let mut l = SeriesLimiter::new(2);
        let out = l.assign(&round(&[("a:1", 5), ("b:1", 50), ("c:1", 7), ("d:1", 0)]));
        assert_eq!(out, round(&[("b:1", 50), ("c:1", 7), (OTHER, 5)]));
        // Later rounds keep the admitted ones, whatever their size.
        let out = l.assign(&round(&[("a:1", 500), ("c:1", 1)]));
        assert_eq!(out, round(&[(OTHER, 500), ("c:1", 1)]));
        assert_eq!(l.admitted(), 2);
    }

    #[test]
    fn zero_limit_sums_everything_under_other() {
        let mut l = SeriesLimiter::new(0);
        assert_eq!(l.assign(&round(&[("a:1", 1), ("b:2", 2)])), round(&[(OTHER, 3)]));
    }

    proptest! {
        #[test]
        fn bounded_complete_and_stable(
            max in 0usize..6,
            rounds in prop::collection::vec(prop::collection::hash_map("[a-h]:[1-3]", 0u64..100, 0..10), 1..8),
        ) {
            let mut l = SeriesLimiter::new(max);
            let mut labels_seen: HashSet<String> = HashSet::new();
            let mut first_label: HashMap<String, String> = HashMap::new();
            for r in &rounds {
                let out = l.assign(r);
                // Nothing lost, nothing invented.
                prop_assert_eq!(out.values().sum::<u64>(), r.values().sum::<u64>());
                labels_seen.extend(out.keys().cloned());
                // Never more than `max` endpoint series, plus `other`.
                prop_assert!(labels_seen.iter().filter(|k| k.as_str() != OTHER).count() <= max);
                // An endpoint keeps its series once it has one.
                for (endpoint, v) in r {
                    if *v == 0 { continue; }
                    let label = if out.contains_key(endpoint) { endpoint.clone() } else { OTHER.to_owned() };
                    let first = first_label.entry(endpoint.clone()).or_insert_with(|| label.clone());
                    if first != OTHER {
                        prop_assert_eq!(&label, first);
                    }
                }
            }
            // Under the limit, nothing is summed under `other`.
            let distinct: HashSet<_> = rounds.iter().flat_map(|r| r.iter().filter(|(_, v)| **v > 0).map(|(k, _)| k.clone())).collect();
            if distinct.len() <= max {
                prop_assert!(!labels_seen.contains(OTHER));
            }
        }
    }
}
