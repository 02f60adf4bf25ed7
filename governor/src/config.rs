//! The configuration file (TOML). Every key, its default and its limits live
//! here; values are checked while the file is parsed, so every error names
//! the key and its line. Nothing in this module does I/O except `load`.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

pub(crate) mod policy;
mod registry;

pub use self::{
    policy::{
        Direction, MAX_POLICIES, Policy, PolicyError, PolicyKind, PortRange, parse_document,
        validate as validate_policies,
    },
    registry::{Cidr, Etcd, Registry, RegistrySource},
};

/// The whole file. Unknown keys are errors.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: Daemon,
    pub ebpf: Ebpf,
    pub metrics: Metrics,
    pub health: Health,
    pub attribution: Attribution,
    pub etcd: Etcd,
    pub registry: Registry,
    pub enforcement: Enforcement,
    pub alerting: Alerting,
    /// The service registries governor watches (none: it only observes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<RegistrySource>,
    /// What governor enforces in the kernel (none: it enforces nothing and
    /// attaches no admission programs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    /// Where `/metrics`, `/healthz`, `/readyz` and `/api/v1` are served.
    pub metrics_addr: SocketAddr,
    /// How often the kernel maps are read, in milliseconds.
    pub poll_interval_ms: Bounded<100, 60_000>,
    pub log_format: LogFormat,
}

impl Default for Daemon {
    fn default() -> Self {
        Self {
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9966)),
            poll_interval_ms: Bounded(1000),
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Ebpf {
    /// Size of the per-endpoint table in the kernel (LRU: the least recently
    /// used endpoint is evicted when it is full).
    pub endpoint_table_entries: Bounded<64, 1_048_576>,
    /// Size of the per-socket table in the kernel (LRU). It must hold every
    /// TCP socket of the host, both ends of local connections counted;
    /// closes of evicted sockets are counted as untracked.
    pub socket_table_entries: Bounded<1024, 4_194_304>,
    /// Count bytes and packets per connection (copied from the kernel's
    /// own per-socket counts; nothing runs per packet).
    pub count_flows: bool,
    /// Not used since flows live in the per-socket table; accepted so that
    /// older config files still load.
    pub flow_table_entries: Bounded<1024, 4_194_304>,
    /// How often the daemon sweeps the kernel's per-socket table: the
    /// kernel tells of connections that stay open (and of sockets in
    /// `CLOSE_WAIT`) at the first sweep they see, and copies every
    /// connection's byte counts (the endpoints' byte totals move in these
    /// steps). The connection and flow API sweep at each request, and a
    /// close is reported at once. `flow_sample_interval_ms` is its older
    /// name.
    #[serde(alias = "flow_sample_interval_ms")]
    pub sweep_interval_ms: Bounded<1000, 60_000>,
    /// Size of the event ring buffer in bytes: a power of two, at least one
    /// page (4096).
    pub ring_buffer_bytes: RingBufferBytes,
    /// How often the event ring buffer is drained, in milliseconds.
    pub event_drain_interval_ms: Bounded<10, 1000>,
    /// Not used since the programs became raw (now BTF) tracepoints, which
    /// need no tracefs; accepted so that older config files still load.
    pub tracefs: PathBuf,
    /// Where bpffs is (or gets) mounted.
    pub bpffs: PathBuf,
    /// Mount bpffs when it is missing.
    pub mount_missing: bool,
}

impl Default for Ebpf {
    fn default() -> Self {
        Self {
            endpoint_table_entries: Bounded(16_384),
            socket_table_entries: Bounded(65_536),
            count_flows: true,
            flow_table_entries: Bounded(65_536),
            sweep_interval_ms: Bounded(5000),
            ring_buffer_bytes: RingBufferBytes(4 << 20),
            event_drain_interval_ms: Bounded(100),
            tracefs: PathBuf::from("/sys/kernel/tracing"),
            bpffs: PathBuf::from("/sys/fs/bpf"),
            mount_missing: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Endpoint series per metric; further endpoints are summed under
    /// `endpoint="other"`.
    pub max_endpoint_series: Bounded<1, 100_000>,
    /// Endpoint series over all metrics; endpoints beyond it are summed
    /// under `endpoint="other"` and counted in
    /// `governor_metrics_series_dropped_total`.
    pub max_series_total: Bounded<1, 1_000_000>,
    /// Seconds an endpoint series may go without new counts before it is
    /// removed (0: never).
    pub series_ttl_seconds: Bounded<0, 604_800>,
    /// Report client-side ports (the host's `ip_local_port_range`) as
    /// `ip:ephemeral` instead of one series per port.
    pub collapse_ephemeral_ports: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            max_endpoint_series: Bounded(200),
            max_series_total: Bounded(1000),
            series_ttl_seconds: Bounded(600),
            collapse_ephemeral_ports: true,
        }
    }
}

/// Thresholds and windows of the health engine.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// Length of the sliding window for resets and retransmits, seconds.
    pub reset_window_seconds: Bounded<1, 3600>,
    /// Resets from one endpoint within the reset window that make it
    /// unhealthy at once.
    pub reset_threshold: Bounded<1, 1_000_000>,
    /// Length of the sliding window for connect failures, seconds.
    pub failure_window_seconds: Bounded<1, 3600>,
    /// Connect failures above this percentage of attempts within the
    /// failure window make the endpoint unhealthy ...
    pub failure_ratio_percent: Bounded<0, 100>,
    /// ... when there were at least this many attempts.
    pub failure_min_attempts: Bounded<1, 1_000_000>,
    /// A signal at this percentage of its threshold makes the endpoint
    /// suspect (100: never suspect).
    pub suspect_percent: Bounded<1, 100>,
    /// Retransmits within the reset window that make an endpoint suspect
    /// (0: retransmits never do).
    pub retransmit_threshold: Bounded<0, 100_000_000>,
    /// Length of one clean window, seconds.
    pub recovery_window_seconds: Bounded<1, 3600>,
    /// Clean windows in a row before a recovering endpoint is healthy.
    pub recovery_windows: Bounded<1, 1000>,
    /// A socket in `CLOSE_WAIT` longer than this marks its process leaking.
    pub leak_close_wait_seconds: Bounded<1, 86_400>,
    /// Endpoints the engine tracks at most (idle healthy ones go first).
    pub max_endpoints: Bounded<16, 1_000_000>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            reset_window_seconds: Bounded(5),
            reset_threshold: Bounded(10),
            failure_window_seconds: Bounded(10),
            failure_ratio_percent: Bounded(60),
            failure_min_attempts: Bounded(20),
            suspect_percent: Bounded(50),
            retransmit_threshold: Bounded(0),
            recovery_window_seconds: Bounded(5),
            recovery_windows: Bounded(3),
            leak_close_wait_seconds: Bounded(30),
            max_endpoints: Bounded(10_000),
        }
    }
}

impl Health {
    pub fn engine_config(&self) -> crate::health::HealthConfig {
        crate::health::HealthConfig {
            reset_window_seconds: self.reset_window_seconds.get().into(),
            reset_threshold: self.reset_threshold.get().into(),
            failure_window_seconds: self.failure_window_seconds.get().into(),
            failure_ratio: f64::from(self.failure_ratio_percent.get()) / 100.0,
            failure_min_attempts: self.failure_min_attempts.get().into(),
            suspect_fraction: f64::from(self.suspect_percent.get()) / 100.0,
            retransmit_threshold: self.retransmit_threshold.get().into(),
            recovery_window_seconds: self.recovery_window_seconds.get().into(),
            recovery_windows: self.recovery_windows.get(),
            max_endpoints: self.max_endpoints.get() as usize,
        }
    }
}

/// Where processes run: cgroups and Kubernetes pods.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Attribution {
    /// The cgroup v2 mount, to turn cgroup ids into paths.
    pub cgroup_root: PathBuf,
    /// The kubelet's pod log directory (`<namespace>_<pod>_<uid>` entries),
    /// for pod names; missing is fine.
    pub pod_log_dir: PathBuf,
    /// The host's `/proc`, read once at start-up for the listeners that
    /// were open before governor attached (their owners); a container
    /// without the host's process namespace mounts it elsewhere.
    pub proc_root: PathBuf,
}

impl Default for Attribution {
    fn default() -> Self {
        Self {
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            pod_log_dir: PathBuf::from("/var/log/pods"),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// How policies live in the kernel.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Enforcement {
    /// Keep policies in force while the daemon restarts (for upgrades): the
    /// enforcement programs and their maps are pinned under `pin_dir`, and
    /// the next daemon takes them over, counts and open connections
    /// included. Off: everything is detached when the daemon exits; pins an
    /// earlier pinned daemon left are reported at start (they hold until
    /// their lease ends; `governor unpin` removes them).
    pub pinned: bool,
    /// Where the pins live (on bpffs).
    pub pin_dir: PathBuf,
    /// Pinned mode: how long the kernel keeps enforcing after the daemon's
    /// last renewal (renewed every poll). A daemon that never comes back
    /// lets its rules lapse after this; long enough to cover a restart.
    pub lease_seconds: Bounded<5, 86_400>,
}

impl Default for Enforcement {
    fn default() -> Self {
        Self { pinned: false, pin_dir: PathBuf::from("/sys/fs/bpf/governor"), lease_seconds: Bounded(120) }
    }
}

/// Direct push of discrete actions to Alertmanager (off while the list is
/// empty).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Alerting {
    /// Alertmanager base URLs (`http://host:9093`); every one gets every
    /// alert. Plain HTTP: inside a cluster, or through a local proxy.
    pub alertmanagers: Vec<AlertmanagerUrl>,
    /// Seconds between two sends of an alert that still holds.
    pub resend_seconds: Bounded<1, 60>,
    /// Labels added to every alert governor posts (for example
    /// `{ namespace = "governor", cluster = "prod-eu" }`, for routes that
    /// match on them).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Default for Alerting {
    fn default() -> Self {
        Self { alertmanagers: Vec::new(), resend_seconds: Bounded(60), labels: std::collections::BTreeMap::new() }
    }
}

/// An Alertmanager's base URL: `http://host:port` with an optional path
/// prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AlertmanagerUrl(pub String);

impl<'de> Deserialize<'de> for AlertmanagerUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let url = String::deserialize(d)?;
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(serde::de::Error::custom(format!(
                "`{url}`: an Alertmanager URL is http://host:port (https is not supported: use a proxy on the node)"
            )));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(serde::de::Error::custom(format!("`{url}` names no host")));
        }
        Ok(Self(url.trim_end_matches('/').to_owned()))
    }
}

/// An integer in `MIN..=MAX`; anything else is rejected while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bounded<const MIN: u32, const MAX: u32>(pub u32);

impl<const MIN: u32, const MAX: u32> Bounded<MIN, MAX> {
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl<'de, const MIN: u32, const MAX: u32> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        u32::try_from(v)
            .ok()
            .filter(|v| (MIN..=MAX).contains(v))
            .map(Self)
            .ok_or_else(|| de::Error::custom(format!("{v} is out of range: expected {MIN} to {MAX}")))
    }
}

impl<const MIN: u32, const MAX: u32> Serialize for Bounded<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl Serialize for RingBufferBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<const MIN: u32, const MAX: u32> fmt::Display for Bounded<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Ring buffer size: the kernel wants a power of two and whole pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBufferBytes(pub u32);

impl RingBufferBytes {
    const MIN: u32 = 4096;
    const MAX: u32 = 1 << 30;
}

impl<'de> Deserialize<'de> for RingBufferBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        u32::try_from(v)
            .ok()
            .filter(|v| v.is_power_of_two() && (Self::MIN..=Self::MAX).contains(v))
            .map(Self)
            .ok_or_else(|| {
                de::Error::custom(format!("{v} is not a power of two between {} and {}", Self::MIN, Self::MAX))
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Parses the text of a config file. The error names the key and line.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text)
            .map_err(|e| ConfigError::Invalid { path: path.to_owned(), message: describe(&e, text) })?;
        registry::validate(&config.etcd, &config.registry, &config.registries).map_err(|(key, message)| {
            let message = match line_of(text, &key) {
                Some(line) => format!("line {line}, key `{key}`: {message}"),
                None => format!("key `{key}`: {message}"),
            };
            ConfigError::Invalid { path: path.to_owned(), message }
        })?;
        policy::validate(&config.policies).map_err(|e| {
            let message = match policy_line(text, &e) {
                Some(line) => format!("line {line}: {e}"),
                None => e.to_string(),
            };
            ConfigError::Invalid { path: path.to_owned(), message }
        })?;
        Ok(config)
    }

    /// `governor run --dry-run`: nothing is enforced or written to etcd.
    pub fn force_dry_run(&mut self) {
        self.registry.dry_run = true;
        for p in &mut self.policies {
            p.dry_run = true;
        }
    }

    /// The configuration as a complete TOML file, defaults included.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config always serializes")
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Self::parse(&shown, &text)
    }
}

/// One line: "line N, key `a.b`: what is wrong".
fn describe(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim().to_owned();
    let Some(span) = e.span() else { return message };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let key = key_at(text, span.start);
    match key {
        Some(key) => format!("line {line}, key `{key}`: {message}"),
        None => format!("line {line}: {message}"),
    }
}

/// The line where the dotted key `table.key` is set, if the file sets it
/// (the first one for arrays of tables).
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            line.trim_matches(|c| c == '[' || c == ']').trim().clone_into(&mut current);
        } else if current == table && line.split('=').next().is_some_and(|k| k.trim() == key) {
            return Some(i + 1);
        }
    }
    None
}

/// The line of a policy's field: the first line setting `field` after the
/// line that names the policy (or the name line itself).
fn policy_line(text: &str, e: &PolicyError) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let key = |line: &str| line.split('=').next().map_or(String::new(), |k| k.trim().to_owned());
    let value = |line: &str| line.split_once('=').map(|(_, v)| v.trim().trim_matches('"').to_owned());
    let named = lines.iter().position(|l| key(l) == "name" && value(l).as_deref() == Some(e.policy.as_str()))?;
    let start = lines[..named].iter().rposition(|l| l.trim() == "[[policies]]").unwrap_or(named);
    let end = lines[start + 1..].iter().position(|l| l.trim().starts_with('[')).map_or(lines.len(), |i| start + 1 + i);
    let at = (start..end).find(|i| key(lines[*i]) == e.field).unwrap_or(named);
    Some(at + 1)
}

/// The dotted key whose value (or name) starts at byte `at`: the table
/// header above it plus the key on its line.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = &text[..at.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = line.split('=').next().map(str::trim).filter(|k| !k.is_empty() && !k.starts_with('['))?;
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse("governor.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn policies_are_read_and_their_errors_name_the_policy_field_and_line() {
        let text = r#"
[[policies]]
name = "payments"
kind = "rate_limit"
destination = "10.20.0.0/16"
ports = "443"
rate_per_second = 200
burst = 20

[[policies]]
name = "legacy"
kind = "block"
destination = "fd00::/64"
ports = 8000
dry_run = true
"#;
        let c = Config::parse("x", text).unwrap();
        assert_eq!(c.policies.len(), 2);
        assert_eq!(c.policies[0].kind, PolicyKind::RateLimit);
        assert_eq!(c.policies[0].ports, Some(PortRange { low: 443, high: 443 }));
        assert_eq!((c.policies[0].rate_per_second, c.policies[0].burst), (Some(200), Some(20)));
        assert!(c.policies[1].dry_run);
        assert_eq!(Config::parse("x", &c.to_toml()).unwrap(), c);

        let bad = text.replace("burst = 20", "burst = 20\nmax_connections = 5");
        assert_eq!(
            err(&bad),
            "config file governor.toml: line 9: policy `payments`, field `max_connections`: does not apply to a \
             `rate_limit` policy"
        );
        let bad = text.replace("kind = \"block\"", "kind = \"max_connections\"");
        assert_eq!(
            err(&bad),
            "config file governor.toml: line 11: policy `legacy`, field `max_connections`: a `max_connections` \
             policy needs it"
        );
        assert!(err(&text.replace("\"443\"", "\"99999\"")).contains("line 6, key `policies.ports`"));
        assert!(err(&text.replace("block", "throttle")).contains("unknown variant `throttle`"));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("x", "").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.daemon.metrics_addr.to_string(), "127.0.0.1:9966");
        assert_eq!(c.ebpf.ring_buffer_bytes, RingBufferBytes(4 << 20));
        assert_eq!(c.health.reset_threshold.get(), 10);
        assert_eq!(c.metrics.max_endpoint_series.get(), 200);
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one assertion per key of the file")]
    fn every_key_is_read() {
        let c = Config::parse(
            "x",
            r#"
[daemon]
metrics_addr = "0.0.0.0:9100"
poll_interval_ms = 250
log_format = "json"

[ebpf]
endpoint_table_entries = 1024
socket_table_entries = 2048
count_flows = false
flow_table_entries = 4096
flow_sample_interval_ms = 2000
ring_buffer_bytes = 65536
event_drain_interval_ms = 50
tracefs = "/t"
bpffs = "/b"
mount_missing = false

[metrics]
max_endpoint_series = 5
max_series_total = 7
series_ttl_seconds = 0
collapse_ephemeral_ports = false

[health]
reset_window_seconds = 6
reset_threshold = 11
failure_window_seconds = 12
failure_ratio_percent = 70
failure_min_attempts = 21
suspect_percent = 40
retransmit_threshold = 100
recovery_window_seconds = 4
recovery_windows = 2
leak_close_wait_seconds = 31
max_endpoints = 500

[attribution]
cgroup_root = "/cg"
pod_log_dir = "/pods"
proc_root = "/host/proc"

[enforcement]
pinned = true
pin_dir = "/b/gov"
lease_seconds = 30

[alerting]
alertmanagers = ["http://10.0.0.9:9093/", "http://am:9093/prefix"]
resend_seconds = 15
labels = { namespace = "governor" }

[etcd]
endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
connect_timeout_ms = 500
request_timeout_ms = 700
username = "governor"
password_file = "/p"
ca_file = "/ca"
cert_file = "/c"
key_file = "/k"
prefix = "/gov/v2"
policy_key = "/gov/v2/config/policies"

[registry]
node = "node-1"
dry_run = true
kill_switch_key = "/stop"
window_ms = 200
remove_after_windows = 2
restore_after_windows = 9
min_samples = 3
max_ejection_percent = 34
quarantine_base_seconds = 10
quarantine_max_seconds = 100
local_cidrs = ["10.244.1.0/24", "fd00::/64"]

[[registries]]
name = "kratos"
prefix = "/microservices"
format = "kratos"

[[registries]]
name = "gozero"
prefix = "/gozero/"
format = "host_port"
"#,
        )
        .unwrap();
        let Config {
            daemon,
            ebpf,
            metrics,
            health,
            attribution,
            etcd,
            registry,
            enforcement,
            alerting,
            registries,
            policies,
        } = c;
        assert_eq!(
            alerting,
            Alerting {
                alertmanagers: vec![
                    AlertmanagerUrl("http://10.0.0.9:9093".into()),
                    AlertmanagerUrl("http://am:9093/prefix".into())
                ],
                resend_seconds: Bounded(15),
                labels: [("namespace".to_owned(), "governor".to_owned())].into(),
            }
        );
        assert_eq!(enforcement, Enforcement { pinned: true, pin_dir: "/b/gov".into(), lease_seconds: Bounded(30) });
        assert!(policies.is_empty(), "read in policies_are_read_and_their_errors_name_the_policy_field_and_line");
        assert_eq!(
            etcd,
            Etcd {
                endpoints: vec!["https://10.0.0.1:2379".into(), "https://10.0.0.2:2379".into()],
                connect_timeout_ms: Bounded(500),
                request_timeout_ms: Bounded(700),
                username: "governor".into(),
                password_file: Some("/p".into()),
                ca_file: Some("/ca".into()),
                cert_file: Some("/c".into()),
                key_file: Some("/k".into()),
                prefix: "/gov/v2".into(),
                policy_key: "/gov/v2/config/policies".into(),
            }
        );
        assert_eq!(
            registry,
            Registry {
                node: "node-1".into(),
                dry_run: true,
                kill_switch_key: "/stop".into(),
                window_ms: Bounded(200),
                remove_after_windows: Bounded(2),
                restore_after_windows: Bounded(9),
                min_samples: Bounded(3),
                max_ejection_percent: Bounded(34),
                quarantine_base_seconds: Bounded(10),
                quarantine_max_seconds: Bounded(100),
                local_cidrs: vec!["10.244.1.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()],
            }
        );
        assert_eq!(
            registries,
            vec![
                RegistrySource {
                    name: "kratos".into(),
                    prefix: "/microservices".into(),
                    format: crate::registry::format::Format::Kratos
                },
                RegistrySource {
                    name: "gozero".into(),
                    prefix: "/gozero/".into(),
                    format: crate::registry::format::Format::HostPort
                },
            ]
        );
        assert_eq!(
            health,
            Health {
                reset_window_seconds: Bounded(6),
                reset_threshold: Bounded(11),
                failure_window_seconds: Bounded(12),
                failure_ratio_percent: Bounded(70),
                failure_min_attempts: Bounded(21),
                suspect_percent: Bounded(40),
                retransmit_threshold: Bounded(100),
                recovery_window_seconds: Bounded(4),
                recovery_windows: Bounded(2),
                leak_close_wait_seconds: Bounded(31),
                max_endpoints: Bounded(500),
            }
        );
        assert_eq!(
            attribution,
            Attribution { cgroup_root: "/cg".into(), pod_log_dir: "/pods".into(), proc_root: "/host/proc".into() }
        );
        assert_eq!(
            daemon,
            Daemon {
                metrics_addr: "0.0.0.0:9100".parse().unwrap(),
                poll_interval_ms: Bounded(250),
                log_format: LogFormat::Json
            }
        );
        assert_eq!(
            ebpf,
            Ebpf {
                endpoint_table_entries: Bounded(1024),
                socket_table_entries: Bounded(2048),
                count_flows: false,
                flow_table_entries: Bounded(4096),
                sweep_interval_ms: Bounded(2000),
                ring_buffer_bytes: RingBufferBytes(65536),
                event_drain_interval_ms: Bounded(50),
                tracefs: "/t".into(),
                bpffs: "/b".into(),
                mount_missing: false,
            }
        );
        assert_eq!(
            metrics,
            Metrics {
                max_endpoint_series: Bounded(5),
                max_series_total: Bounded(7),
                series_ttl_seconds: Bounded(0),
                collapse_ephemeral_ports: false
            }
        );
    }

    #[test]
    fn cross_key_errors_name_key_and_line() {
        let e = err(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[registry]\nremove_after_windows = 4\nrestore_after_windows = 3\n",
        );
        assert!(e.contains("line 5, key `registry.restore_after_windows`: 3 must be more than"), "{e}");
        let e = err("[[registries]]\nname = \"a\"\nprefix = \"/m\"\nformat = \"kratos\"\n");
        assert!(e.contains("line 2, key `registries.name`") || e.contains("key `etcd.endpoints`"), "{e}");
        let e = err("[[registries]]\nname = \"a\"\nprefix = \"/m\"\nformat = \"yaml\"\n");
        assert!(e.contains("line 4, key `registries.format`"), "{e}");
        let e = err("[registry]\nlocal_cidrs = [\"10.0.0.0/40\"]\n");
        assert!(
            e.contains("line 2, key `registry.local_cidrs`: `10.0.0.0/40`: the prefix length must be 0 to 32"),
            "{e}"
        );
    }

    #[test]
    fn printed_config_parses_back_to_itself() {
        let c = Config::parse("x", "[metrics]\nmax_endpoint_series = 7\n").unwrap();
        let text = c.to_toml();
        assert!(text.contains("max_endpoint_series = 7"), "{text}");
        assert_eq!(Config::parse("y", &text).unwrap(), c);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = err("[daemon]\nmetrics_addr = \"127.0.0.1:1\"\npoll_intervall_ms = 5\n");
        assert!(
            e.starts_with(
                "config file governor.toml: line 3, key `daemon.poll_intervall_ms`: unknown field `poll_intervall_ms`"
            ),
            "{e}"
        );
    }

    #[test]
    fn unknown_table_is_named() {
        let e = err("[deamon]\nx = 1\n");
        assert!(e.contains("line 1") && e.contains("unknown field `deamon`"), "{e}");
    }

    #[test]
    fn bad_values_name_key_line_and_limit() {
        let e = err("[ebpf]\n\nring_buffer_bytes = 5000\n");
        assert_eq!(
            e,
            "config file governor.toml: line 3, key `ebpf.ring_buffer_bytes`: 5000 is not a power of two between 4096 and 1073741824"
        );
        let e = err("[daemon]\npoll_interval_ms = 0\n");
        assert_eq!(
            e,
            "config file governor.toml: line 2, key `daemon.poll_interval_ms`: 0 is out of range: expected 100 to 60000"
        );
        let e = err("[alerting]\nalertmanagers = [\"https://am:9093\"]\n");
        assert!(e.contains("line 2, key `alerting.alertmanagers`") && e.contains("https is not supported"), "{e}");
        let e = err("[alerting]\nresend_seconds = 61\n");
        assert!(e.contains("expected 1 to 60"), "{e}");
        let e = err("[daemon]\nmetrics_addr = \"localhost\"\n");
        assert!(e.contains("line 2, key `daemon.metrics_addr`"), "{e}");
        let e = err("[daemon]\nlog_format = \"xml\"\n");
        assert!(e.contains("line 2, key `daemon.log_format`") && e.contains("xml"), "{e}");
        let e = err("[metrics]\nmax_endpoint_series = -1\n");
        assert!(e.contains("key `metrics.max_endpoint_series`: -1 is out of range"), "{e}");
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let e = err("[daemon]\nmetrics_addr = \n");
        assert!(e.contains("line 2"), "{e}");
    }
}
