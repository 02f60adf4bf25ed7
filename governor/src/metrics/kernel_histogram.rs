//! Histograms whose counts the kernel keeps (`HISTOGRAMS`, per CPU): every
//! connection is counted where it opens and closes, whether or not an event
//! reaches the daemon, and the daemon only copies the totals at each
//! reading. The `prometheus` crate's histograms take one observation at a
//! time, so this collector renders the kernel's bucket counts itself.

use std::sync::{Arc, Mutex};

use prometheus::{
    core::{Collector, Desc},
    proto,
};

/// One histogram's totals: the count of each bucket (not cumulative; the
/// last is above every bound) and the sum of the values in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl Totals {
    /// From the kernel's slots of one histogram (`governor_common::histogram`)
    /// with `bounds` bounds in use: the slots past them (padding bounds and
    /// the last) are all above every bound.
    pub fn from_slots(slots: &[u64], bounds: usize) -> Self {
        let buckets_end = governor_common::histogram::BOUNDS + 1;
        let mut buckets: Vec<u64> = slots.iter().take(bounds).copied().collect();
        buckets.resize(bounds, 0);
        buckets.push(slots.get(bounds..buckets_end).map_or(0, |rest| rest.iter().sum()));
        let sum_ns = slots.get(governor_common::histogram::SUM as usize).copied().unwrap_or(0);
        Self { buckets, sum_ns }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// A histogram (or one per value of a label) set from kernel totals.
#[derive(Clone)]
pub struct KernelHistogram {
    desc: Desc,
    /// Upper bounds in seconds.
    bounds: &'static [f64],
    label: Option<&'static str>,
    /// `(label value, totals)`, in a fixed order; one series without a
    /// label.
    series: Arc<Mutex<Vec<(&'static str, Totals)>>>,
}

impl KernelHistogram {
    /// A histogram with series for each of `values` of `label`, or one
    /// series when `label` is `None`; every series exists from the start.
    pub fn new(
        name: &str,
        help: &str,
        bounds: &'static [f64],
        label: Option<&'static str>,
        values: &[&'static str],
    ) -> Self {
        let desc =
            Desc::new(name.to_owned(), help.to_owned(), label.iter().map(|l| (*l).to_owned()).collect(), [].into())
                .expect("valid metric");
        let empty = Totals { buckets: vec![0; bounds.len() + 1], sum_ns: 0 };
        let series =
            if label.is_some() { values.iter().map(|v| (*v, empty.clone())).collect() } else { vec![("", empty)] };
        Self { desc, bounds, label, series: Arc::new(Mutex::new(series)) }
    }

    /// Sets the totals of the series at `index` (the order of `values`).
    pub fn set(&self, index: usize, totals: Totals) {
        if let Some(series) = self.series.lock().expect("histogram lock poisoned").get_mut(index) {
            series.1 = totals;
        }
    }
}

impl Collector for KernelHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    #[expect(clippy::cast_precision_loss, reason = "sums far below 2^52 ns over a daemon's life are exact")]
    fn collect(&self) -> Vec<proto::MetricFamily> {
        let series = self.series.lock().expect("histogram lock poisoned");
        let metrics = series
            .iter()
            .map(|(value, totals)| {
                let mut cumulative = 0;
                let buckets = self
                    .bounds
                    .iter()
                    .zip(&totals.buckets)
                    .map(|(&bound, &n)| {
                        cumulative += n;
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(bound);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect();
                let mut h = proto::Histogram::default();
                h.set_bucket(buckets);
                h.set_sample_count(totals.count());
                h.set_sample_sum(totals.sum_ns as f64 / 1e9);
                let mut m = proto::Metric::default();
                if let Some(label) = self.label {
                    let mut pair = proto::LabelPair::default();
                    pair.set_name(label.to_owned());
                    pair.set_value((*value).to_owned());
                    m.set_label(vec![pair]);
                }
                m.set_histogram(h);
                m
            })
            .collect();
        let mut family = proto::MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.set_metric(metrics);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_slots_become_buckets_with_padding_above_every_bound() {
        let mut slots = vec![0; governor_common::histogram::SLOTS as usize];
        slots[0] = 2;
        slots[2] = 1;
        // Values above the last of 3 bounds in use land in the first
        // padding slot, or in the last slot when every bound is in use.
        slots[3] = 4;
        slots[governor_common::histogram::BOUNDS] = 1;
        slots[governor_common::histogram::SUM as usize] = 7_000_000_000;
        let t = Totals::from_slots(&slots, 3);
        assert_eq!(t, Totals { buckets: vec![2, 0, 1, 5], sum_ns: 7_000_000_000 });
        assert_eq!(t.count(), 8);
    }

    #[test]
    fn renders_cumulative_buckets_count_and_sum() {
        static BOUNDS: [f64; 2] = [0.5, 1.0];
        let h = KernelHistogram::new("x_seconds", "help", &BOUNDS, Some("direction"), &["active", "passive"]);
        h.set(1, Totals { buckets: vec![1, 2, 3], sum_ns: 4_500_000_000 });
        let registry = prometheus::Registry::new();
        registry.register(Box::new(h)).expect("register");
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("encode");
        for line in [
            "x_seconds_bucket{direction=\"passive\",le=\"0.5\"} 1",
            "x_seconds_bucket{direction=\"passive\",le=\"1\"} 3",
            "x_seconds_bucket{direction=\"passive\",le=\"+Inf\"} 6",
            "x_seconds_sum{direction=\"passive\"} 4.5",
            "x_seconds_count{direction=\"passive\"} 6",
            "x_seconds_count{direction=\"active\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}
