//! Certificates for a TLS etcd in tests, made with the `openssl` command: a
//! CA, a server certificate for 127.0.0.1 and a client certificate, all
//! valid for one day.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// PEM files in the directory they were made in.
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    /// Makes the CA and both certificates in `dir`; panics with openssl's
    /// output on failure.
    pub fn generate(dir: &Path) -> Self {
        let path = |name: &str| dir.join(name);
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=governor test CA",
                "-keyout",
            ],
            &[&path("ca.key"), Path::new("-out"), &path("ca.pem")],
        );
        for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let ext = path(&format!("{name}.ext"));
            fs::write(&ext, format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")).expect("write ext");
            openssl(
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                ],
                &[&path(&format!("{name}.key")), Path::new("-out"), &path(&format!("{name}.csr"))],
            );
            openssl(
                &["x509", "-req", "-days", "1", "-CAcreateserial", "-in"],
                &[
                    &path(&format!("{name}.csr")),
                    Path::new("-CA"),
                    &path("ca.pem"),
                    Path::new("-CAkey"),
                    &path("ca.key"),
                    Path::new("-extfile"),
                    &ext,
                    Path::new("-out"),
                    &path(&format!("{name}.pem")),
                ],
            );
        }
        Self {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
        }
    }
}

fn openssl(args: &[&str], paths: &[&Path]) {
    let out = Command::new("openssl")
        .args(args)
        .args(paths)
        .output()
        .unwrap_or_else(|e| panic!("openssl (cargo xtask setup installs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
