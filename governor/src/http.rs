//! The one HTTP listener: `/metrics`, `/healthz`, `/readyz` and the JSON
//! API under `/api/v1/`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    extract::{
        Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};

use crate::{
    api,
    ebpf::{FlowSampler, FlowTable},
    flows::{self, FlowQuery},
    metrics::Metrics,
    monitor::{ConnectionFilter, MAX_PAGE, Monitor, Now},
};

pub struct AppState {
    pub metrics: Mutex<Metrics>,
    pub monitor: Mutex<Monitor>,
    /// Programs attached and the first reading of the maps done.
    pub ready: AtomicBool,
    /// The kernel's per-flow table; `None` when flows are not counted.
    pub flows: Option<FlowTable>,
    /// The sweep of the per-socket table and its size, run before the
    /// connections are shown so that they include the newest.
    pub sweep: (FlowSampler, u32),
    /// How many times the daemon drained the event ring buffer.
    pub drains: tokio::sync::watch::Sender<u64>,
    /// The registry's quarantine list; unset when no registry is watched.
    pub registry: std::sync::OnceLock<Arc<crate::registry::Shared>>,
}

impl AppState {
    pub fn new(metrics: Metrics, monitor: Monitor, flows: Option<FlowTable>, sweep: (FlowSampler, u32)) -> Arc<Self> {
        Arc::new(Self {
            metrics: Mutex::new(metrics),
            monitor: Mutex::new(monitor),
            ready: AtomicBool::new(false),
            flows,
            sweep,
            drains: tokio::sync::watch::Sender::new(0),
            registry: std::sync::OnceLock::new(),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Counts one drain of the event ring buffer.
    pub fn drained(&self) {
        self.drains.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Brings the connection view up to date: sweeps the per-socket table,
    /// so the kernel tells of the connections opened since the last sweep,
    /// and waits for the daemon to drain what it told (a second at most;
    /// a view a sweep late is better than none).
    async fn sweep_connections(&self) {
        let (sampler, capacity) = self.sweep.clone();
        let mut drains = self.drains.subscribe();
        match tokio::task::spawn_blocking(move || sampler.run(capacity)).await {
            Ok(Ok(())) => {
                drains.borrow_and_update();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drains.changed()).await;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping the socket table failed"),
            Err(e) => tracing::warn!(error = %e, "the socket table sweep stopped"),
        }
    }
}

/// The kernel's clock (`bpf_ktime_get_ns` is `CLOCK_MONOTONIC`).
pub fn now() -> Now {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC exists");
    let ns = u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec()).unwrap_or(0);
    Now::from_ns(ns)
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/endpoints", get(endpoints))
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/connections", get(connections))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/quarantine", get(quarantine))
        .route("/api/v1/quarantine/release", post(release))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = state.metrics.lock().expect("metrics lock poisoned").render();
    ([(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body)
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: programs not attached or first read not done\n")
    }
}

async fn status(State(state): State<Arc<AppState>>) -> Json<api::Status> {
    Json(state.monitor.lock().expect("monitor lock poisoned").status(now()))
}

async fn endpoints(State(state): State<Arc<AppState>>) -> Json<api::Endpoints> {
    Json(api::Endpoints { endpoints: state.monitor.lock().expect("monitor lock poisoned").endpoints(now()) })
}

async fn processes(State(state): State<Arc<AppState>>) -> Json<api::Processes> {
    state.sweep_connections().await;
    Json(api::Processes { processes: state.monitor.lock().expect("monitor lock poisoned").processes(now()) })
}

async fn connections(
    State(state): State<Arc<AppState>>,
    filter: Result<Query<ConnectionFilter>, QueryRejection>,
) -> Response {
    let Query(filter) = match filter {
        Ok(f) => f,
        Err(e) => return bad_request(&format!("{e}; parameters: state, pid, endpoint, offset, limit")),
    };
    if filter.limit == 0 || filter.limit > MAX_PAGE {
        return bad_request(&format!("limit must be between 1 and {MAX_PAGE}"));
    }
    state.sweep_connections().await;
    Json(state.monitor.lock().expect("monitor lock poisoned").connections(&filter, now())).into_response()
}

/// The instances governor holds out of the registries, with the reason and
/// the earliest time each may be put back.
async fn quarantine(State(state): State<Arc<AppState>>) -> Response {
    match state.registry.get() {
        Some(shared) => {
            let quarantined = shared.quarantine.lock().expect("quarantine lock poisoned").clone();
            Json(api::Quarantine { quarantined }).into_response()
        }
        None => no_registry(),
    }
}

/// Puts one quarantined instance back by hand (`governor registry
/// release`): the registry task runs the restore transaction and answers.
async fn release(
    State(state): State<Arc<AppState>>,
    request: Result<Json<api::ReleaseRequest>, JsonRejection>,
) -> Response {
    use crate::registry::{Command, ReleaseError};
    let Json(request) = match request {
        Ok(r) => r,
        Err(e) => return bad_request(&format!("{e}; send {{\"key\": \"<instance key>\"}}")),
    };
    let Some(shared) = state.registry.get() else { return no_registry() };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let unavailable = |why: &str| error(StatusCode::SERVICE_UNAVAILABLE, why);
    if shared.commands.send(Command::Release { key: request.key, reply }).await.is_err() {
        return unavailable("the registry task is not running");
    }
    match tokio::time::timeout(std::time::Duration::from_secs(30), answer).await {
        Ok(Ok(Ok(released))) => Json(released).into_response(),
        Ok(Ok(Err(e))) => {
            let status = match e {
                ReleaseError::NotQuarantined(_) => StatusCode::NOT_FOUND,
                ReleaseError::DryRun | ReleaseError::Stale(_) => StatusCode::CONFLICT,
                ReleaseError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, &e.to_string())
        }
        Ok(Err(_)) | Err(_) => unavailable("the registry task did not answer within 30 s"),
    }
}

fn no_registry() -> Response {
    error(StatusCode::NOT_FOUND, "no registry is watched: set etcd.endpoints and [[registries]]")
}

async fn flows(State(state): State<Arc<AppState>>, query: Result<Query<FlowQuery>, QueryRejection>) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(&format!("{e}; parameters: sort (rate or bytes), limit")),
    };
    if query.limit == 0 || query.limit > flows::MAX_LIMIT {
        return bad_request(&format!("limit must be between 1 and {}", flows::MAX_LIMIT));
    }
    if state.flows.is_none() {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "flows are not counted: ebpf.count_flows is off" })),
        )
            .into_response();
    }
    // Walking the kernel table takes two system calls per flow: off the
    // async workers.
    let ephemeral = state.flows.as_ref().map_or((1, 0), |f| f.ephemeral);
    let reader = Arc::clone(&state);
    let table = tokio::task::spawn_blocking(move || reader.flows.as_ref().map_or(Ok(Vec::new()), FlowTable::read));
    match table.await {
        Ok(Ok(mut table)) => {
            // The kernel does not know the owners of connections opened
            // before governor started; the mirror has those found since.
            let monitor = state.monitor.lock().expect("monitor lock poisoned");
            for row in table.iter_mut().filter(|r| r.info.owner.tgid == 0) {
                if let Some(owner) = monitor.tracker.owner_of(row.skaddr) {
                    row.info.owner = owner;
                }
            }
            drop(monitor);
            Json(flows::top(&table, query, now().ns, ephemeral)).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
