//! What the daemon knows between two readings: the connection mirror, the
//! health engine and attribution, fed by kernel events and map readings,
//! read by the HTTP API. No I/O here except the cgroup and pod lookups of
//! attribution.

use std::collections::{HashMap, HashSet};

use governor_common::{ConnEvent, EndpointKey, TcpEvent};
use tokio::sync::broadcast;

use crate::{
    api,
    attribution::{Attributor, command_name, process_label},
    connections::{self, FailureReason, Outcome, Tracker},
    health::{Engine, Sample, State, Transition},
    labels,
    metrics::Metrics,
    registry::protocol::Verdict,
    stats::Increments,
};

/// Reset reasons, and resets between two readings, are kept for at most
/// this many endpoints.
const MAX_REASON_ENDPOINTS: usize = 10_000;

/// Resets seen in events since the last reading, per endpoint, so that the
/// daemon can read the maps at once when one endpoint crosses the reset
/// threshold (unhealthy at once) instead of at the next poll. Counted as
/// the reading counts them: the larger of sent (by the local endpoint) and
/// received (from the remote endpoint).
#[derive(Debug, Default)]
pub struct ResetWatch {
    counts: foldhash::HashMap<EndpointKey, (u64, u64)>,
}

impl ResetWatch {
    pub fn sent(&mut self, endpoint: EndpointKey) {
        if let Some(c) = self.entry(endpoint) {
            c.0 += 1;
        }
    }

    pub fn received(&mut self, endpoint: EndpointKey) {
        if let Some(c) = self.entry(endpoint) {
            c.1 += 1;
        }
    }

    fn entry(&mut self, endpoint: EndpointKey) -> Option<&mut (u64, u64)> {
        if !self.counts.contains_key(&endpoint) && self.counts.len() >= MAX_REASON_ENDPOINTS {
            return None;
        }
        Some(self.counts.entry(endpoint).or_default())
    }

    /// Does some endpoint have at least the resets `needed` says it still
    /// needs (`None`: nothing to wait for, it is unhealthy already)? The
    /// endpoints are named as the engine names them (`ip:port`).
    pub fn due(&self, needed: impl Fn(&str) -> Option<u64>) -> bool {
        self.counts.iter().any(|(endpoint, (sent, received))| {
            needed(&labels::endpoint(endpoint)).is_some_and(|n| *sent.max(received) >= n)
        })
    }

    pub fn clear(&mut self) {
        self.counts.clear();
    }
}

pub struct Monitor {
    pub tracker: Tracker,
    pub engine: Engine<String>,
    attributor: Attributor,
    leak_after_seconds: u64,
    /// Connect attempts and failures since the last reading. Keyed by the
    /// endpoint's address, unformatted: these are counted for every event.
    pending: foldhash::HashMap<EndpointKey, Sample>,
    failures: foldhash::HashMap<(EndpointKey, FailureReason), u64>,
    /// Sent resets by local endpoint and the kernel's reason.
    reset_reasons: foldhash::HashMap<EndpointKey, HashMap<u32, u64>>,
    reason_names: Vec<(u32, String)>,
    health_events: broadcast::Sender<Transition<String>>,
    /// Unix seconds minus monotonic seconds, to show times as dates.
    unix_offset: i64,
    /// Endpoints that had sockets in `CLOSE_WAIT` at the last tick.
    close_wait_endpoints: HashSet<String>,
    /// Resets in events since the last tick.
    resets: ResetWatch,
    /// What the last reading saw per endpoint (the circuit breakers step
    /// on it).
    pub last_samples: HashMap<String, Sample>,
}

/// Seconds and nanoseconds on the kernel's clock (`bpf_ktime_get_ns`).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub ns: u64,
    pub secs: u64,
}

impl Now {
    pub fn from_ns(ns: u64) -> Self {
        Self { ns, secs: ns / 1_000_000_000 }
    }
}

impl Monitor {
    pub fn new(
        engine: Engine<String>,
        attributor: Attributor,
        leak_after_seconds: u64,
        reason_names: Vec<(u32, String)>,
        unix_offset: i64,
    ) -> Self {
        Self {
            tracker: Tracker::default(),
            engine,
            attributor,
            leak_after_seconds,
            pending: foldhash::HashMap::default(),
            failures: foldhash::HashMap::default(),
            reset_reasons: foldhash::HashMap::default(),
            reason_names,
            health_events: broadcast::channel(1024).0,
            unix_offset,
            close_wait_endpoints: HashSet::new(),
            resets: ResetWatch::default(),
            last_samples: HashMap::new(),
        }
    }

    /// Health state changes, for the parts that act on them.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition<String>> {
        self.health_events.subscribe()
    }

    /// The registry's verdict on an instance with these endpoints (`ip:port`
    /// as the engine names them): unhealthy when one of them is, with at
    /// least `min_samples` resets and connect attempts in its windows.
    pub fn verdict(&self, endpoints: &[String], min_samples: u64, now: Now) -> Verdict {
        let reset_threshold = self.engine.config().reset_threshold;
        let mut unsure = false;
        for endpoint in endpoints {
            let Some(view) = self.engine.view(endpoint, now.secs) else { continue };
            let w = view.window;
            match view.state {
                State::Healthy => {}
                State::Unhealthy if w.resets + w.connect_attempts >= min_samples => {
                    let cause = if w.resets >= reset_threshold { "resets" } else { "connect_failures" };
                    let detail = view.last_transition.map_or_else(String::new, |t| t.reason.clone());
                    return Verdict::Unhealthy { endpoint: endpoint.clone(), cause, detail };
                }
                _ => unsure = true,
            }
        }
        if unsure { Verdict::Unsure } else { Verdict::Healthy }
    }

    pub fn on_conn_event(&mut self, ev: &ConnEvent) {
        match self.tracker.apply(ev) {
            Outcome::ConnectFailed { endpoint, reason } => {
                let s = self.pending.entry(endpoint).or_default();
                s.connect_attempts += 1;
                s.connect_failures += 1;
                *self.failures.entry((endpoint, reason)).or_default() += 1;
            }
            Outcome::Closed { reset } => {
                if let Some(endpoint) = reset {
                    *self.failures.entry((endpoint, FailureReason::Reset)).or_default() += 1;
                }
            }
            Outcome::None => {}
        }
    }

    pub fn on_reset_sent(&mut self, ev: &TcpEvent) {
        let endpoint = EndpointKey { addr: ev.saddr, port: ev.sport, family: ev.family, pad: 0 };
        self.resets.sent(endpoint);
        if !self.reset_reasons.contains_key(&endpoint) && self.reset_reasons.len() >= MAX_REASON_ENDPOINTS {
            return;
        }
        *self.reset_reasons.entry(endpoint).or_default().entry(ev.reason).or_default() += 1;
    }

    /// A reset the kernel saw arrive: counted against the remote endpoint.
    pub fn on_reset_received(&mut self, ev: &TcpEvent) {
        self.resets.received(EndpointKey { addr: ev.daddr, port: ev.dport, family: ev.family, pad: 0 });
    }

    /// Should the daemon read the maps now rather than at the next poll?
    /// Yes when the resets in events since the last reading take an
    /// endpoint that is not unhealthy yet to the reset threshold.
    pub fn reading_due(&self, now: Now) -> bool {
        let threshold = self.engine.config().reset_threshold;
        self.resets.due(|endpoint| match self.engine.view(endpoint, now.secs) {
            Some(view) if view.state == State::Unhealthy => None,
            Some(view) => Some(threshold.saturating_sub(view.window.resets).max(1)),
            None => Some(threshold),
        })
    }

    /// One reading: feeds the health engine, judges, updates the gauges.
    /// Returns the health state changes (already published and counted).
    pub fn tick(&mut self, inc: &mut Increments, now: Now, metrics: &mut Metrics) -> Vec<Transition<String>> {
        self.resets.clear();
        inc.connect_failures = self.failures.drain().map(|((e, r), n)| ((labels::endpoint(&e), r), n)).collect();
        let mut samples: HashMap<String, Sample> = HashMap::new();
        for (key, sample) in self.pending.drain() {
            let s = samples.entry(labels::endpoint(&key)).or_default();
            *s = s.saturating_add(sample);
        }
        for (key, d) in &inc.endpoints {
            let s = samples.entry(labels::endpoint(key)).or_default();
            // A reset between two local sockets is seen twice: sent by one
            // and received by the other. Counting the larger side counts
            // each reset once whether one end or both are on this host.
            s.resets += d.resets_sent.max(d.resets_received);
            // Completed connects come from the kernel's count, failed ones
            // (attempts too) from events.
            s.connect_attempts += d.connects;
            s.retransmits += d.retransmits;
        }
        for (endpoint, sample) in &samples {
            // A collapsed client port is no service endpoint.
            if !endpoint.ends_with(labels::EPHEMERAL_PORT) {
                self.engine.record(endpoint, now.secs, *sample);
            }
        }
        self.last_samples = samples;
        // Only sockets in CLOSE_WAIT are walked; endpoints that had some at
        // the last tick and have none now are set back to zero.
        let close_wait = connections::close_wait_by_endpoint(&self.tracker);
        for endpoint in self.close_wait_endpoints.drain() {
            if !close_wait.contains_key(&endpoint) {
                self.engine.set_close_wait(&endpoint, 0, 0);
            }
        }
        for (endpoint, (_, count, oldest)) in close_wait {
            let age = now.ns.saturating_sub(oldest) / 1_000_000_000;
            self.engine.set_close_wait(&endpoint, count, age);
            self.close_wait_endpoints.insert(endpoint);
        }
        let transitions = self.engine.evaluate(now.secs);
        for t in &transitions {
            tracing::info!(
                endpoint = %t.endpoint,
                from = t.from.as_str(),
                to = t.to.as_str(),
                reason = %t.reason,
                "endpoint health changed"
            );
            metrics.health_transition(t.to);
            // Nobody listening yet is fine.
            let _ = self.health_events.send(t.clone());
        }
        let mut states: Vec<(String, State)> =
            self.engine.endpoints(now.secs).map(|v| (v.endpoint.clone(), v.state)).collect();
        states.sort_by_key(|(e, s)| (severity(*s), e.clone()));
        metrics.set_health(&states, usize::MAX);

        // Only processes holding CLOSE_WAIT sockets need attributing here.
        let rows: Vec<(String, u64, u64, bool)> = connections::close_wait_by_process(&self.tracker)
            .into_iter()
            .map(|p| {
                let p = self.process(p, now);
                (p.label, p.close_wait, p.close_wait_oldest_seconds, p.leaking)
            })
            .collect();
        metrics.set_close_wait(&rows, now.secs);
        metrics.set_tracked(self.tracker.len(), self.engine.len());
        transitions
    }

    /// Every process owning live sockets, attributed.
    pub fn processes(&mut self, now: Now) -> Vec<api::Process> {
        connections::by_process(&self.tracker).into_iter().map(|p| self.process(p, now)).collect()
    }

    fn process(&mut self, p: connections::ProcessSockets, now: Now) -> api::Process {
        let command = command_name(&p.owner.comm);
        let attribution = self.attributor.attribute(p.owner.cgroup_id, now.secs);
        let age = p.close_wait_age_seconds(now.ns);
        api::Process {
            pid: p.owner.tgid,
            label: process_label(&command, p.owner.tgid, &attribution),
            command,
            attribution,
            connections: p.connections,
            listeners: p.listeners,
            close_wait: p.close_wait,
            close_wait_oldest_seconds: age,
            leaking: p.close_wait > 0 && age >= self.leak_after_seconds,
        }
    }

    pub fn endpoints(&self, now: Now) -> Vec<api::Endpoint> {
        let by_endpoint = connections::by_endpoint(&self.tracker);
        let mut reset_reasons: HashMap<String, HashMap<u32, u64>> = HashMap::new();
        for (key, reasons) in &self.reset_reasons {
            let merged = reset_reasons.entry(labels::endpoint(key)).or_default();
            for (reason, n) in reasons {
                *merged.entry(*reason).or_default() += n;
            }
        }
        let window = self.engine.config();
        self.engine
            .endpoints(now.secs)
            .map(|v| {
                let w = v.window;
                let mut reasons: Vec<api::ReasonCount> = reset_reasons
                    .get(v.endpoint)
                    .map(|m| {
                        m.iter().map(|(r, n)| api::ReasonCount { reason: self.reason_name(*r), count: *n }).collect()
                    })
                    .unwrap_or_default();
                reasons.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
                api::Endpoint {
                    endpoint: v.endpoint.clone(),
                    state: v.state.as_str().to_owned(),
                    state_seconds: now.secs.saturating_sub(v.since),
                    window: api::Window {
                        resets: w.resets,
                        reset_window_seconds: window.reset_window_seconds,
                        connect_attempts: w.connect_attempts,
                        connect_failures: w.connect_failures,
                        failure_window_seconds: window.failure_window_seconds,
                        retransmits: w.retransmits,
                        close_wait: w.close_wait,
                        close_wait_oldest_seconds: w.close_wait_oldest_seconds,
                    },
                    last_transition: v.last_transition.map(|t| api::Transition {
                        from: t.from.as_str().to_owned(),
                        to: t.to.as_str().to_owned(),
                        at_unix: u64::try_from(i64::try_from(t.at).unwrap_or(i64::MAX) + self.unix_offset).unwrap_or(0),
                        reason: t.reason.clone(),
                    }),
                    reset_reasons: reasons,
                    connections: by_endpoint.get(v.endpoint).map_or(0, |c| c.0),
                }
            })
            .collect()
    }

    fn reason_name(&self, reason: u32) -> String {
        self.reason_names
            .iter()
            .find(|(v, _)| *v == reason)
            .map_or_else(|| format!("UNKNOWN_{reason}"), |(_, n)| n.clone())
    }

    pub fn connections(&self, filter: &ConnectionFilter, now: Now) -> api::Connections {
        let mut rows: Vec<api::Connection> = self
            .tracker
            .connections()
            .filter(|(_, c)| filter.pid.is_none_or(|pid| c.owner.tgid == pid))
            .filter(|(_, c)| filter.state.as_deref().is_none_or(|s| labels::tcp_state_name(c.state.into()) == s))
            .filter(|(_, c)| filter.endpoint.as_deref().is_none_or(|e| c.endpoint() == e))
            .map(|(_, c)| api::Connection {
                local: c.local(),
                remote: c.remote(),
                state: labels::tcp_state_name(c.state.into()).into_owned(),
                direction: labels::direction_name(c.direction).to_owned(),
                pid: c.owner.tgid,
                command: command_name(&c.owner.comm),
                age_seconds: now.ns.saturating_sub(c.established_ns) / 1_000_000_000,
                close_wait_seconds: (c.close_wait_ns != 0)
                    .then(|| now.ns.saturating_sub(c.close_wait_ns) / 1_000_000_000),
            })
            .collect();
        // Oldest first, then by address: stable pages.
        rows.sort_by(|a, b| {
            b.age_seconds.cmp(&a.age_seconds).then_with(|| (&a.local, &a.remote).cmp(&(&b.local, &b.remote)))
        });
        let total = rows.len() as u64;
        let page =
            rows.into_iter().skip(usize::try_from(filter.offset).unwrap_or(usize::MAX)).take(filter.limit).collect();
        api::Connections { total, offset: filter.offset, limit: filter.limit as u64, connections: page }
    }

    pub fn status(&mut self, now: Now) -> api::Status {
        let mut endpoints: Vec<api::Endpoint> =
            self.endpoints(now).into_iter().filter(|e| e.state != "healthy").collect();
        endpoints.sort_by(|a, b| (state_rank(&a.state), &a.endpoint).cmp(&(state_rank(&b.state), &b.endpoint)));
        let leaking = self.processes(now).into_iter().filter(|p| p.leaking).collect();
        api::Status { endpoints, leaking }
    }
}

/// `/api/v1/connections` query parameters.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default)]
pub struct ConnectionFilter {
    pub state: Option<String>,
    pub pid: Option<u32>,
    pub endpoint: Option<String>,
    pub offset: u64,
    pub limit: usize,
}

/// Page size when none is asked for, and the largest page served.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 10_000;

impl Default for ConnectionFilter {
    fn default() -> Self {
        Self { state: None, pid: None, endpoint: None, offset: 0, limit: DEFAULT_PAGE }
    }
}

/// Least healthy first.
fn severity(s: State) -> u8 {
    match s {
        State::Unhealthy => 0,
        State::Recovering => 1,
        State::Suspect => 2,
        State::Healthy => 3,
    }
}

fn state_rank(s: &str) -> u8 {
    State::ALL.iter().find(|x| x.as_str() == s).map_or(4, |x| severity(*x))
}

#[cfg(test)]
mod tests {
    use governor_common::{AF_INET, EndpointKey};

    use super::ResetWatch;

    fn key(last: u8) -> EndpointKey {
        EndpointKey { addr: [10, 0, 0, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], port: 80, family: AF_INET, pad: 0 }
    }

    #[test]
    fn reset_watch_counts_the_larger_side_against_what_is_still_needed() {
        let mut w = ResetWatch::default();
        for _ in 0..4 {
            w.sent(key(1));
        }
        for _ in 0..6 {
            w.received(key(1));
        }
        w.sent(key(2));
        // Six resets: enough where six more were needed, not where seven.
        assert!(w.due(|e| (e == "10.0.0.1:80").then_some(6)));
        assert!(!w.due(|e| (e == "10.0.0.1:80").then_some(7)));
        // Unhealthy already: nothing to wait for.
        assert!(!w.due(|_| None));
        w.clear();
        assert!(!w.due(|_| Some(1)));
    }
}
