//! falak-node integration tests: the seeded simulation (in-process, virtual time) and the
//! daemon on loopback.

mod daemon;
mod sim;
