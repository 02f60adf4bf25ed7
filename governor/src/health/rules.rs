//! What the counts in the windows mean: the trip and suspect levels derived
//! from the configuration, and the reasons given for a verdict.

use super::{HealthConfig, Sample};

/// The verdict on one second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Level {
    /// No trip or suspect condition holds.
    Clean,
    Suspect,
    /// A trip condition holds.
    Trip,
}

/// The configuration turned into the numbers the judgement uses.
#[derive(Clone, Debug)]
pub(super) struct Rules {
    pub reset_window: u64,
    pub failure_window: u64,
    /// The longer of the two windows: how many buckets the ring keeps.
    pub longest_window: u64,
    reset_trip: u64,
    attempts_trip: u64,
    failure_ratio: f64,
    reset_suspect: Option<u64>,
    attempts_suspect: Option<u64>,
    retransmit_suspect: Option<u64>,
    /// Clean seconds that take a Suspect endpoint back to Healthy.
    pub suspect_clean: u64,
    pub recovery_window: u64,
    pub recovery_windows: u32,
    /// Clean seconds that take a Recovering endpoint to Healthy.
    pub recovering_clean: u64,
    /// Idle seconds after which a Healthy endpoint is forgotten.
    pub forget_after: u64,
}

impl Rules {
    pub fn new(config: &HealthConfig) -> Self {
        let HealthConfig {
            reset_window_seconds,
            reset_threshold,
            failure_window_seconds,
            failure_ratio,
            failure_min_attempts,
            suspect_fraction,
            retransmit_threshold,
            recovery_window_seconds,
            recovery_windows,
            max_endpoints: _,
        } = *config;
        let reset_window = reset_window_seconds.max(1);
        let failure_window = failure_window_seconds.max(1);
        let longest_window = reset_window.max(failure_window);
        let reset_trip = reset_threshold.max(1);
        let attempts_trip = failure_min_attempts.max(1);
        // NaN is no fraction at all: no early warnings then either.
        let suspect = suspect_fraction < 1.0;
        let recovery_window = recovery_window_seconds;
        let recovering_clean = recovery_window.saturating_mul(u64::from(recovery_windows));
        Self {
            reset_window,
            failure_window,
            longest_window,
            reset_trip,
            attempts_trip,
            failure_ratio,
            reset_suspect: suspect.then(|| fraction_of(reset_trip, suspect_fraction)),
            attempts_suspect: suspect.then(|| fraction_of(attempts_trip, suspect_fraction)),
            retransmit_suspect: (retransmit_threshold > 0).then_some(retransmit_threshold),
            suspect_clean: recovery_window,
            recovery_window,
            recovery_windows,
            recovering_clean,
            forget_after: longest_window.saturating_add(recovering_clean),
        }
    }

    /// Judges the counts in the windows at one second.
    pub fn judge(&self, window: Sample) -> Level {
        if self.resets_trip(window) || self.failures_trip(window) {
            Level::Trip
        } else if self.resets_suspect(window) || self.failures_suspect(window) || self.retransmits_suspect(window) {
            Level::Suspect
        } else {
            Level::Clean
        }
    }

    /// Says why `window` was judged `level`, naming every condition that
    /// holds at that level.
    pub fn reason(&self, level: Level, window: Sample) -> String {
        let Sample { resets, connect_attempts, connect_failures, retransmits } = window;
        let (reset_window, failure_window) = (self.reset_window, self.failure_window);
        // Left open: each use adds its threshold and closes the parenthesis.
        let failed = format!(
            "{connect_failures} of {connect_attempts} connects failed within {failure_window} s ({}",
            percent(failed_share(window))
        );
        let ratio = percent(self.failure_ratio);
        let mut found = Vec::new();
        match level {
            Level::Trip => {
                if self.resets_trip(window) {
                    found.push(format!("{resets} resets within {reset_window} s (threshold {})", self.reset_trip));
                }
                if self.failures_trip(window) {
                    found.push(format!("{failed}, threshold {ratio} with at least {})", self.attempts_trip));
                }
            }
            Level::Suspect => {
                if let Some(at) = self.reset_suspect.filter(|_| self.resets_suspect(window)) {
                    found.push(format!("{resets} resets within {reset_window} s (suspect at {at})"));
                }
                if let Some(at) = self.attempts_suspect.filter(|_| self.failures_suspect(window)) {
                    found.push(format!("{failed}, suspect above {ratio} with at least {at})"));
                }
                if let Some(at) = self.retransmit_suspect.filter(|_| self.retransmits_suspect(window)) {
                    found.push(format!("{retransmits} retransmits within {reset_window} s (suspect at {at})"));
                }
            }
            Level::Clean => {
                found.push(format!(
                    "clean: {resets} resets within {reset_window} s and {connect_failures} of {connect_attempts} \
                     connects failed within {failure_window} s; healthy after {} more clean seconds",
                    self.recovering_clean
                ));
            }
        }
        found.join("; ")
    }

    fn resets_trip(&self, window: Sample) -> bool {
        window.resets >= self.reset_trip
    }

    fn failures_trip(&self, window: Sample) -> bool {
        window.connect_attempts >= self.attempts_trip && self.failing(window)
    }

    fn resets_suspect(&self, window: Sample) -> bool {
        self.reset_suspect.is_some_and(|at| window.resets >= at)
    }

    fn failures_suspect(&self, window: Sample) -> bool {
        self.attempts_suspect.is_some_and(|at| window.connect_attempts >= at) && self.failing(window)
    }

    fn retransmits_suspect(&self, window: Sample) -> bool {
        self.retransmit_suspect.is_some_and(|at| window.retransmits >= at)
    }

    /// The failed share of connects is strictly above the ratio.
    fn failing(&self, window: Sample) -> bool {
        window.connect_attempts > 0 && failed_share(window) > self.failure_ratio
    }
}

#[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^53, where f64 is exact")]
fn failed_share(window: Sample) -> f64 {
    if window.connect_attempts == 0 { 0.0 } else { window.connect_failures as f64 / window.connect_attempts as f64 }
}

/// `ceil(threshold * fraction)`, at least 1. A product within 1e-9 of a
/// whole number counts as that number, so 0.7 of 10 is 7, not 8.
#[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "thresholds stay far below 2^53; the cast saturates and negative fractions give 0, raised to 1"
)]
fn fraction_of(threshold: u64, fraction: f64) -> u64 {
    let product = threshold as f64 * fraction;
    let whole = product.round();
    let at = if (product - whole).abs() <= 1e-9 * whole.abs().max(1.0) { whole } else { product.ceil() };
    (at as u64).max(1)
}

/// A share as a percentage with at most one decimal: "75%", "66.7%".
fn percent(share: f64) -> String {
    format!("{}%", (share * 1000.0).round() / 10.0)
}
