//! The registry's two etcd transactions, driven directly against a real
//! etcd: what happens when the instance or governor's record changes
//! between the judgement and the action. The daemon calls exactly these
//! functions; here the change can be made at that precise moment.

use governor::{
    config::Config,
    registry::{
        etcd::{self, Entry, Judged, Policy, Removal, Return},
        protocol::Keys,
    },
};
use governor_tests::{Etcd, etcd::Kv};

const KEY: &str = "/microservices/pay/1";
const RECORD: &str = "/governor/v1/quarantine/kratos/microservices/pay/1";

fn value(version: &str) -> String {
    format!(r#"{{"id":"1","name":"pay","version":"{version}","endpoints":["http://10.0.0.1:8000"]}}"#)
}

/// A client as the daemon makes it, from its config file's `[etcd]`.
fn connect(rt: &tokio::runtime::Runtime, etcd: &Etcd) -> etcd_client::Client {
    let config = Config::parse("test.toml", &format!("[etcd]\nendpoints = [\"{}\"]\n", etcd.url())).expect("config");
    rt.block_on(etcd::connect(&config.etcd)).expect("connect to etcd")
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

fn deregister(rt: &tokio::runtime::Runtime, client: &mut etcd_client::Client, judged: &Entry) -> Removal {
    let judged = Judged {
        registry: "kratos",
        service_prefix: "/microservices/pay/".into(),
        service: "pay",
        entry: judged,
        endpoint: "10.0.0.1:8000",
        reason: "resets: 10 resets in 5 s".into(),
    };
    rt.block_on(etcd::deregister(client, &Keys::new("/governor/v1"), &policy(), &judged, None, 1_000))
        .expect("etcd answered")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn instance_changed_between_judgement_and_action_is_not_deleted() {
    let etcd = Etcd::start();
    let rt = runtime();
    let mut client = connect(&rt, &etcd);
    etcd.put(KEY, &value("v1"));
    etcd.put("/microservices/pay/2", &value("other"));
    let judged = entry(&etcd.get(KEY).expect("registered"));

    // The owner registers again (a new mod_revision) after the judgement.
    etcd.put(KEY, &value("v2"));
    assert_eq!(deregister(&rt, &mut client, &judged), Removal::Stale);
    let kv = etcd.get(KEY).expect("not deleted");
    assert_eq!(kv.value, value("v2"));
    assert!(etcd.get_prefix("/governor/").is_empty(), "no budget and no record written");

    // The same call with what is there now goes through: the comparison,
    // not something else, refused the first one.
    let Removal::Done { record, .. } = deregister(&rt, &mut client, &entry(&kv)) else {
        panic!("a fresh judgement deregisters")
    };
    assert_eq!(record.value, value("v2"));
    assert!(etcd.get(KEY).is_none());
    assert!(etcd.get(RECORD).is_some());
}

#[test]
fn instance_deleted_between_judgement_and_action_is_stale() {
    let etcd = Etcd::start();
    let rt = runtime();
    let mut client = connect(&rt, &etcd);
    etcd.put(KEY, &value("v1"));
    etcd.put("/microservices/pay/2", &value("other"));
    // A third instance, so that the budget still allows one out without it.
    etcd.put("/microservices/pay/3", &value("third"));
    let judged = entry(&etcd.get(KEY).expect("registered"));
    etcd.delete(KEY);
    assert_eq!(deregister(&rt, &mut client, &judged), Removal::Stale);
    assert!(etcd.get_prefix("/governor/").is_empty(), "no budget and no record written");
}

#[test]
fn record_changed_between_judgement_and_restore_puts_nothing_back() {
    let etcd = Etcd::start();
    let rt = runtime();
    let mut client = connect(&rt, &etcd);
    let lease = etcd.put_with_lease(KEY, &value("v1"), 600);
    etcd.put("/microservices/pay/2", &value("other"));
    let judged = entry(&etcd.get(KEY).expect("registered"));
    let Removal::Done { record, revision } = deregister(&rt, &mut client, &judged) else { panic!("deregistered") };
    let keys = Keys::new("/governor/v1");

    // Someone else rewrites governor's record after it was read.
    let rewritten = etcd.get(RECORD).expect("record").value;
    etcd.put(RECORD, &rewritten);
    let outcome = rt.block_on(etcd::restore(&mut client, &keys, &record, revision)).expect("etcd answered");
    assert_eq!(outcome, Return::Stale);
    assert!(etcd.get(KEY).is_none(), "nothing put back");

    // With the record as it is now, the restore goes through, on the lease.
    let now = etcd.get(RECORD).expect("record").mod_revision;
    let outcome = rt.block_on(etcd::restore(&mut client, &keys, &record, now)).expect("etcd answered");
    assert_eq!(outcome, Return::Restored);
    let back = etcd.get(KEY).expect("restored");
    assert_eq!((back.value.as_str(), back.lease), (value("v1").as_str(), lease));
    assert!(etcd.get(RECORD).is_none());
}

#[test]
fn owner_registered_again_before_restore_only_clears_records() {
    let etcd = Etcd::start();
    let rt = runtime();
    let mut client = connect(&rt, &etcd);
    etcd.put(KEY, &value("v1"));
    etcd.put("/microservices/pay/2", &value("other"));
    let judged = entry(&etcd.get(KEY).expect("registered"));
    let Removal::Done { record, revision } = deregister(&rt, &mut client, &judged) else { panic!("deregistered") };
    etcd.put(KEY, &value("v3"));
    let outcome =
        rt.block_on(etcd::restore(&mut client, &Keys::new("/governor/v1"), &record, revision)).expect("etcd answered");
    assert_eq!(outcome, Return::AlreadyBack);
    assert_eq!(etcd.get(KEY).expect("the owner's").value, value("v3"), "the owner's registration is kept");
    assert!(etcd.get(RECORD).is_none());
    let budget = etcd.get("/governor/v1/budget/kratos/pay").expect("budget record");
    assert!(budget.value.contains(r#""ejected":{}"#), "{}", budget.value);
}
