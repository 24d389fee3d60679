//! The Falak node daemon: the main loop, the transport, the one clock, workers, metrics and
//! configuration.

pub mod clock;
pub mod cluster;
pub mod config;
pub mod host;
pub mod metrics;
pub mod proposer;
pub mod reconcile;
pub mod voters;
