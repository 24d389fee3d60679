//! Integration tests of falak-core: the state machine and placement, pure and deterministic.

mod election;
mod fixtures;
mod ledger;
mod origin;
mod placement;
mod rollout;
