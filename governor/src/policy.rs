//! Policies from the config turned into the kernel's admission rules
//! (`governor_common::PolicyRule`), one per slot. Pure: no maps here.

use std::net::IpAddr;

use governor_common::{AF_INET, AF_INET6, BandwidthKey, BandwidthRule, PolicyRule, policy_kind};

use crate::config::{Direction, Policy, PolicyKind, PortRange};

/// One policy in force: its name, kind and kernel state entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InForce {
    pub name: String,
    pub kind: PolicyKind,
    /// `PolicyRule::state`.
    pub entry: u32,
}

/// One bandwidth policy: the cgroup as written, and its kernel rule
/// (without the cgroup id, which only the running host knows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bandwidth {
    pub cgroup: String,
    pub direction: u32,
    pub rule: BandwidthRule,
}

/// The connect rules in slot order, the bandwidth rules, and every policy
/// with its state entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub rules: Vec<PolicyRule>,
    /// For each rule, the cgroup it is scoped to, as written (the kernel id
    /// is filled in where the cgroups are).
    pub rule_cgroups: Vec<Option<String>>,
    pub bandwidth: Vec<Bandwidth>,
    pub policies: Vec<InForce>,
    /// Entries this set uses for the first time: their buckets and counts
    /// start from zero.
    pub fresh: Vec<u32>,
}

/// The `reason` label of a policy's decisions.
pub fn reason(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Block => "block",
        PolicyKind::Breaker => "breaker",
        PolicyKind::RateLimit => "rate",
        PolicyKind::MaxConnections => "concurrency",
        PolicyKind::Bandwidth => "bandwidth",
    }
}

/// Orders the policies as the kernel checks them: blocks first, then
/// breakers, then rate limits, then concurrency caps (a connect refused by an earlier rule
/// takes no token and no place), each kind in file order.
///
/// Each policy gets a kernel state entry (bucket, open count, decision
/// counters). A policy that keeps its name and kind keeps its entry from
/// `previous`, so a reload loses no state. A new one takes an entry that
/// `previous` did not use and that no socket still holds a place under
/// (`busy`): sockets admitted under a removed cap give their places back
/// to its old entry when they close.
pub fn compile(policies: &[Policy], previous: &[InForce], busy: impl Fn(u32) -> bool) -> Result<Compiled, String> {
    let mut ordered: Vec<&Policy> = policies.iter().collect();
    ordered.sort_by_key(|p| p.kind);
    let kept = |p: &Policy| previous.iter().find(|q| q.name == p.name && q.kind == p.kind).map(|q| q.entry);
    let mut used: Vec<u32> = ordered.iter().filter_map(|p| kept(p)).collect();
    let mut compiled = Compiled::default();
    for p in ordered {
        let entry = if let Some(entry) = kept(p) {
            entry
        } else {
            let free = (0..governor_common::POLICY_SLOTS)
                .find(|e| !used.contains(e) && !previous.iter().any(|q| q.entry == *e) && !busy(*e))
                .ok_or_else(|| {
                    format!(
                        "no kernel entry is free for policy `{}`: entries of removed policies are reused once their \
                         sockets are closed",
                        p.name
                    )
                })?;
            used.push(free);
            compiled.fresh.push(free);
            free
        };
        if p.kind == PolicyKind::Bandwidth {
            compiled.bandwidth.push(bandwidth(p, entry));
        } else {
            compiled.rules.push(PolicyRule { state: entry, ..rule(p) });
            compiled.rule_cgroups.push(p.cgroup.clone());
        }
        compiled.policies.push(InForce { name: p.name.clone(), kind: p.kind, entry });
    }
    Ok(compiled)
}

/// The mark a policy leaves on its state entry (`POLICY_OWNERS`): FNV-1a
/// of its kind and name, never 0. Stable across builds, so a daemon of
/// another version recognises the entries after a restart in pinned mode.
pub fn owner(name: &str, kind: PolicyKind) -> u64 {
    let hash = kind
        .as_str()
        .bytes()
        .chain([0])
        .chain(name.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    hash.max(1)
}

/// The policies in force before a restart in pinned mode, from the owner
/// marks of the state entries: a policy of `policies` whose mark is on an
/// entry keeps it (and its bucket, open count and counters). An entry
/// marked by a policy that is gone is held back for this one compile, as a
/// removed policy's entry is on a reload.
pub fn recovered(owners: &[u64], policies: &[Policy]) -> Vec<InForce> {
    owners
        .iter()
        .zip(0..)
        .filter(|(mark, _)| **mark != 0)
        .map(|(mark, entry)| {
            policies.iter().find(|p| owner(&p.name, p.kind) == *mark).map_or(
                // An empty name matches no policy: validation requires one.
                InForce { name: String::new(), kind: PolicyKind::Block, entry },
                |p| InForce { name: p.name.clone(), kind: p.kind, entry },
            )
        })
        .collect()
}

/// A bandwidth policy as a kernel rule. The policy must have passed
/// validation.
pub fn bandwidth(p: &Policy, entry: u32) -> Bandwidth {
    let rate = p.bytes_per_second.unwrap_or(u64::MAX).max(1);
    let burst = u128::from(p.burst());
    Bandwidth {
        cgroup: p.cgroup.clone().unwrap_or_default(),
        direction: match p.direction.unwrap_or_default() {
            Direction::Egress => BandwidthKey::EGRESS,
            Direction::Ingress => BandwidthKey::INGRESS,
        },
        rule: BandwidthRule {
            bytes_per_second: rate,
            tolerance_ns: u64::try_from(burst * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX),
            tat_ns: 0,
            state: entry,
            flags: if p.dry_run { u32::from(PolicyRule::DRY_RUN) } else { 0 },
        },
    }
}

/// One connect policy as a kernel rule. The policy must have passed
/// validation (connect kinds have a destination).
pub fn rule(p: &Policy) -> PolicyRule {
    let destination = p.destination.unwrap_or_else(|| "0.0.0.0/0".parse().expect("a network"));
    let (family, bytes, width) = match destination.addr() {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            (AF_INET, b, 32)
        }
        IpAddr::V6(a) => (AF_INET6, a.octets(), 128),
    };
    let mask = mask_bytes(destination.bits().min(width));
    let net: [u8; 16] = std::array::from_fn(|i| bytes[i] & mask[i]);
    if let Some(ports) = p.listener_ports {
        let mut rule = PolicyRule {
            port_low: ports.low,
            port_high: ports.high,
            flags: PolicyRule::INBOUND | if p.dry_run { PolicyRule::DRY_RUN } else { 0 },
            ..PolicyRule::default()
        };
        rate_and_kind(&mut rule, p);
        return rule;
    }
    let ports = p.ports.unwrap_or(PortRange::ALL);
    let mut rule = PolicyRule {
        net: words(net),
        mask: words(mask),
        family,
        port_low: ports.low,
        port_high: ports.high,
        flags: if p.dry_run { PolicyRule::DRY_RUN } else { 0 },
        ..PolicyRule::default()
    };
    rate_and_kind(&mut rule, p);
    rule
}

/// The kind and its parameters.
fn rate_and_kind(rule: &mut PolicyRule, p: &Policy) {
    match p.kind {
        PolicyKind::Block => rule.kind = policy_kind::BLOCK,
        PolicyKind::Breaker => rule.kind = policy_kind::BREAKER,
        PolicyKind::RateLimit => {
            let rate = u64::from(p.rate_per_second.unwrap_or(1).max(1));
            let burst = u64::from(p.burst.unwrap_or(u32::try_from(rate).unwrap_or(u32::MAX)).max(1));
            rule.kind = policy_kind::RATE;
            rule.interval_ns = 1_000_000_000 / rate;
            rule.tolerance_ns = (burst - 1) * rule.interval_ns;
        }
        PolicyKind::MaxConnections => {
            rule.kind = policy_kind::CONCURRENCY;
            rule.max_connections = u64::from(p.max_connections.unwrap_or(1));
        }
        // Not a connect rule (see `bandwidth`).
        PolicyKind::Bandwidth => {}
    }
}

/// The first `bits` bits set, in network order.
fn mask_bytes(bits: u8) -> [u8; 16] {
    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
    mask.to_be_bytes()
}

/// Sixteen address bytes as the kernel compares them: two native-endian
/// words of the bytes as they are in memory.
fn words(b: [u8; 16]) -> [u64; 2] {
    let (first, second) = b.split_at(8);
    [
        u64::from_ne_bytes(first.try_into().expect("eight bytes")),
        u64::from_ne_bytes(second.try_into().expect("eight bytes")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, kind: PolicyKind, destination: &str) -> Policy {
        Policy {
            destination: Some(destination.parse().unwrap()),
            rate_per_second: Some(100),
            burst: Some(10),
            max_connections: Some(20),
            ..crate::config::policy::testing::policy(name, kind)
        }
    }

    /// What the kernel does with a destination, byte for byte.
    fn matches(r: &PolicyRule, family: u16, addr: [u8; 16], port: u16) -> bool {
        let a = words(addr);
        r.family == family
            && (r.port_low..=r.port_high).contains(&port)
            && a[0] & r.mask[0] == r.net[0]
            && a[1] & r.mask[1] == r.net[1]
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    #[test]
    fn networks_and_ports_match_as_written() {
        let mut p = policy("p", PolicyKind::Block, "10.20.0.0/16");
        p.ports = Some("8000-8100".parse().unwrap());
        let r = rule(&p);
        assert!(matches(&r, AF_INET, v4([10, 20, 3, 4]), 8000));
        assert!(matches(&r, AF_INET, v4([10, 20, 255, 255]), 8100));
        assert!(!matches(&r, AF_INET, v4([10, 21, 0, 1]), 8000));
        assert!(!matches(&r, AF_INET, v4([10, 20, 0, 1]), 8101));
        assert!(!matches(&r, AF_INET6, v4([10, 20, 0, 1]), 8000));
        // Host bits in the written network are ignored.
        assert_eq!(
            rule(&policy("p", PolicyKind::Block, "10.20.9.9/16")).net,
            rule(&policy("p", PolicyKind::Block, "10.20.0.0/16")).net
        );

        let r = rule(&policy("p", PolicyKind::Block, "fd00:1::/33"));
        let inside: std::net::Ipv6Addr = "fd00:1:7fff::5".parse().unwrap();
        let outside: std::net::Ipv6Addr = "fd00:1:8000::5".parse().unwrap();
        assert!(matches(&r, AF_INET6, inside.octets(), 1));
        assert!(!matches(&r, AF_INET6, outside.octets(), 1));
        let all = rule(&policy("p", PolicyKind::Block, "0.0.0.0/0"));
        assert!(matches(&all, AF_INET, v4([192, 0, 2, 1]), 65535));
        let one = rule(&policy("p", PolicyKind::Block, "192.0.2.1"));
        assert!(matches(&one, AF_INET, v4([192, 0, 2, 1]), 1));
        assert!(!matches(&one, AF_INET, v4([192, 0, 2, 2]), 1));
    }

    #[test]
    fn rates_become_intervals_and_a_tolerance_of_burst_minus_one() {
        let r = rule(&policy("p", PolicyKind::RateLimit, "10.0.0.0/8"));
        assert_eq!((r.kind, r.interval_ns, r.tolerance_ns), (policy_kind::RATE, 10_000_000, 90_000_000));
        let mut p = policy("p", PolicyKind::RateLimit, "10.0.0.0/8");
        p.burst = None;
        assert_eq!(rule(&p).tolerance_ns, 99 * 10_000_000, "the burst defaults to one second's worth");
        let c = rule(&policy("p", PolicyKind::MaxConnections, "10.0.0.0/8"));
        assert_eq!((c.kind, c.max_connections), (policy_kind::CONCURRENCY, 20));
    }

    #[test]
    fn blocks_come_first_then_rates_then_caps() {
        let compiled = compile(
            &[
                policy("cap", PolicyKind::MaxConnections, "10.0.0.0/8"),
                policy("rate", PolicyKind::RateLimit, "10.0.0.0/8"),
                policy("block", PolicyKind::Block, "10.0.0.0/8"),
                policy("rate2", PolicyKind::RateLimit, "10.0.0.0/8"),
            ],
            &[],
            |_| false,
        )
        .unwrap();
        let names: Vec<&str> = compiled.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["block", "rate", "rate2", "cap"]);
        let kinds: Vec<u8> = compiled.rules.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [policy_kind::BLOCK, policy_kind::RATE, policy_kind::RATE, policy_kind::CONCURRENCY]);
        let entries: Vec<u32> = compiled.rules.iter().map(|r| r.state).collect();
        assert_eq!(entries, [0, 1, 2, 3]);
        assert_eq!(compiled.fresh, [0, 1, 2, 3]);
    }

    #[test]
    fn a_reload_keeps_entries_by_name_and_kind_and_never_reuses_a_busy_or_just_freed_one() {
        let first = compile(
            &[policy("a", PolicyKind::RateLimit, "10.0.0.0/8"), policy("b", PolicyKind::MaxConnections, "10.0.0.0/8")],
            &[],
            |_| false,
        )
        .unwrap();
        // b is removed while sockets still hold places under entry 1; c
        // is new; a changes its rate but keeps its entry.
        let mut a = policy("a", PolicyKind::RateLimit, "10.0.0.0/8");
        a.rate_per_second = Some(5);
        let second =
            compile(&[policy("c", PolicyKind::MaxConnections, "10.0.0.0/8"), a], &first.policies, |e| e == 1).unwrap();
        let entry = |c: &Compiled, name: &str| c.policies.iter().find(|p| p.name == name).unwrap().entry;
        assert_eq!(entry(&second, "a"), 0);
        assert_eq!(entry(&second, "c"), 2, "entry 1 was b's: used by the previous set and still busy");
        assert_eq!(second.fresh, [2]);
        assert_eq!(second.rules[0].interval_ns, 200_000_000);
        // The same name with another kind is another policy.
        let third = compile(&[policy("a", PolicyKind::Block, "10.0.0.0/8")], &second.policies, |_| false).unwrap();
        assert_eq!(third.policies[0].entry, 1, "entry 1 is free now: not in the previous set, not busy");
        // Full: every entry busy.
        let err = compile(&[policy("d", PolicyKind::Block, "10.0.0.0/8")], &[], |_| true).unwrap_err();
        assert!(err.contains("policy `d`"), "{err}");
    }

    #[test]
    fn a_restart_in_pinned_mode_finds_each_policy_entry_by_its_owner_mark() {
        let before = compile(
            &[
                policy("a", PolicyKind::RateLimit, "10.0.0.0/8"),
                policy("b", PolicyKind::MaxConnections, "10.0.0.0/8"),
                policy("c", PolicyKind::Block, "10.0.0.0/8"),
            ],
            &[],
            |_| false,
        )
        .unwrap();
        let mut owners = vec![0; governor_common::POLICY_SLOTS as usize];
        for p in &before.policies {
            owners[p.entry as usize] = owner(&p.name, p.kind);
        }
        // After the restart: a is kept, b changed kind (another policy), c
        // is gone, d is new.
        let now = [policy("b", PolicyKind::RateLimit, "10.0.0.0/8"), policy("a", PolicyKind::RateLimit, "10.0.0.0/8")];
        let previous = recovered(&owners, &now);
        assert_eq!(previous.len(), 3, "every marked entry is accounted for");
        let after = compile(&now, &previous, |_| false).unwrap();
        let entry = |name: &str| after.policies.iter().find(|p| p.name == name).unwrap().entry;
        let a_before = before.policies.iter().find(|p| p.name == "a").unwrap().entry;
        assert_eq!(entry("a"), a_before, "a keeps its bucket");
        assert_eq!(after.fresh, [entry("b")], "only the new policy starts from zero");
        assert!(
            before.policies.iter().all(|p| p.entry != entry("b")),
            "entries marked before the restart are not reused in the first compile"
        );
        assert_ne!(owner("x", PolicyKind::Block), owner("x", PolicyKind::RateLimit));
        assert_ne!(owner("", PolicyKind::Block), 0);
    }
}
