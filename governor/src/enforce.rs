//! The daemon's side of enforcement: puts policies in force
//! (`Probes::apply_policies`) and drives the circuit breakers
//! (`breaker.rs`) from the health engine into the kernel's `BREAKERS`
//! table. A thin edge: the decisions are in `policy.rs` and `breaker.rs`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use governor_common::{AF_INET, AF_INET6, BandwidthKey, BreakerEntry, EndpointKey};
use tracing::{info, warn};

use crate::{
    breaker::{Action, Breaker, BreakerConfig, Reading},
    config::{Policy, PolicyKind, PortRange},
    ebpf::{BreakerTable, Probes},
    health::State,
    host,
    http::{self, AppState},
    policy::InForce,
};

/// Breakers kept at most; endpoints beyond are not governed (logged).
const MAX_BREAKERS: usize = 4096;

/// A breaker that is not closed, for alerts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenBreaker {
    pub endpoint: String,
    pub policy: String,
    /// `open` or `half_open`.
    pub state: &'static str,
    pub cooldown_seconds: u64,
}

/// One breaker policy: which endpoints it governs and how.
struct BreakerPolicy {
    policy: Policy,
    config: BreakerConfig,
}

impl BreakerPolicy {
    fn governs(&self, addr: SocketAddr) -> bool {
        let ports = self.policy.ports.unwrap_or(PortRange::ALL);
        self.policy.destination.is_some_and(|d| d.contains(addr.ip()))
            && (ports.low..=ports.high).contains(&addr.port())
    }
}

/// The policies in force, where the admission programs attach, and the
/// breakers of the endpoints breaker policies govern.
pub struct Enforcement {
    in_force: Vec<InForce>,
    cgroup: Option<PathBuf>,
    table: BreakerTable,
    policies: Vec<BreakerPolicy>,
    /// By endpoint as the health engine names it, with the policy's name.
    breakers: HashMap<String, (Breaker, String)>,
}

impl Enforcement {
    /// Breakers left open or half-open in the table (a restart in pinned
    /// mode) are closed: this daemon judges the endpoints afresh.
    pub fn new(mut table: BreakerTable) -> Self {
        table.clear();
        Self { in_force: Vec::new(), cgroup: None, table, policies: Vec::new(), breakers: HashMap::new() }
    }

    /// Pinned mode, at start: the state entries the policies of the
    /// previous daemon used (`owners`, from the pinned maps), so that
    /// `policies` keep their buckets and open counts.
    pub fn recover(&mut self, owners: &[u64], policies: &[Policy]) {
        self.in_force = crate::policy::recovered(owners, policies);
        for p in self.in_force.iter().filter(|p| !p.name.is_empty()) {
            info!(policy = %p.name, entry = p.entry, "policy state taken over from the previous daemon");
        }
    }

    /// Puts validated `policies` in force at once; on error the policies in
    /// force stay.
    pub fn apply(&mut self, probes: &mut Probes, policies: &[Policy], state: &AppState) -> anyhow::Result<()> {
        if policies.is_empty() && self.in_force.is_empty() {
            return Ok(());
        }
        let mut metrics = state.metrics.lock().expect("metrics lock poisoned");
        // Decisions made so far go to the policies that made them.
        if let Ok(totals) = probes.policy_decisions() {
            metrics.policy_decisions(&totals);
        }
        let open = probes.policy_open().context("reading the policies' open connections")?;
        let mut compiled =
            crate::policy::compile(policies, &self.in_force, |e| open.get(e as usize).is_some_and(|n| *n > 0))
                .map_err(anyhow::Error::msg)?;
        let cgroup = if let Some(cgroup) = &self.cgroup {
            cgroup.clone()
        } else {
            let mounts = host::read_mounts().unwrap_or_default();
            host::cgroup2_root(&mounts)
                .context("policies need cgroup v2 (their programs attach to its cgroups), and it is not mounted")?
                .to_path_buf()
        };
        // Every cgroup must exist before anything changes.
        let bandwidth = compiled
            .bandwidth
            .iter()
            .map(|b| {
                let (path, id) = cgroup_of(&cgroup, &b.cgroup)?;
                Ok((path, BandwidthKey { cgroup_id: id, direction: b.direction, pad: 0 }, b.rule))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (rule, scope) in compiled.rules.iter_mut().zip(&compiled.rule_cgroups) {
            if let Some(scope) = scope {
                let (path, id) = cgroup_of(&cgroup, scope)?;
                rule.cgroup_id = id;
                rule.cgroup_level =
                    u32::try_from(path.strip_prefix(&cgroup).map_or(0, |p| p.components().count())).unwrap_or(u32::MAX);
            }
        }
        probes.apply_policies(&compiled, &cgroup)?;
        probes.apply_bandwidth(&bandwidth)?;
        metrics.programs_attached.set(i64::try_from(probes.running()).unwrap_or(i64::MAX));
        self.cgroup = Some(cgroup);
        metrics.set_policies(&compiled.policies);
        for p in &compiled.policies {
            info!(policy = %p.name, kind = p.kind.as_str(), "policy in force");
        }
        self.in_force = compiled.policies;
        self.policies = policies
            .iter()
            .filter(|p| p.kind == PolicyKind::Breaker)
            .map(|p| {
                let (base, max) = p.cooldowns();
                BreakerPolicy {
                    policy: p.clone(),
                    config: BreakerConfig {
                        cooldown_ms: u64::from(base) * 1000,
                        cooldown_max_ms: u64::from(max) * 1000,
                        probes: u64::from(p.probe_count()),
                    },
                }
            })
            .collect();
        // Breakers whose policy is gone (or no longer covers them) close.
        let gone: Vec<String> = self
            .breakers
            .iter()
            .filter(|(endpoint, (_, name))| {
                let addr = endpoint.parse::<SocketAddr>().ok();
                !self.policies.iter().any(|p| p.policy.name == *name && addr.is_some_and(|a| p.governs(a)))
            })
            .map(|(endpoint, _)| endpoint.clone())
            .collect();
        for endpoint in gone {
            self.close(&endpoint);
            metrics.set_breaker(&endpoint, None);
        }
        Ok(())
    }

    /// One reading: every endpoint a breaker policy governs takes a step
    /// with the health engine's verdict and the reading's connect outcomes.
    pub fn step_breakers(&mut self, state: &AppState) {
        if self.policies.is_empty() {
            return;
        }
        let now = http::now();
        let now_ms = now.ns / 1_000_000;
        let monitor = state.monitor.lock().expect("monitor lock poisoned");
        let mut readings: HashMap<String, (Reading, usize)> = HashMap::new();
        for view in monitor.engine.endpoints(now.secs) {
            let Ok(addr) = view.endpoint.parse::<SocketAddr>() else { continue };
            let Some(policy) = self.policies.iter().position(|p| p.governs(addr)) else { continue };
            let sample = monitor.last_samples.get(view.endpoint).copied().unwrap_or_default();
            let reading = Reading {
                unhealthy: view.state == State::Unhealthy,
                succeeded: sample.connect_attempts.saturating_sub(sample.connect_failures),
                failed: sample.connect_failures + sample.resets,
            };
            readings.insert(view.endpoint.clone(), (reading, policy));
        }
        drop(monitor);
        // Breakers of endpoints the engine no longer tracks step too, with
        // nothing seen.
        for (endpoint, (_, name)) in &self.breakers {
            if !readings.contains_key(endpoint)
                && let Some(policy) = self.policies.iter().position(|p| p.policy.name == *name)
            {
                readings.insert(endpoint.clone(), (Reading::default(), policy));
            }
        }
        let mut metrics = state.metrics.lock().expect("metrics lock poisoned");
        for (endpoint, (reading, policy)) in readings {
            let p = &self.policies[policy];
            if !self.breakers.contains_key(&endpoint) {
                if !(reading.unhealthy && reading.failed > 0) {
                    continue;
                }
                if self.breakers.len() >= MAX_BREAKERS {
                    warn!(%endpoint, "too many circuit breakers: this endpoint is not governed");
                    continue;
                }
            }
            let (breaker, _) =
                self.breakers.entry(endpoint.clone()).or_insert_with(|| (Breaker::default(), p.policy.name.clone()));
            let action = breaker.step(now_ms, reading, &p.config);
            let (current, cooldown_ms, idle) = (breaker.state, breaker.cooldown_ms, breaker.is_idle(now_ms, &p.config));
            if let Some(action) = action {
                info!(%endpoint, policy = %p.policy.name, state = current.as_str(), cooldown_seconds = cooldown_ms / 1000, "circuit breaker");
                self.write(&endpoint, action);
            }
            if idle {
                self.breakers.remove(&endpoint);
                metrics.set_breaker(&endpoint, None);
            } else {
                metrics.set_breaker(&endpoint, Some((current.as_str(), cooldown_ms)));
            }
        }
    }

    /// The breakers that are open or half-open, by endpoint.
    pub fn open_breakers(&self) -> Vec<OpenBreaker> {
        let mut open: Vec<OpenBreaker> = self
            .breakers
            .iter()
            .filter(|(_, (b, _))| !matches!(b.state, crate::breaker::State::Closed))
            .map(|(endpoint, (b, policy))| OpenBreaker {
                endpoint: endpoint.clone(),
                policy: policy.clone(),
                state: b.state.as_str(),
                cooldown_seconds: b.cooldown_ms / 1000,
            })
            .collect();
        open.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        open
    }

    fn close(&mut self, endpoint: &str) {
        self.breakers.remove(endpoint);
        self.write(endpoint, Action::Close);
    }

    fn write(&mut self, endpoint: &str, action: Action) {
        let Some(key) = endpoint.parse::<SocketAddr>().ok().map(key) else { return };
        let result = match action {
            Action::Open => self.table.set(key, BreakerEntry { state: BreakerEntry::OPEN, ..BreakerEntry::default() }),
            Action::HalfOpen(probes) => {
                self.table.set(key, BreakerEntry { state: BreakerEntry::HALF_OPEN, probes, ..BreakerEntry::default() })
            }
            Action::Close => self.table.remove(key),
        };
        if let Err(e) = result {
            warn!(%endpoint, error = %e, "writing the circuit breaker into the kernel failed");
        }
    }
}

/// A policy's cgroup (below the cgroup v2 mount `root`, or an absolute path
/// under it): its path and id (the inode number of its directory).
fn cgroup_of(root: &Path, cgroup: &str) -> anyhow::Result<(PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let path = if Path::new(cgroup).starts_with(root) {
        PathBuf::from(cgroup)
    } else {
        root.join(cgroup.trim_start_matches('/'))
    };
    let meta = std::fs::metadata(&path).with_context(|| format!("cgroup {} of a bandwidth policy", path.display()))?;
    anyhow::ensure!(meta.is_dir(), "cgroup {} of a bandwidth policy is not a directory", path.display());
    Ok((path, meta.ino()))
}

/// The kernel's key for an endpoint: IPv4 (and IPv4-mapped IPv6, which
/// the connect programs judge as IPv4) in the first four bytes.
fn key(addr: SocketAddr) -> EndpointKey {
    let (family, bytes) = match addr.ip() {
        IpAddr::V4(v4) => (AF_INET, v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (AF_INET, v4.octets()),
            None => return EndpointKey { addr: v6.octets(), port: addr.port(), family: AF_INET6, pad: 0 },
        },
    };
    let mut out = [0; 16];
    out[..4].copy_from_slice(&bytes);
    EndpointKey { addr: out, port: addr.port(), family, pad: 0 }
}
