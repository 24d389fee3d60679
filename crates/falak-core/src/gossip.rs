//! Gossip state: per-node, eventually consistent data that only its own node writes.
//!
//! Each node publishes one [`GossipState`] with a monotonically increasing `version`; a
//! receiver keeps the highest version it has seen per node, so merging is conflict-free by
//! construction (one writer per key).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Current format version of [`GossipState`] on the wire.
pub const GOSSIP_FORMAT: u8 = 3;

/// What a node tells the mesh about itself, piggybacked on membership traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GossipState {
    /// Format version; receivers ignore formats they do not know.
    pub format: u8,
    /// The writer's own counter; higher replaces lower.
    pub version: u64,
    /// Free cpu in millicores as measured by the node (capacity minus what its tasks reserve).
    pub free_cpu_millis: u64,
    /// Free memory in bytes.
    pub free_memory_bytes: u64,
    /// Tasks running on the node right now.
    pub running: u32,
    /// Tasks claimed by the node but not yet running.
    pub queued: u32,
    /// Round-trip time to peers in microseconds, as the node measured them.
    pub rtt_micros: BTreeMap<NodeId, u32>,
    /// The node's API URL, so clients and peers can reach it.
    pub api_url: String,
    /// Functions the node has prepared or runs, busiest first (as many as fit a datagram).
    pub functions: Vec<(String, FunctionGossip)>,
    /// The capsule code the node holds ready (short ids,
    /// [`CapsuleSpec::code_id`](crate::capsule::CapsuleSpec::code_id)), as many as fit.
    #[serde(default)]
    pub held: Vec<String>,
}

/// What a node tells the mesh about one function it serves or keeps ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FunctionGossip {
    pub version: u32,
    /// Instances running (any state but stopped).
    pub instances: u32,
    /// Requests its ready instances could take right now.
    pub free_slots: u32,
    /// The bundle and dependencies are prepared here.
    pub prepared: bool,
    /// A snapshot (zygote) is ready to fork instances from.
    pub snapshot: bool,
}

impl GossipState {
    /// What the node says about function `name`.
    pub fn function(&self, name: &str) -> Option<&FunctionGossip> {
        self.functions.iter().find(|(n, _)| n == name).map(|(_, f)| f)
    }

    /// Whether `other` should replace `self` in a receiver's view.
    pub fn is_superseded_by(&self, other: &GossipState) -> bool {
        other.version > self.version
    }
}
