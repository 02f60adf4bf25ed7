//! The deregistration protocol's decisions, free of I/O: governor's records
//! in etcd, the ejection budget, quarantine times and the hysteresis that
//! turns health verdicts into "take out" and "put back".
//!
//! The etcd edge (`etcd.rs`) turns these decisions into transactions that
//! compare what was judged (the instance's `mod_revision`, the budget
//! record's revision) so that a stale decision changes nothing.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// governor's record of an instance it took out, stored at
/// `<prefix>/quarantine/<registry><instance key>`: enough to put the
/// registration back exactly as it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    pub registry: String,
    pub service: String,
    /// The instance's key and value as they were.
    pub key: String,
    pub value: String,
    /// The instance's lease (0: none). Never revoked; reused on restore
    /// while it is alive.
    pub lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// Which endpoint was unhealthy and why.
    pub endpoint: String,
    pub reason: String,
    /// Unix seconds.
    pub ejected_at: u64,
    pub restore_after: u64,
    /// The node that acted.
    pub node: String,
    /// How many times this instance was taken out (1 for the first).
    pub attempt: u32,
    /// Times the owner put the key back while it was quarantined.
    #[serde(default)]
    pub fight_backs: u32,
}

/// A service's ejection budget, stored at
/// `<prefix>/budget/<registry>/<service>`. Every transaction that takes an
/// instance out or puts one back compares this record's revision, so nodes
/// acting at once cannot overspend it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Instance key → node that holds it out.
    #[serde(default)]
    pub ejected: BTreeMap<String, String>,
    /// Instance key → past ejections, for growing quarantine times.
    #[serde(default)]
    pub history: BTreeMap<String, History>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub ejections: u32,
    /// Unix seconds of the last one.
    pub last: u64,
}

/// Where governor keeps its records under its prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.trim_end_matches('/').to_owned() }
    }

    pub fn budget(&self, registry: &str, service: &str) -> String {
        format!("{}/budget/{registry}/{service}", self.prefix)
    }

    /// Every quarantine record starts with this.
    pub fn quarantine_root(&self) -> String {
        format!("{}/quarantine/", self.prefix)
    }

    /// Every quarantine record of one registry starts with this.
    pub fn quarantine_prefix(&self, registry: &str) -> String {
        format!("{}{registry}/", self.quarantine_root())
    }

    pub fn quarantine(&self, registry: &str, instance_key: &str) -> String {
        format!("{}{}", self.quarantine_prefix(registry), instance_key.trim_start_matches('/'))
    }

    pub fn kill_switch(&self) -> String {
        format!("{}/config/kill-switch", self.prefix)
    }
}

/// Is the kill switch on, given its key's value (absent: off)?
pub fn kill_switch_on(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "off" | "0" | "false"))
}

/// Why the budget refuses an ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_ejection_percent` of the service is out already.
    Exhausted,
    /// It is the last registered instance.
    LastInstance,
}

/// May one more of a service's instances go out, with `registered`
/// instances in the registry and `ejected` held out (by any node)?
/// At most `floor(percent × (registered + ejected) / 100)` may be out, and
/// at least one must stay registered.
pub fn may_eject(registered: usize, ejected: usize, max_percent: u32) -> Result<(), Refusal> {
    if registered <= 1 {
        return Err(Refusal::LastInstance);
    }
    let total = registered + ejected;
    let allowed = total * max_percent.min(100) as usize / 100;
    if ejected + 1 > allowed { Err(Refusal::Exhausted) } else { Ok(()) }
}

/// Quarantine of the `attempt`-th ejection (1-based): the base doubled for
/// each earlier one, capped.
pub fn quarantine_seconds(base: u64, max: u64, attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1).min(63);
    base.checked_shl(doublings).filter(|s| s >> doublings == base).unwrap_or(u64::MAX).min(max)
}

/// An instance's health in one window, from its endpoints' states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An endpoint is unhealthy with enough samples behind it: `cause` is
    /// `resets` or `connect_failures` (a metric label), `detail` the health
    /// engine's words.
    Unhealthy { endpoint: String, cause: &'static str, detail: String },
    /// Every endpoint is healthy, or quiet.
    Healthy,
    /// Anything between (suspect, recovering, unhealthy on too few
    /// samples): both streaks start again.
    Unsure,
}

/// What the hysteresis asks for after a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Unhealthy for `remove_after` windows in a row, all on the same
    /// registration (revision).
    Remove {
        endpoint: String,
        cause: &'static str,
        detail: String,
    },
    /// Healthy for `restore_after` windows in a row.
    Restorable,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Streak {
    /// The registration the unhealthy windows were judged on.
    revision: i64,
    unhealthy: u32,
    healthy: u32,
    /// The last window counted: each window counts once, as the worst
    /// verdict seen in it.
    window: Option<u64>,
    /// That verdict's rank (`rank`) and the counts before the window.
    rank: u8,
    before: (u32, u32),
}

/// Healthy < unsure < unhealthy: a window counts as the worst it saw.
fn rank(verdict: &Verdict) -> u8 {
    match verdict {
        Verdict::Healthy => 1,
        Verdict::Unsure => 2,
        Verdict::Unhealthy { .. } => WORST_RANK,
    }
}

const WORST_RANK: u8 = 3;

/// Consecutive-window counts per instance key.
#[derive(Debug)]
pub struct Hysteresis {
    remove_after: u32,
    restore_after: u32,
    streaks: HashMap<String, Streak>,
}

impl Hysteresis {
    pub fn new(remove_after: u32, restore_after: u32) -> Self {
        Self { remove_after: remove_after.max(1), restore_after: restore_after.max(1), streaks: HashMap::new() }
    }

    /// Counts window `window` for the instance at `key`, whose registration
    /// has `revision` (0 while it is out of the registry). A later call for
    /// the same window counts it again only if its verdict is worse (an
    /// endpoint that turns unhealthy mid-window is acted on at once, not a
    /// window later); otherwise it repeats the answer.
    pub fn observe(&mut self, key: &str, revision: i64, window: u64, verdict: &Verdict) -> Step {
        let s = self.streaks.entry(key.to_owned()).or_default();
        let worse = s.window == Some(window) && s.revision == revision && rank(verdict) > s.rank;
        if s.window != Some(window) || worse {
            if worse {
                (s.unhealthy, s.healthy) = s.before;
            } else {
                s.window = Some(window);
                if s.revision != revision {
                    // A new registration is judged afresh.
                    *s = Streak { revision, window: Some(window), ..Streak::default() };
                }
                s.before = (s.unhealthy, s.healthy);
            }
            s.rank = rank(verdict);
            match verdict {
                Verdict::Unhealthy { .. } => {
                    s.unhealthy = s.unhealthy.saturating_add(1);
                    s.healthy = 0;
                }
                Verdict::Healthy => {
                    s.healthy = s.healthy.saturating_add(1);
                    s.unhealthy = 0;
                }
                Verdict::Unsure => {
                    s.healthy = 0;
                    s.unhealthy = 0;
                }
            }
        }
        match verdict {
            Verdict::Unhealthy { endpoint, cause, detail } if s.unhealthy >= self.remove_after => {
                Step::Remove { endpoint: endpoint.clone(), cause, detail: detail.clone() }
            }
            Verdict::Healthy if s.healthy >= self.restore_after => Step::Restorable,
            _ => Step::Nothing,
        }
    }

    /// Starts the instance's counts again (after an action on it).
    pub fn reset(&mut self, key: &str) {
        if let Some(s) = self.streaks.get_mut(key) {
            *s = Streak { revision: s.revision, window: s.window, rank: WORST_RANK, ..Streak::default() };
        }
    }

    /// Forgets instances not in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.streaks.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bad() -> Verdict {
        Verdict::Unhealthy { endpoint: "10.0.0.1:80".into(), cause: "resets", detail: "12 resets".into() }
    }

    #[test]
    fn budget_of_three_at_34_percent_is_one() {
        assert_eq!(may_eject(3, 0, 34), Ok(()));
        assert_eq!(may_eject(2, 1, 34), Err(Refusal::Exhausted));
        assert_eq!(may_eject(1, 0, 100), Err(Refusal::LastInstance));
        assert_eq!(may_eject(2, 0, 100), Ok(()));
        assert_eq!(may_eject(10, 0, 10), Ok(()));
        assert_eq!(may_eject(9, 1, 10), Err(Refusal::Exhausted));
        assert_eq!(may_eject(5, 0, 0), Err(Refusal::Exhausted));
    }

    proptest! {
        #[test]
        fn budget_never_overspends(registered in 0usize..500, ejected in 0usize..500, pct in 0u32..=100) {
            if may_eject(registered, ejected, pct).is_ok() {
                let total = registered + ejected;
                prop_assert!((ejected + 1) * 100 <= total * pct as usize);
                prop_assert!(registered >= 2);
            }
        }

        #[test]
        fn quarantine_grows_and_stays_capped(base in 1u64..100_000, max in 1u64..1_000_000, attempt in 1u32..100) {
            let q = quarantine_seconds(base, max, attempt);
            prop_assert!(q <= max);
            prop_assert!(q >= quarantine_seconds(base, max, attempt.saturating_sub(1).max(1)));
        }
    }

    #[test]
    fn quarantine_doubles() {
        assert_eq!(quarantine_seconds(30, 600, 1), 30);
        assert_eq!(quarantine_seconds(30, 600, 2), 60);
        assert_eq!(quarantine_seconds(30, 600, 5), 480);
        assert_eq!(quarantine_seconds(30, 600, 6), 600);
        assert_eq!(quarantine_seconds(30, 600, 1000), 600);
    }

    #[test]
    fn removal_needs_consecutive_unhealthy_windows_on_one_registration() {
        let mut h = Hysteresis::new(3, 5);
        assert_eq!(h.observe("k", 7, 1, &bad()), Step::Nothing);
        assert_eq!(h.observe("k", 7, 2, &bad()), Step::Nothing);
        // The same window again counts once.
        assert_eq!(h.observe("k", 7, 2, &bad()), Step::Nothing);
        assert!(matches!(h.observe("k", 7, 3, &bad()), Step::Remove { .. }));
        // An unsure window breaks the streak.
        let mut h = Hysteresis::new(2, 5);
        h.observe("k", 7, 1, &bad());
        h.observe("k", 7, 2, &Verdict::Unsure);
        assert_eq!(h.observe("k", 7, 3, &bad()), Step::Nothing);
        // A new registration starts again.
        let mut h = Hysteresis::new(2, 5);
        h.observe("k", 7, 1, &bad());
        assert_eq!(h.observe("k", 8, 2, &bad()), Step::Nothing);
        assert!(matches!(h.observe("k", 8, 3, &bad()), Step::Remove { .. }));
    }

    #[test]
    fn a_window_counts_as_the_worst_verdict_seen_in_it() {
        let mut h = Hysteresis::new(1, 2);
        assert_eq!(h.observe("k", 7, 1, &Verdict::Healthy), Step::Nothing);
        // Unhealthy later in the same window: acted on now.
        assert!(matches!(h.observe("k", 7, 1, &bad()), Step::Remove { .. }));
        // A streak of two unhealthy windows survives an unsure start of the
        // third that turns unhealthy.
        let mut h = Hysteresis::new(3, 2);
        h.observe("k", 7, 1, &bad());
        h.observe("k", 7, 2, &bad());
        assert_eq!(h.observe("k", 7, 3, &Verdict::Unsure), Step::Nothing);
        assert!(matches!(h.observe("k", 7, 3, &bad()), Step::Remove { .. }));
        // Better verdicts later in a window do not count it again.
        let mut h = Hysteresis::new(5, 2);
        h.observe("k", 0, 1, &Verdict::Healthy);
        h.observe("k", 0, 2, &Verdict::Unsure);
        assert_eq!(h.observe("k", 0, 2, &Verdict::Healthy), Step::Nothing);
        assert_eq!(h.observe("k", 0, 3, &Verdict::Healthy), Step::Nothing);
        assert_eq!(h.observe("k", 0, 4, &Verdict::Healthy), Step::Restorable);
        // After an action the window it happened in does not count again.
        let mut h = Hysteresis::new(1, 2);
        assert!(matches!(h.observe("k", 7, 1, &bad()), Step::Remove { .. }));
        h.reset("k");
        assert_eq!(h.observe("k", 7, 1, &bad()), Step::Nothing);
    }

    #[test]
    fn restore_needs_consecutive_healthy_windows() {
        let mut h = Hysteresis::new(1, 3);
        assert!(matches!(h.observe("k", 7, 1, &bad()), Step::Remove { .. }));
        h.reset("k");
        assert_eq!(h.observe("k", 0, 2, &Verdict::Healthy), Step::Nothing);
        assert_eq!(h.observe("k", 0, 3, &Verdict::Healthy), Step::Nothing);
        assert_eq!(
            h.observe("k", 0, 4, &bad()),
            Step::Remove { endpoint: "10.0.0.1:80".into(), cause: "resets", detail: "12 resets".into() }
        );
        assert_eq!(h.observe("k", 0, 5, &Verdict::Healthy), Step::Nothing);
        assert_eq!(h.observe("k", 0, 6, &Verdict::Healthy), Step::Nothing);
        assert_eq!(h.observe("k", 0, 7, &Verdict::Healthy), Step::Restorable);
    }

    proptest! {
        /// Alternating verdicts never act when both thresholds exceed one.
        #[test]
        fn flapping_never_acts(remove in 2u32..10, restore in 2u32..10, n in 1u64..200) {
            let mut h = Hysteresis::new(remove, restore);
            for w in 0..n {
                let v = if w % 2 == 0 { bad() } else { Verdict::Healthy };
                prop_assert_eq!(h.observe("k", 1, w, &v), Step::Nothing);
            }
        }
    }

    #[test]
    fn keys_and_kill_switch() {
        let k = Keys::new("/governor/v1/");
        assert_eq!(k.budget("kratos", "helloworld"), "/governor/v1/budget/kratos/helloworld");
        assert_eq!(
            k.quarantine("kratos", "/microservices/helloworld/1"),
            "/governor/v1/quarantine/kratos/microservices/helloworld/1"
        );
        assert!(k.quarantine("kratos", "/m/a/1").starts_with(&k.quarantine_prefix("kratos")));
        assert_eq!(k.kill_switch(), "/governor/v1/config/kill-switch");
        assert!(!kill_switch_on(None));
        assert!(!kill_switch_on(Some("off")));
        assert!(!kill_switch_on(Some(" FALSE ")));
        assert!(kill_switch_on(Some("on")));
        assert!(kill_switch_on(Some("")));
    }

    #[test]
    fn records_round_trip_as_json() {
        let r = QuarantineRecord {
            registry: "kratos".into(),
            service: "helloworld".into(),
            key: "/microservices/helloworld/1".into(),
            value: "{}".into(),
            lease: 42,
            create_revision: 3,
            mod_revision: 5,
            endpoint: "10.0.0.1:80".into(),
            reason: "resets".into(),
            ejected_at: 100,
            restore_after: 130,
            node: "n1".into(),
            attempt: 1,
            fight_backs: 0,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<QuarantineRecord>(&text).unwrap(), r);
        let b: Budget = serde_json::from_str("{}").unwrap();
        assert_eq!(b, Budget::default());
    }
}
