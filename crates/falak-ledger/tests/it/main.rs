//! falak-ledger integration tests: real redb files, an in-memory network.

mod cluster;
mod failover;
mod history;
mod hostile_input;
mod kill9;
mod membership;
mod origins;
mod restart;
mod storage_suite;
mod writes;
