//! falak-node integration tests: the seeded simulation (in-process, virtual time) and the
//! daemon on loopback.

#![allow(clippy::disallowed_methods, reason = "tests measure and bound real time")]

mod access;
mod daemon;
mod functions;
mod inputs;
mod sim;
