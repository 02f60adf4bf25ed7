//! The one HTTP listener: `/metrics`, `/healthz`, `/readyz`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::metrics::Metrics;

pub struct AppState {
    pub metrics: Mutex<Metrics>,
    /// Programs attached and the first reading of the maps done.
    pub ready: AtomicBool,
}

impl AppState {
    pub fn new(metrics: Metrics) -> Arc<Self> {
        Arc::new(Self { metrics: Mutex::new(metrics), ready: AtomicBool::new(false) })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
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
