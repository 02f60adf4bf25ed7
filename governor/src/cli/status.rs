//! `governor status`: what is wrong right now, from `GET /api/v1/status`:
//! the endpoints that are not healthy and the processes leaking sockets in
//! `CLOSE_WAIT`.

use std::{fmt::Write as _, net::SocketAddr, process::ExitCode};

use anyhow::Context as _;

use super::{REQUEST_TIMEOUT, client, human_duration, print_stdout, table};
use crate::api;

pub const PATH: &str = "/api/v1/status";

/// Prints the daemon's status, as a table or with `json` as the document
/// itself (pretty-printed).
///
/// The exit code is `SUCCESS` whenever the daemon answered, even when
/// endpoints are unhealthy or processes leak: the command reports, it does
/// not judge (scripts decide from `--json`). It is an error, hence
/// `FAILURE`, only when the daemon cannot be reached or answers with
/// something other than a status document.
pub fn status(addr: SocketAddr, json: bool) -> anyhow::Result<ExitCode> {
    let document: api::Status = client::get_json(addr, PATH, REQUEST_TIMEOUT)?;
    let text = if json {
        serde_json::to_string_pretty(&document).context("cannot encode the status as JSON")? + "\n"
    } else {
        render_status(&document)
    };
    print_stdout(&text).context("cannot write the status to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// The status as text for a terminal: one table per non-empty section, in
/// the order the daemon sent them.
pub fn render_status(status: &api::Status) -> String {
    let api::Status { endpoints, leaking } = status;
    if endpoints.is_empty() && leaking.is_empty() {
        return "All endpoints healthy; no process is leaking connections.\n".to_owned();
    }
    let mut out = String::new();
    if endpoints.is_empty() {
        out.push_str("All endpoints healthy.\n");
    } else {
        let _ = writeln!(out, "Endpoints not healthy ({})", endpoints.len());
        push_lines(&mut out, &endpoint_table(endpoints));
    }
    out.push('\n');
    if leaking.is_empty() {
        out.push_str("No process is leaking connections.\n");
    } else {
        let _ = writeln!(out, "Leaking processes ({})", leaking.len());
        push_lines(&mut out, &process_table(leaking));
    }
    out
}

fn endpoint_table(endpoints: &[api::Endpoint]) -> Vec<String> {
    // The windows come from the daemon's config and are normally the same for
    // every endpoint: then they go in the header, else in each cell.
    let reset_window = shared(endpoints.iter().map(|e| e.window.reset_window_seconds));
    let failure_window = shared(endpoints.iter().map(|e| e.window.failure_window_seconds));
    let resets_header = reset_window.map_or_else(|| "RESETS".to_owned(), |w| format!("RESETS/{w}s"));
    let failed_header =
        failure_window.map_or_else(|| "FAILED/ATTEMPTS".to_owned(), |w| format!("FAILED/ATTEMPTS/{w}s"));
    let header = ["ENDPOINT", "STATE", "FOR", &resets_header, &failed_header, "RETRANS", "CLOSE_WAIT", "WHY"];
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            let api::Endpoint {
                endpoint,
                state,
                state_seconds,
                window,
                last_transition,
                reset_reasons: _,
                connections: _,
            } = e;
            let api::Window {
                resets,
                reset_window_seconds,
                connect_attempts,
                connect_failures,
                failure_window_seconds,
                retransmits,
                close_wait,
                close_wait_oldest_seconds: _,
            } = window;
            let in_window = |text: String, window: u64, shared: Option<u64>| match shared {
                Some(_) => text,
                None => format!("{text} in {window}s"),
            };
            vec![
                endpoint.clone(),
                state.clone(),
                human_duration(*state_seconds),
                in_window(resets.to_string(), *reset_window_seconds, reset_window),
                in_window(format!("{connect_failures}/{connect_attempts}"), *failure_window_seconds, failure_window),
                retransmits.to_string(),
                close_wait.to_string(),
                last_transition.as_ref().map_or_else(|| "-".to_owned(), |t| t.reason.clone()),
            ]
        })
        .collect();
    table(&header, &rows)
}

fn process_table(processes: &[api::Process]) -> Vec<String> {
    let rows: Vec<Vec<String>> = processes
        .iter()
        .map(|p| {
            let api::Process {
                pid,
                command: _,
                label,
                attribution: _,
                connections: _,
                listeners,
                close_wait,
                close_wait_oldest_seconds,
                leaking: _,
            } = p;
            vec![
                label.clone(),
                pid.to_string(),
                close_wait.to_string(),
                human_duration(*close_wait_oldest_seconds),
                if listeners.is_empty() { "-".to_owned() } else { listeners.join(",") },
            ]
        })
        .collect();
    table(&["PROCESS", "PID", "CLOSE_WAIT", "OLDEST", "LISTENERS"], &rows)
}

/// The value every item has, if they all have the same one.
fn shared(mut values: impl Iterator<Item = u64>) -> Option<u64> {
    let first = values.next()?;
    values.all(|v| v == first).then_some(first)
}

fn push_lines(out: &mut String, lines: &[String]) {
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, state: &str, resets: u64, reset_window_seconds: u64) -> api::Endpoint {
        api::Endpoint {
            endpoint: name.to_owned(),
            state: state.to_owned(),
            state_seconds: 185,
            window: api::Window {
                resets,
                reset_window_seconds,
                connect_attempts: 40,
                connect_failures: 3,
                failure_window_seconds: 30,
                retransmits: 7,
                close_wait: 2,
                close_wait_oldest_seconds: 90,
            },
            last_transition: Some(api::Transition {
                from: "healthy".to_owned(),
                to: state.to_owned(),
                at_unix: 1_700_000_000,
                reason: format!("{resets} resets within {reset_window_seconds} s (threshold 10)"),
            }),
            reset_reasons: vec![],
            connections: 12,
        }
    }

    fn leaking_process() -> api::Process {
        api::Process {
            pid: 4242,
            command: "api".to_owned(),
            label: "shop/api-7f9c".to_owned(),
            attribution: api::Attribution::default(),
            connections: 30,
            listeners: vec!["0.0.0.0:8080".to_owned(), "[::]:8080".to_owned()],
            close_wait: 17,
            close_wait_oldest_seconds: 7_260,
            leaking: true,
        }
    }

    #[test]
    fn both_sections_as_tables() {
        let mut recovering = endpoint("[fd00::1]:443", "recovering", 0, 5);
        recovering.last_transition = None;
        recovering.state_seconds = 12;
        let status = api::Status {
            endpoints: vec![endpoint("10.0.0.7:5432", "unhealthy", 12, 5), recovering],
            leaking: vec![leaking_process()],
        };
        assert_eq!(
            render_status(&status),
            "Endpoints not healthy (2)\n\
             ENDPOINT       STATE       FOR   RESETS/5s  FAILED/ATTEMPTS/30s  RETRANS  CLOSE_WAIT  WHY\n\
             10.0.0.7:5432  unhealthy   3m5s  12         3/40                 7        2           12 resets within 5 \
             s (threshold 10)\n\
             [fd00::1]:443  recovering  12s   0          3/40                 7        2           -\n\
             \n\
             Leaking processes (1)\n\
             PROCESS        PID   CLOSE_WAIT  OLDEST  LISTENERS\n\
             shop/api-7f9c  4242  17          2h1m    0.0.0.0:8080,[::]:8080\n"
        );
    }

    #[test]
    fn differing_windows_go_in_the_cells() {
        let status = api::Status {
            endpoints: vec![endpoint("10.0.0.7:5432", "suspect", 6, 5), endpoint("10.0.0.8:80", "suspect", 6, 10)],
            leaking: vec![],
        };
        assert_eq!(
            render_status(&status),
            "Endpoints not healthy (2)\n\
             ENDPOINT       STATE    FOR   RESETS    FAILED/ATTEMPTS/30s  RETRANS  CLOSE_WAIT  WHY\n\
             10.0.0.7:5432  suspect  3m5s  6 in 5s   3/40                 7        2           6 resets within 5 s \
             (threshold 10)\n\
             10.0.0.8:80    suspect  3m5s  6 in 10s  3/40                 7        2           6 resets within 10 s \
             (threshold 10)\n\
             \n\
             No process is leaking connections.\n"
        );
    }

    #[test]
    fn only_leaks_says_endpoints_are_healthy() {
        let status = api::Status { endpoints: vec![], leaking: vec![leaking_process()] };
        assert!(render_status(&status).starts_with("All endpoints healthy.\n\nLeaking processes (1)\n"));
    }

    #[test]
    fn nothing_wrong_is_one_sentence() {
        assert_eq!(
            render_status(&api::Status::default()),
            "All endpoints healthy; no process is leaking connections.\n"
        );
    }
}
