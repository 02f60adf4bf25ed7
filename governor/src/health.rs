//! Judges service endpoints from their TCP signals.
//!
//! Per endpoint a ring of one-second buckets holds the resets, connect
//! attempts, failed connects and retransmits seen; sliding windows over it
//! feed a state machine with hysteresis:
//!
//! - Healthy → Unhealthy on a trip condition (too many resets, or too many
//!   failed connects among enough attempts), → Suspect when a signal reaches
//!   `suspect_fraction` of a trip threshold (or the retransmit threshold).
//! - Suspect → Unhealthy on a trip condition, → Healthy after one clean
//!   window (`recovery_window_seconds` clean seconds after the last suspect
//!   one).
//! - Unhealthy → Recovering at the first clean second.
//! - Recovering → Unhealthy on a trip condition, → Healthy after
//!   `recovery_windows` clean windows counted from entering Recovering; a
//!   suspect second restarts the count.
//!
//! A second is clean when no trip or suspect condition holds at it. A burst
//! that trips at second `t` with the defaults gives Unhealthy at `t`,
//! Recovering at `t + 5` (the burst has left the 5 s reset window) and
//! Healthy at `t + 20` (15 clean seconds later).
//!
//! Pure logic: time comes in as seconds of a monotonic clock. Every second
//! is judged once, in order, even when `evaluate` is called late: the ring
//! keeps what the skipped seconds need, and `record` judges the seconds
//! before a new one first when `evaluate` fell behind.

mod endpoint;
mod rules;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, fmt, hash::Hash};

use serde::Serialize;

use self::{endpoint::Endpoint, rules::Rules};

/// How endpoints are judged. Thresholds and window lengths of 0 are treated
/// as 1 (the configuration file does not allow them).
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    /// Length of the window resets and retransmits are counted in.
    pub reset_window_seconds: u64,
    /// Resets within the reset window that make an endpoint Unhealthy.
    pub reset_threshold: u64,
    /// Length of the window connect attempts and failures are counted in.
    pub failure_window_seconds: u64,
    /// Failed share of connects strictly above which an endpoint is
    /// Unhealthy ...
    pub failure_ratio: f64,
    /// ... once the failure window holds at least this many attempts.
    pub failure_min_attempts: u64,
    /// A signal at or above this fraction of a trip threshold makes an
    /// endpoint Suspect; 1 or more turns these early warnings off.
    pub suspect_fraction: f64,
    /// Retransmits within the reset window that make an endpoint Suspect
    /// (never Unhealthy); 0: off.
    pub retransmit_threshold: u64,
    /// Length of one clean window.
    pub recovery_window_seconds: u64,
    /// Clean windows a Recovering endpoint needs to be Healthy again.
    pub recovery_windows: u32,
    /// Most endpoints tracked at once.
    pub max_endpoints: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            reset_window_seconds: 5,
            reset_threshold: 10,
            failure_window_seconds: 10,
            failure_ratio: 0.6,
            failure_min_attempts: 20,
            suspect_fraction: 0.5,
            retransmit_threshold: 0,
            recovery_window_seconds: 5,
            recovery_windows: 3,
            max_endpoints: 10_000,
        }
    }
}

/// Counts observed for one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub resets: u64,
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub retransmits: u64,
}

impl Sample {
    fn is_zero(self) -> bool {
        self == Self::default()
    }

    #[must_use]
    pub fn saturating_add(self, other: Self) -> Self {
        let Self { resets, connect_attempts, connect_failures, retransmits } = other;
        Self {
            resets: self.resets.saturating_add(resets),
            connect_attempts: self.connect_attempts.saturating_add(connect_attempts),
            connect_failures: self.connect_failures.saturating_add(connect_failures),
            retransmits: self.retransmits.saturating_add(retransmits),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Healthy,
    Suspect,
    Unhealthy,
    Recovering,
}

impl State {
    pub const ALL: [State; 4] = [State::Healthy, State::Suspect, State::Unhealthy, State::Recovering];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Suspect => "suspect",
            State::Unhealthy => "unhealthy",
            State::Recovering => "recovering",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, at the second it happened.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition<K> {
    pub endpoint: K,
    pub from: State,
    pub to: State,
    pub at: u64,
    pub reason: String,
}

/// Counts currently inside the windows, for the API.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowCounts {
    /// Within the reset window.
    pub resets: u64,
    /// Within the failure window.
    pub connect_attempts: u64,
    /// Within the failure window.
    pub connect_failures: u64,
    /// Within the reset window.
    pub retransmits: u64,
    /// Sockets in `CLOSE_WAIT` now.
    pub close_wait: u64,
    /// Age of the oldest of them.
    pub close_wait_oldest_seconds: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EndpointView<'a, K> {
    pub endpoint: &'a K,
    pub state: State,
    /// The second the current state began.
    pub since: u64,
    pub window: WindowCounts,
    pub last_transition: Option<&'a Transition<K>>,
}

/// The health of every tracked endpoint.
#[derive(Debug)]
pub struct Engine<K> {
    config: HealthConfig,
    rules: Rules,
    endpoints: BTreeMap<K, Endpoint<K>>,
    /// Changes found while `record` caught an endpoint up; the next
    /// `evaluate` returns them.
    pending: Vec<Transition<K>>,
    /// The latest second seen; time never goes back before it.
    latest: u64,
}

impl<K: Clone + Eq + Hash + Ord + fmt::Display> Engine<K> {
    pub fn new(config: HealthConfig) -> Self {
        Self { rules: Rules::new(&config), config, endpoints: BTreeMap::new(), pending: Vec::new(), latest: 0 }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Adds counts observed at second `now` to that second's bucket.
    /// Creates the endpoint (Healthy) if it is new and the sample is not
    /// all zero.
    pub fn record(&mut self, endpoint: &K, now: u64, sample: Sample) {
        let now = self.advance_clock(now);
        if sample.is_zero() || !self.track(endpoint, now) {
            return;
        }
        let Self { rules, endpoints, pending, .. } = self;
        if let Some(tracked) = endpoints.get_mut(endpoint) {
            tracked.add(endpoint, now, sample, rules, pending);
        }
    }

    /// Sets the `CLOSE_WAIT` gauge of an endpoint: sockets now in `CLOSE_WAIT`
    /// and the oldest one's age. Shown in [`WindowCounts`], not judged here.
    /// A non-zero gauge counts as activity (the endpoint is not forgotten
    /// while it is set again and again); 0 on an unknown endpoint creates
    /// nothing.
    pub fn set_close_wait(&mut self, endpoint: &K, count: u64, oldest_seconds: u64) {
        let now = self.latest;
        if count > 0 && !self.track(endpoint, now) {
            return;
        }
        if let Some(tracked) = self.endpoints.get_mut(endpoint) {
            tracked.set_close_wait(now, count, oldest_seconds);
        }
    }

    /// Judges every second up to `now` not judged yet (and `now` again if
    /// counts were added to it since) and returns the changes of state, in
    /// endpoint order, oldest first per endpoint. Then forgets the Healthy
    /// endpoints idle for longer than the longest window plus the recovery
    /// time.
    pub fn evaluate(&mut self, now: u64) -> Vec<Transition<K>> {
        let now = self.advance_clock(now);
        let mut out = std::mem::take(&mut self.pending);
        let caught_up = !out.is_empty();
        for (key, endpoint) in &mut self.endpoints {
            endpoint.advance(key, now, &self.rules, &mut out);
        }
        if caught_up {
            // Stable: each endpoint's changes stay in the order they happened.
            out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        }
        let idle_limit = self.rules.forget_after;
        self.endpoints.retain(|_, endpoint| !endpoint.is_forgettable(now, idle_limit));
        out
    }

    /// The state as of the last evaluation; `None` for an endpoint not
    /// tracked.
    pub fn state(&self, endpoint: &K) -> Option<State> {
        self.endpoints.get(endpoint).map(Endpoint::state)
    }

    /// One endpoint with the counts in its windows at second `now`; `None`
    /// when it is not tracked.
    pub fn view<Q>(&self, endpoint: &Q, now: u64) -> Option<EndpointView<'_, K>>
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.endpoints.get_key_value(endpoint).map(|(key, e)| e.view(key, now, &self.rules))
    }

    /// Every tracked endpoint, sorted, with the counts in its windows at
    /// second `now`.
    pub fn endpoints(&self, now: u64) -> impl Iterator<Item = EndpointView<'_, K>> {
        self.endpoints.iter().map(move |(key, endpoint)| endpoint.view(key, now, &self.rules))
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn advance_clock(&mut self, now: u64) -> u64 {
        self.latest = self.latest.max(now);
        self.latest
    }

    /// Makes sure `endpoint` is tracked, forgetting another one if the
    /// limit is reached. False when nothing can be tracked.
    fn track(&mut self, endpoint: &K, now: u64) -> bool {
        if self.endpoints.contains_key(endpoint) {
            return true;
        }
        if self.config.max_endpoints == 0 {
            return false;
        }
        if self.endpoints.len() >= self.config.max_endpoints {
            self.forget_one();
        }
        self.endpoints.insert(endpoint.clone(), Endpoint::new(now, &self.rules));
        true
    }

    /// Forgets the Healthy endpoint idle the longest, or, when none is
    /// Healthy, the endpoint idle the longest. Ties go to the smallest key.
    fn forget_one(&mut self) {
        let victim = self
            .endpoints
            .iter()
            .min_by_key(|&(key, endpoint)| (endpoint.state() != State::Healthy, endpoint.last_seen(), key))
            .map(|(key, _)| key.clone());
        if let Some(key) = victim {
            self.endpoints.remove(&key);
        }
    }
}
