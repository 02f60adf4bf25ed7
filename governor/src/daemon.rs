//! `governor run`: set up the host, load and attach, then read the kernel
//! maps and drain the ring buffer until SIGTERM or SIGINT.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};
use tracing::{debug, info, warn};

use crate::{
    btf,
    config::Config,
    ebpf::{Probes, Sizes, decode_event},
    host::{self, BPFFS, MountOutcome, TRACEFS},
    http::{self, AppState},
    labels,
    metrics::{Metrics, SeriesLimits},
    stats::Aggregator,
    tracefs,
};

pub async fn run(config: Config) -> anyhow::Result<()> {
    host::check_root()?;
    host::check_btf()?;
    for (fs, path) in [(TRACEFS, &config.ebpf.tracefs), (BPFFS, &config.ebpf.bpffs)] {
        if host::ensure_mounted(fs, path, config.ebpf.mount_missing)? == MountOutcome::Mounted {
            info!(fs = fs.name, path = %path.display(), "mounted");
        }
    }
    let mut kernel_config = tracefs::read_layouts(&config.ebpf.tracefs)?;
    if config.metrics.collapse_ephemeral_ports {
        let (low, high) = host::ephemeral_port_range()?;
        kernel_config.ephemeral_low = low;
        kernel_config.ephemeral_high = high;
    }

    let addr = config.daemon.metrics_addr;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}: choose another address with --metrics-addr"))?;

    let mut probes = Probes::load(
        &kernel_config,
        Sizes {
            endpoint_table_entries: config.ebpf.endpoint_table_entries.get(),
            ring_buffer_bytes: config.ebpf.ring_buffer_bytes.0,
        },
    )?;
    let mut events = probes.take_events()?;
    info!(programs = probes.attached(), "eBPF programs attached");

    // Names for the kernel's reset reasons; without BTF they stay numbers.
    let reasons =
        btf::Btf::read(Path::new(btf::VMLINUX)).and_then(|b| btf::reset_reason_names(&b)).unwrap_or_else(|e| {
            warn!(error = %e, "reset reasons will be shown as numbers");
            Vec::new()
        });
    let limits = SeriesLimits {
        per_metric: config.metrics.max_endpoint_series.get() as usize,
        budget: config.metrics.max_series_total.get() as usize,
        ttl_seconds: config.metrics.series_ttl_seconds.get().into(),
    };
    let metrics = Metrics::new(limits, &reasons);
    metrics.programs_attached.set(i64::try_from(probes.attached()).unwrap_or(i64::MAX));
    metrics.map_capacity.with_label_values(&["endpoints"]).set(i64::from(probes.endpoint_capacity()));
    let state = AppState::new(metrics);

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
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut aggregator = Aggregator::default();
    let started = std::time::Instant::now();

    let signal_name = loop {
        tokio::select! {
            _ = poll.tick() => {
                read_maps(&probes, &mut aggregator, &state, started.elapsed().as_secs());
                state.set_ready(true);
            }
            _ = drain.tick() => drain_events(&mut events, &state),
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
        }
    };
    info!(signal = signal_name, "shutting down");
    state.set_ready(false);
    drain_events(&mut events, &state);
    read_maps(&probes, &mut aggregator, &state, started.elapsed().as_secs());
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

fn read_maps(probes: &Probes, aggregator: &mut Aggregator, state: &AppState, now: u64) {
    match probes.read() {
        Ok(snapshot) => {
            let increments = aggregator.advance(&snapshot);
            let mut metrics = state.metrics.lock().expect("metrics lock poisoned");
            metrics.apply(&increments, now);
            metrics
                .map_entries
                .with_label_values(&["endpoints"])
                .set(i64::try_from(snapshot.endpoints.len()).unwrap_or(i64::MAX));
        }
        Err(e) => warn!(error = %e, "reading the kernel maps failed"),
    }
}

fn drain_events(events: &mut aya::maps::RingBuf<aya::maps::MapData>, state: &AppState) {
    let metrics = state.metrics.lock().expect("metrics lock poisoned");
    while let Some(item) = events.next() {
        let Some(event) = decode_event(&item) else {
            warn!(bytes = item.len(), "ring buffer record of unexpected size");
            continue;
        };
        metrics.count_event(event.kind);
        debug!(
            kind = event.kind,
            local = labels::endpoint_of(event.family, &event.saddr, event.sport),
            remote = labels::endpoint_of(event.family, &event.daddr, event.dport),
            state = %labels::tcp_state_name(event.state.into()),
            reason = event.reason,
            "tcp event"
        );
    }
}
