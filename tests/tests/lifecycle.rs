//! Start, readiness, clean shutdown, and errors an operator sees.

use std::{collections::HashSet, fs, os::unix::process::CommandExt as _, process::Command};

use governor_tests::{
    Governor,
    governor::{TempDir, bin, run_to_exit, world_executable_bin},
    require_root,
};

const PROGRAMS: [&str; 5] = ["gov_state", "gov_rst_sent", "gov_rst_recv", "gov_retrans", "gov_flow_sample"];

/// Ids of loaded programs with governor's names.
fn governor_program_ids() -> HashSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| PROGRAMS.iter().any(|n| p.name() == n.as_bytes()))
        .map(|p| p.id())
        .collect()
}

#[test]
fn ready_then_sigterm_exits_zero_and_detaches_everything() {
    require_root();
    let before = governor_program_ids();
    let mut gov = Governor::start();
    assert_eq!(gov.get("/readyz").map(|r| r.0), Some(200));
    assert_eq!(gov.get("/healthz"), Some((200, "ok\n".to_owned())));
    assert_eq!(gov.value("governor_ebpf_programs_attached"), 4);
    assert_eq!(gov.value(r#"governor_ebpf_map_capacity{map="endpoints"}"#), 16384);

    let ours: HashSet<u32> = governor_program_ids().difference(&before).copied().collect();
    assert_eq!(ours.len(), 5, "the daemon loaded its four tracepoint programs and the flow sampler");

    let (status, took) = gov.terminate();
    eprintln!("governor exited {status} {took:?} after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    // The kernel frees a detached tracepoint program after a grace
    // period, shortly after the daemon is gone: wait for it, bounded.
    let mut left: Vec<u32> = Vec::new();
    for _ in 0..50 {
        left = governor_program_ids().intersection(&ours).copied().collect();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(left.is_empty(), "programs still loaded 10 s after exit: {left:?}");
}

#[test]
fn sigint_also_exits_zero() {
    require_root();
    let gov = Governor::start();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(gov.pid()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal");
    // terminate() sends SIGTERM too, which a process already exiting ignores.
    let (status, _) = gov.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_bad_config_exits_nonzero_naming_the_key() {
    let dir = TempDir::new("badcfg");
    let path = dir.0.join("bad.toml");
    fs::write(&path, "[daemon]\nmetrics_addr = \"127.0.0.1:1\"\npoll_interval_ms = 0\n").expect("write");
    let out = run_to_exit(Command::new(bin()).args(["run", "--config"]).arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3, key `daemon.poll_interval_ms`: 0 is out of range"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");

    fs::write(&path, "[ebpf]\nendpoint_table = 5\n").expect("write");
    let out = run_to_exit(Command::new(bin()).args(["check-config"]).arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("key `ebpf.endpoint_table`: unknown field `endpoint_table`"), "{stderr}");
}

#[test]
fn without_root_it_says_so_in_one_line() {
    let dir = TempDir::new("nonroot");
    let out = run_to_exit(
        Command::new(world_executable_bin(&dir)).args(["run", "--metrics-addr", "127.0.0.1:0"]).uid(65534).gid(65534),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "governor: error: governor needs the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN to load and \
             attach its eBPF programs and has not CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (effective uid 65534)"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn root_without_the_bpf_capabilities_is_told_which_are_missing() {
    require_root();
    // Root, as in a container that dropped CAP_BPF, CAP_PERFMON and
    // CAP_SYS_ADMIN (util-linux's setpriv takes them out of the bounding
    // set before the exec).
    let out = run_to_exit(
        Command::new("setpriv")
            .args(["--bounding-set", "-bpf,-perfmon,-sys_admin", "--inh-caps", "-all", "--"])
            .arg(bin())
            .args(["run", "--metrics-addr", "127.0.0.1:0"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has not CAP_BPF and CAP_PERFMON (effective uid 0)"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    let out = run_to_exit(
        Command::new("setpriv")
            .args(["--bounding-set", "-bpf,-perfmon,-sys_admin", "--inh-caps", "-all", "--"])
            .arg(bin())
            .arg("doctor"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout.lines().find(|l| l.starts_with("privileges")).expect("privileges row");
    assert!(row.contains("FAIL") && row.contains("uid 0 without CAP_BPF and CAP_PERFMON"), "{row}");
}

#[test]
fn a_missing_bpffs_is_named_with_the_fix() {
    require_root();
    let dir = TempDir::new("nobpffs");
    let config = dir.0.join("c.toml");
    fs::write(&config, format!("[ebpf]\nbpffs = \"{}\"\nmount_missing = false\n", dir.0.display())).expect("write");
    let out = run_to_exit(Command::new(bin()).args(["run", "--metrics-addr", "127.0.0.1:0", "--config"]).arg(&config));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("bpffs is not mounted at {0}: run `mount -t bpf bpf {0}`", dir.0.display())),
        "{stderr}"
    );
}

#[test]
fn doctor_passes_on_this_host() {
    require_root();
    let out = run_to_exit(Command::new(bin()).arg("doctor"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for line in [
        "tracepoint tcp:tcp_send_reset",
        "tracepoint sock:inet_sock_set_state",
        "kernel BTF",
        "program type tracing (tp_btf)",
        "socket layout",
        "program type cgroup_skb",
        "cgroup v2",
    ] {
        let row = stdout.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("no row {line}:\n{stdout}"));
        assert!(row.contains(" pass "), "{row}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn doctor_fails_without_root() {
    let dir = TempDir::new("nonroot");
    let out = run_to_exit(Command::new(world_executable_bin(&dir)).arg("doctor").uid(65534).gid(65534));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let row = stdout.lines().find(|l| l.starts_with("privileges")).expect("privileges row");
    assert!(row.contains("FAIL"), "{row}");
    assert!(stdout.contains("fix: run as root"), "{stdout}");
}

#[test]
fn environment_variables_configure_json_logs_and_the_address() {
    require_root();
    let port = governor_tests::governor::free_port();
    let dir = TempDir::new("json");
    let log = dir.0.join("stderr");
    let mut child = Command::new(bin())
        .arg("run")
        .env("GOVERNOR_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("GOVERNOR_LOG_FORMAT", "json")
        .stderr(fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start governor");
    let mut scraper = governor_tests::Scraper::new(([127, 0, 0, 1], port).into());
    let mut ready = false;
    for _ in 0..300 {
        if scraper.get("/readyz").is_some_and(|(status, _)| status == 200) {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = child.wait().expect("wait");
    let text = fs::read_to_string(&log).expect("log");
    assert!(ready, "ready on the address from GOVERNOR_METRICS_ADDR:\n{text}");
    assert_eq!(status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        assert!(line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":"), "not JSON: {line}");
    }
    assert!(text.contains("\"message\":\"eBPF programs attached\""), "{text}");
}
