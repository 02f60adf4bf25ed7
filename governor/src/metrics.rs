//! The Prometheus registry and how increments from the kernel become series.

use std::{collections::HashMap, fmt::Write as _};

mod kernel_histogram;

use governor_common::counter;
use kernel_histogram::{KernelHistogram, Totals};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{
    cardinality::{Budget, SeriesLimiter},
    connections::FailureReason,
    health::State,
    labels,
    stats::Increments,
};

/// The cardinality limits of endpoint series.
#[derive(Clone, Copy, Debug)]
pub struct SeriesLimits {
    /// Endpoint series per metric.
    pub per_metric: usize,
    /// Endpoint series over all metrics.
    pub budget: usize,
    /// Seconds without counts before a series is removed; 0: never.
    pub ttl_seconds: u64,
}

/// Kinds of ring buffer events, as labels.
pub const EVENT_KINDS: [(u32, &str); 9] = [
    (governor_common::event_kind::RESET_SENT, "reset_sent"),
    (governor_common::event_kind::RESET_RECEIVED, "reset_received"),
    (governor_common::event_kind::CONNECT_FAILED, "connect_failed"),
    (governor_common::event_kind::OPENED, "opened"),
    (governor_common::event_kind::CLOSE_WAIT, "close_wait"),
    (governor_common::event_kind::CLOSE_WAIT_LEFT, "close_wait_left"),
    (governor_common::event_kind::CLOSED, "closed"),
    (governor_common::event_kind::LISTEN, "listen"),
    (governor_common::event_kind::LISTEN_CLOSED, "listen_closed"),
];

/// Handshakes take microseconds on loopback and seconds when SYNs are
/// retransmitted (1 s, 3 s, 7 s with the kernel's defaults).
pub const HANDSHAKE_BUCKETS: [f64; 16] =
    [0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Connections live from a millisecond to days.
pub const DURATION_BUCKETS: [f64; 12] = [0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 86_400.0];

pub struct Metrics {
    registry: Catalog,
    transitions: IntCounterVec,
    resets: IntCounterVec,
    retransmits: IntCounter,
    resets_by_reason: IntCounterVec,
    reason_names: Vec<(u32, String)>,
    endpoint_resets: IntCounterVec,
    endpoint_retransmits: IntCounterVec,
    endpoint_bytes: IntCounterVec,
    bytes_series: SeriesLimiter,
    pub programs_attached: IntGauge,
    events_lost: IntCounter,
    /// One counter per entry of `EVENT_KINDS`, resolved once: the drain
    /// loop counts every event.
    events: Vec<IntCounter>,
    kernel_read_errors: IntCounter,
    endpoint_update_failures: IntCounter,
    pub map_entries: IntGaugeVec,
    pub map_capacity: IntGaugeVec,
    reset_series: SeriesLimiter,
    retransmit_series: SeriesLimiter,
    budget: Budget,
    series_dropped: IntCounter,
    endpoint_series: IntGaugeVec,
    connect_failures: IntCounterVec,
    failure_series: SeriesLimiter,
    /// `governor_tcp_connections_opened_total` for `active` and `passive`,
    /// with the kernel's count each was last set from.
    opened_by_direction: [(IntCounter, u64); 2],
    /// The connection histograms, from the kernel's counts.
    handshake: KernelHistogram,
    duration: KernelHistogram,
    close_wait: IntGaugeVec,
    close_wait_oldest: IntGaugeVec,
    leak_suspected: IntGaugeVec,
    /// Process labels shown in the three gauges above, with the last time
    /// each had a socket in `CLOSE_WAIT`.
    process_series: HashMap<String, u64>,
    endpoint_health: IntGaugeVec,
    health_series: Vec<String>,
    health_transitions: IntCounterVec,
    sockets_untracked: IntCounter,
    socket_update_failures: IntCounter,
    ttl_seconds: u64,
    tracked: IntGaugeVec,
    policy_decisions: IntCounterVec,
    policy_info: IntGaugeVec,
    /// Per kernel policy state entry: the policy holding it (name and
    /// `reason` label), and the decision totals read last.
    policy_owners: Vec<Option<(String, &'static str)>>,
    policy_seen: Vec<(u64, u64)>,
    pub config_reloads: IntCounterVec,
    /// Posts to Alertmanager (direct push): `ok` or `error`.
    pub alertmanager_posts: IntCounterVec,
    breaker_state: IntGaugeVec,
    breaker_cooldown: IntGaugeVec,
    bandwidth_dropped: IntCounterVec,
    bandwidth_seen: Vec<u64>,
}

/// Adds per-endpoint increments to a counter with a `direction` label
/// (`sent`, `received`); an endpoint is admitted (or summed under `other`)
/// by its total over both directions.
fn add_directions(
    limiter: &mut SeriesLimiter,
    vec: &IntCounterVec,
    [sent, received]: [&HashMap<String, u64>; 2],
    now: u64,
    budget: &mut Budget,
) {
    let mut both = sent.clone();
    for (k, v) in received {
        *both.entry(k.clone()).or_default() += v;
    }
    limiter.admit(&both, now, budget);
    for (direction, map) in [("sent", sent), ("received", received)] {
        for (endpoint, v) in map {
            vec.with_label_values(&[limiter.label(endpoint), direction]).inc_by(*v);
        }
    }
}

/// The Prometheus registry, and the name and help of every metric in it:
/// a labelled metric with no series yet is still listed on `/metrics`
/// (its `# HELP` line), so operators and tests see every name.
#[derive(Clone, Default)]
pub struct Catalog {
    registry: Registry,
    described: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Catalog {
    pub fn register<T: prometheus::core::Collector + Clone + 'static>(&self, metric: T) -> T {
        let mut described = self.described.lock().expect("catalog lock poisoned");
        for desc in metric.desc() {
            described.push((desc.fq_name.clone(), desc.help.clone()));
        }
        self.registry.register(Box::new(metric.clone())).expect("metric names are unique");
        metric
    }

    /// Every metric name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.described.lock().expect("catalog lock poisoned").iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    /// The text exposition, then a `# HELP` line for each metric without
    /// series.
    fn render(&self) -> String {
        let families = self.registry.gather();
        let mut text = TextEncoder::new().encode_to_string(&families).expect("text encoding cannot fail");
        for (name, help) in self.described.lock().expect("catalog lock poisoned").iter() {
            if !families.iter().any(|f| f.name() == name) {
                let _ = writeln!(text, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
            }
        }
        text
    }
}

impl Metrics {
    /// The Prometheus registry, for parts that keep series of their own.
    pub fn registry(&self) -> &Catalog {
        &self.registry
    }

    /// `reset_reasons` are the kernel's names for `enum sk_rst_reason`
    /// values (from its BTF); values without a name are shown as
    /// `UNKNOWN_<n>`.
    #[expect(clippy::too_many_lines, reason = "one registration per metric, nothing else")]
    pub fn new(limits: SeriesLimits, reset_reasons: &[(u32, String)]) -> Self {
        let r = Catalog::default();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            r.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            r.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| r.register(IntCounter::new(name, help).expect("valid metric"));

        let build_info =
            gauge_vec("governor_build_info", "Always 1; the version of the running governor.", &["version"]);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let resets =
            counter_vec("governor_tcp_resets_total", "TCP resets sent or received by this host.", &["direction"]);
        // Both directions exist from the start, so rate() works from zero.
        for d in ["sent", "received"] {
            resets.with_label_values(&[d]).reset();
        }
        let events = counter_vec(
            "governor_ebpf_events_total",
            "Discrete events the kernel programs delivered through the ring buffer.",
            &["kind"],
        );
        let events = EVENT_KINDS.iter().map(|(_, kind)| events.with_label_values(&[kind])).collect();
        let opened = counter_vec(
            "governor_tcp_connections_opened_total",
            "TCP connections whose handshake completed: active (this host connected) or passive (accepted).",
            &["direction"],
        );
        let handshake = r.register(KernelHistogram::new(
            "governor_tcp_handshake_duration_seconds",
            "TCP handshake time: SYN to established for active opens, the SYN-ACK round trip for passive ones.",
            &HANDSHAKE_BUCKETS,
            Some("direction"),
            &["active", "passive"],
        ));
        // Both directions exist from the start (index 1 is passive).
        let opened_by_direction = ["active", "passive"].map(|d| (opened.with_label_values(&[d]), 0));

        Self {
            transitions: counter_vec(
                "governor_tcp_state_transitions_total",
                "TCP state changes on this host, by kernel state names.",
                &["from", "to"],
            ),
            resets,
            retransmits: counter("governor_tcp_retransmits_total", "TCP segments retransmitted by this host."),
            resets_by_reason: counter_vec(
                "governor_tcp_resets_sent_by_reason_total",
                "TCP resets sent by this host, by the kernel's reason (enum sk_rst_reason).",
                &["reason"],
            ),
            reason_names: reset_reasons.to_vec(),
            endpoint_resets: counter_vec(
                "governor_endpoint_resets_total",
                "TCP resets per service endpoint: the local side for sent, the remote side for received.",
                &["endpoint", "direction"],
            ),
            endpoint_retransmits: counter_vec(
                "governor_endpoint_retransmits_total",
                "TCP retransmits per remote endpoint.",
                &["endpoint"],
            ),
            endpoint_bytes: counter_vec(
                "governor_endpoint_bytes_total",
                "TCP payload bytes this host's sockets sent and received on connections of a service endpoint (the \
                 remote side of connections this host opened, the local listener of accepted ones).",
                &["endpoint", "direction"],
            ),
            bytes_series: SeriesLimiter::new(limits.per_metric, limits.ttl_seconds),
            programs_attached: r.register(
                IntGauge::new("governor_ebpf_programs_attached", "Kernel programs governor has attached.")
                    .expect("valid metric"),
            ),
            events_lost: counter(
                "governor_ebpf_events_lost_total",
                "Events the kernel could not put into the full ring buffer.",
            ),
            events,
            kernel_read_errors: counter(
                "governor_ebpf_read_errors_total",
                "Tracepoint records the kernel programs could not read (unknown address family included).",
            ),
            endpoint_update_failures: counter(
                "governor_ebpf_endpoint_update_failures_total",
                "Endpoint counts lost because the kernel could not create a table entry.",
            ),
            map_entries: gauge_vec("governor_ebpf_map_entries", "Entries in use in a kernel map.", &["map"]),
            map_capacity: gauge_vec("governor_ebpf_map_capacity", "Capacity of a kernel map.", &["map"]),
            reset_series: SeriesLimiter::new(limits.per_metric, limits.ttl_seconds),
            retransmit_series: SeriesLimiter::new(limits.per_metric, limits.ttl_seconds),
            budget: Budget::new(limits.budget),
            series_dropped: counter(
                "governor_metrics_series_dropped_total",
                "Endpoint series not created because the series budget was full, counted per reading.",
            ),
            endpoint_series: gauge_vec(
                "governor_metrics_endpoint_series",
                "Endpoint series a metric holds (the series budget counts these).",
                &["metric"],
            ),
            connect_failures: counter_vec(
                "governor_tcp_connect_failures_total",
                "Connects from this host that failed, by remote endpoint and reason (refused, timeout, reset after \
                 establishment, other).",
                &["endpoint", "reason"],
            ),
            failure_series: SeriesLimiter::new(limits.per_metric, limits.ttl_seconds),
            opened_by_direction,
            handshake,
            duration: r.register(KernelHistogram::new(
                "governor_tcp_connection_duration_seconds",
                "Lifetime of TCP connections from established to closed.",
                &DURATION_BUCKETS,
                None,
                &[],
            )),
            close_wait: gauge_vec(
                "governor_tcp_close_wait_connections",
                "Sockets in CLOSE_WAIT (the peer closed, the owner has not) per owning process.",
                &["process"],
            ),
            close_wait_oldest: gauge_vec(
                "governor_tcp_close_wait_oldest_seconds",
                "Age of the oldest CLOSE_WAIT socket per owning process.",
                &["process"],
            ),
            leak_suspected: gauge_vec(
                "governor_connection_leak_suspected",
                "1 when a process holds a CLOSE_WAIT socket longer than the leak threshold.",
                &["process"],
            ),
            process_series: HashMap::new(),
            endpoint_health: gauge_vec(
                "governor_endpoint_health",
                "1 for the endpoint's current health state, 0 for the others.",
                &["endpoint", "state"],
            ),
            health_series: Vec::new(),
            health_transitions: counter_vec(
                "governor_endpoint_health_transitions_total",
                "Health state changes of endpoints, by the state entered.",
                &["state"],
            ),
            sockets_untracked: counter(
                "governor_ebpf_sockets_untracked_total",
                "Closes of sockets the per-socket table did not know: opened before governor started, or evicted \
                 from the full table.",
            ),
            socket_update_failures: counter(
                "governor_ebpf_socket_update_failures_total",
                "Sockets the kernel could not add to the per-socket table.",
            ),
            ttl_seconds: limits.ttl_seconds,
            tracked: gauge_vec(
                "governor_tracked_entries",
                "Entries in the daemon's own tables: live connections, endpoints the health engine tracks.",
                &["table"],
            ),
            policy_decisions: counter_vec(
                "governor_policy_decisions_total",
                "Outbound connects checked against a policy in the kernel, by policy, verdict (allow, deny; a \
                 dry-run policy counts what it would deny) and the kind of limit (rate, concurrency, block).",
                &["policy", "action", "reason"],
            ),
            policy_info: gauge_vec(
                "governor_policy_info",
                "Always 1 for each policy in force, with its kind.",
                &["policy", "kind"],
            ),
            breaker_state: gauge_vec(
                "governor_breaker_state",
                "Circuit breakers per upstream endpoint: 1 for the current state (closed, open, half_open), 0 for \
                 the others. Endpoints appear when their breaker first opens and go when it has stayed closed for \
                 the maximum cool-down.",
                &["endpoint", "state"],
            ),
            breaker_cooldown: gauge_vec(
                "governor_breaker_cooldown_seconds",
                "The cool-down of the breaker's last opening; doubles when it opens again soon after.",
                &["endpoint"],
            ),
            bandwidth_dropped: counter_vec(
                "governor_bandwidth_dropped_bytes_total",
                "Bytes dropped by bandwidth policing, by policy (egress drops also signal congestion to TCP).",
                &["policy"],
            ),
            bandwidth_seen: Vec::new(),
            policy_owners: Vec::new(),
            policy_seen: Vec::new(),
            config_reloads: {
                let v = counter_vec(
                    "governor_config_reload_total",
                    "Reloads of the config file (SIGHUP or a change of the file): ok, or error (invalid; the \
                     running config stays in force).",
                    &["result"],
                );
                for result in ["ok", "error"] {
                    v.with_label_values(&[result]).reset();
                }
                v
            },
            alertmanager_posts: counter_vec(
                "governor_alertmanager_posts_total",
                "Posts of alerts to Alertmanager's /api/v2/alerts (direct push, [alerting]), by alertmanager and \
                 result: ok, or error (logged; the alert is sent again at the next re-send).",
                &["alertmanager", "result"],
            ),
            registry: r,
        }
    }

    /// The policies in force and their kernel state entries. Counters of a
    /// policy that stays carry on; a policy that is gone keeps its series
    /// (counters never go back) but loses its `governor_policy_info`.
    pub fn set_policies(&mut self, policies: &[crate::policy::InForce]) {
        self.policy_info.reset();
        self.policy_owners = vec![None; governor_common::POLICY_SLOTS as usize];
        for p in policies {
            let reason = crate::policy::reason(p.kind);
            self.policy_info.with_label_values(&[p.name.as_str(), p.kind.as_str()]).set(1);
            for action in ["allow", "deny"] {
                let _ = self.policy_decisions.with_label_values(&[p.name.as_str(), action, reason]);
            }
            if p.kind == crate::config::PolicyKind::Bandwidth {
                let _ = self.bandwidth_dropped.with_label_values(&[p.name.as_str()]);
            }
            if let Some(owner) = self.policy_owners.get_mut(p.entry as usize) {
                *owner = Some((p.name.clone(), reason));
            }
        }
    }

    /// Adds the bytes bandwidth policing dropped since the last reading
    /// (`totals` per state entry) to the policies holding the entries.
    pub fn bandwidth_dropped(&mut self, totals: &[u64]) {
        self.bandwidth_seen.resize(totals.len(), 0);
        for ((owner, seen), total) in self.policy_owners.iter().zip(&mut self.bandwidth_seen).zip(totals) {
            if let Some((name, "bandwidth")) = owner {
                self.bandwidth_dropped.with_label_values(&[name.as_str()]).inc_by(total.saturating_sub(*seen));
            }
            *seen = *total;
        }
    }

    /// One breaker's state and cool-down (milliseconds); `None` removes its
    /// series.
    pub fn set_breaker(&mut self, endpoint: &str, state: Option<(&str, u64)>) {
        const STATES: [&str; 3] = ["closed", "open", "half_open"];
        if let Some((current, cooldown_ms)) = state {
            for s in STATES {
                self.breaker_state.with_label_values(&[endpoint, s]).set(i64::from(s == current));
            }
            self.breaker_cooldown
                .with_label_values(&[endpoint])
                .set(i64::try_from(cooldown_ms / 1000).unwrap_or(i64::MAX));
        } else {
            for s in STATES {
                let _ = self.breaker_state.remove_label_values(&[endpoint, s]);
            }
            let _ = self.breaker_cooldown.remove_label_values(&[endpoint]);
        }
    }

    /// Adds what the kernel decided since the last reading (`totals` per
    /// state entry, `(allowed, denied)`) to the policies holding the
    /// entries.
    pub fn policy_decisions(&mut self, totals: &[(u64, u64)]) {
        self.policy_seen.resize(totals.len(), (0, 0));
        for ((owner, seen), total) in self.policy_owners.iter().zip(&mut self.policy_seen).zip(totals) {
            if let Some((name, reason)) = owner {
                let (name, reason) = (name.as_str(), *reason);
                self.policy_decisions
                    .with_label_values(&[name, "allow", reason])
                    .inc_by(total.0.saturating_sub(seen.0));
                self.policy_decisions.with_label_values(&[name, "deny", reason]).inc_by(total.1.saturating_sub(seen.1));
            }
            *seen = *total;
        }
    }

    /// Adds one reading's increments to the series; `now` is in seconds on
    /// any clock that only moves forward.
    pub fn apply(&mut self, inc: &Increments, now: u64) {
        for &(from, to, n) in &inc.transitions {
            self.transitions
                .with_label_values(&[labels::tcp_state_name(from).as_ref(), labels::tcp_state_name(to).as_ref()])
                .inc_by(n);
        }
        let c = |i: u32| inc.counters[i as usize];
        self.resets.with_label_values(&["sent"]).inc_by(c(counter::RESETS_SENT));
        self.resets.with_label_values(&["received"]).inc_by(c(counter::RESETS_RECEIVED));
        self.retransmits.inc_by(c(counter::RETRANSMITS));
        for &(reason, n) in &inc.reset_reasons {
            let name = self.reason_names.iter().find(|(v, _)| *v == reason).map(|(_, name)| name.as_str());
            match name {
                Some(name) => self.resets_by_reason.with_label_values(&[name]).inc_by(n),
                None => self.resets_by_reason.with_label_values(&[format!("UNKNOWN_{reason}").as_str()]).inc_by(n),
            }
        }
        self.events_lost.inc_by(c(counter::EVENTS_LOST));
        self.kernel_read_errors.inc_by(c(counter::READ_ERRORS));
        self.endpoint_update_failures.inc_by(c(counter::ENDPOINT_UPDATE_FAILED));
        self.sockets_untracked.inc_by(c(counter::SOCKET_UNTRACKED));
        self.socket_update_failures.inc_by(c(counter::SOCKET_UPDATE_FAILED));

        // Several kernel keys can share a label (IPv4-mapped IPv6), so sum
        // by label first.
        let mut sent: HashMap<String, u64> = HashMap::new();
        let mut received: HashMap<String, u64> = HashMap::new();
        let mut retransmits: HashMap<String, u64> = HashMap::new();
        let mut bytes_sent: HashMap<String, u64> = HashMap::new();
        let mut bytes_received: HashMap<String, u64> = HashMap::new();
        for (key, d) in &inc.endpoints {
            let label = labels::endpoint(key);
            for (map, v) in [
                (&mut sent, d.resets_sent),
                (&mut received, d.resets_received),
                (&mut retransmits, d.retransmits),
                (&mut bytes_sent, d.bytes_sent),
                (&mut bytes_received, d.bytes_received),
            ] {
                if v > 0 {
                    *map.entry(label.clone()).or_default() += v;
                }
            }
        }

        // Idle series go first, so that their budget is free for new ones.
        for (limiter, vec) in
            [(&mut self.reset_series, &self.endpoint_resets), (&mut self.bytes_series, &self.endpoint_bytes)]
        {
            for endpoint in limiter.expire(now, &mut self.budget) {
                for direction in ["sent", "received"] {
                    // A direction that never had counts has no series: fine.
                    let _ = vec.remove_label_values(&[&endpoint, direction]);
                }
            }
        }
        for endpoint in self.retransmit_series.expire(now, &mut self.budget) {
            let _ = self.endpoint_retransmits.remove_label_values(&[&endpoint]);
        }
        for endpoint in self.failure_series.expire(now, &mut self.budget) {
            for reason in FailureReason::ALL {
                let _ = self.connect_failures.remove_label_values(&[&endpoint, reason.as_str()]);
            }
        }
        let dropped_before = self.budget.dropped();
        add_directions(&mut self.reset_series, &self.endpoint_resets, [&sent, &received], now, &mut self.budget);
        add_directions(
            &mut self.bytes_series,
            &self.endpoint_bytes,
            [&bytes_sent, &bytes_received],
            now,
            &mut self.budget,
        );
        for (endpoint, v) in self.retransmit_series.assign(&retransmits, now, &mut self.budget) {
            self.endpoint_retransmits.with_label_values(&[endpoint.as_str()]).inc_by(v);
        }
        let mut failures: HashMap<String, u64> = HashMap::new();
        for ((endpoint, _), n) in &inc.connect_failures {
            *failures.entry(endpoint.clone()).or_default() += n;
        }
        self.failure_series.admit(&failures, now, &mut self.budget);
        for ((endpoint, reason), n) in &inc.connect_failures {
            self.connect_failures.with_label_values(&[self.failure_series.label(endpoint), reason.as_str()]).inc_by(*n);
        }
        self.series_dropped.inc_by(self.budget.dropped() - dropped_before);
        for (metric, limiter) in [
            ("governor_endpoint_resets_total", &self.reset_series),
            ("governor_endpoint_retransmits_total", &self.retransmit_series),
            ("governor_tcp_connect_failures_total", &self.failure_series),
            ("governor_endpoint_bytes_total", &self.bytes_series),
        ] {
            self.endpoint_series.with_label_values(&[metric]).set(i64::try_from(limiter.len()).unwrap_or(i64::MAX));
        }
    }

    /// A connection whose handshake completed (`governor_common::direction`).
    /// Sets the connection histograms and the opened counters from the
    /// kernel's totals (`KernelSnapshot::histograms`).
    pub fn connection_histograms(&mut self, slots: &[u64]) {
        use governor_common::histogram;
        let of = |which: u32, bounds: usize| {
            let start = (which * histogram::SLOTS) as usize;
            Totals::from_slots(slots.get(start..start + histogram::SLOTS as usize).unwrap_or(&[]), bounds)
        };
        for (i, which) in [histogram::HANDSHAKE_ACTIVE, histogram::HANDSHAKE_PASSIVE].into_iter().enumerate() {
            let totals = of(which, HANDSHAKE_BUCKETS.len());
            let (opened, last) = &mut self.opened_by_direction[i];
            opened.inc_by(totals.count().saturating_sub(*last));
            *last = totals.count();
            self.handshake.set(i, totals);
        }
        self.duration.set(0, of(histogram::DURATION, DURATION_BUCKETS.len()));
    }

    /// Sets the `CLOSE_WAIT` gauges: `(process label, sockets, oldest age,
    /// leaking)` for every process holding such sockets now. A process
    /// whose sockets are gone shows 0 until the series time to live passes.
    pub fn set_close_wait(&mut self, rows: &[(String, u64, u64, bool)], now: u64) {
        for process in self.process_series.keys().filter(|p| !rows.iter().any(|(r, ..)| r == *p)) {
            for g in [&self.close_wait, &self.close_wait_oldest, &self.leak_suspected] {
                g.with_label_values(&[process.as_str()]).set(0);
            }
        }
        let ttl = if self.ttl_seconds == 0 { u64::MAX } else { self.ttl_seconds };
        let expired: Vec<String> = self
            .process_series
            .iter()
            .filter(|(_, last)| now.saturating_sub(**last) > ttl)
            .map(|(p, _)| p.clone())
            .collect();
        for process in expired {
            self.process_series.remove(&process);
            for g in [&self.close_wait, &self.close_wait_oldest, &self.leak_suspected] {
                let _ = g.remove_label_values(&[process.as_str()]);
            }
        }
        for (process, count, oldest, leaking) in rows {
            self.process_series.insert(process.clone(), now);
            let set = |g: &IntGaugeVec, v: u64| {
                g.with_label_values(&[process.as_str()]).set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set(&self.close_wait, *count);
            set(&self.close_wait_oldest, *oldest);
            set(&self.leak_suspected, u64::from(*leaking));
        }
    }

    /// Sets `governor_endpoint_health` for the endpoints given (at most the
    /// per-metric limit, the caller puts the least healthy first); series of
    /// endpoints no longer given are removed.
    pub fn set_health(&mut self, endpoints: &[(String, State)], limit: usize) {
        let shown: Vec<&(String, State)> = endpoints.iter().take(limit).collect();
        for old in &self.health_series {
            if !shown.iter().any(|(e, _)| e == old) {
                for state in State::ALL {
                    let _ = self.endpoint_health.remove_label_values(&[old, state.as_str()]);
                }
            }
        }
        for (endpoint, current) in &shown {
            for state in State::ALL {
                self.endpoint_health.with_label_values(&[endpoint, state.as_str()]).set(i64::from(state == *current));
            }
        }
        self.health_series = shown.iter().map(|(e, _)| e.clone()).collect();
    }

    /// Sizes of the daemon's own tables.
    pub fn set_tracked(&self, connections: usize, endpoints: usize) {
        let set =
            |table: &str, n: usize| self.tracked.with_label_values(&[table]).set(i64::try_from(n).unwrap_or(i64::MAX));
        set("connections", connections);
        set("health_endpoints", endpoints);
    }

    pub fn health_transition(&self, to: State) {
        self.health_transitions.with_label_values(&[to.as_str()]).inc();
    }

    pub fn count_event(&self, kind: u32) {
        if let Some(i) = EVENT_KINDS.iter().position(|(k, _)| *k == kind) {
            self.events[i].inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

#[cfg(test)]
mod tests {
    use governor_common::{AF_INET, EndpointKey, EndpointStats};

    use super::*;

    fn key(last: u8, port: u16) -> EndpointKey {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, last]);
        EndpointKey { addr, port, family: AF_INET, pad: 0 }
    }

    fn stats(sent: u64, received: u64, retransmits: u64) -> EndpointStats {
        EndpointStats { resets_sent: sent, resets_received: received, retransmits, ..EndpointStats::default() }
    }

    fn lines(m: &Metrics, prefix: &str) -> Vec<String> {
        m.render().lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
    }

    #[test]
    fn renders_fixed_names_and_labels() {
        let mut m =
            Metrics::new(SeriesLimits { per_metric: 10, budget: 100, ttl_seconds: 0 }, &[(1, "NO_SOCKET".to_owned())]);
        let mut inc = Increments { transitions: vec![(2, 1, 7), (3, 1, 7)], ..Default::default() };
        inc.counters[counter::RESETS_SENT as usize] = 200;
        inc.counters[counter::RESETS_RECEIVED as usize] = 200;
        inc.counters[counter::RETRANSMITS as usize] = 3;
        inc.reset_reasons = vec![(1, 200), (40, 2)];
        inc.endpoints = vec![(key(1, 9000), stats(200, 200, 0)), (key(2, 443), stats(0, 0, 3))];
        m.apply(&inc, 0);

        assert_eq!(
            lines(&m, "governor_tcp_state_transitions_total{"),
            [
                r#"governor_tcp_state_transitions_total{from="SYN_RECV",to="ESTABLISHED"} 7"#,
                r#"governor_tcp_state_transitions_total{from="SYN_SENT",to="ESTABLISHED"} 7"#,
            ]
        );
        assert_eq!(
            lines(&m, "governor_tcp_resets_total{"),
            [
                r#"governor_tcp_resets_total{direction="received"} 200"#,
                r#"governor_tcp_resets_total{direction="sent"} 200"#
            ]
        );
        assert_eq!(lines(&m, "governor_tcp_retransmits_total "), ["governor_tcp_retransmits_total 3"]);
        assert_eq!(
            lines(&m, "governor_tcp_resets_sent_by_reason_total{"),
            [
                r#"governor_tcp_resets_sent_by_reason_total{reason="NO_SOCKET"} 200"#,
                r#"governor_tcp_resets_sent_by_reason_total{reason="UNKNOWN_40"} 2"#,
            ]
        );
        assert_eq!(
            lines(&m, "governor_endpoint_resets_total{"),
            [
                r#"governor_endpoint_resets_total{direction="received",endpoint="10.0.0.1:9000"} 200"#,
                r#"governor_endpoint_resets_total{direction="sent",endpoint="10.0.0.1:9000"} 200"#,
            ]
        );
        assert_eq!(
            lines(&m, "governor_endpoint_retransmits_total{"),
            [r#"governor_endpoint_retransmits_total{endpoint="10.0.0.2:443"} 3"#]
        );
        assert_eq!(
            lines(&m, "governor_build_info{"),
            [format!(r#"governor_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))]
        );
        assert!(m.render().contains("# HELP governor_endpoint_resets_total TCP resets per service endpoint"));
    }

    #[test]
    fn endpoint_bytes_by_direction_with_the_busiest_endpoints_named() {
        let mut m = Metrics::new(SeriesLimits { per_metric: 1, budget: 100, ttl_seconds: 0 }, &[]);
        let bytes = |sent, received| EndpointStats { bytes_sent: sent, bytes_received: received, ..Default::default() };
        let inc = Increments {
            endpoints: vec![(key(1, 443), bytes(10, 5000)), (key(2, 443), bytes(700, 0)), (key(3, 443), bytes(0, 0))],
            ..Default::default()
        };
        m.apply(&inc, 0);
        m.apply(&inc, 1);
        assert_eq!(
            lines(&m, "governor_endpoint_bytes_total{"),
            [
                r#"governor_endpoint_bytes_total{direction="received",endpoint="10.0.0.1:443"} 10000"#,
                r#"governor_endpoint_bytes_total{direction="sent",endpoint="10.0.0.1:443"} 20"#,
                r#"governor_endpoint_bytes_total{direction="sent",endpoint="other"} 1400"#,
            ]
        );
        assert!(lines(&m, "governor_endpoint_resets_total{").is_empty());
    }

    #[test]
    fn endpoints_beyond_the_limit_are_summed_under_other() {
        let mut m = Metrics::new(SeriesLimits { per_metric: 1, budget: 100, ttl_seconds: 0 }, &[]);
        let inc = Increments {
            endpoints: vec![(key(1, 80), stats(5, 0, 1)), (key(2, 80), stats(1, 2, 4)), (key(3, 80), stats(0, 1, 0))],
            ..Default::default()
        };
        m.apply(&inc, 0);
        assert_eq!(
            lines(&m, "governor_endpoint_resets_total{"),
            [
                r#"governor_endpoint_resets_total{direction="received",endpoint="other"} 3"#,
                r#"governor_endpoint_resets_total{direction="sent",endpoint="10.0.0.1:80"} 5"#,
                r#"governor_endpoint_resets_total{direction="sent",endpoint="other"} 1"#,
            ]
        );
        assert_eq!(
            lines(&m, "governor_endpoint_retransmits_total{"),
            [
                r#"governor_endpoint_retransmits_total{endpoint="10.0.0.2:80"} 4"#,
                r#"governor_endpoint_retransmits_total{endpoint="other"} 1"#,
            ]
        );
    }

    #[test]
    fn idle_series_are_removed_and_the_budget_is_counted() {
        let mut m = Metrics::new(SeriesLimits { per_metric: 10, budget: 1, ttl_seconds: 60 }, &[]);
        let reading = |endpoints: Vec<(EndpointKey, EndpointStats)>| Increments { endpoints, ..Default::default() };
        m.apply(&reading(vec![(key(1, 80), stats(2, 0, 0)), (key(2, 80), stats(1, 0, 0))]), 0);
        assert_eq!(
            lines(&m, "governor_endpoint_resets_total{"),
            [
                r#"governor_endpoint_resets_total{direction="sent",endpoint="10.0.0.1:80"} 2"#,
                r#"governor_endpoint_resets_total{direction="sent",endpoint="other"} 1"#,
            ]
        );
        assert_eq!(lines(&m, "governor_metrics_series_dropped_total "), ["governor_metrics_series_dropped_total 1"]);
        assert_eq!(
            lines(&m, "governor_metrics_endpoint_series{"),
            [
                r#"governor_metrics_endpoint_series{metric="governor_endpoint_bytes_total"} 0"#,
                r#"governor_metrics_endpoint_series{metric="governor_endpoint_resets_total"} 1"#,
                r#"governor_metrics_endpoint_series{metric="governor_endpoint_retransmits_total"} 0"#,
                r#"governor_metrics_endpoint_series{metric="governor_tcp_connect_failures_total"} 0"#,
            ]
        );
        // 10.0.0.1:80 falls idle; after the time to live its series goes and
        // 10.0.0.2:80 gets the budget.
        m.apply(&reading(vec![(key(2, 80), stats(1, 0, 0))]), 61);
        assert_eq!(
            lines(&m, "governor_endpoint_resets_total{"),
            [
                r#"governor_endpoint_resets_total{direction="sent",endpoint="10.0.0.2:80"} 1"#,
                r#"governor_endpoint_resets_total{direction="sent",endpoint="other"} 1"#,
            ]
        );
    }
}
