//! End-to-end test harness for Gatehouse: real PostgreSQL, real `gatehouse-cp` processes, real
//! HTTP.
//!
//! Every integration test in `tests/tests/*.rs` builds on three pieces:
//!
//! - [`test_db`] gives the test a fresh, empty database of its own on a PostgreSQL server shared
//!   by all tests, even by tests running in other processes (cargo nextest runs each test in its
//!   own process). The server is the one named by `GATEHOUSE_TEST_DATABASE_URL`, or else a private
//!   throwaway cluster the harness creates (once) under `<target>/gatehouse-test-pg/` and leaves
//!   running for the next test run; `deploy/test.sh` stops it at the end.
//! - [`ControlPlane`] spawns the `gatehouse-cp` binary on that database, waits until its Admin API
//!   listens, keeps its logs, and kills it when dropped.
//! - [`Admin`] is a small HTTP client for the Admin API returning a [`Response`] whose body is
//!   already parsed as JSON.
//! - [`DataPlane`] spawns `gatehouse-dp` with [`DataPlaneOptions`] (CP address, cluster mTLS
//!   files, cache directory), waits until its status listener listens, reads `/status` and
//!   `/status/ready`, and stops, kills and restarts it on the same cache directory.
//! - [`Pki`] writes a cluster PKI (`gatehouse-cp pki init`) into a temporary directory;
//!   [`tls_handshake`] probes the cluster port with a raw TLS client.
//! - [`Memory`] reads a process's current and peak resident memory (`/proc/<pid>/status`).
//! - [`Network`] builds a simulated multi-host network (one Linux network namespace per node,
//!   addresses from 198.18.0.0/15, a bridge in a namespace of its own) and cuts or slows links;
//!   [`NetnsPostgres`] runs a PostgreSQL cluster of its own inside one of its namespaces.
//!   [`ControlPlane::start_in`] and [`DataPlaneOptions::exec_prefix`] start the processes
//!   inside (`ip netns exec`). Used by the fleet fault suite, `tests/fleet.rs`.
//! - [`wait_until`] polls a condition with a deadline ([`patience`]); the tests never sleep a
//!   fixed time.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use gatehouse_tests::{ControlPlane, test_db};
//!
//! let db = test_db().await?;
//! let cp = ControlPlane::start(&db).await?;
//! let res = cp.admin().post_form("/services", &[("name", "example"), ("url", "http://httpbin.org")]).await?;
//! assert_eq!(res.status, 201, "{res:?}");
//! assert!(!cp.logs().contains("PRIVATE KEY"));
//! # Ok(())
//! # }
//! ```
//!
//! Environment variables:
//!
//! | variable | effect |
//! |---|---|
//! | `GATEHOUSE_TEST_DATABASE_URL` | use this server (the URL names a database to connect to, e.g. `postgres://postgres@127.0.0.1:5432/postgres`; the user must be allowed to `CREATE DATABASE`) instead of a private cluster |
//! | `GATEHOUSE_TEST_KEEP_DB` | set to `1` to keep each test's database after the test, for inspection |
//! | `GATEHOUSE_CP_BIN` | path of the `gatehouse-cp` binary (default: next to the test executable's `deps/` directory, e.g. `target/debug/gatehouse-cp`) |
//! | `GATEHOUSE_DP_BIN` | path of the `gatehouse-dp` binary (default: beside `gatehouse-cp`, as above) |
//! | `GATEHOUSE_TEST_PATIENCE_SECS` | how long the cluster tests wait for something that should happen soon (default 20) |
//!
//! The binaries are not built by `cargo test`: run `cargo build --bins` first (`deploy/test.sh`
//! does), or the tests exercise a stale or missing `gatehouse-cp`.
#![warn(missing_docs)]

mod admin;
pub mod certs;
mod cluster;
mod control_plane;
mod data_plane;
mod memory;
mod netns;
mod pki;
mod postgres;
mod target_dir;
mod temp_dir;
mod wait;

pub use admin::{Admin, COLLECTION_PATHS, Response};
pub use cluster::{
    Handshake, cert_der, clustering_status, config_version, data_plane, data_planes, log_field,
    tls_client_config, tls_handshake, wait_for_cp_snapshot, wait_for_data_plane,
};
pub use control_plane::{ControlPlane, cp_bin};
pub use data_plane::{DataPlane, DataPlaneOptions, Exited, dp_bin};
pub use memory::Memory;
pub use netns::{Cut, Network};
pub use pki::Pki;
pub use postgres::{NetnsPostgres, TestDb, test_db};
pub use temp_dir::TempDir;
pub use wait::{POLL_INTERVAL, patience, wait_until};
