//! The metric names the README's reference table, the alert rules and the
//! Grafana dashboard use are the ones governor registers, and the table
//! lists every one of them.

use std::{collections::BTreeSet, path::PathBuf};

use governor::{
    metrics::{Metrics, SeriesLimits},
    registry::RegistryMetrics,
};

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every metric governor registers (its own, the registry's and the policy
/// key watch's).
fn registered() -> BTreeSet<String> {
    let metrics = Metrics::new(SeriesLimits { per_metric: 10, budget: 100, ttl_seconds: 0 }, &[]);
    let _registry = RegistryMetrics::new(metrics.registry());
    let _watch = governor::policy_watch::gauge(metrics.registry());
    metrics.registry().names().into_iter().collect()
}

/// The `governor_*` names in `text`, histogram series named by their metric.
fn used_in(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("governor_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| known.contains(*b)))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_readme_table_lists_exactly_the_registered_metrics() {
    let known = registered();
    let readme = repo_file("README.md");
    let table: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `governor_"))
        .map(|l| format!("governor_{}", &l[..l.find('`').expect("closing backtick")]))
        .collect();
    let missing: Vec<_> = known.difference(&table).collect();
    let unknown: Vec<_> = table.difference(&known).collect();
    assert!(missing.is_empty(), "registered but not in the README's table: {missing:?}");
    assert!(unknown.is_empty(), "in the README's table but not registered: {unknown:?}");
}

#[test]
fn the_alert_rules_and_the_dashboard_query_only_registered_metrics() {
    let known = registered();
    for file in ["deploy/alerts/rules.yml", "deploy/dashboard/governor.json", "deploy/alerts/tests.yml"] {
        let used = used_in(&repo_file(file), &known);
        assert!(used.len() >= 5, "{file}: only {used:?}");
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(unknown.is_empty(), "{file} uses metrics governor does not have: {unknown:?}");
    }
}

#[test]
fn every_alert_has_its_runbook_section_its_link_and_a_row_in_the_readme() {
    let rules = repo_file("deploy/alerts/rules.yml");
    let runbook = repo_file("docs/runbook.md");
    let readme = repo_file("README.md");
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(str::trim).collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in &alerts {
        assert!(runbook.contains(&format!("\n## {alert}\n")), "docs/runbook.md has no section for {alert}");
        let link = format!("docs/runbook.md#{}", alert.to_lowercase());
        assert!(rules.contains(&link), "rules.yml does not link {alert} to {link}");
        assert!(readme.contains(&format!("| `{alert}` |")), "README's Alerts table has no row for {alert}");
    }
    // The alerts governor posts itself.
    for (alert, anchor) in
        [("GovernorDeregistration", "governorderegistration"), ("GovernorBreakerOpened", "governorbreakeropened")]
    {
        assert!(runbook.contains(&format!("\n## {alert}\n")), "docs/runbook.md has no section for {alert}");
        assert!(governor::alerting::RUNBOOK.ends_with("docs/runbook.md"));
        let source = repo_file("governor/src/alerting.rs");
        assert!(source.contains(&format!("#{anchor}")), "alerting.rs does not link {alert} to #{anchor}");
    }
}
