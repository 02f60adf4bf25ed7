//! Watches the etcd policy key (`etcd.policy_key`) and hands every new
//! value to the daemon loop, which validates it with the file's policies
//! and puts the result in force (`daemon.rs`). `None` means the key is
//! gone (no policies from etcd). While etcd is unreachable the policies in
//! force stay; the watch starts again with a back-off and reads the key
//! anew.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{config::Etcd, registry::etcd::connect};

const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// `governor_etcd_policy_key_watched`, registered in `catalog`: registered
/// only where a policy key is set, so that its alert says nothing of nodes
/// without one.
pub fn gauge(catalog: &crate::metrics::Catalog) -> prometheus::IntGauge {
    let watched = prometheus::IntGauge::new(
        "governor_etcd_policy_key_watched",
        "1 while the etcd policy key (etcd.policy_key) is read and watched; 0 while the watch is down and retried",
    )
    .expect("valid metric");
    catalog.register(watched)
}

/// Runs until the daemon loop drops its receiver. `watched` is 1 while the
/// key is read and watched, 0 from the first failure until it is again.
pub async fn watch(config: Etcd, updates: mpsc::Sender<Option<String>>, watched: prometheus::IntGauge) {
    const BACKOFF_FIRST: Duration = Duration::from_millis(500);
    let mut backoff = BACKOFF_FIRST;
    let mut last = Sent::Nothing;
    loop {
        let mut watching = false;
        let result = session(&config, &updates, &mut last, &mut watching, &watched).await;
        watched.set(0);
        if watching {
            // It worked for a while: the next failure starts over.
            backoff = BACKOFF_FIRST;
        }
        match result {
            Ok(()) => return,
            Err(e) => {
                warn!(key = %config.policy_key, error = %format!("{e:#}"), retry_in = ?backoff, "etcd policy key: watch failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: the key's value, then its changes. `Ok` when the daemon
/// is gone.
async fn session(
    config: &Etcd,
    updates: &mpsc::Sender<Option<String>>,
    last: &mut Sent,
    watching: &mut bool,
    watched: &prometheus::IntGauge,
) -> anyhow::Result<()> {
    let mut client = connect(config).await?;
    let key = config.policy_key.as_str();
    let got = client.get(key, None).await?;
    let revision = got.header().map_or(0, etcd_client::ResponseHeader::revision);
    let value = got.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
    info!(%key, present = value.is_some(), "etcd policy key: watching");
    if !send(updates, last, value).await {
        return Ok(());
    }
    let mut stream = client.watch(key, Some(WatchOptions::new().with_start_revision(revision + 1))).await?;
    *watching = true;
    watched.set(1);
    while let Some(response) = stream.message().await? {
        if response.canceled() {
            anyhow::bail!("the watch was cancelled: {}", response.cancel_reason());
        }
        for event in response.events() {
            let value = match event.event_type() {
                EventType::Put => event.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                EventType::Delete => None,
            };
            if !send(updates, last, value).await {
                return Ok(());
            }
        }
    }
    anyhow::bail!("the watch stream ended")
}

/// What was handed to the daemon last.
#[derive(PartialEq, Eq)]
enum Sent {
    Nothing,
    Value(Option<String>),
}

/// Sends a value unless it is the one sent last; false when the daemon is
/// gone.
async fn send(updates: &mpsc::Sender<Option<String>>, last: &mut Sent, value: Option<String>) -> bool {
    let sent = Sent::Value(value.clone());
    if *last == sent {
        return true;
    }
    *last = sent;
    updates.send(value).await.is_ok()
}
