//! The `[etcd]`, `[registry]` and `[[registries]]` sections: where etcd is,
//! how governor takes unhealthy local instances out of the service
//! registries kept in it, and which registries those are.

use std::{fmt, net::IpAddr, path::PathBuf, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::Bounded;
use crate::registry::format::Format;

/// The etcd cluster. No endpoints: the registry part is off.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Etcd {
    /// Client URLs, for example `["https://10.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Connecting to etcd gives up after this long, milliseconds.
    pub connect_timeout_ms: Bounded<100, 60_000>,
    /// Every request gives up after this long, milliseconds.
    pub request_timeout_ms: Bounded<100, 60_000>,
    /// User for etcd's authentication (empty: none).
    pub username: String,
    /// File holding the password (one line; kept out of the config file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the servers' certificates: turns
    /// TLS on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// governor's own keys live under this prefix (`budget/`,
    /// `quarantine/`, `config/`).
    pub prefix: String,
    /// An etcd key holding more policies (`[[policies]]` tables, TOML, as
    /// in this file), watched: a change is validated with the file's
    /// policies and put in force at once. Empty: none.
    pub policy_key: String,
}

impl Default for Etcd {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            connect_timeout_ms: Bounded(3000),
            request_timeout_ms: Bounded(3000),
            username: String::new(),
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            prefix: "/governor/v1".to_owned(),
            policy_key: String::new(),
        }
    }
}

impl Etcd {
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// `prefix` without a trailing slash.
    pub fn prefix(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }
}

/// When and how far governor acts on the registries.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Registry {
    /// This node's name in quarantine and budget records. Empty: the
    /// `NODE_NAME` environment variable (set by the `DaemonSet`), else the
    /// host name.
    pub node: String,
    /// Log and count what would be done; never write to etcd.
    pub dry_run: bool,
    /// While this key exists with a value other than `off`, `0` or
    /// `false`, governor takes nothing out and puts nothing back. Empty:
    /// `<etcd.prefix>/config/kill-switch`.
    pub kill_switch_key: String,
    /// Length of one judgement window, milliseconds.
    pub window_ms: Bounded<100, 60_000>,
    /// Consecutive unhealthy windows before an instance is taken out.
    pub remove_after_windows: Bounded<1, 1000>,
    /// Consecutive healthy windows before it is put back (more than
    /// `remove_after_windows`).
    pub restore_after_windows: Bounded<2, 100_000>,
    /// Resets plus connect attempts an unhealthy endpoint must have seen in
    /// its windows before governor acts on it.
    pub min_samples: Bounded<1, 1_000_000>,
    /// Most of a service's instances that may be out at once, percent of
    /// its registered plus quarantined instances; the last instance is
    /// never taken out.
    pub max_ejection_percent: Bounded<0, 100>,
    /// First quarantine, seconds; each further ejection of the same
    /// instance doubles it ...
    pub quarantine_base_seconds: Bounded<1, 86_400>,
    /// ... up to this.
    pub quarantine_max_seconds: Bounded<1, 604_800>,
    /// Besides the host's interface addresses, instances with an address in
    /// these networks are local to this node (for example the node's pod
    /// CIDR).
    pub local_cidrs: Vec<Cidr>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            node: String::new(),
            dry_run: false,
            kill_switch_key: String::new(),
            window_ms: Bounded(1000),
            remove_after_windows: Bounded(1),
            restore_after_windows: Bounded(5),
            min_samples: Bounded(10),
            max_ejection_percent: Bounded(50),
            quarantine_base_seconds: Bounded(30),
            quarantine_max_seconds: Bounded(600),
            local_cidrs: Vec::new(),
        }
    }
}

/// One service registry in etcd.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistrySource {
    /// Shown in metrics (`registry` label) and records.
    pub name: String,
    /// Instances are `<prefix>/<service>/<instance id>`.
    pub prefix: String,
    /// `kratos` (JSON with an `endpoints` list), `host_port` (go-zero) or
    /// `naming` (etcd's `{"Addr": ...}`).
    pub format: Format,
}

/// An IP network, `10.244.1.0/24` or `fd00::/64`; a bare address is a
/// network of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.bits)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = s.split_once('/').map_or((s, None), |(a, b)| (a, Some(b)));
        let addr: IpAddr = addr.parse().map_err(|_| format!("`{s}` is not an IP network such as 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, bits })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_string().serialize(s)
    }
}

/// Checks across keys that the parser cannot: returns the dotted key at
/// fault and what is wrong.
pub fn validate(etcd: &Etcd, registry: &Registry, sources: &[RegistrySource]) -> Result<(), (String, String)> {
    if registry.restore_after_windows.get() <= registry.remove_after_windows.get() {
        return Err((
            "registry.restore_after_windows".to_owned(),
            format!(
                "{} must be more than registry.remove_after_windows ({})",
                registry.restore_after_windows, registry.remove_after_windows
            ),
        ));
    }
    if registry.quarantine_max_seconds.get() < registry.quarantine_base_seconds.get() {
        return Err((
            "registry.quarantine_max_seconds".to_owned(),
            format!(
                "{} is less than registry.quarantine_base_seconds ({})",
                registry.quarantine_max_seconds, registry.quarantine_base_seconds
            ),
        ));
    }
    if (etcd.cert_file.is_some() != etcd.key_file.is_some()) || (etcd.cert_file.is_some() && etcd.ca_file.is_none()) {
        return Err((
            "etcd.cert_file".to_owned(),
            "a client certificate needs etcd.key_file and etcd.ca_file as well".to_owned(),
        ));
    }
    if !etcd.prefix.starts_with('/') {
        return Err(("etcd.prefix".to_owned(), format!("`{}` must start with /", etcd.prefix)));
    }
    for (i, s) in sources.iter().enumerate() {
        if s.name.is_empty() {
            return Err(("registries.name".to_owned(), format!("registry {} has an empty name", i + 1)));
        }
        if sources[..i].iter().any(|o| o.name == s.name) {
            return Err(("registries.name".to_owned(), format!("`{}` names two registries", s.name)));
        }
        if s.prefix.trim_matches('/').is_empty() {
            return Err(("registries.prefix".to_owned(), format!("registry `{}` needs a key prefix", s.name)));
        }
        if s.prefix.starts_with(etcd.prefix()) || etcd.prefix.starts_with(s.prefix.trim_end_matches('/')) {
            return Err((
                "registries.prefix".to_owned(),
                format!("registry `{}` overlaps governor's own prefix {}", s.name, etcd.prefix),
            ));
        }
    }
    if !etcd.policy_key.is_empty() && !etcd.enabled() {
        return Err(("etcd.policy_key".to_owned(), "a policy key needs etcd.endpoints".to_owned()));
    }
    if !sources.is_empty() && !etcd.enabled() {
        return Err(("etcd.endpoints".to_owned(), "registries are configured but etcd.endpoints is empty".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.244.1.0/24".parse().unwrap();
        assert!(net.contains("10.244.1.7".parse().unwrap()));
        assert!(!net.contains("10.244.2.7".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one: Cidr = "fd00::1".parse().unwrap();
        assert_eq!(one.to_string(), "fd00::1/128");
        assert!(one.contains("fd00::1".parse().unwrap()));
        assert!(!one.contains("fd00::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: Cidr = "fd00:216::/64".parse().unwrap();
        assert!(v6.contains("fd00:216::2".parse().unwrap()));
        assert!(!v6.contains("fd00:217::2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
    }

    fn source(name: &str, prefix: &str) -> RegistrySource {
        RegistrySource { name: name.to_owned(), prefix: prefix.to_owned(), format: Format::Kratos }
    }

    #[test]
    fn cross_key_checks_name_the_key() {
        let etcd = Etcd { endpoints: vec!["http://127.0.0.1:2379".into()], ..Etcd::default() };
        let ok = Registry::default();
        assert_eq!(validate(&etcd, &ok, &[source("a", "/microservices")]), Ok(()));
        let bad = Registry { restore_after_windows: Bounded(2), remove_after_windows: Bounded(2), ..ok.clone() };
        assert_eq!(validate(&etcd, &bad, &[]).unwrap_err().0, "registry.restore_after_windows");
        let bad = Registry { quarantine_base_seconds: Bounded(60), quarantine_max_seconds: Bounded(30), ..ok.clone() };
        assert_eq!(validate(&etcd, &bad, &[]).unwrap_err().0, "registry.quarantine_max_seconds");
        let two = [source("a", "/x"), source("a", "/y")];
        assert!(validate(&etcd, &ok, &two).unwrap_err().1.contains("`a` names two registries"));
        assert_eq!(validate(&etcd, &ok, &[source("a", "/")]).unwrap_err().0, "registries.prefix");
        assert!(validate(&etcd, &ok, &[source("a", "/governor/v1/x")]).unwrap_err().1.contains("overlaps"));
        let off = Etcd::default();
        assert_eq!(validate(&off, &ok, &[source("a", "/m")]).unwrap_err().0, "etcd.endpoints");
        let half_tls = Etcd { cert_file: Some("/c".into()), ..etcd.clone() };
        assert_eq!(validate(&half_tls, &ok, &[]).unwrap_err().0, "etcd.cert_file");
    }
}
