//! governor's etcd client over TLS with a client certificate and with
//! etcd's own user and password, against a real etcd that demands both.

use std::{fs, net::SocketAddr, path::Path, time::Duration};

use governor_tests::{
    Etcd, Netns,
    governor::TempDir,
    registry::{governor_with, quarantine_record, wait_listed},
    require_root,
};

fn quoted(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

#[test]
fn deregisters_over_tls_with_a_client_certificate_and_a_password() {
    require_root();
    let ns = Netns::new("reg-tls");
    ns.add_address("10.233.0.1/32");
    let mut etcd = Etcd::start_tls();
    etcd.enable_auth("s3cret");
    let key = "/gozero/tls.rpc/1";
    etcd.put(key, "10.233.0.1:20098");
    etcd.put("/gozero/tls.rpc/2", "192.0.2.17:20098");
    let dir = TempDir::new("etcd-password");
    let password_file = dir.0.join("password");
    fs::write(&password_file, "s3cret\n").expect("write the password file");
    let certs = etcd.certs();
    let (ca, cert, client_key) = (quoted(&certs.ca), quoted(&certs.client_cert), quoted(&certs.client_key));
    let password_file = quoted(&password_file);
    let mut gov = governor_with(
        &etcd,
        "10.233.0.0/24",
        &[("gozero", "/gozero", "host_port")],
        &[
            ("etcd.ca_file", &ca),
            ("etcd.cert_file", &cert),
            ("etcd.key_file", &client_key),
            ("etcd.username", "\"root\""),
            ("etcd.password_file", &password_file),
        ],
    );
    assert!(etcd.url().starts_with("https://"));
    wait_listed(&mut gov, "gozero", "tls.rpc", 2);
    assert_eq!(gov.value("governor_etcd_up"), 1);

    let addr: SocketAddr = "10.233.0.1:20098".parse().expect("addr");
    assert_eq!(ns.refused_connects(addr, 10), 10);
    let (_, done) = etcd.wait_for(key, Duration::from_secs(30), |kv| kv.is_none());
    assert!(done, "not deregistered over TLS:\n{}", gov.log());
    let record = quarantine_record(&etcd, "gozero", key).expect("quarantine record");
    assert_eq!(record["endpoint"], addr.to_string());
}

#[test]
fn wrong_password_keeps_governor_out_of_etcd_and_says_why() {
    require_root();
    let mut etcd = Etcd::start();
    etcd.enable_auth("right");
    etcd.put("/gozero/auth.rpc/1", "10.234.0.1:20099");
    let dir = TempDir::new("etcd-password");
    let password_file = dir.0.join("password");
    fs::write(&password_file, "wrong\n").expect("write the password file");
    let password_file = quoted(&password_file);
    let mut gov = governor_with(
        &etcd,
        "10.234.0.0/24",
        &[("gozero", "/gozero", "host_port")],
        &[("etcd.username", "\"root\""), ("etcd.password_file", &password_file)],
    );
    let mut said = false;
    for _ in 0..300 {
        said = gov.log().contains("authentication failed");
        if said {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(said, "no authentication error logged:\n{}", gov.log());
    assert_eq!(gov.value("governor_etcd_up"), 0);
    assert!(gov.get("/healthz").is_some_and(|(status, _)| status == 200), "the daemon keeps running");
    assert!(etcd.get("/gozero/auth.rpc/1").is_some());
}
