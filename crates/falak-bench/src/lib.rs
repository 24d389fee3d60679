//! Falak's benchmark harness: meshes of real `falak node` processes on loopback, measured
//! against the performance targets of DESIGN.md §6. See BENCHMARKS.md for the latest run.
//!
//! - [`mesh`]: provision, start, kill -9, pause and restart node processes.
//! - [`benches`]: the benchmarks, each printing its samples, its floor and its verdict.
//! - [`functions`]: the functions group (starts, gateway overhead, requests/s) and `serve-noop`.
//! - [`heal`]: a partition of the ledger leader heals cleanly (issue 9).
//! - [`images`]: registry bytes and pull times of one image on three nodes (issue 11).
//! - [`containers`]: a container's start through the node's executor beside bare `runc run`
//!   (issue 11).
//! - [`prefetch`]: how soon after `capsule apply` an image is on its orbit's nodes (issue 11).
//! - [`registry`]: a local `docker-registry`, images built as OCI layouts, `skopeo` pushes.
//! - [`netfilter`]: cut a node off the others with iptables (partition tests, the heal benchmark).
//! - [`report`]: the summary table and the JSON report.

#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

pub mod benches;
pub mod containers;
pub mod functions;
pub mod heal;
pub mod images;
pub mod mesh;
pub mod netfilter;
pub mod prefetch;
pub mod registry;
pub mod report;
pub mod stats;
