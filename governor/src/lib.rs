//! governor as a library: the daemon, its pure decision logic and its
//! edges, for the `governor` binary and for the integration tests that
//! drive one edge (the etcd transactions) against a real server.

pub mod alert_push;
pub mod alerting;
pub mod api;
pub mod attribution;
pub mod bpf_sys;
pub mod breaker;
pub mod btf;
pub mod cardinality;
pub mod cli;
pub mod config;
pub mod connections;
pub mod daemon;
pub mod doctor;
pub mod ebpf;
pub mod enforce;
pub mod flows;
pub mod health;
pub mod host;
pub mod http;
pub mod labels;
pub mod listening;
pub mod metrics;
pub mod monitor;
pub mod pin;
pub mod policy;
pub mod policy_watch;
pub mod registry;
pub mod stats;
pub mod tracepoints;
