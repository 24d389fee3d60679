//! The Falak node daemon: the main loop, the transport, the one clock, workers, metrics and
//! configuration.

pub mod access;
pub mod api;
pub mod artifacts;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod disk;
pub mod event_feed;
pub mod events;
pub mod functions;
pub mod host;
pub mod https;
pub mod images;
pub mod join;
pub mod main_loop;
pub mod membership;
pub mod mesh_files;
pub mod metrics;
pub mod orphans;
pub mod prefetch;
pub mod proposer;
pub mod reconcile;
pub mod runner;
pub mod transport;
pub mod voters;
