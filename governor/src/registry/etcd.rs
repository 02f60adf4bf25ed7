//! The etcd edge of the registry: connecting, reading, and the two
//! transactions of the protocol. Every write compares what was judged, so a
//! stale decision changes nothing; the deletion of an instance never
//! touches its lease.

use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, PutOptions, TlsOptions,
    Txn, TxnOp,
};

use super::protocol::{Budget, History, Keys, QuarantineRecord, Refusal, may_eject, quarantine_seconds};
use crate::config::Etcd as EtcdConfig;

/// Transactions retried when only the budget record moved under them.
const BUDGET_RETRIES: usize = 3;

pub async fn connect(config: &EtcdConfig) -> anyhow::Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(config.connect_timeout_ms.get().into()))
        .with_timeout(Duration::from_millis(config.request_timeout_ms.get().into()))
        .with_require_leader(true);
    if !config.username.is_empty() {
        let password = match &config.password_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading etcd.password_file {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            None => String::new(),
        };
        options = options.with_user(config.username.clone(), password);
    }
    if let Some(ca) = &config.ca_file {
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    Client::connect(config.endpoints.clone(), Some(options)).await.context("connecting to etcd")
}

/// A key as read, with the revisions the transactions compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
}

impl From<&KeyValue> for Entry {
    fn from(kv: &KeyValue) -> Self {
        Self {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            lease: kv.lease(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        }
    }
}

/// Every key under `prefix` and the store's revision they were read at.
pub async fn list(client: &mut Client, prefix: &str) -> anyhow::Result<(Vec<Entry>, i64)> {
    let resp = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let revision = resp.header().map_or(0, etcd_client::ResponseHeader::revision);
    Ok((resp.kvs().iter().map(Entry::from).collect(), revision))
}

pub async fn get(client: &mut Client, key: &str) -> anyhow::Result<Option<Entry>> {
    let resp = client.get(key, None).await?;
    Ok(resp.kvs().first().map(Entry::from))
}

/// Is there a leader? Nothing is written without one.
pub async fn has_leader(client: &mut Client) -> anyhow::Result<bool> {
    Ok(client.status().await?.leader() != 0)
}

/// An instance as judged: its key, value and revisions at that moment.
#[derive(Clone, Debug)]
pub struct Judged<'a> {
    pub registry: &'a str,
    /// `<registry prefix>/<service>/`: the service's instances.
    pub service_prefix: String,
    pub service: &'a str,
    pub entry: &'a Entry,
    pub endpoint: &'a str,
    pub reason: String,
}

/// What the quarantine policy needs from the configuration.
#[derive(Clone, Debug)]
pub struct Policy {
    pub node: String,
    pub max_ejection_percent: u32,
    pub quarantine_base_seconds: u64,
    pub quarantine_max_seconds: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// Deleted; the record written is at `revision`.
    Done {
        record: Box<QuarantineRecord>,
        revision: i64,
    },
    Refused(Refusal),
    /// The instance changed or went since it was judged: nothing deleted.
    Stale,
}

async fn budget(client: &mut Client, key: &str) -> anyhow::Result<(Budget, i64)> {
    Ok(match get(client, key).await? {
        Some(e) => (serde_json::from_slice(&e.value).unwrap_or_default(), e.mod_revision),
        None => (Budget::default(), 0),
    })
}

/// Compares the budget record with what was read (absent: still absent).
fn budget_unchanged(key: &str, revision: i64) -> Compare {
    if revision == 0 {
        Compare::create_revision(key, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key, CompareOp::Equal, revision)
    }
}

/// Takes the instance out in one transaction: only if it is still the
/// registration that was judged and the budget record is as read; deletes
/// the key (never its lease), spends the budget, writes the quarantine
/// record. `existing` is governor's record when the owner put the key back
/// during a quarantine (the slot is then spent already).
pub async fn deregister(
    client: &mut Client,
    keys: &Keys,
    policy: &Policy,
    judged: &Judged<'_>,
    existing: Option<&QuarantineRecord>,
    now_unix: u64,
) -> anyhow::Result<Removal> {
    let key = &judged.entry.key;
    let budget_key = keys.budget(judged.registry, judged.service);
    let record_key = keys.quarantine(judged.registry, key);
    for _ in 0..BUDGET_RETRIES {
        let (mut budget, budget_revision) = budget(client, &budget_key).await?;
        let registered =
            client.get(judged.service_prefix.as_str(), Some(GetOptions::new().with_prefix().with_count_only())).await?;
        let registered = usize::try_from(registered.count()).unwrap_or(usize::MAX);
        if !budget.ejected.contains_key(key)
            && let Err(refusal) = may_eject(registered, budget.ejected.len(), policy.max_ejection_percent)
        {
            return Ok(Removal::Refused(refusal));
        }
        let history = budget.history.entry(key.clone()).or_default();
        let attempt = existing.map_or(history.ejections + 1, |r| r.attempt.max(history.ejections) + 1);
        *history = History { ejections: attempt, last: now_unix };
        budget.ejected.insert(key.clone(), policy.node.clone());
        let quarantine = quarantine_seconds(policy.quarantine_base_seconds, policy.quarantine_max_seconds, attempt);
        let record = QuarantineRecord {
            registry: judged.registry.to_owned(),
            service: judged.service.to_owned(),
            key: key.clone(),
            value: String::from_utf8_lossy(&judged.entry.value).into_owned(),
            lease: judged.entry.lease,
            create_revision: judged.entry.create_revision,
            mod_revision: judged.entry.mod_revision,
            endpoint: judged.endpoint.to_owned(),
            reason: judged.reason.clone(),
            ejected_at: now_unix,
            restore_after: now_unix + quarantine,
            node: policy.node.clone(),
            attempt,
            fight_backs: existing.map_or(0, |r| r.fight_backs),
        };
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_str(), CompareOp::Equal, judged.entry.mod_revision),
                budget_unchanged(&budget_key, budget_revision),
            ])
            .and_then([
                TxnOp::delete(key.as_str(), None),
                TxnOp::put(budget_key.as_str(), serde_json::to_vec(&budget)?, None),
                TxnOp::put(record_key.as_str(), serde_json::to_vec(&record)?, None),
            ]);
        let resp = client.txn(txn).await?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, etcd_client::ResponseHeader::revision);
            return Ok(Removal::Done { record: Box::new(record), revision });
        }
        match get(client, key).await? {
            Some(now) if now.mod_revision == judged.entry.mod_revision => {} // the budget moved: read it again
            _ => return Ok(Removal::Stale),
        }
    }
    Ok(Removal::Stale)
}

/// Does the lease still exist? etcd answers an expired or revoked lease
/// with a TTL of -1, or (some versions and proxies) with "lease not
/// found": both mean no.
async fn lease_alive(client: &mut Client, lease: i64) -> anyhow::Result<bool> {
    match client.lease_time_to_live(lease, None).await {
        Ok(resp) => Ok(resp.ttl() > 0),
        Err(e) if e.to_string().contains("lease not found") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Return {
    /// Put back with its value (and lease, when it had one).
    Restored,
    /// The owner registered again by itself: only the records were cleared.
    AlreadyBack,
    /// Its lease expired meanwhile (the owner is gone): records cleared,
    /// nothing put back.
    LeaseExpired,
    /// The record changed under us (another node or a person acted).
    Stale,
}

/// Puts a quarantined instance back in one transaction, only if its key is
/// still absent, the record is as read (`record_revision`) and the budget
/// record too; clears the record and the budget slot in the same step.
pub async fn restore(
    client: &mut Client,
    keys: &Keys,
    record: &QuarantineRecord,
    record_revision: i64,
) -> anyhow::Result<Return> {
    let budget_key = keys.budget(&record.registry, &record.service);
    let record_key = keys.quarantine(&record.registry, &record.key);
    for _ in 0..BUDGET_RETRIES {
        let (mut budget, budget_revision) = budget(client, &budget_key).await?;
        budget.ejected.remove(&record.key);
        let clear = [
            TxnOp::delete(record_key.as_str(), None),
            TxnOp::put(budget_key.as_str(), serde_json::to_vec(&budget)?, None),
        ];
        let unchanged = [
            Compare::mod_revision(record_key.as_str(), CompareOp::Equal, record_revision),
            budget_unchanged(&budget_key, budget_revision),
        ];
        let lease_alive = record.lease == 0 || lease_alive(client, record.lease).await?;
        let present = get(client, &record.key).await?.is_some();
        let (txn, outcome) = if present {
            (Txn::new().when(unchanged).and_then(clear), Return::AlreadyBack)
        } else if !lease_alive {
            (Txn::new().when(unchanged).and_then(clear), Return::LeaseExpired)
        } else {
            let options = (record.lease != 0).then(|| PutOptions::new().with_lease(record.lease));
            let mut ops = vec![TxnOp::put(record.key.as_str(), record.value.as_str(), options)];
            ops.extend(clear);
            let mut compares = vec![Compare::create_revision(record.key.as_str(), CompareOp::Equal, 0)];
            compares.extend(unchanged);
            (Txn::new().when(compares).and_then(ops), Return::Restored)
        };
        match client.txn(txn).await {
            Ok(resp) if resp.succeeded() => return Ok(outcome),
            Ok(_) => {}
            // The lease expired between the check and the put: go round.
            Err(e) if e.to_string().contains("lease not found") => continue,
            Err(e) => return Err(e.into()),
        }
        match get(client, &record_key).await? {
            Some(now) if now.mod_revision == record_revision => {} // the budget or the key moved
            _ => return Ok(Return::Stale),
        }
    }
    Ok(Return::Stale)
}
