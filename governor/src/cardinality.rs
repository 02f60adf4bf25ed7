//! Bounds the endpoint series governor creates.
//!
//! Three limits: at most `max` endpoint series per metric, a budget of
//! endpoint series over all metrics, and a time to live after which an
//! endpoint without new counts loses its series. Endpoints get a series in
//! order of activity: each reading, the not-yet-admitted endpoints with the
//! largest increments are admitted while both the metric's limit and the
//! budget allow; the rest are summed under [`OTHER`]. An admitted endpoint
//! keeps its series while it is active, so every series is a monotonic
//! counter while it exists, and the sum over all series equals the sum of
//! everything observed.

use std::collections::HashMap;

/// The label value under which endpoints beyond the limits are summed.
pub const OTHER: &str = "other";

/// The series budget shared by every limiter.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    used: usize,
    dropped: u64,
}

impl Budget {
    pub fn new(max: usize) -> Self {
        Self { max, used: 0, dropped: 0 }
    }

    /// Endpoints that would have had a series but for the budget, counted
    /// once per reading in which they were turned away.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[derive(Debug)]
pub struct SeriesLimiter {
    max: usize,
    /// Seconds without counts after which a series is removed; 0: never.
    ttl: u64,
    /// Admitted endpoints and when they last had counts.
    admitted: HashMap<String, u64>,
}

impl SeriesLimiter {
    pub fn new(max: usize, ttl: u64) -> Self {
        Self { max, ttl, admitted: HashMap::new() }
    }

    /// Endpoint series this limiter holds.
    pub fn len(&self) -> usize {
        self.admitted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.admitted.is_empty()
    }

    /// Marks active endpoints and admits the busiest new ones of one
    /// reading while the limit and the budget allow. Zero increments count
    /// as no activity.
    pub fn admit(&mut self, increments: &HashMap<String, u64>, now: u64, budget: &mut Budget) {
        let mut candidates: Vec<(&String, u64)> = Vec::new();
        for (endpoint, &v) in increments {
            if v == 0 || endpoint == OTHER {
                continue;
            }
            match self.admitted.get_mut(endpoint) {
                Some(last) => *last = now,
                None => candidates.push((endpoint, v)),
            }
        }
        // Largest first; the name breaks ties so the outcome is deterministic.
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        for (endpoint, _) in candidates {
            if self.admitted.len() >= self.max {
                break;
            }
            if budget.used >= budget.max {
                budget.dropped += 1;
                continue;
            }
            budget.used += 1;
            self.admitted.insert(endpoint.clone(), now);
        }
    }

    /// The label an endpoint's increments go to.
    pub fn label<'a>(&self, endpoint: &'a str) -> &'a str {
        if self.admitted.contains_key(endpoint) { endpoint } else { OTHER }
    }

    /// Admits, then maps one reading's increments per endpoint to
    /// increments per label. Zero increments produce no label.
    pub fn assign(&mut self, increments: &HashMap<String, u64>, now: u64, budget: &mut Budget) -> HashMap<String, u64> {
        self.admit(increments, now, budget);
        let mut out: HashMap<String, u64> = HashMap::new();
        for (endpoint, &v) in increments {
            if v == 0 {
                continue;
            }
            *out.entry(self.label(endpoint).to_owned()).or_default() += v;
        }
        out
    }

    /// Removes the series idle for longer than the time to live and gives
    /// their budget back; returns the endpoints removed.
    pub fn expire(&mut self, now: u64, budget: &mut Budget) -> Vec<String> {
        if self.ttl == 0 {
            return Vec::new();
        }
        let idle: Vec<String> = self
            .admitted
            .iter()
            .filter(|(_, last)| now.saturating_sub(**last) > self.ttl)
            .map(|(e, _)| e.clone())
            .collect();
        for endpoint in &idle {
            self.admitted.remove(endpoint);
        }
        budget.used -= idle.len();
        idle
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
        let mut b = Budget::new(100);
        let mut l = SeriesLimiter::new(2, 0);
        let out = l.assign(&round(&[("a:1", 5), ("b:1", 50), ("c:1", 7), ("d:1", 0)]), 0, &mut b);
        assert_eq!(out, round(&[("b:1", 50), ("c:1", 7), (OTHER, 5)]));
        // Later readings keep the admitted ones, whatever their size.
        let out = l.assign(&round(&[("a:1", 500), ("c:1", 1)]), 1, &mut b);
        assert_eq!(out, round(&[(OTHER, 500), ("c:1", 1)]));
        assert_eq!(l.len(), 2);
        assert_eq!(b.dropped(), 0, "the metric's own limit is not the budget");
    }

    #[test]
    fn zero_limit_sums_everything_under_other() {
        let mut b = Budget::new(100);
        let mut l = SeriesLimiter::new(0, 0);
        assert_eq!(l.assign(&round(&[("a:1", 1), ("b:2", 2)]), 0, &mut b), round(&[(OTHER, 3)]));
    }

    #[test]
    fn the_budget_is_shared_and_counts_what_it_turns_away() {
        let mut b = Budget::new(3);
        let (mut resets, mut retransmits) = (SeriesLimiter::new(10, 0), SeriesLimiter::new(10, 0));
        resets.admit(&round(&[("a:1", 3), ("b:1", 2)]), 0, &mut b);
        let out = retransmits.assign(&round(&[("c:1", 9), ("d:1", 1), ("e:1", 1)]), 0, &mut b);
        assert_eq!(out, round(&[("c:1", 9), (OTHER, 2)]));
        assert_eq!((resets.len(), retransmits.len(), b.dropped()), (2, 1, 2));
    }

    #[test]
    fn idle_series_expire_and_free_the_budget() {
        let mut b = Budget::new(1);
        let mut l = SeriesLimiter::new(10, 60);
        l.admit(&round(&[("a:1", 1)]), 0, &mut b);
        l.admit(&round(&[("a:1", 1), ("b:1", 5)]), 50, &mut b);
        assert_eq!(l.label("b:1"), OTHER, "budget full");
        assert_eq!(l.expire(100, &mut b), Vec::<String>::new(), "a was active at 50");
        assert_eq!(l.expire(111, &mut b), ["a:1"]);
        l.admit(&round(&[("b:1", 5)]), 112, &mut b);
        assert_eq!(l.label("b:1"), "b:1");
        assert_eq!(l.label("a:1"), OTHER);
        // A time to live of 0 keeps series for ever.
        let mut forever = SeriesLimiter::new(10, 0);
        forever.admit(&round(&[("a:1", 1)]), 0, &mut Budget::new(5));
        assert!(forever.expire(u64::MAX, &mut Budget::new(5)).is_empty());
    }

    proptest! {
        #[test]
        fn bounded_complete_and_stable(
            max in 0usize..6,
            budget in 0usize..8,
            ttl in 0u64..4,
            readings in prop::collection::vec(
                (prop::collection::hash_map("[a-h]:[1-3]", 0u64..100, 0..10),
                 prop::collection::hash_map("[a-h]:[1-3]", 0u64..100, 0..10)),
                1..10,
            ),
        ) {
            let mut b = Budget::new(budget);
            let mut limiters = [SeriesLimiter::new(max, ttl), SeriesLimiter::new(max, ttl)];
            let mut label_of: [HashMap<String, String>; 2] = [HashMap::new(), HashMap::new()];
            for (now, (first, second)) in readings.iter().enumerate() {
                let now = now as u64;
                for (i, r) in [first, second].into_iter().enumerate() {
                    // An expired endpoint may come back under any label.
                    for endpoint in limiters[i].expire(now, &mut b) {
                        label_of[i].remove(&endpoint);
                    }
                    let out = limiters[i].assign(r, now, &mut b);
                    // Nothing lost, nothing invented.
                    prop_assert_eq!(out.values().sum::<u64>(), r.values().sum::<u64>());
                    // Each metric within its limit, all within the budget.
                    prop_assert!(out.keys().filter(|k| k.as_str() != OTHER).count() <= max);
                    prop_assert!(limiters[0].len() + limiters[1].len() <= budget);
                    // An endpoint keeps its series until it expires.
                    for (endpoint, v) in r {
                        if *v == 0 { continue; }
                        let label = limiters[i].label(endpoint).to_owned();
                        if let Some(before) = label_of[i].get(endpoint)
                            && before != OTHER {
                            prop_assert_eq!(&label, before);
                        }
                        label_of[i].insert(endpoint.clone(), label);
                    }
                }
            }
        }
    }
}
