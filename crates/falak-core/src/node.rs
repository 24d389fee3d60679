//! Nodes as the ledger records them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resources::Resources;
use crate::{Millis, NodeId};

/// What a node declares about itself when it is admitted (and on restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// What running on this node costs, in the mesh's currency per hour.
    pub cost_per_hour: f64,
    /// QUIC address for node-to-node protocols.
    pub transport_addr: String,
    /// UDP address for membership.
    pub gossip_addr: String,
    /// HTTP API base URL.
    pub api_url: String,
}

/// A node's entry in committed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub record: NodeRecord,
    pub admitted_at: Millis,
    /// Set when the leader committed that membership saw the node OFFLINE; cleared when it is
    /// seen again. An offline node cannot win claims.
    pub offline: bool,
    pub offline_since: Option<Millis>,
    /// Completed and failed attempts, for the reliability term of gravity.
    pub completed: u64,
    pub failed: u64,
}
