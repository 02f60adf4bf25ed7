//! `governor registry list` and `governor registry release KEY`: the
//! instances this node holds out of the service registries, and putting one
//! back by hand through the daemon (the same etcd transaction as an
//! automatic restore).

use std::{fmt::Write as _, net::SocketAddr, process::ExitCode};

use anyhow::Context as _;

use super::{REQUEST_TIMEOUT, client, human_duration, print_stdout, table};
use crate::{api, registry::QuarantineView};

pub const LIST_PATH: &str = "/api/v1/quarantine";
pub const RELEASE_PATH: &str = "/api/v1/quarantine/release";

/// A release waits for etcd: longer than a plain read.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);

/// Prints the quarantined instances, as a table or as the JSON document.
pub fn list(addr: SocketAddr, json: bool) -> anyhow::Result<ExitCode> {
    let document: api::Quarantine =
        client::get_json(addr, LIST_PATH, REQUEST_TIMEOUT).map_err(|e| anyhow::anyhow!(explain(&e)))?;
    let text = if json {
        serde_json::to_string_pretty(&document).context("cannot encode the list as JSON")? + "\n"
    } else {
        render_list(&document.quarantined, unix_now())
    };
    print_stdout(&text).context("cannot write the list to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Asks the daemon to put `key` back now and prints what happened.
pub fn release(addr: SocketAddr, key: &str) -> anyhow::Result<ExitCode> {
    let request = api::ReleaseRequest { key: key.to_owned() };
    let released: api::Released =
        client::post_json(addr, RELEASE_PATH, &request, RELEASE_TIMEOUT).map_err(|e| anyhow::anyhow!(explain(&e)))?;
    print_stdout(&render_released(&released, unix_now())).context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// The daemon's own words when it refused (`{"error": ...}`), else the
/// client's description of what went wrong.
fn explain(error: &client::ClientError) -> String {
    match error {
        client::ClientError::Status { status, body, .. } => {
            client::error_message(body).map_or_else(|| error.to_string(), |m| format!("{m} (HTTP {status})"))
        }
        other => other.to_string(),
    }
}

/// One line per quarantined instance: where it is, why it is out, since
/// when and until when.
pub fn render_list(views: &[QuarantineView], now: u64) -> String {
    if views.is_empty() {
        return "No instance is quarantined by this node.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let r = &v.record;
            let restore = if now >= r.restore_after {
                "when healthy".to_owned()
            } else {
                format!("in {}", human_duration(r.restore_after - now))
            };
            vec![
                r.registry.clone(),
                r.service.clone(),
                r.key.clone(),
                r.endpoint.clone(),
                human_duration(now.saturating_sub(r.ejected_at)),
                restore,
                r.attempt.to_string(),
                if v.key_present { format!("yes ({} fight-backs)", r.fight_backs) } else { "no".to_owned() },
                r.reason.clone(),
            ]
        })
        .collect();
    let header = ["REGISTRY", "SERVICE", "KEY", "ENDPOINT", "OUT FOR", "RESTORE", "ATTEMPT", "KEY BACK", "REASON"];
    let mut out = format!("Quarantined instances ({})\n", views.len());
    for line in table(&header, &rows) {
        let _ = writeln!(out, "{line}");
    }
    out
}

pub fn render_released(released: &api::Released, now: u64) -> String {
    let api::Released { key, outcome, hold_until } = released;
    let what = match outcome.as_str() {
        "restored" => "put back with its value and lease",
        "already_back" => "already registered again by its owner; governor's records cleared",
        "lease_expired" => "not put back: its lease expired (the owner is gone); governor's records cleared",
        other => other,
    };
    format!(
        "{key}: {what}.\ngovernor will not take it out again by itself for {}.\n",
        human_duration(hold_until.saturating_sub(now))
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::protocol::QuarantineRecord;

    fn view(key: &str, ejected_at: u64, restore_after: u64, present: bool) -> QuarantineView {
        QuarantineView {
            record: QuarantineRecord {
                registry: "kratos".into(),
                service: "pay".into(),
                key: key.into(),
                value: "{}".into(),
                lease: 7,
                create_revision: 2,
                mod_revision: 3,
                endpoint: "10.0.0.1:80".into(),
                reason: "resets: 10 resets in 5 s".into(),
                ejected_at,
                restore_after,
                node: "n1".into(),
                attempt: 2,
                fight_backs: 1,
            },
            key_present: present,
        }
    }

    #[test]
    fn empty_list_says_so() {
        assert_eq!(render_list(&[], 100), "No instance is quarantined by this node.\n");
    }

    #[test]
    fn list_shows_age_restore_time_and_reason() {
        let text = render_list(&[view("/ms/pay/1", 1000, 1090, false), view("/ms/pay/2", 900, 1000, true)], 1030);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Quarantined instances (2)");
        assert!(lines[1].starts_with("REGISTRY  SERVICE  KEY"), "{text}");
        assert!(lines[2].contains("/ms/pay/1") && lines[2].contains("30s") && lines[2].contains("in 1m"), "{text}");
        assert!(lines[2].contains("  no  ") && lines[2].ends_with("resets: 10 resets in 5 s"), "{text}");
        assert!(lines[3].contains("2m10s") && lines[3].contains("when healthy"), "{text}");
        assert!(lines[3].contains("yes (1 fight-backs)"), "{text}");
    }

    #[test]
    fn release_outcomes_read_as_sentences() {
        let released = api::Released { key: "/ms/pay/1".into(), outcome: "restored".into(), hold_until: 1030 };
        assert_eq!(
            render_released(&released, 1000),
            "/ms/pay/1: put back with its value and lease.\ngovernor will not take it out again by itself for 30s.\n"
        );
        let gone = api::Released { outcome: "lease_expired".into(), ..released };
        assert!(render_released(&gone, 1000).contains("its lease expired"));
    }

    #[test]
    fn refusals_carry_the_daemons_words() {
        let error = client::ClientError::Status {
            addr: "127.0.0.1:1".parse().expect("addr"),
            method: "POST",
            path: RELEASE_PATH.into(),
            status: 404,
            body: r#"{"error":"/x is not quarantined by this node"}"#.into(),
        };
        assert_eq!(explain(&error), "/x is not quarantined by this node (HTTP 404)");
    }
}
