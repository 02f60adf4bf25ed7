//! The etcd fixture itself: a real server, keys with and without leases,
//! and a restart that keeps the data.

use governor_tests::{Etcd, require_root};

#[test]
fn etcd_fixture_round_trip() {
    require_root();
    let mut etcd = Etcd::start();
    assert!(etcd.url().starts_with("http://127.0.0.1:"), "{}", etcd.url());

    let lease = etcd.put_with_lease("/fixture/leased", "on a lease", 60);
    assert_ne!(lease, 0);
    let plain_rev = etcd.put("/fixture/plain", "no lease");

    let leased = etcd.get("/fixture/leased").expect("leased key");
    assert_eq!(leased.value, "on a lease");
    assert_eq!(leased.lease, lease);
    assert_eq!(leased.create_revision, leased.mod_revision);
    let plain = etcd.get("/fixture/plain").expect("plain key");
    assert_eq!(plain.value, "no lease");
    assert_eq!(plain.lease, 0);
    assert_eq!(plain.mod_revision, plain_rev);
    assert_eq!(plain.create_revision, plain_rev);
    assert!(leased.mod_revision < plain_rev);
    assert_eq!(etcd.get("/fixture/missing"), None);

    let all = etcd.get_prefix("/fixture/");
    assert_eq!(all, vec![("/fixture/leased".to_owned(), leased), ("/fixture/plain".to_owned(), plain.clone())]);

    let ttl = etcd.lease_ttl(lease).expect("lease exists");
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    etcd.revoke(lease);
    assert_eq!(etcd.get("/fixture/leased"), None);
    assert_eq!(etcd.lease_ttl(lease), None);
    assert_eq!(etcd.get_prefix("/fixture/").len(), 1);

    etcd.stop();
    etcd.restart();
    let (after, seen) = etcd.wait_for("/fixture/plain", std::time::Duration::from_secs(5), |kv| {
        kv.is_some_and(|kv| kv.value == "no lease")
    });
    assert!(seen, "{after:?}");
    assert_eq!(after, Some(plain));

    etcd.delete("/fixture/plain");
    assert_eq!(etcd.get("/fixture/plain"), None);
}
