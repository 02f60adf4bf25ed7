//! `[[policies]]`: what governor enforces in the kernel. Parsed and checked
//! here (pure); `crate::policy` turns valid policies into kernel rules.
//!
//! ```toml
//! [[policies]]
//! name = "payments-connect-rate"
//! kind = "rate_limit"
//! destination = "10.20.0.0/16"
//! ports = "443"
//! rate_per_second = 200
//! burst = 20
//! ```

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::Cidr;

/// The most policies the kernel tables hold.
pub const MAX_POLICIES: usize = governor_common::POLICY_SLOTS as usize;

/// One policy as written in the file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Shown in metrics (`policy` label): letters, digits, `-`, `_`, `.`.
    pub name: String,
    pub kind: PolicyKind,
    /// Connects to this network are governed (IPv4 or IPv6; a bare address
    /// is a network of one). IPv4-mapped IPv6 destinations count as IPv4.
    /// Every kind but `bandwidth` needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Cidr>,
    /// Destination ports, `443` or `8000-8100`; all ports when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// Instead of `destination` and `ports`, for `rate_limit` and `block`:
    /// the policy governs connections arriving at local listeners on these
    /// ports (`443` or `8000-8100`): SYNs over the rate, or all of them for
    /// a block, are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_ports: Option<PortRange>,
    /// `rate_limit`: new connections per second, host-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
    /// `rate_limit`: connects let through at once after a quiet spell.
    /// Default: one second's worth (`rate_per_second`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `max_connections`: connections open at once, host-wide, counted
    /// from `connect()` until the socket is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `breaker`: how long a breaker stays open before probes are let
    /// through, seconds (default 5). Doubled each time it opens again soon
    /// after, up to `cooldown_max_seconds` (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_max_seconds: Option<u32>,
    /// `breaker`: connects let through while half-open (default 3); all
    /// must succeed to close it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    /// `bandwidth`: the cgroup whose sockets are policed, a path below the
    /// cgroup v2 mount (`kubepods.slice/...`) or an absolute path under it.
    /// Its processes and those of the cgroups below it share the limit.
    /// `block`, `rate_limit`, `max_connections` (outbound): only connects
    /// of processes in this cgroup or below it are governed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// `bandwidth`: bytes per second (payload and headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// `bandwidth`: bytes let through at once after a quiet spell. Default:
    /// a tenth of a second's worth, at least 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
    /// `bandwidth`: `egress` (default, what the cgroup sends) or `ingress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Count what the policy would deny, deny nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Every connect is refused.
    Block,
    /// A circuit breaker per upstream endpoint (ip:port) in the network:
    /// opened when the health engine judges the endpoint unhealthy.
    Breaker,
    /// New connections per second with a burst.
    RateLimit,
    /// Connections open at once.
    MaxConnections,
    /// Bytes per second of one cgroup's sockets, in one direction.
    Bandwidth,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Egress,
    Ingress,
}

impl Policy {
    /// `breaker`: the cool-down and its maximum, seconds, defaults applied.
    pub fn cooldowns(&self) -> (u32, u32) {
        (self.cooldown_seconds.unwrap_or(5), self.cooldown_max_seconds.unwrap_or(300))
    }

    /// `bandwidth`: the burst in bytes, default applied.
    pub fn burst(&self) -> u64 {
        self.burst_bytes.unwrap_or_else(|| (self.bytes_per_second.unwrap_or(0) / 10).max(64 * 1024))
    }

    /// `breaker`: probes while half-open, default applied.
    pub fn probe_count(&self) -> u32 {
        self.probes.unwrap_or(3)
    }
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Breaker => "breaker",
            Self::RateLimit => "rate_limit",
            Self::MaxConnections => "max_connections",
            Self::Bandwidth => "bandwidth",
        }
    }
}

/// `low..=high`, both at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub const ALL: Self = Self { low: 0, high: u16::MAX };
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{s}` is not a port (1 to 65535) or a range such as 8000-8100"))
        };
        let (low, high) = match s.split_once('-') {
            Some((l, h)) => (port(l)?, port(h)?),
            None => (port(s)?, port(s)?),
        };
        if low > high {
            return Err(format!("`{s}`: the range ends below its start"));
        }
        Ok(Self { low, high })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high { write!(f, "{}", self.low) } else { write!(f, "{}-{}", self.low, self.high) }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `ports = 443` and `ports = "443"` both work.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string().parse().map_err(de::Error::custom),
            Raw::Text(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_string().serialize(s)
    }
}

/// The policies of the etcd policy key: a TOML document of `[[policies]]`
/// tables and nothing else.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDocument {
    #[serde(default)]
    policies: Vec<Policy>,
}

/// Parses the value of the etcd policy key (checked with the file's
/// policies by `validate`).
pub fn parse_document(text: &str) -> Result<Vec<Policy>, String> {
    toml::from_str::<PolicyDocument>(text).map(|d| d.policies).map_err(|e| e.message().trim().to_owned())
}

/// What is wrong with a policy: the policy's name (or position), the field
/// and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub policy: String,
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy `{}`, field `{}`: {}", self.policy, self.field, self.message)
    }
}

/// Checks what the parser cannot: names, the fields each kind needs and
/// allows, the number of policies.
pub fn validate(policies: &[Policy]) -> Result<(), PolicyError> {
    if policies.len() > MAX_POLICIES {
        return Err(PolicyError {
            policy: policies[MAX_POLICIES].name.clone(),
            field: "name",
            message: format!(
                "at most {MAX_POLICIES} policies fit the kernel tables; this is number {}",
                MAX_POLICIES + 1
            ),
        });
    }
    for (i, p) in policies.iter().enumerate() {
        let name = p.name.as_str();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(PolicyError {
                policy: format!("#{}", i + 1),
                field: "name",
                message: format!("`{name}` must be non-empty and made of letters, digits, `-`, `_` and `.`"),
            });
        }
        if policies[..i].iter().any(|q| q.name == p.name) {
            return Err(PolicyError {
                policy: name.to_owned(),
                field: "name",
                message: "another policy has this name".to_owned(),
            });
        }
        Check(p).fields()?;
    }
    Ok(())
}

/// The field checks of one policy.
struct Check<'a>(&'a Policy);

impl Check<'_> {
    fn err(&self, field: &'static str, message: String) -> Result<(), PolicyError> {
        Err(PolicyError { policy: self.0.name.clone(), field, message })
    }

    fn needs(&self, field: &'static str, value: Option<u32>) -> Result<(), PolicyError> {
        match value {
            Some(0) => self.err(field, "must be at least 1".to_owned()),
            Some(_) => Ok(()),
            None => self.err(field, format!("a `{}` policy needs it", self.0.kind.as_str())),
        }
    }

    fn forbids(&self, field: &'static str, set: bool) -> Result<(), PolicyError> {
        if set { self.err(field, format!("does not apply to a `{}` policy", self.0.kind.as_str())) } else { Ok(()) }
    }

    fn fields(&self) -> Result<(), PolicyError> {
        let p = self.0;
        if p.kind == PolicyKind::Bandwidth {
            self.bandwidth()?;
            self.forbids("listener_ports", p.listener_ports.is_some())?;
        } else if p.listener_ports.is_some() {
            if !matches!(p.kind, PolicyKind::RateLimit | PolicyKind::Block | PolicyKind::MaxConnections) {
                return self.err(
                    "listener_ports",
                    format!(
                        "inbound policies are `rate_limit`, `max_connections` or `block`, not `{}`",
                        p.kind.as_str()
                    ),
                );
            }
            self.forbids("destination", p.destination.is_some())?;
            self.forbids("ports", p.ports.is_some())?;
            self.forbids("cgroup", p.cgroup.is_some())?;
        } else {
            if p.destination.is_none() {
                return self.err(
                    "destination",
                    format!("a `{}` policy needs it (or `listener_ports` for an inbound one)", p.kind.as_str()),
                );
            }
            // Outbound connect policies may be scoped to a cgroup.
            if p.listener_ports.is_some() || p.kind == PolicyKind::Breaker {
                self.forbids("cgroup", p.cgroup.is_some())?;
            } else {
                self.cgroup_path(false)?;
            }
            self.forbids("bytes_per_second", p.bytes_per_second.is_some())?;
            self.forbids("burst_bytes", p.burst_bytes.is_some())?;
            self.forbids("direction", p.direction.is_some())?;
        }
        if p.kind == PolicyKind::Breaker {
            self.breaker()?;
        } else {
            self.forbids("cooldown_seconds", p.cooldown_seconds.is_some())?;
            self.forbids("cooldown_max_seconds", p.cooldown_max_seconds.is_some())?;
            self.forbids("probes", p.probes.is_some())?;
        }
        if p.kind == PolicyKind::RateLimit {
            self.needs("rate_per_second", p.rate_per_second)?;
            if p.rate_per_second > Some(1_000_000_000) {
                return self.err("rate_per_second", "must be at most 1000000000".to_owned());
            }
            if p.burst.is_some() {
                self.needs("burst", p.burst)?;
            }
        } else {
            self.forbids("rate_per_second", p.rate_per_second.is_some())?;
            self.forbids("burst", p.burst.is_some())?;
        }
        if p.kind == PolicyKind::MaxConnections {
            self.needs("max_connections", p.max_connections)
        } else {
            self.forbids("max_connections", p.max_connections.is_some())
        }
    }

    fn bandwidth(&self) -> Result<(), PolicyError> {
        let p = self.0;
        self.forbids("destination", p.destination.is_some())?;
        self.forbids("ports", p.ports.is_some())?;
        self.cgroup_path(true)?;
        match p.bytes_per_second {
            None => return self.err("bytes_per_second", "a `bandwidth` policy needs it".to_owned()),
            Some(r) if !(1024..=100_000_000_000).contains(&r) => {
                return self.err("bytes_per_second", format!("{r} is out of range: expected 1024 to 100000000000"));
            }
            Some(_) => {}
        }
        if p.burst_bytes.is_some_and(|b| !(1500..=1_000_000_000).contains(&b)) {
            return self.err("burst_bytes", "must be between 1500 and 1000000000".to_owned());
        }
        Ok(())
    }

    /// `cgroup`: a path below the root, without `..`; `needed` for
    /// bandwidth policies.
    fn cgroup_path(&self, needed: bool) -> Result<(), PolicyError> {
        match &self.0.cgroup {
            None if needed => self.err("cgroup", format!("a `{}` policy needs it", self.0.kind.as_str())),
            Some(c) if c.trim_matches('/').is_empty() || c.split('/').any(|part| part == "..") => {
                self.err("cgroup", format!("`{c}` must name a cgroup below the root, without `..`"))
            }
            _ => Ok(()),
        }
    }

    fn breaker(&self) -> Result<(), PolicyError> {
        let p = self.0;
        for (field, value) in [
            ("cooldown_seconds", p.cooldown_seconds),
            ("cooldown_max_seconds", p.cooldown_max_seconds),
            ("probes", p.probes),
        ] {
            if value == Some(0) {
                return self.err(field, "must be at least 1".to_owned());
            }
        }
        if p.probes > Some(1000) {
            return self.err("probes", "must be at most 1000".to_owned());
        }
        let (base, max) = p.cooldowns();
        if max < base {
            return self.err("cooldown_max_seconds", format!("{max} is below cooldown_seconds ({base})"));
        }
        Ok(())
    }
}

/// A policy of `kind` to 10.0.0.0/8 with no other field set, for tests.
#[cfg(test)]
pub mod testing {
    use super::*;

    pub fn policy(name: &str, kind: PolicyKind) -> Policy {
        Policy {
            name: name.to_owned(),
            kind,
            destination: Some("10.0.0.0/8".parse().unwrap()),
            ports: None,
            rate_per_second: None,
            burst: None,
            max_connections: None,
            cooldown_seconds: None,
            cooldown_max_seconds: None,
            probes: None,
            listener_ports: None,
            cgroup: None,
            bytes_per_second: None,
            burst_bytes: None,
            direction: None,
            dry_run: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::policy, *};

    #[test]
    fn port_ranges() {
        assert_eq!("443".parse::<PortRange>(), Ok(PortRange { low: 443, high: 443 }));
        assert_eq!("8000-8100".parse::<PortRange>(), Ok(PortRange { low: 8000, high: 8100 }));
        assert!("0".parse::<PortRange>().is_err());
        assert!("9-8".parse::<PortRange>().unwrap_err().contains("ends below"));
        assert!("http".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
    }

    #[test]
    fn each_kind_needs_its_fields_and_refuses_the_others() {
        let rate = Policy { rate_per_second: Some(100), ..policy("r", PolicyKind::RateLimit) };
        assert_eq!(validate(std::slice::from_ref(&rate)), Ok(()));
        let e = validate(&[policy("r", PolicyKind::RateLimit)]).unwrap_err();
        assert_eq!((e.policy.as_str(), e.field), ("r", "rate_per_second"));
        let e = validate(&[Policy { burst: Some(0), ..rate.clone() }]).unwrap_err();
        assert_eq!((e.field, e.message.as_str()), ("burst", "must be at least 1"));
        let e = validate(&[Policy { max_connections: Some(3), ..rate.clone() }]).unwrap_err();
        assert_eq!(e.field, "max_connections");
        let e = validate(&[policy("c", PolicyKind::MaxConnections)]).unwrap_err();
        assert_eq!(e.field, "max_connections");
        let e = validate(&[Policy { rate_per_second: Some(1), ..policy("b", PolicyKind::Block) }]).unwrap_err();
        assert_eq!(e.to_string(), "policy `b`, field `rate_per_second`: does not apply to a `block` policy");
    }

    #[test]
    fn breakers_take_cooldowns_and_probes() {
        let b = policy("b", PolicyKind::Breaker);
        assert_eq!(validate(std::slice::from_ref(&b)), Ok(()));
        assert_eq!((b.cooldowns(), b.probe_count()), ((5, 300), 3));
        let e = validate(&[Policy { cooldown_seconds: Some(60), cooldown_max_seconds: Some(30), ..b.clone() }])
            .unwrap_err();
        assert_eq!(e.field, "cooldown_max_seconds");
        assert_eq!(validate(&[Policy { probes: Some(0), ..b.clone() }]).unwrap_err().field, "probes");
        let e = validate(&[Policy { probes: Some(2), ..policy("r", PolicyKind::Block) }]).unwrap_err();
        assert_eq!(e.to_string(), "policy `r`, field `probes`: does not apply to a `block` policy");
    }

    #[test]
    fn bandwidth_takes_a_cgroup_and_a_rate_and_no_destination() {
        let b = Policy {
            destination: None,
            cgroup: Some("pods/a".into()),
            bytes_per_second: Some(6_250_000),
            ..policy("bw", PolicyKind::Bandwidth)
        };
        assert_eq!(validate(std::slice::from_ref(&b)), Ok(()));
        assert_eq!(b.burst(), 625_000);
        assert_eq!(Policy { bytes_per_second: Some(100_000), ..b.clone() }.burst(), 65_536);
        let field = |p: Policy| validate(&[p]).unwrap_err().field;
        assert_eq!(field(Policy { destination: Some("10.0.0.0/8".parse().unwrap()), ..b.clone() }), "destination");
        assert_eq!(field(Policy { cgroup: None, ..b.clone() }), "cgroup");
        assert_eq!(field(Policy { cgroup: Some("a/../b".into()), ..b.clone() }), "cgroup");
        assert_eq!(field(Policy { bytes_per_second: Some(10), ..b.clone() }), "bytes_per_second");
        assert_eq!(field(Policy { destination: None, ..policy("r", PolicyKind::Block) }), "destination");
        let scoped = Policy { cgroup: Some("pods/a".into()), ..policy("s", PolicyKind::RateLimit) };
        assert_eq!(validate(&[Policy { rate_per_second: Some(5), ..scoped.clone() }]), Ok(()));
        assert_eq!(field(Policy { kind: PolicyKind::Breaker, rate_per_second: None, ..scoped.clone() }), "cgroup");
        assert_eq!(field(Policy { rate_per_second: Some(5), cgroup: Some("/".into()), ..scoped }), "cgroup");
        assert_eq!(
            field(Policy { direction: Some(Direction::Ingress), ..policy("r", PolicyKind::Block) }),
            "direction"
        );
    }

    #[test]
    fn inbound_policies_name_listener_ports_instead_of_a_destination() {
        let inbound = Policy {
            destination: None,
            listener_ports: Some("8080".parse().unwrap()),
            rate_per_second: Some(10),
            ..policy("in", PolicyKind::RateLimit)
        };
        assert_eq!(validate(std::slice::from_ref(&inbound)), Ok(()));
        let field = |p: Policy| validate(&[p]).unwrap_err().field;
        assert_eq!(
            field(Policy { destination: Some("10.0.0.0/8".parse().unwrap()), ..inbound.clone() }),
            "destination"
        );
        assert_eq!(field(Policy { ports: Some("1".parse().unwrap()), ..inbound.clone() }), "ports");
        let cap = Policy { rate_per_second: None, max_connections: Some(3), ..inbound.clone() };
        assert_eq!(validate(&[Policy { kind: PolicyKind::MaxConnections, ..cap.clone() }]), Ok(()));
        assert_eq!(field(Policy { kind: PolicyKind::Breaker, ..cap }), "listener_ports");
        let e = validate(&[Policy { listener_ports: None, ..inbound }]).unwrap_err();
        assert_eq!(e.field, "destination");
        assert!(e.message.contains("listener_ports"), "{}", e.message);
    }

    #[test]
    fn names_are_unique_and_plain() {
        let e = validate(&[policy("a", PolicyKind::Block), policy("a", PolicyKind::Block)]).unwrap_err();
        assert_eq!((e.policy.as_str(), e.field), ("a", "name"));
        let e = validate(&[policy("a b", PolicyKind::Block)]).unwrap_err();
        assert_eq!((e.policy.as_str(), e.field), ("#1", "name"));
        let many: Vec<Policy> = (0..=MAX_POLICIES).map(|i| policy(&format!("p{i}"), PolicyKind::Block)).collect();
        assert!(validate(&many).unwrap_err().message.contains("at most 64"));
    }
}
