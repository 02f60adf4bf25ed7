//! The registry's two etcd transactions, driven directly against a real
//! etcd: what happens when the instance or governor's record changes
//! between the judgement and the action. The daemon calls exactly these
//! functions; here the change can be made at that precise moment.

use governor::{
    config::Config,
    registry::{
        etcd::{self, Entry, Judged, Policy, Removal, Return},
        protocol::{Keys, QuarantineRecord},
    },
};
use governor_tests::{Etcd, etcd::Kv};

const KEY: &str = "/microservices/pay/1";
const RECORD: &str = "/governor/v1/quarantine/kratos/microservices/pay/1";

fn value(version: &str) -> String {
    format!(r#"{{"id":"1","name":"pay","version":"{version}","endpoints":["http://10.0.0.1:8000"]}}"#)
}

/// A real etcd holding two instances of `pay` (`KEY` at "v1" and another),
/// and a client as the daemon makes it, from its config file's `[etcd]`.
struct Fixture {
    etcd: Etcd,
    rt: tokio::runtime::Runtime,
    client: etcd_client::Client,
}

impl Fixture {
    fn new() -> Self {
        let etcd = Etcd::start();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let config =
            Config::parse("test.toml", &format!("[etcd]\nendpoints = [\"{}\"]\n", etcd.url())).expect("config");
        let client = rt.block_on(etcd::connect(&config.etcd)).expect("connect to etcd");
        etcd.put(KEY, &value("v1"));
        etcd.put("/microservices/pay/2", &value("other"));
        Self { etcd, rt, client }
    }

    /// `KEY` as it is now, as the daemon would have judged it.
    fn judge(&self) -> Entry {
        entry(&self.etcd.get(KEY).expect("registered"))
    }

    fn deregister(&mut self, judged: &Entry) -> Removal {
        let judged = Judged {
            registry: "kratos",
            service_prefix: "/microservices/pay/".into(),
            service: "pay",
            entry: judged,
            endpoint: "10.0.0.1:8000",
            reason: "resets: 10 resets in 5 s".into(),
        };
        let keys = Keys::new("/governor/v1");
        self.rt
            .block_on(etcd::deregister(&mut self.client, &keys, &policy(), &judged, None, 1_000))
            .expect("etcd answered")
    }

    fn restore(&mut self, record: &QuarantineRecord, revision: i64) -> Return {
        let keys = Keys::new("/governor/v1");
        self.rt.block_on(etcd::restore(&mut self.client, &keys, record, revision)).expect("etcd answered")
    }
}

fn entry(kv: &Kv) -> Entry {
    Entry {
        key: KEY.to_owned(),
        value: kv.value.clone().into_bytes(),
        lease: kv.lease,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    }
}

fn policy() -> Policy {
    Policy {
        node: "test-node".into(),
        max_ejection_percent: 50,
        quarantine_base_seconds: 30,
        quarantine_max_seconds: 600,
    }
}

#[test]
fn instance_changed_between_judgement_and_action_is_not_deleted() {
    let mut f = Fixture::new();
    let judged = f.judge();

    // The owner registers again (a new mod_revision) after the judgement.
    f.etcd.put(KEY, &value("v2"));
    assert_eq!(f.deregister(&judged), Removal::Stale);
    let kv = f.etcd.get(KEY).expect("not deleted");
    assert_eq!(kv.value, value("v2"));
    assert!(f.etcd.get_prefix("/governor/").is_empty(), "no budget and no record written");

    // The same call with what is there now goes through: the comparison,
    // not something else, refused the first one.
    let Removal::Done { record, .. } = f.deregister(&entry(&kv)) else { panic!("a fresh judgement deregisters") };
    assert_eq!(record.value, value("v2"));
    assert!(f.etcd.get(KEY).is_none());
    assert!(f.etcd.get(RECORD).is_some());
}

#[test]
fn instance_deleted_between_judgement_and_action_is_stale() {
    let mut f = Fixture::new();
    // A third instance, so that the budget still allows one out without it.
    f.etcd.put("/microservices/pay/3", &value("third"));
    let judged = f.judge();
    f.etcd.delete(KEY);
    assert_eq!(f.deregister(&judged), Removal::Stale);
    assert!(f.etcd.get_prefix("/governor/").is_empty(), "no budget and no record written");
}

#[test]
fn record_changed_between_judgement_and_restore_puts_nothing_back() {
    let mut f = Fixture::new();
    let lease = f.etcd.put_with_lease(KEY, &value("v1"), 600);
    let judged = f.judge();
    let Removal::Done { record, revision } = f.deregister(&judged) else { panic!("deregistered") };

    // Someone else rewrites governor's record after it was read.
    let rewritten = f.etcd.get(RECORD).expect("record").value;
    f.etcd.put(RECORD, &rewritten);
    assert_eq!(f.restore(&record, revision), Return::Stale);
    assert!(f.etcd.get(KEY).is_none(), "nothing put back");

    // With the record as it is now, the restore goes through, on the lease.
    let now = f.etcd.get(RECORD).expect("record").mod_revision;
    assert_eq!(f.restore(&record, now), Return::Restored);
    let back = f.etcd.get(KEY).expect("restored");
    assert_eq!((back.value.as_str(), back.lease), (value("v1").as_str(), lease));
    assert!(f.etcd.get(RECORD).is_none());
}

#[test]
fn owner_registered_again_before_restore_only_clears_records() {
    let mut f = Fixture::new();
    let judged = f.judge();
    let Removal::Done { record, revision } = f.deregister(&judged) else { panic!("deregistered") };
    f.etcd.put(KEY, &value("v3"));
    assert_eq!(f.restore(&record, revision), Return::AlreadyBack);
    assert_eq!(f.etcd.get(KEY).expect("the owner's").value, value("v3"), "the owner's registration is kept");
    assert!(f.etcd.get(RECORD).is_none());
    let budget = f.etcd.get("/governor/v1/budget/kratos/pay").expect("budget record");
    assert!(budget.value.contains(r#""ejected":{}"#), "{}", budget.value);
}
