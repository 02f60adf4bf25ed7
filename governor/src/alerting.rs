//! Direct push to Alertmanager (opt-in, `[alerting]`): discrete actions
//! (an instance taken out of a registry, a circuit breaker open) become
//! alerts posted to Alertmanager's `/api/v2/alerts` as they start, again
//! while they last, and once more with `endsAt` when they clear. Pure: the
//! posting is in `alert_push.rs`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::{enforce::OpenBreaker, registry::QuarantineView};

/// Where the runbook's sections are.
pub const RUNBOOK: &str = "https://github.com/governor-project/governor/blob/main/docs/runbook.md";

/// One alert as Alertmanager's API takes it (`postableAlert`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
}

/// A condition that holds now, before it becomes an [`Alert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// How many more times a resolved alert is sent, one re-send interval
/// apart, in case a post was lost (Alertmanager takes a repeated resolve
/// as one).
const RESOLVE_SENDS: u32 = 3;

/// The alerts that are firing, with when each started and was last sent,
/// and the ones resolved lately.
#[derive(Debug)]
pub struct Pusher {
    resend_secs: u64,
    active: HashMap<BTreeMap<String, String>, Active>,
    resolved: HashMap<BTreeMap<String, String>, Resolved>,
}

#[derive(Debug)]
struct Resolved {
    alert: Alert,
    sent: u64,
    left: u32,
}

#[derive(Debug)]
struct Active {
    firing: Firing,
    started: u64,
    sent: u64,
}

impl Pusher {
    pub fn new(resend_secs: u64) -> Self {
        Self { resend_secs: resend_secs.max(1), active: HashMap::new(), resolved: HashMap::new() }
    }

    /// What to post at unix time `now`, given the conditions that hold:
    /// new ones, ones not sent for `resend_secs`, and, with `endsAt` now,
    /// ones that cleared (sent again a few times, a re-send interval
    /// apart, so that one lost post loses no resolve). A firing alert's
    /// `endsAt` lies four re-send intervals ahead, so Alertmanager
    /// resolves it by itself if governor stops sending.
    pub fn step(&mut self, now: u64, holding: Vec<Firing>) -> Vec<Alert> {
        let mut out = Vec::new();
        let mut seen = Vec::with_capacity(holding.len());
        for firing in holding {
            seen.push(firing.labels.clone());
            // Firing again: a new episode, its old resolve is moot.
            self.resolved.remove(&firing.labels);
            let active = self.active.entry(firing.labels.clone()).or_insert_with(|| Active {
                firing: firing.clone(),
                started: now,
                sent: 0,
            });
            let changed = active.firing != firing;
            if active.sent == 0 || changed || now.saturating_sub(active.sent) >= self.resend_secs {
                active.firing = firing;
                active.sent = now.max(1);
                out.push(alert(&active.firing, active.started, now + 4 * self.resend_secs));
            }
        }
        let cleared: Vec<BTreeMap<String, String>> =
            self.active.keys().filter(|labels| !seen.contains(labels)).cloned().collect();
        for (labels, resolved) in &mut self.resolved {
            if now.saturating_sub(resolved.sent) >= self.resend_secs && !cleared.contains(labels) {
                resolved.sent = now;
                resolved.left -= 1;
                out.push(resolved.alert.clone());
            }
        }
        self.resolved.retain(|_, r| r.left > 0);
        for labels in cleared {
            if let Some(active) = self.active.remove(&labels) {
                let resolve = alert(&active.firing, active.started, now);
                out.push(resolve.clone());
                self.resolved.insert(labels, Resolved { alert: resolve, sent: now, left: RESOLVE_SENDS });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

fn alert(firing: &Firing, started: u64, ends: u64) -> Alert {
    Alert {
        labels: firing.labels.clone(),
        annotations: firing.annotations.clone(),
        starts_at: rfc3339(started),
        ends_at: rfc3339(ends),
    }
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix)).to_string()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// An instance this node took out of a registry: `GovernorDeregistration`
/// until it is put back.
pub fn deregistered(node: &str, q: &QuarantineView) -> Firing {
    let r = &q.record;
    Firing {
        labels: labels(&[
            ("alertname", "GovernorDeregistration"),
            ("severity", "warning"),
            ("node", node),
            ("registry", &r.registry),
            ("service", &r.service),
            ("endpoint", &r.endpoint),
            ("key", &r.key),
        ]),
        annotations: labels(&[
            ("summary", &format!("governor took {} ({}) out of {}", r.endpoint, r.service, r.registry)),
            (
                "description",
                &format!(
                    "{} on {} is unhealthy ({}); governor on {} removed {} from the registry (attempt {}). It is \
                     put back when the endpoint recovers.",
                    r.endpoint, r.service, r.reason, node, r.key, r.attempt
                ),
            ),
            ("runbook_url", &format!("{RUNBOOK}#governorderegistration")),
        ]),
    }
}

/// A circuit breaker that is open or half-open: `GovernorBreakerOpened`
/// until it closes.
pub fn breaker(node: &str, b: &OpenBreaker) -> Firing {
    Firing {
        labels: labels(&[
            ("alertname", "GovernorBreakerOpened"),
            ("severity", "warning"),
            ("node", node),
            ("endpoint", &b.endpoint),
            ("policy", &b.policy),
        ]),
        annotations: labels(&[
            ("summary", &format!("circuit breaker open for {} on {node}", b.endpoint)),
            (
                "description",
                &format!(
                    "Policy {} opened the circuit breaker of {} on {node}: connects to it fail at once with EPERM \
                     (cool-down {} s, now {}).",
                    b.policy, b.endpoint, b.cooldown_seconds, b.state
                ),
            ),
            ("runbook_url", &format!("{RUNBOOK}#governorbreakeropened")),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing(name: &str, endpoint: &str) -> Firing {
        Firing {
            labels: labels(&[("alertname", name), ("endpoint", endpoint)]),
            annotations: labels(&[("summary", "s")]),
        }
    }

    #[test]
    fn an_alert_is_sent_when_it_starts_again_every_resend_interval_and_once_resolved() {
        let mut p = Pusher::new(60);
        let a = firing("A", "10.0.0.1:80");
        let sent = p.step(1_000, vec![a.clone()]);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].starts_at, "1970-01-01T00:16:40Z");
        assert_eq!(sent[0].ends_at, rfc3339(1_000 + 240), "four re-send intervals ahead");
        assert!(p.step(1_030, vec![a.clone()]).is_empty(), "not again within the interval");
        let again = p.step(1_060, vec![a.clone()]);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].starts_at, sent[0].starts_at, "the same alert: same start");
        let resolved = p.step(1_070, vec![]);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].ends_at, rfc3339(1_070));
        assert!(p.step(1_080, vec![]).is_empty(), "not again within the interval");
        for at in [1_130, 1_190, 1_250] {
            assert_eq!(p.step(at, vec![]), resolved, "the same resolve again, in case a post was lost");
        }
        assert!(p.step(1_310, vec![]).is_empty(), "three times at most");
        let back = p.step(1_320, vec![a.clone()]);
        assert_eq!(back[0].starts_at, rfc3339(1_320), "a new episode starts anew");
        p.step(1_330, vec![]);
        let again = p.step(1_340, vec![a]);
        assert_eq!(again.len(), 1, "firing again drops the pending resolve");
        assert_eq!(again[0].starts_at, rfc3339(1_340));
        let later = p.step(1_400, vec![firing("A", "10.0.0.1:80")]);
        assert_eq!(later.len(), 1);
        assert_ne!(later[0].ends_at, rfc3339(1_330), "the dropped resolve is not sent");
    }

    #[test]
    fn alerts_are_told_apart_by_their_labels_and_a_changed_description_is_sent_at_once() {
        let mut p = Pusher::new(60);
        let (a, b) = (firing("A", "10.0.0.1:80"), firing("A", "10.0.0.2:80"));
        assert_eq!(p.step(10, vec![a.clone(), b.clone()]).len(), 2);
        let mut changed = b.clone();
        changed.annotations.insert("summary".into(), "other".into());
        let sent = p.step(20, vec![a, changed]);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].annotations["summary"], "other");
        let json = serde_json::to_value(&sent[0]).unwrap();
        assert!(json.get("startsAt").is_some() && json.get("endsAt").is_some(), "{json}");
    }
}
