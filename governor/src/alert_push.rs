//! Posting alerts to every configured Alertmanager (`alerting.rs` decides
//! what and when). A thin edge: one task owns the HTTP client; the daemon
//! loop hands it batches and never waits for it.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    alerting::{self, Alert, Pusher},
    config::Alerting,
    enforce::Enforcement,
    http::AppState,
};

/// How long one post may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// The daemon's side: turns what holds into alerts on every reading.
pub struct AlertPush {
    pusher: Pusher,
    node: String,
    /// Added to every alert (`alerting.labels`).
    labels: std::collections::BTreeMap<String, String>,
    tx: mpsc::Sender<Vec<Alert>>,
}

impl AlertPush {
    /// Starts the posting task; `None` when no Alertmanager is configured.
    pub fn start(config: &Alerting, node: String, state: &Arc<AppState>) -> Option<Self> {
        if config.alertmanagers.is_empty() {
            return None;
        }
        let (tx, rx) = mpsc::channel(16);
        let urls: Vec<String> = config.alertmanagers.iter().map(|u| format!("{}/api/v2/alerts", u.0)).collect();
        tokio::spawn(post_all(urls, rx, Arc::clone(state)));
        Some(Self { pusher: Pusher::new(config.resend_seconds.get().into()), node, labels: config.labels.clone(), tx })
    }

    /// One reading: the quarantined instances and the breakers not closed.
    pub fn step(&mut self, state: &AppState, enforcement: &Enforcement) {
        let mut holding = Vec::new();
        if let Some(shared) = state.registry.get() {
            let quarantine = shared.quarantine.lock().expect("quarantine lock poisoned");
            holding.extend(quarantine.iter().map(|q| alerting::deregistered(&self.node, q)));
        }
        holding.extend(enforcement.open_breakers().iter().map(|b| alerting::breaker(&self.node, b)));
        for firing in &mut holding {
            for (k, v) in &self.labels {
                firing.labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let alerts = self.pusher.step(crate::registry::unix_now(), holding);
        if !alerts.is_empty() && self.tx.try_send(alerts).is_err() {
            warn!("the Alertmanager posts are behind: a batch of alerts is dropped (sent again at its re-send)");
        }
    }
}

/// Posts each batch to every Alertmanager at once: one that does not
/// answer delays nobody else.
async fn post_all(urls: Vec<String>, mut rx: mpsc::Receiver<Vec<Alert>>, state: Arc<AppState>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    while let Some(alerts) = rx.recv().await {
        let body = Bytes::from(serde_json::to_vec(&alerts).expect("alerts serialize"));
        let mut posts = tokio::task::JoinSet::new();
        for url in &urls {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            posts.spawn(async move {
                let req = axum::http::Request::post(url.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .expect("a valid request");
                let result = match tokio::time::timeout(POST_TIMEOUT, client.request(req)).await {
                    Ok(Ok(response)) if response.status().is_success() => Ok(()),
                    Ok(Ok(response)) => Err(format!("answered {}", response.status())),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} s", POST_TIMEOUT.as_secs())),
                };
                (url, result)
            });
        }
        while let Some(Ok((url, result))) = posts.join_next().await {
            let label = if result.is_ok() { "ok" } else { "error" };
            state
                .metrics
                .lock()
                .expect("metrics lock poisoned")
                .alertmanager_posts
                .with_label_values(&[&url, label])
                .inc();
            match result {
                Ok(()) => debug!(%url, alerts = alerts.len(), "alerts posted"),
                Err(e) => warn!(%url, error = %e, "posting alerts to Alertmanager failed"),
            }
        }
    }
}
