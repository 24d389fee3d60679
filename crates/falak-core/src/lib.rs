//! Falak's vocabulary, the ledger state machine and placement.
//!
//! **Boundary:** this crate never does IO, never reads a clock and never uses ambient
//! randomness. Time enters only as `now` values (milliseconds since the Unix epoch) carried by
//! the caller or by committed ledger commands.

pub mod access;
pub mod capsule;
pub mod election;
pub mod function;
pub mod gossip;
pub mod id;
pub mod job;
pub mod ledger;
pub mod node;
pub mod placement;
pub mod resources;
pub mod secret;
pub mod signing;
pub mod spec;

pub use id::{ArtifactId, NodeId};

/// Milliseconds since the Unix epoch, as proposed by whichever node wrote the command.
pub type Millis = u64;
