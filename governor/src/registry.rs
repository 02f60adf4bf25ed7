//! Takes unhealthy instances on this node out of the service registries in
//! etcd and puts them back when they are healthy again (the protocol in
//! DESIGN.md). One task: list and watch the registries and governor's own
//! records, judge every window from the health engine, act through the
//! transactions in `etcd.rs`. etcd faults never stop the daemon: the task
//! reconnects with back-off, lists again, and judges afresh before acting.

pub mod etcd;
pub mod format;
pub mod protocol;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use etcd_client::{Client, EventType, WatchOptions};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

use self::{
    etcd::{Entry, Judged, Policy, Removal, Return},
    format::Address,
    protocol::{Hysteresis, Keys, QuarantineRecord, Refusal, Step, Verdict, kill_switch_on},
};
use crate::{
    config::{Cidr, Config, RegistrySource},
    health::{State, Transition},
    http::{AppState, now},
};

/// The registry's series, registered beside the daemon's others.
#[derive(Clone)]
pub struct RegistryMetrics {
    instances: IntGaugeVec,
    deregistrations: IntCounterVec,
    restorations: IntCounterVec,
    budget_exhausted: IntCounterVec,
    fight_back: IntCounterVec,
    invalid_values: IntCounterVec,
    lease_expired: IntCounterVec,
    stale: IntCounterVec,
    dry_run: IntCounterVec,
    etcd_up: IntGauge,
    kill_switch: IntGauge,
    action_seconds: HistogramVec,
}

impl RegistryMetrics {
    pub fn new(r: &crate::metrics::Catalog) -> Self {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            r.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let gauge = |name: &str, help: &str| r.register(IntGauge::new(name, help).expect("valid metric"));
        let instances = IntGaugeVec::new(
            Opts::new("governor_registry_instances", "Instances of each service by state, as governor sees them"),
            &["registry", "service", "state"],
        )
        .expect("valid metric");
        let instances = r.register(instances);
        let action_seconds = HistogramVec::new(
            HistogramOpts::new(
                "governor_registry_action_seconds",
                "From an endpoint turning unhealthy to the committed deregistration",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["registry"],
        )
        .expect("valid metric");
        let action_seconds = r.register(action_seconds);
        let svc = &["registry", "service"];
        Self {
            instances,
            deregistrations: counter_vec(
                "governor_registry_deregistrations_total",
                "Instances taken out of the registry, by cause",
                &["registry", "service", "reason"],
            ),
            restorations: counter_vec("governor_registry_restorations_total", "Instances put back", svc),
            budget_exhausted: counter_vec(
                "governor_registry_budget_exhausted_total",
                "Unhealthy instances left in because the service's ejection budget was spent or it was the last one \
                 (once per unhealthy spell)",
                svc,
            ),
            fight_back: counter_vec(
                "governor_registry_fight_back_total",
                "Quarantined instances whose owner put the key back",
                svc,
            ),
            invalid_values: counter_vec(
                "governor_registry_invalid_values_total",
                "Registry values that could not be read (skipped, never acted on)",
                &["registry"],
            ),
            lease_expired: counter_vec(
                "governor_registry_lease_expired_total",
                "Quarantined instances whose lease expired: records cleared, not put back",
                svc,
            ),
            stale: counter_vec(
                "governor_registry_stale_actions_total",
                "Actions not taken because the instance or record changed after it was judged",
                svc,
            ),
            dry_run: counter_vec(
                "governor_registry_dry_run_actions_total",
                "Actions a dry run would have taken",
                &["registry", "service", "action"],
            ),
            etcd_up: gauge("governor_etcd_up", "1 when etcd answered the last request with a leader"),
            kill_switch: gauge("governor_registry_kill_switch", "1 while the kill-switch key stops all actions"),
            action_seconds,
        }
    }
}

/// A quarantined instance, for `/api/v1/quarantine`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuarantineView {
    #[serde(flatten)]
    pub record: QuarantineRecord,
    /// Is the key back in the registry (put back by its owner)?
    pub key_present: bool,
}

/// What the HTTP API sees of the registry, and its way in.
pub struct Shared {
    pub quarantine: Mutex<Vec<QuarantineView>>,
    pub commands: mpsc::Sender<Command>,
}

impl Shared {
    /// The shared view and the receiving end of its commands (for the
    /// controller).
    pub fn new() -> (Arc<Self>, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(16);
        (Arc::new(Self { quarantine: Mutex::new(Vec::new()), commands }), rx)
    }
}

/// What an operator asks of the controller through the API.
#[derive(Debug)]
pub enum Command {
    /// Put a quarantined instance back now (`governor registry release`).
    Release { key: String, reply: oneshot::Sender<Result<crate::api::Released, ReleaseError>> },
}

/// Why a release by hand was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{0} is not quarantined by this node (see `governor registry list`)")]
    NotQuarantined(String),
    #[error("dry run: governor does not write to etcd (registry.dry_run)")]
    DryRun,
    #[error("the quarantine record of {0} changed meanwhile (another node or a person acted): list again")]
    Stale(String),
    #[error("etcd is unavailable: {0}; try again when governor_etcd_up is 1")]
    Unavailable(String),
}

/// An instance in a registry.
#[derive(Clone, Debug)]
struct Instance {
    service: String,
    entry: Entry,
    /// The endpoints on this node, as the health engine names them.
    local: Vec<String>,
}

/// One registry as listed and watched.
struct Source {
    config: RegistrySource,
    /// `prefix` with one trailing slash.
    prefix: String,
    instances: BTreeMap<String, Instance>,
}

/// Our quarantine records, by instance key, with the record's revision.
type Records = BTreeMap<String, (QuarantineRecord, i64)>;

pub struct Controller {
    sources: Vec<Source>,
    keys: Keys,
    kill_switch_key: String,
    /// `keys.quarantine_root()`, matched against every watch event.
    quarantine_root: String,
    config: Config,
    node: String,
    local_cidrs: Vec<Cidr>,
    local_ips: Vec<IpAddr>,
    hysteresis: Hysteresis,
    records: Records,
    kill_switch: bool,
    /// When each endpoint turned unhealthy, for the action latency.
    unhealthy_since: HashMap<String, Instant>,
    /// Instances released by hand, with the unix time until which they are
    /// not taken out again automatically.
    held: HashMap<String, u64>,
    /// Unhealthy instances left in by the budget, until they are healthy
    /// again or go: counted and logged once per spell, not every window.
    refused: std::collections::HashSet<String>,
    state: Arc<AppState>,
    shared: Arc<Shared>,
    metrics: RegistryMetrics,
}

impl Controller {
    pub fn new(config: &Config, state: Arc<AppState>, shared: Arc<Shared>, metrics: RegistryMetrics) -> Self {
        let keys = Keys::new(config.etcd.prefix());
        let kill_switch_key = if config.registry.kill_switch_key.is_empty() {
            keys.kill_switch()
        } else {
            config.registry.kill_switch_key.clone()
        };
        let node = node_name(&config.registry.node);
        let sources = config
            .registries
            .iter()
            .map(|c| Source {
                prefix: format!("{}/", c.prefix.trim_end_matches('/')),
                config: c.clone(),
                instances: BTreeMap::new(),
            })
            .collect();
        Self {
            sources,
            quarantine_root: keys.quarantine_root(),
            keys,
            kill_switch_key,
            node,
            local_cidrs: config.registry.local_cidrs.clone(),
            local_ips: Vec::new(),
            hysteresis: Hysteresis::new(
                config.registry.remove_after_windows.get(),
                config.registry.restore_after_windows.get(),
            ),
            records: BTreeMap::new(),
            kill_switch: false,
            unhealthy_since: HashMap::new(),
            held: HashMap::new(),
            refused: std::collections::HashSet::new(),
            config: config.clone(),
            state,
            shared,
            metrics,
        }
    }

    /// Runs until the daemon stops: sessions with etcd, back-off between
    /// them.
    pub async fn run(
        mut self,
        mut health: broadcast::Receiver<Transition<String>>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        info!(node = %self.node, dry_run = self.config.registry.dry_run, "registry: started");
        for s in &self.sources {
            info!(registry = %s.config.name, prefix = %s.prefix, format = s.config.format.as_str(), "registry: watching");
        }
        let mut backoff = Duration::from_millis(250);
        loop {
            let started = Instant::now();
            let error = match self.session(&mut health, &mut commands).await {
                Ok(()) => String::from("the session ended"),
                Err(e) => format!("{e:#}"),
            };
            self.metrics.etcd_up.set(0);
            warn!(error, retry_in_ms = backoff.as_millis(), "registry: etcd session ended");
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(250);
            }
            // Commands get an answer at once while etcd is away.
            let pause = tokio::time::sleep(backoff);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    Some(command) = commands.recv() => {
                        let Command::Release { reply, .. } = command;
                        let _ = reply.send(Err(ReleaseError::Unavailable(error.clone())));
                    }
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Lists everything, then watches from the listed revision and judges
    /// every window. Returns on any etcd error (and after a compaction, so
    /// the caller lists again).
    async fn session(
        &mut self,
        health: &mut broadcast::Receiver<Transition<String>>,
        commands: &mut mpsc::Receiver<Command>,
    ) -> anyhow::Result<()> {
        let mut client = etcd::connect(&self.config.etcd).await?;
        self.local_ips = interface_addresses();
        let mut revision = 0;
        for i in 0..self.sources.len() {
            let (entries, rev) = etcd::list(&mut client, &self.sources[i].prefix.clone()).await?;
            revision = revision.max(rev);
            self.sources[i].instances.clear();
            for e in entries {
                self.upsert(i, e);
            }
        }
        let (records, rev) = etcd::list(&mut client, &self.quarantine_root.clone()).await?;
        revision = revision.max(rev);
        self.records.clear();
        for e in records {
            self.apply_record(&e);
        }
        let (sources, records) = (&self.sources, &self.records);
        self.hysteresis.retain(|k| records.contains_key(k) || sources.iter().any(|s| s.instances.contains_key(k)));
        let switch = etcd::get(&mut client, &self.kill_switch_key).await?;
        self.set_kill_switch(switch.as_ref().map(|e| String::from_utf8_lossy(&e.value).into_owned()).as_deref());
        self.metrics.etcd_up.set(1);
        self.publish();

        let watch = |key: &str, prefix: bool| {
            let options = WatchOptions::new().with_start_revision(revision + 1).with_progress_notify();
            (key.to_owned(), if prefix { options.with_prefix() } else { options })
        };
        let mut watches = self.sources.iter().map(|s| watch(&s.prefix, true)).collect::<Vec<_>>();
        watches.push(watch(&self.quarantine_root.clone(), true));
        watches.push(watch(&self.kill_switch_key, false));
        let (first_key, first_options) = watches.remove(0);
        let mut stream = client.watch(first_key, Some(first_options)).await?;
        for (key, options) in watches {
            stream.watch(key, Some(options)).await?;
        }
        info!(
            revision,
            instances = self.instance_count(),
            quarantined = self.records.len(),
            "registry: listed, watching"
        );

        let mut window = tokio::time::interval(Duration::from_millis(self.config.registry.window_ms.get().into()));
        window.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let resp = msg?.context("the watch stream ended")?;
                    if resp.canceled() {
                        anyhow::bail!("watch canceled (compacted at {}): {}", resp.compact_revision(), resp.cancel_reason());
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let entry = Entry::from(kv);
                        self.on_watch_event(ev.event_type(), entry);
                    }
                }
                _ = window.tick() => self.judge(&mut client).await?,
                Some(command) = commands.recv() => {
                    let Command::Release { key, reply } = command;
                    let (answer, fault) = self.release(&mut client, &key).await;
                    let _ = reply.send(answer);
                    if let Some(e) = fault {
                        return Err(e);
                    }
                }
                t = health.recv() => {
                    if let Ok(t) = t {
                        if t.to == State::Unhealthy {
                            self.unhealthy_since.insert(t.endpoint.clone(), Instant::now());
                            // Act now rather than at the next window.
                            self.judge(&mut client).await?;
                        } else if t.from == State::Unhealthy {
                            self.unhealthy_since.remove(&t.endpoint);
                        }
                    }
                }
            }
        }
    }

    fn on_watch_event(&mut self, kind: EventType, entry: Entry) {
        if entry.key == self.kill_switch_key {
            let value = (kind == EventType::Put).then(|| String::from_utf8_lossy(&entry.value).into_owned());
            self.set_kill_switch(value.as_deref());
            return;
        }
        if entry.key.starts_with(&self.quarantine_root) {
            match kind {
                EventType::Put => self.apply_record(&entry),
                EventType::Delete => {
                    self.records.retain(|_, (r, _)| self.keys.quarantine(&r.registry, &r.key) != entry.key);
                }
            }
            self.publish();
            return;
        }
        let Some(i) = self.sources.iter().position(|s| entry.key.starts_with(&s.prefix)) else { return };
        match kind {
            EventType::Put => {
                let created = !self.sources[i].instances.contains_key(&entry.key);
                if created && let Some((record, _)) = self.records.get_mut(&entry.key) {
                    // The owner put back a key governor holds out.
                    record.fight_backs += 1;
                    self.metrics.fight_back.with_label_values(&[&record.registry, &record.service]).inc();
                    warn!(key = %entry.key, node = %record.node, "registry: the owner registered a quarantined instance again");
                }
                self.upsert(i, entry);
            }
            EventType::Delete => {
                self.sources[i].instances.remove(&entry.key);
                self.refused.remove(&entry.key);
            }
        }
        self.publish();
    }

    /// Adds or replaces an instance from its key and value; bad values are
    /// counted and skipped.
    fn upsert(&mut self, i: usize, entry: Entry) {
        let source = &mut self.sources[i];
        let Some((service, _)) = format::service_and_id(&source.prefix, &entry.key) else { return };
        let service = service.to_owned();
        match format::addresses(source.config.format, &entry.value) {
            Ok(addresses) => {
                let local = local_endpoints(&addresses, &self.local_ips, &self.local_cidrs);
                source.instances.insert(entry.key.clone(), Instance { service, entry, local });
            }
            Err(e) => {
                self.metrics.invalid_values.with_label_values(&[&source.config.name]).inc();
                warn!(registry = %source.config.name, key = %entry.key, kind = e.kind(), error = %e, "registry: value skipped");
                source.instances.remove(&entry.key);
            }
        }
    }

    fn apply_record(&mut self, e: &Entry) {
        match serde_json::from_slice::<QuarantineRecord>(&e.value) {
            Ok(r) if r.node == self.node => {
                self.records.insert(r.key.clone(), (r, e.mod_revision));
            }
            Ok(_) => {} // another node's: it acts on it
            Err(err) => warn!(key = %e.key, error = %err, "registry: unreadable quarantine record skipped"),
        }
    }

    fn set_kill_switch(&mut self, value: Option<&str>) {
        let on = kill_switch_on(value);
        if on != self.kill_switch {
            warn!(key = %self.kill_switch_key, on, "registry: kill switch changed");
        }
        self.kill_switch = on;
        self.metrics.kill_switch.set(i64::from(on));
    }

    fn instance_count(&self) -> usize {
        self.sources.iter().map(|s| s.instances.len()).sum()
    }

    fn verdict(&self, endpoints: &[String]) -> Verdict {
        let monitor = self.state.monitor.lock().expect("monitor lock poisoned");
        monitor.verdict(endpoints, self.config.registry.min_samples.get().into(), now())
    }

    /// One judgement window: counts every local instance's verdict and acts
    /// where the hysteresis says so.
    async fn judge(&mut self, client: &mut Client) -> anyhow::Result<()> {
        let window = now().ns / (u64::from(self.config.registry.window_ms.get()) * 1_000_000);
        let mut removals = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            for instance in source.instances.values().filter(|inst| !inst.local.is_empty()) {
                let verdict = self.verdict(&instance.local);
                if !matches!(verdict, Verdict::Unhealthy { .. }) {
                    self.refused.remove(&instance.entry.key);
                }
                let step = self.hysteresis.observe(&instance.entry.key, instance.entry.mod_revision, window, &verdict);
                if let Step::Remove { endpoint, cause, detail } = step {
                    // An instance whose owner fought back is taken out again
                    // at most once per quarantine period; one released by
                    // hand not before its hold ends.
                    let retry_due =
                        self.records.get(&instance.entry.key).is_none_or(|(r, _)| unix_now() >= r.restore_after);
                    let held = self.held.get(&instance.entry.key).is_some_and(|until| unix_now() < *until);
                    if retry_due && !held {
                        removals.push((i, instance.clone(), endpoint, cause, detail));
                    }
                }
            }
        }
        let mut returns = Vec::new();
        for (key, (record, revision)) in &self.records {
            let Some(i) = self.sources.iter().position(|s| s.config.name == record.registry) else { continue };
            let present = self.sources[i].instances.contains_key(key);
            let endpoints = format::addresses(self.sources[i].config.format, record.value.as_bytes())
                .map(|a| local_endpoints(&a, &self.local_ips, &self.local_cidrs))
                .unwrap_or_default();
            let verdict = self.verdict(&endpoints);
            let revision_seen = if present { self.sources[i].instances[key].entry.mod_revision } else { 0 };
            if self.hysteresis.observe(key, revision_seen, window, &verdict) == Step::Restorable
                && (present || unix_now() >= record.restore_after)
            {
                returns.push((record.clone(), *revision));
            }
        }
        if removals.is_empty() && returns.is_empty() {
            return Ok(());
        }
        if self.kill_switch {
            return Ok(());
        }
        if !etcd::has_leader(client).await? {
            warn!("registry: etcd has no leader; acting later");
            return Ok(());
        }
        for (i, instance, endpoint, cause, detail) in removals {
            self.remove(client, i, &instance, &endpoint, cause, &detail).await?;
        }
        for (record, revision) in returns {
            self.put_back(client, &record, revision, false).await?;
        }
        self.publish();
        Ok(())
    }

    async fn remove(
        &mut self,
        client: &mut Client,
        i: usize,
        instance: &Instance,
        endpoint: &str,
        cause: &'static str,
        detail: &str,
    ) -> anyhow::Result<()> {
        let registry = self.sources[i].config.name.clone();
        let service = instance.service.as_str();
        let key = instance.entry.key.as_str();
        self.hysteresis.reset(key);
        if self.config.registry.dry_run {
            self.metrics.dry_run.with_label_values(&[&registry, service, "deregister"]).inc();
            info!(%registry, service, key, endpoint, cause, detail, "registry: dry run: would deregister");
            return Ok(());
        }
        let judged = Judged {
            registry: &registry,
            service_prefix: format!("{}{service}/", self.sources[i].prefix),
            service,
            entry: &instance.entry,
            endpoint,
            reason: format!("{cause}: {detail}"),
        };
        let existing = self.records.get(key).map(|(r, _)| r.clone());
        match etcd::deregister(client, &self.keys, &self.policy(), &judged, existing.as_ref(), unix_now()).await? {
            Removal::Done { record, revision } => {
                self.metrics.deregistrations.with_label_values(&[&registry, service, cause]).inc();
                if let Some(since) = self.unhealthy_since.get(endpoint) {
                    self.metrics.action_seconds.with_label_values(&[&registry]).observe(since.elapsed().as_secs_f64());
                }
                info!(%registry, service, key, endpoint, cause, detail, attempt = record.attempt,
                    restore_after = record.restore_after, "registry: deregistered");
                self.sources[i].instances.remove(key);
                self.refused.remove(key);
                self.records.insert(key.to_owned(), (*record, revision));
            }
            Removal::Refused(_) if !self.refused.insert(key.to_owned()) => {} // said already
            Removal::Refused(refusal) => {
                self.metrics.budget_exhausted.with_label_values(&[&registry, service]).inc();
                let why = match refusal {
                    Refusal::Exhausted => "the ejection budget is spent",
                    Refusal::LastInstance => "it is the last registered instance",
                };
                warn!(%registry, service, key, endpoint, "registry: not deregistered: {why}");
            }
            Removal::Stale => {
                self.metrics.stale.with_label_values(&[&registry, service]).inc();
                info!(%registry, service, key, "registry: the instance changed since it was judged; nothing deleted");
            }
        }
        Ok(())
    }

    /// A release by hand: the same transaction as `put_back`, then a hold
    /// of one base quarantine period before governor may take the instance
    /// out again by itself. Returns the answer for the operator and, apart,
    /// an etcd fault that ends the session.
    async fn release(
        &mut self,
        client: &mut Client,
        key: &str,
    ) -> (Result<crate::api::Released, ReleaseError>, Option<anyhow::Error>) {
        let Some((record, revision)) = self.records.get(key).cloned() else {
            return (Err(ReleaseError::NotQuarantined(key.to_owned())), None);
        };
        if self.config.registry.dry_run {
            return (Err(ReleaseError::DryRun), None);
        }
        match etcd::has_leader(client).await {
            Ok(true) => {}
            Ok(false) => return (Err(ReleaseError::Unavailable(String::from("etcd has no leader"))), None),
            Err(e) => return (Err(ReleaseError::Unavailable(format!("{e:#}"))), Some(e)),
        }
        let outcome = match self.put_back(client, &record, revision, true).await {
            Ok(outcome) => outcome,
            Err(e) => return (Err(ReleaseError::Unavailable(format!("{e:#}"))), Some(e)),
        };
        self.publish();
        let outcome = match outcome {
            Some(Return::Restored) => "restored",
            Some(Return::AlreadyBack) => "already_back",
            Some(Return::LeaseExpired) => "lease_expired",
            Some(Return::Stale) | None => return (Err(ReleaseError::Stale(key.to_owned())), None),
        };
        let hold_until = unix_now() + u64::from(self.config.registry.quarantine_base_seconds.get());
        self.held.retain(|_, until| unix_now() < *until);
        self.held.insert(key.to_owned(), hold_until);
        (Ok(crate::api::Released { key: key.to_owned(), outcome: outcome.to_owned(), hold_until }), None)
    }

    /// Puts a quarantined instance back (`by_hand`: an operator asked).
    /// `None` in a dry run, which writes nothing.
    async fn put_back(
        &mut self,
        client: &mut Client,
        record: &QuarantineRecord,
        revision: i64,
        by_hand: bool,
    ) -> anyhow::Result<Option<Return>> {
        let labels = [record.registry.as_str(), record.service.as_str()];
        self.hysteresis.reset(&record.key);
        if self.config.registry.dry_run {
            self.metrics.dry_run.with_label_values(&[labels[0], labels[1], "restore"]).inc();
            return Ok(None);
        }
        let outcome = etcd::restore(client, &self.keys, record, revision).await?;
        match outcome {
            Return::Restored => {
                self.metrics.restorations.with_label_values(&labels).inc();
                info!(key = %record.key, attempt = record.attempt, by_hand, "registry: restored");
            }
            Return::AlreadyBack => info!(key = %record.key, "registry: the owner registered again; records cleared"),
            Return::LeaseExpired => {
                self.metrics.lease_expired.with_label_values(&labels).inc();
                info!(key = %record.key, lease = record.lease, "registry: lease expired in quarantine; not restored");
            }
            Return::Stale => {
                self.metrics.stale.with_label_values(&labels).inc();
                info!(key = %record.key, "registry: the quarantine record changed; not restored");
            }
        }
        if outcome != Return::Stale {
            self.records.remove(&record.key);
        }
        Ok(Some(outcome))
    }

    fn policy(&self) -> Policy {
        Policy {
            node: self.node.clone(),
            max_ejection_percent: self.config.registry.max_ejection_percent.get(),
            quarantine_base_seconds: self.config.registry.quarantine_base_seconds.get().into(),
            quarantine_max_seconds: self.config.registry.quarantine_max_seconds.get().into(),
        }
    }

    /// Refreshes the gauges and the API's view.
    fn publish(&self) {
        self.metrics.instances.reset();
        for s in &self.sources {
            let mut per_service: BTreeMap<&str, i64> = BTreeMap::new();
            for inst in s.instances.values() {
                *per_service.entry(&inst.service).or_default() += 1;
            }
            for (service, n) in per_service {
                self.metrics.instances.with_label_values(&[&s.config.name, service, "registered"]).set(n);
            }
        }
        let mut views = Vec::new();
        for (record, _) in self.records.values() {
            let present = self
                .sources
                .iter()
                .find(|s| s.config.name == record.registry)
                .is_some_and(|s| s.instances.contains_key(&record.key));
            if !present {
                self.metrics.instances.with_label_values(&[&record.registry, &record.service, "quarantined"]).inc();
            }
            views.push(QuarantineView { record: record.clone(), key_present: present });
        }
        *self.shared.quarantine.lock().expect("quarantine lock poisoned") = views;
    }
}

/// The instance's addresses that live on this node, as the health engine
/// names endpoints (IPv4-mapped IPv6 as IPv4).
fn local_endpoints(addresses: &[Address], ips: &[IpAddr], cidrs: &[Cidr]) -> Vec<String> {
    addresses
        .iter()
        .filter_map(|a| match a {
            Address::Ip(sa) => Some(*sa),
            Address::Host(..) => None,
        })
        .map(|sa| {
            let ip = match sa.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 @ IpAddr::V4(_) => v4,
            };
            std::net::SocketAddr::new(ip, sa.port())
        })
        .filter(|sa| ips.contains(&sa.ip()) || cidrs.iter().any(|c| c.contains(sa.ip())))
        .map(|sa| sa.to_string())
        .collect()
}

/// The host's interface addresses (loopback included).
fn interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

/// The configured node name, else `NODE_NAME`, else the host name.
pub fn node_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    if let Ok(n) = std::env::var("NODE_NAME")
        && !n.is_empty()
    {
        return n;
    }
    nix::unistd::gethostname().map_or_else(|_| "unknown".to_owned(), |h| h.to_string_lossy().into_owned())
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_on_this_node_are_local() {
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let cidrs = vec!["10.216.0.0/24".parse().unwrap()];
        let addresses = vec![
            Address::Ip("127.0.0.1:80".parse().unwrap()),
            Address::Ip("[::ffff:10.216.0.2]:81".parse().unwrap()),
            Address::Ip("[::1]:82".parse().unwrap()),
            Address::Ip("192.0.2.1:83".parse().unwrap()),
            Address::Host("db.local".into(), 84),
        ];
        assert_eq!(local_endpoints(&addresses, &ips, &cidrs), ["127.0.0.1:80", "10.216.0.2:81", "[::1]:82"]);
    }
}
