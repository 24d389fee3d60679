//! Integration tests of falak-membership: multi-node behaviour in a seeded simulation, the
//! core's exact outputs, sealing under hostile input, and real UDP on loopback.
//!
//! Simulation tests loop over seeds; a failure message names the seed, and re-running that
//! seed replays the failure exactly.

mod core_outputs;
mod detection;
mod gossip;
mod partition;
mod seal;
mod sim;
mod udp;
