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
    /// How the node gives workloads namespaces of their own, as it found at its last start.
    /// `None` in a record from a node that did not say (a join, which sends its record before
    /// the node has probed, or a node from before the field): placement takes such a node to
    /// be able, as those nodes were taken to be. Left out of the stored form when `None`, so a
    /// joiner's signed record reads the same to a node that does not know the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Namespaces>,
}

/// How a node gives workloads namespaces of their own (ADR 0015): what it found when it
/// started, declared in its [`NodeRecord`] so that placement and the API know which nodes can
/// run a workload that asks for a network of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespaces {
    /// Made directly: the node is root (or has `CAP_SYS_ADMIN`).
    Privileged,
    /// Inside a user namespace of the workload's own: an ordinary user on a kernel that allows
    /// unprivileged user namespaces.
    User,
    /// Neither: the node's workloads share its mounts and network, so it cannot run one that
    /// asks for `network: none`.
    Unavailable,
}

impl Namespaces {
    pub fn name(self) -> &'static str {
        match self {
            Namespaces::Privileged => "privileged",
            Namespaces::User => "user",
            Namespaces::Unavailable => "unavailable",
        }
    }

    /// Whether the node can give a workload a network namespace of its own.
    pub fn private_network(self) -> bool {
        self != Namespaces::Unavailable
    }
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
