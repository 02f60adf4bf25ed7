//! Circuit breakers per upstream endpoint: the state machine, pure. The
//! daemon feeds it the health engine's verdict and the connect outcomes of
//! each reading, and writes what it decides into the kernel's `BREAKERS`
//! table (`ebpf.rs`), where the connect programs enforce it.
//!
//! - closed: connects go through. The endpoint turning unhealthy with
//!   failures in the reading opens it.
//! - open: the kernel refuses every connect. After the cool-down it is
//!   half-open.
//! - half-open: the kernel lets `probes` connects through. One failing
//!   opens it again with the cool-down doubled (up to the maximum); all of
//!   them succeeding closes it.
//!
//! A breaker that opens again within the maximum cool-down of closing also
//! doubles its cool-down; one that stayed closed longer starts from the
//! base again.

/// Cool-downs in milliseconds and the probe count, from the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    pub cooldown_ms: u64,
    pub cooldown_max_ms: u64,
    pub probes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until_ms: u64 },
    HalfOpen { succeeded: u64 },
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
        }
    }
}

/// What to write into the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Refuse every connect.
    Open,
    /// Let this many probes through.
    HalfOpen(u64),
    /// Remove the entry.
    Close,
}

/// What one reading saw of an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// The health engine judges it unhealthy.
    pub unhealthy: bool,
    /// Connects from this host that completed their handshake.
    pub succeeded: u64,
    /// Connects that failed, and connections reset.
    pub failed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    pub state: State,
    /// The cool-down of the last opening, milliseconds (0: never opened).
    pub cooldown_ms: u64,
    closed_at_ms: Option<u64>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self { state: State::Closed, cooldown_ms: 0, closed_at_ms: None }
    }
}

impl Breaker {
    /// One reading at `now_ms`; returns the change for the kernel, if any.
    pub fn step(&mut self, now_ms: u64, r: Reading, config: &BreakerConfig) -> Option<Action> {
        match self.state {
            State::Closed if r.unhealthy && r.failed > 0 => {
                let recent = self.closed_at_ms.is_some_and(|at| now_ms.saturating_sub(at) < config.cooldown_max_ms);
                let cooldown = if recent { self.cooldown_ms.saturating_mul(2) } else { config.cooldown_ms };
                Some(self.open(now_ms, cooldown, config))
            }
            State::Open { until_ms } if now_ms >= until_ms => {
                self.state = State::HalfOpen { succeeded: 0 };
                Some(Action::HalfOpen(config.probes))
            }
            State::Closed | State::Open { .. } => None,
            State::HalfOpen { .. } if r.failed > 0 => {
                Some(self.open(now_ms, self.cooldown_ms.saturating_mul(2), config))
            }
            State::HalfOpen { succeeded } => {
                let succeeded = succeeded + r.succeeded;
                if succeeded >= config.probes {
                    self.state = State::Closed;
                    self.closed_at_ms = Some(now_ms);
                    Some(Action::Close)
                } else {
                    self.state = State::HalfOpen { succeeded };
                    None
                }
            }
        }
    }

    fn open(&mut self, now_ms: u64, cooldown_ms: u64, config: &BreakerConfig) -> Action {
        self.cooldown_ms = cooldown_ms.clamp(config.cooldown_ms, config.cooldown_max_ms);
        self.state = State::Open { until_ms: now_ms + self.cooldown_ms };
        Action::Open
    }

    /// Closed for good and nothing to remember: the entry can go.
    pub fn is_idle(&self, now_ms: u64, config: &BreakerConfig) -> bool {
        self.state == State::Closed
            && self.closed_at_ms.is_none_or(|at| now_ms.saturating_sub(at) >= config.cooldown_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CONFIG: BreakerConfig = BreakerConfig { cooldown_ms: 2000, cooldown_max_ms: 10_000, probes: 2 };

    fn failing() -> Reading {
        Reading { unhealthy: true, succeeded: 0, failed: 3 }
    }

    #[test]
    fn opens_probes_closes_and_reopens_with_a_doubled_cooldown() {
        let mut b = Breaker::default();
        assert_eq!(b.step(0, Reading { unhealthy: true, ..Reading::default() }, &CONFIG), None, "no failures seen");
        assert_eq!(b.step(100, failing(), &CONFIG), Some(Action::Open));
        assert_eq!(b.state, State::Open { until_ms: 2100 });
        assert_eq!(b.step(2000, Reading::default(), &CONFIG), None);
        assert_eq!(b.step(2100, Reading::default(), &CONFIG), Some(Action::HalfOpen(2)));
        assert_eq!(b.step(2200, Reading { succeeded: 1, ..Reading::default() }, &CONFIG), None);
        assert_eq!(b.step(2300, Reading { succeeded: 1, ..Reading::default() }, &CONFIG), Some(Action::Close));
        // Unhealthy again soon after: twice the cool-down.
        assert_eq!(b.step(3000, failing(), &CONFIG), Some(Action::Open));
        assert_eq!((b.cooldown_ms, b.state), (4000, State::Open { until_ms: 7000 }));
        // A failing probe: doubled again, then capped at the maximum.
        assert_eq!(b.step(7000, Reading::default(), &CONFIG), Some(Action::HalfOpen(2)));
        assert_eq!(b.step(7100, Reading { succeeded: 1, failed: 1, unhealthy: true }, &CONFIG), Some(Action::Open));
        assert_eq!(b.cooldown_ms, 8000);
        assert_eq!(b.step(15_100, Reading::default(), &CONFIG), Some(Action::HalfOpen(2)));
        assert_eq!(b.step(15_200, failing(), &CONFIG), Some(Action::Open));
        assert_eq!(b.cooldown_ms, 10_000);
    }

    #[test]
    fn a_breaker_closed_for_longer_than_the_maximum_starts_from_the_base_again() {
        let mut b = Breaker { state: State::HalfOpen { succeeded: 1 }, cooldown_ms: 8000, closed_at_ms: None };
        assert_eq!(b.step(0, Reading { succeeded: 1, ..Reading::default() }, &CONFIG), Some(Action::Close));
        assert!(!b.is_idle(9_999, &CONFIG));
        assert!(b.is_idle(10_000, &CONFIG));
        assert_eq!(b.step(10_000, failing(), &CONFIG), Some(Action::Open));
        assert_eq!(b.cooldown_ms, 2000);
    }

    proptest! {
        /// Whatever the readings: the cool-down stays within its bounds, an
        /// open breaker never closes without passing half-open, and a
        /// half-open one never closes before its probes succeeded.
        #[test]
        fn cooldowns_stay_bounded_and_closing_needs_the_probes(
            steps in proptest::collection::vec((0u64..3000, any::<bool>(), 0u64..3, 0u64..2), 1..60)
        ) {
            let mut b = Breaker::default();
            let mut now = 0;
            for (dt, unhealthy, succeeded, failed) in steps {
                now += dt;
                let before = b.state;
                let action = b.step(now, Reading { unhealthy, succeeded, failed }, &CONFIG);
                if b.cooldown_ms != 0 {
                    prop_assert!((CONFIG.cooldown_ms..=CONFIG.cooldown_max_ms).contains(&b.cooldown_ms));
                }
                match (before, action) {
                    (State::Open { .. }, Some(a)) => prop_assert_eq!(a, Action::HalfOpen(CONFIG.probes)),
                    (State::HalfOpen { succeeded: s }, Some(Action::Close)) => {
                        prop_assert!(s + succeeded >= CONFIG.probes);
                        prop_assert_eq!(failed, 0);
                    }
                    (State::Closed, Some(a)) => prop_assert_eq!(a, Action::Open),
                    _ => {}
                }
            }
        }
    }
}
