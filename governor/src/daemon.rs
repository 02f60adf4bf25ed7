//! `governor run`: set up the host, load and attach, then read the kernel
//! maps and drain the ring buffer until SIGTERM or SIGINT.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};
use tracing::{debug, info, warn};

use crate::{
    alert_push::AlertPush,
    attribution::Attributor,
    btf,
    config::{Config, Policy, parse_document, validate_policies},
    ebpf::{Event, Probes, Sizes, decode_event},
    enforce::Enforcement,
    health::Engine,
    host::{self, BPFFS, MountOutcome},
    http::{self, AppState},
    labels, listening,
    metrics::{self, Metrics, SeriesLimits},
    monitor::Monitor,
    pin::Pins,
    registry::{self, Controller, RegistryMetrics},
    stats::Aggregator,
    tracepoints,
};

/// Runs the daemon until SIGTERM or SIGINT. `path` is the config file
/// (reloaded on SIGHUP or a change); `dry_run` holds across reloads.
pub async fn run(config: Config, path: Option<PathBuf>, dry_run: bool) -> anyhow::Result<()> {
    let (kernel_config, reasons) = prepare_host(&config)?;
    let addr = config.daemon.metrics_addr;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}: choose another address with --metrics-addr"))?;

    let lease = Duration::from_secs(config.enforcement.lease_seconds.get().into());
    let mut probes = load_probes(&config, &kernel_config, lease)?;
    let mut events = probes.take_events()?;
    let flows = if config.ebpf.count_flows { Some(probes.flows()?) } else { None };
    info!(programs = probes.attached(), "eBPF programs attached");
    let metrics = daemon_metrics(&config, &probes, &reasons);
    let monitor = start_monitor(&config, &mut probes, reasons);
    let registry_metrics =
        (config.etcd.enabled() && !config.registries.is_empty()).then(|| RegistryMetrics::new(metrics.registry()));
    let health_events = monitor.subscribe();
    let state = AppState::new(metrics, monitor, flows, probes.sampler());
    let mut enforcement = start_enforcement(&mut probes, &config, &state, lease)?;
    let mut reloader = Reloader::new(path, dry_run, config.policies.clone());
    let (policy_watch, mut policy_rx) = start_policy_watch(&config, &state);
    let sweeper = start_sweeper(&probes, &config);
    let registry = registry_metrics.map(|m| start_registry(&config, &state, m, health_events));
    let mut alert_push = AlertPush::start(&config.alerting, registry::node_name(&config.registry.node), &state);

    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, http::router(Arc::clone(&state)))
            .with_graceful_shutdown(async {
                let _ = server_stopped.await;
            })
            .into_future(),
    );
    info!(%addr, "serving /metrics, /healthz, /readyz");

    let mut poll = interval(Duration::from_millis(config.daemon.poll_interval_ms.get().into()));
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut drain = interval(Duration::from_millis(config.ebpf.event_drain_interval_ms.get().into()));
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Pinned mode: the rules hold for `lease` after the last renewal.
    let mut renew = interval(Duration::from_secs(1));
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut aggregator = Aggregator::default();
    let started = std::time::Instant::now();
    let mut resync = Resync::default();
    let mut owners = OwnerLookup::new();

    let signal_name = loop {
        tokio::select! {
            _ = poll.tick() => {
                read_maps(&mut probes, &mut aggregator, &state, started.elapsed().as_secs(), &mut resync);
                enforcement.step_breakers(&state);
                if let Some(push) = &mut alert_push {
                    push.step(&state, &enforcement);
                }
                state.set_ready(true);
            }
            _ = drain.tick() => {
                let due = drain_events(&mut events, &state);
                state.drained();
                if due {
                    // An endpoint is crossing the reset threshold: judge it
                    // now, not at the next poll.
                    read_maps(&mut probes, &mut aggregator, &state, started.elapsed().as_secs(), &mut resync);
                    enforcement.step_breakers(&state);
                }
            }
            _ = owners.tick.tick() => owners.start(&config.attribution, &state),
            _ = renew.tick(), if config.enforcement.pinned => renew_lease(&mut probes, lease, &state),
            _ = sighup.recv() => reloader.reload(&mut probes, &mut enforcement, &state, "SIGHUP"),
            Some(value) = policy_rx.recv() => {
                reloader.etcd_update(&mut probes, &mut enforcement, &state, value.as_deref());
            }
            _ = reloader.watch.tick() => if reloader.changed() {
                reloader.reload(&mut probes, &mut enforcement, &state, "file changed");
            },
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
        }
    };
    info!(signal = signal_name, "shutting down");
    if config.enforcement.pinned {
        info!(lease_seconds = lease.as_secs(), "pinned mode: policies stay until the next daemon or the lease ends");
    }
    // Nothing is half-done: each registry action is one transaction.
    registry.into_iter().chain(policy_watch).chain(Some(sweeper)).chain(owners.running).for_each(|task| task.abort());
    state.set_ready(false);
    let _ = drain_events(&mut events, &state);
    read_maps(&mut probes, &mut aggregator, &state, started.elapsed().as_secs(), &mut resync);
    drop(events);
    drop(probes);
    info!("eBPF programs detached");
    let _ = stop_server.send(());
    match tokio::time::timeout(Duration::from_millis(500), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "HTTP server failed"),
        Ok(Err(e)) => warn!(error = %e, "HTTP server task failed"),
        Err(_) => debug!("HTTP server still had open connections; leaving them"),
    }
    Ok(())
}

/// Seconds between two lookups of owners in `/proc`; there is none while
/// every connection has an owner.
const OWNER_LOOKUP_SECONDS: u64 = 5;
/// A lookup walks every process's descriptors, which takes long on a busy
/// node: the next one waits at least this many times as long as the last
/// took, so that the walks take at most 5% of a CPU however often owner-less
/// connections come.
const OWNER_LOOKUP_SPACING: u32 = 20;

/// Owners of connections the kernel knows none of (open before the
/// programs attached), looked up in `/proc` off the loop, one lookup at a
/// time.
struct OwnerLookup {
    tick: tokio::time::Interval,
    running: Option<tokio::task::JoinHandle<()>>,
    /// No lookup starts before this.
    not_before: Arc<std::sync::Mutex<std::time::Instant>>,
}

impl OwnerLookup {
    fn new() -> Self {
        let mut tick = interval(Duration::from_secs(OWNER_LOOKUP_SECONDS));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { tick, running: None, not_before: Arc::new(std::sync::Mutex::new(std::time::Instant::now())) }
    }

    fn start(&mut self, attribution: &crate::config::Attribution, state: &Arc<AppState>) {
        let due = std::time::Instant::now() >= *self.not_before.lock().expect("lookup lock poisoned");
        if due && self.running.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
            self.running = adopt_unowned(attribution, state, Arc::clone(&self.not_before));
        }
    }
}

/// Looks up in `/proc` who holds the sockets of connections the kernel
/// knows no owner of, and gives them to the process view; `None` when
/// there are none. Each socket is looked for once. Sets `not_before` for
/// the next lookup from how long this one took.
fn adopt_unowned(
    attribution: &crate::config::Attribution,
    state: &Arc<AppState>,
    not_before: Arc<std::sync::Mutex<std::time::Instant>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let unowned = state.monitor.lock().expect("monitor lock poisoned").tracker.unowned();
    if unowned.is_empty() {
        return None;
    }
    let (proc_root, cgroup_root) = (attribution.proc_root.clone(), attribution.cgroup_root.clone());
    let state = Arc::clone(state);
    Some(tokio::spawn(async move {
        let inodes: Vec<u64> = unowned.iter().map(|&(_, inode)| u64::from(inode)).collect();
        let started = std::time::Instant::now();
        let lookup = tokio::task::spawn_blocking(move || listening::holders(&proc_root, &cgroup_root, inodes));
        let Ok(holders) = lookup.await else { return };
        let took = started.elapsed();
        *not_before.lock().expect("lookup lock poisoned") = std::time::Instant::now() + took * OWNER_LOOKUP_SPACING;
        let mut monitor = state.monitor.lock().expect("monitor lock poisoned");
        for &(skaddr, inode) in &unowned {
            monitor.tracker.adopt(skaddr, inode, holders.owners.get(&u64::from(inode)).copied());
        }
        debug!(
            sockets = unowned.len(),
            found = holders.owners.len(),
            unreadable_processes = holders.unreadable,
            took_ms = took.as_millis(),
            "looked up the owners of connections opened before start"
        );
    }))
}

/// The daemon's judge of endpoints and processes, told of the listeners
/// that were open before the programs attached.
fn start_monitor(config: &Config, probes: &mut Probes, reasons: Vec<(u32, String)>) -> Monitor {
    let mut monitor = Monitor::new(
        Engine::new(config.health.engine_config()),
        Attributor::new(config.attribution.cgroup_root.clone(), Some(config.attribution.pod_log_dir.clone())),
        config.health.leak_close_wait_seconds.get().into(),
        reasons,
        unix_offset(),
    );
    seed_from_proc(config, probes, &mut monitor);
    monitor
}

/// The listeners that were open before the programs attached, with their
/// owners from `/proc`: into the kernel's listener table (the connections
/// they accept from now on get an owner) and into the process view; and
/// the connections already in `CLOSE_WAIT`, into the process view. Best
/// effort: what cannot be read is logged, never fatal.
fn seed_from_proc(config: &Config, probes: &mut Probes, monitor: &mut Monitor) {
    let proc_root = &config.attribution.proc_root;
    let scan = listening::scan(proc_root, &config.attribution.cgroup_root);
    match probes.seed_listeners(&scan.listeners) {
        Ok(added) => info!(
            listeners = added,
            unowned = scan.unowned,
            unreadable_processes = scan.unreadable,
            proc_root = %proc_root.display(),
            "attributed the listeners opened before start"
        ),
        Err(e) => warn!(error = %e, "cannot add the listeners opened before start to the kernel's table"),
    }
    if scan.unreadable > 0 {
        debug!(
            unreadable_processes = scan.unreadable,
            "some processes' namespaces or descriptors could not be read (exited, or not allowed: CAP_SYS_PTRACE)"
        );
    }
    // After the listeners: accepted connections take their owners.
    match probes.track_open(&scan.namespaces) {
        Ok(tracked) => info!(
            connections = tracked.connections,
            namespaces = scan.namespaces.len(),
            failed_namespaces = tracked.failed_namespaces,
            "tracking the connections opened before start"
        ),
        Err(e) => warn!(
            error = %e,
            "cannot walk the connections opened before start: they are tracked once they enter CLOSE_WAIT"
        ),
    }
    monitor.tracker.add_preexisting(&scan.listeners);
    if !scan.close_wait.is_empty() {
        info!(connections = scan.close_wait.len(), "connections already in CLOSE_WAIT at start, counted from now");
    }
    monitor.tracker.add_close_waiting(&scan.close_wait, http::now().ns);
}

/// Checks the host, mounts bpffs when it is missing, and reads what the
/// kernel programs need from it: tracepoint arguments and socket offsets
/// from BTF (and the reset reasons' names, returned), the ephemeral port
/// range.
fn prepare_host(config: &Config) -> anyhow::Result<(governor_common::KernelConfig, Vec<(u32, String)>)> {
    host::check_privileges()?;
    host::check_btf()?;
    if host::ensure_mounted(BPFFS, &config.ebpf.bpffs, config.ebpf.mount_missing)? == MountOutcome::Mounted {
        info!(fs = BPFFS.name, path = %config.ebpf.bpffs.display(), "mounted");
    }
    let btf = btf::Btf::read(Path::new(btf::VMLINUX))?;
    let mut kernel_config = tracepoints::kernel_config(&btf)?;
    let reasons = read_btf(&btf, &kernel_config.sock);
    // Enough reset events per endpoint between readings to see one cross
    // the threshold, counted apart for both directions; the rest are only
    // counted in the endpoint table.
    kernel_config.reset_events = config.health.reset_threshold.get().saturating_mul(2);
    set_histogram_bounds(&mut kernel_config.handshake_bounds_ns, &metrics::HANDSHAKE_BUCKETS);
    set_histogram_bounds(&mut kernel_config.duration_bounds_ns, &metrics::DURATION_BUCKETS);
    if config.metrics.collapse_ephemeral_ports {
        let (low, high) = host::ephemeral_port_range()?;
        kernel_config.ephemeral_low = low;
        kernel_config.ephemeral_high = high;
    }
    Ok((kernel_config, reasons))
}

/// The kernel's bucket bounds (ns) of a histogram whose bounds are in
/// seconds; the bounds past them stay at `u64::MAX`.
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "bounds from 0.1 ms to a day")]
fn set_histogram_bounds(kernel: &mut [u64], seconds: &[f64]) {
    for (k, s) in kernel.iter_mut().zip(seconds) {
        *k = (s * 1e9).round() as u64;
    }
}

fn sizes(config: &Config) -> Sizes {
    Sizes {
        endpoint_table_entries: config.ebpf.endpoint_table_entries.get(),
        socket_table_entries: config.ebpf.socket_table_entries.get(),
        ring_buffer_bytes: config.ebpf.ring_buffer_bytes.0,
    }
}

fn daemon_metrics(config: &Config, probes: &Probes, reasons: &[(u32, String)]) -> Metrics {
    let limits = SeriesLimits {
        per_metric: config.metrics.max_endpoint_series.get() as usize,
        budget: config.metrics.max_series_total.get() as usize,
        ttl_seconds: config.metrics.series_ttl_seconds.get().into(),
    };
    let metrics = Metrics::new(limits, reasons);
    metrics.programs_attached.set(i64::try_from(probes.attached()).unwrap_or(i64::MAX));
    metrics.map_capacity.with_label_values(&["endpoints"]).set(i64::from(probes.endpoint_capacity()));
    metrics.map_capacity.with_label_values(&["sockets"]).set(i64::from(probes.socket_capacity()));
    metrics
}

/// Sweeps the per-socket table every `ebpf.sweep_interval_ms` on a
/// blocking thread (a sweep of a large table takes a while, and the event
/// drain must not wait for it): connections that stay open are told of,
/// and with flows counted their bytes copied.
fn start_sweeper(probes: &Probes, config: &Config) -> tokio::task::JoinHandle<()> {
    if !config.ebpf.count_flows {
        info!("ebpf.count_flows is off: no per-flow bytes");
    }
    let (sampler, capacity) = probes.sampler();
    let mut tick = interval(Duration::from_millis(config.ebpf.sweep_interval_ms.get().into()));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::spawn(async move {
        loop {
            tick.tick().await;
            let s = sampler.clone();
            match tokio::task::spawn_blocking(move || s.run(capacity)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "sweeping the socket table failed"),
                Err(e) => warn!(error = %e, "the socket table sweep stopped"),
            }
        }
    })
}

/// Starts watching the etcd policy key, if one is set; its values arrive on
/// the receiver; its gauge exists only then.
fn start_policy_watch(
    config: &Config,
    state: &AppState,
) -> (Option<tokio::task::JoinHandle<()>>, tokio::sync::mpsc::Receiver<Option<String>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = (!config.etcd.policy_key.is_empty()).then(|| {
        let watched = crate::policy_watch::gauge(state.metrics.lock().expect("metrics lock poisoned").registry());
        tokio::spawn(crate::policy_watch::watch(config.etcd.clone(), tx, watched))
    });
    (task, rx)
}

/// Starts the task that acts on the service registries in etcd.
fn start_registry(
    config: &Config,
    state: &Arc<AppState>,
    metrics: RegistryMetrics,
    health_events: tokio::sync::broadcast::Receiver<crate::health::Transition<String>>,
) -> tokio::task::JoinHandle<()> {
    let (shared, commands) = registry::Shared::new();
    let _ = state.registry.set(Arc::clone(&shared));
    tokio::spawn(Controller::new(config, Arc::clone(state), shared, metrics).run(health_events, commands))
}

/// Reloads the config file on SIGHUP or when its content changes (checked
/// every two seconds: a Kubernetes `ConfigMap` update replaces the file
/// through a symbolic link, which a content check sees), and takes the
/// etcd policy key's changes. The policies in force are the file's plus
/// the key's, validated together.
struct Reloader {
    path: Option<PathBuf>,
    dry_run: bool,
    text: Option<String>,
    watch: tokio::time::Interval,
    file_policies: Vec<Policy>,
    etcd_policies: Vec<Policy>,
}

impl Reloader {
    fn new(path: Option<PathBuf>, dry_run: bool, file_policies: Vec<Policy>) -> Self {
        let text = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        let mut watch = interval(Duration::from_secs(2));
        watch.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { path, dry_run, text, watch, file_policies, etcd_policies: Vec::new() }
    }

    fn changed(&self) -> bool {
        self.path.as_ref().is_some_and(|p| std::fs::read_to_string(p).ok() != self.text)
    }

    /// Validates the whole file, then puts its policies (with the etcd
    /// key's) in force; anything invalid keeps the running config, is
    /// logged and counted.
    fn reload(&mut self, probes: &mut Probes, enforcement: &mut Enforcement, state: &AppState, why: &str) {
        let Some(path) = self.path.clone() else {
            warn!(trigger = why, "no config file to reload (started without --config)");
            return;
        };
        let result = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
            .inspect(|text| self.text = Some(text.clone()))
            .and_then(|text| Config::parse(&path.display().to_string(), &text).map_err(anyhow::Error::from))
            .and_then(|config| {
                self.put_in_force(probes, enforcement, state, &config.policies, &self.etcd_policies)?;
                Ok(config.policies)
            })
            .map(|policies| self.file_policies = policies);
        Self::report(state, why, result);
    }

    /// A new value of the etcd policy key (`None`: deleted).
    fn etcd_update(
        &mut self,
        probes: &mut Probes,
        enforcement: &mut Enforcement,
        state: &AppState,
        value: Option<&str>,
    ) {
        let result = value
            .map_or(Ok(Vec::new()), parse_document)
            .map_err(|e| anyhow::anyhow!("etcd policy key: {e}"))
            .and_then(|policies| {
                self.put_in_force(probes, enforcement, state, &self.file_policies, &policies)?;
                Ok(policies)
            })
            .map(|policies| self.etcd_policies = policies);
        Self::report(state, "etcd policy key changed", result);
    }

    fn put_in_force(
        &self,
        probes: &mut Probes,
        enforcement: &mut Enforcement,
        state: &AppState,
        file: &[Policy],
        etcd: &[Policy],
    ) -> anyhow::Result<()> {
        let mut all: Vec<Policy> = file.iter().chain(etcd).cloned().collect();
        validate_policies(&all)
            .map_err(|e| anyhow::anyhow!("{e} (the file's and the etcd key's policies together)"))?;
        if self.dry_run {
            for p in &mut all {
                p.dry_run = true;
            }
        }
        enforcement.apply(probes, &all, state)
    }

    fn report(state: &AppState, why: &str, result: anyhow::Result<()>) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        state.metrics.lock().expect("metrics lock poisoned").config_reloads.with_label_values(&[outcome]).inc();
        match result {
            Ok(()) => info!(trigger = why, "reloaded: policies in force; other settings apply at restart"),
            Err(e) => warn!(trigger = why, error = %format!("{e:#}"), "reload refused: the policies in force stay"),
        }
    }
}

/// Names of the kernel's reset reasons, and warnings for the socket fields
/// this kernel lacks: without them governor runs with less detail.
fn read_btf(btf: &btf::Btf, offsets: &governor_common::SockOffsets) -> Vec<(u32, String)> {
    let reasons = btf::reset_reason_names(btf).unwrap_or_else(|e| {
        warn!(error = %e, "reset reasons will be shown as numbers");
        Vec::new()
    });
    for (field, missing, loses) in [
        ("sock.sk_err", offsets.sk_err, "connect failure reasons"),
        ("tcp_sock.srtt_us", offsets.srtt_us, "passive handshake times"),
        ("sk_buff.head", offsets.skb_head, "addresses of resets sent without a socket"),
        ("sk_buff.network_header", offsets.skb_network_header, "addresses of resets sent without a socket"),
        ("sk_buff.transport_header", offsets.skb_transport_header, "addresses of resets sent without a socket"),
        ("tcp_sock.bytes_sent", offsets.bytes_sent, "bytes sent per flow and endpoint"),
        ("tcp_sock.bytes_retrans", offsets.bytes_retrans, "retransmitted bytes counted once"),
        ("tcp_sock.bytes_received", offsets.bytes_received, "bytes received per flow and endpoint"),
        ("tcp_sock.data_segs_out", offsets.data_segs_out, "bytes and packets sent per flow and endpoint"),
        ("tcp_sock.data_segs_in", offsets.data_segs_in, "bytes and packets received per flow and endpoint"),
        ("sock.sk_shutdown", offsets.sk_shutdown, "received bytes without the FIN"),
    ] {
        if missing == governor_common::SockOffsets::ABSENT {
            warn!(field, loses, "not in this kernel's BTF: governor goes without it");
        }
    }
    reasons
}

/// Readings of the maps, and rebuilding the connection mirror from the
/// kernel's table after lost events, at most once per interval (the walk
/// costs two system calls per socket).
#[derive(Default)]
struct Resync {
    pending: bool,
    last: Option<std::time::Instant>,
    /// Readings of the maps so far (`Probes::begin_reading`).
    readings: u64,
}

const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// Unix time minus the monotonic clock, in seconds.
fn unix_offset() -> i64 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(unix).unwrap_or(0) - i64::try_from(http::now().secs).unwrap_or(0)
}

fn read_maps(probes: &mut Probes, aggregator: &mut Aggregator, state: &AppState, now: u64, resync: &mut Resync) {
    // The monitor forgets the reset events it counted at each reading; the
    // kernel's limit on them starts again with it.
    resync.readings += 1;
    if let Err(e) = probes.begin_reading(resync.readings) {
        warn!(error = %e, "starting a reading failed");
    }
    match probes.read() {
        Ok(snapshot) => {
            let mut increments = aggregator.advance(&snapshot);
            let mut metrics = state.metrics.lock().expect("metrics lock poisoned");
            let mut monitor = state.monitor.lock().expect("monitor lock poisoned");
            if increments.counters[governor_common::counter::EVENTS_LOST as usize] > 0 {
                resync.pending = true;
            }
            if resync.pending && resync.last.is_none_or(|t| t.elapsed() >= RESYNC_INTERVAL) {
                match probes.sockets() {
                    Ok(table) => {
                        warn!(
                            sockets = table.len(),
                            "events were lost: connection view rebuilt from the kernel's table"
                        );
                        monitor.tracker.replace(table);
                        resync.pending = false;
                        resync.last = Some(std::time::Instant::now());
                    }
                    Err(e) => warn!(error = %e, "reading the kernel's socket table failed"),
                }
            }
            metrics.connection_histograms(&snapshot.histograms);
            monitor.tick(&mut increments, http::now(), &mut metrics);
            drop(monitor);
            metrics.apply(&increments, now);
            match probes.policy_decisions() {
                Ok(totals) => metrics.policy_decisions(&totals),
                Err(e) => warn!(error = %e, "reading the policy decisions failed"),
            }
            match probes.bandwidth_dropped() {
                Ok(totals) => metrics.bandwidth_dropped(&totals),
                Err(e) => warn!(error = %e, "reading the bytes bandwidth policing dropped failed"),
            }
            metrics
                .map_entries
                .with_label_values(&["endpoints"])
                .set(i64::try_from(snapshot.endpoints.len()).unwrap_or(i64::MAX));
        }
        Err(e) => warn!(error = %e, "reading the kernel maps failed"),
    }
}

/// Hands the ring buffer's events to the monitor; true when they make a
/// reading due at once (`Monitor::reading_due`).
fn drain_events(events: &mut aya::maps::RingBuf<aya::maps::MapData>, state: &AppState) -> bool {
    let metrics = state.metrics.lock().expect("metrics lock poisoned");
    let mut monitor = state.monitor.lock().expect("monitor lock poisoned");
    while let Some(item) = events.next() {
        match decode_event(&item) {
            Some(Event::Tcp(event)) => {
                metrics.count_event(event.kind);
                match event.kind {
                    governor_common::event_kind::RESET_SENT => monitor.on_reset_sent(&event),
                    governor_common::event_kind::RESET_RECEIVED => monitor.on_reset_received(&event),
                    _ => {}
                }
                debug!(
                    kind = event.kind,
                    local = labels::endpoint_of(event.family, &event.saddr, event.sport),
                    remote = labels::endpoint_of(event.family, &event.daddr, event.dport),
                    state = %labels::tcp_state_name(event.state.into()),
                    reason = event.reason,
                    "tcp event"
                );
            }
            Some(Event::Conn(event)) => {
                metrics.count_event(event.kind);
                monitor.on_conn_event(&event);
            }
            None => warn!(bytes = item.len(), "ring buffer record of unknown kind or size"),
        }
    }
    monitor.reading_due(http::now())
}

/// Puts the config's policies in force; in pinned mode over the state the
/// previous daemon left.
///
/// The lease is renewed only once that succeeded: a pinned daemon that
/// fails at start (and again, in a crash loop) does not keep the previous
/// daemon's rules alive.
fn start_enforcement(
    probes: &mut Probes,
    config: &Config,
    state: &AppState,
    lease: Duration,
) -> anyhow::Result<Enforcement> {
    let mut enforcement = Enforcement::new(probes.take_breakers()?);
    if config.enforcement.pinned {
        enforcement.recover(&probes.policy_owners()?, &config.policies);
    }
    enforcement.apply(probes, &config.policies, state)?;
    if config.enforcement.pinned {
        probes.renew_lease(lease_until(lease))?;
    }
    Ok(enforcement)
}

/// Loads and attaches the programs; in pinned mode over the pinned maps
/// and links. A lease an earlier daemon left is not extended here; fresh
/// maps get one at once (0 would mean rules that never lapse).
fn load_probes(
    config: &Config,
    kernel_config: &governor_common::KernelConfig,
    lease: Duration,
) -> anyhow::Result<Probes> {
    let pins = pins(&config.enforcement)?;
    let pinned = pins.is_some();
    let mut probes = Probes::load(kernel_config, sizes(config), config.ebpf.count_flows, pins)?;
    if pinned && probes.lease()? == 0 {
        probes.renew_lease(lease_until(lease))?;
    }
    Ok(probes)
}

/// Pinned mode's pin directory, prepared. Without pinned mode, pins found
/// there are left alone (another daemon may own them) but named in the
/// log: they enforce beside this daemon's programs until their lease runs
/// out, or until `governor unpin` removes them.
fn pins(enforcement: &crate::config::Enforcement) -> anyhow::Result<Option<Pins>> {
    let dir = &enforcement.pin_dir;
    if !enforcement.pinned {
        if dir.exists() {
            warn!(
                pin_dir = %dir.display(),
                "enforcement.pinned is off, but pinned policies are there: they hold until their lease runs out \
                 unless a pinned daemon renews it; `governor unpin` removes them now"
            );
        }
        return Ok(None);
    }
    let (pins, removed) = Pins::prepare(dir)
        .with_context(|| format!("pinned mode: cannot prepare {} (it must be on bpffs)", dir.display()))?;
    for path in removed {
        warn!(path = %path.display(), "removed pins of another layout version: their policies start afresh");
    }
    Ok(Some(pins))
}

/// Pinned mode: the policies hold for `lease` from now.
///
/// Also notices pinned programs whose pin is gone (`governor unpin`, a
/// removed cgroup): they no longer run, which
/// `governor_ebpf_programs_attached` shows.
fn renew_lease(probes: &mut Probes, lease: Duration, state: &AppState) {
    if let Err(e) = probes.renew_lease(lease_until(lease)) {
        warn!(error = %e, "cannot renew the policies' lease: they lapse if this persists");
    }
    let running = probes.running();
    let metrics = state.metrics.lock().expect("metrics lock poisoned");
    let before = metrics.programs_attached.get();
    let now = i64::try_from(running).unwrap_or(i64::MAX);
    if now < before {
        warn!(
            unpinned = probes.unpinned(),
            "pinned enforcement programs were removed (governor unpin?): their policies are not enforced until \
             governor restarts"
        );
    }
    metrics.programs_attached.set(now);
}

/// The monotonic time at which a lease renewed now ends.
fn lease_until(lease: Duration) -> u64 {
    http::now().ns.saturating_add(u64::try_from(lease.as_nanos()).unwrap_or(u64::MAX))
}
