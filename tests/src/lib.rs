//! Fixtures for governor's integration tests. They need root: they create
//! network namespaces, load eBPF programs (through the real daemon) and add
//! nftables rules inside their namespaces. Every fixture cleans up on drop,
//! also when a test fails.
//!
//! Traffic goes only to addresses inside namespaces the test created.

pub mod alerting;
pub mod etcd;
pub mod governor;
pub mod helper;
pub mod netns;
pub mod registry;
pub mod scrape;
pub mod tls;

pub use helper::Helper;
pub use netns::Netns;
pub use scrape::{Scraper, series};

pub use self::{etcd::Etcd, governor::Governor};

/// Fails the test early with a clear message when not run as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "integration tests load eBPF programs and create network namespaces: run them as root (`cargo xtask test`)"
    );
}
