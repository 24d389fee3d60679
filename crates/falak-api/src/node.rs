//! `/api/v1/nodes`: the nodes of the mesh as this node sees them.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use falak_core::NodeId;
use falak_core::gossip::GossipState;
use falak_core::ledger::State as LedgerState;
use falak_core::node::{Namespaces, NodeEntry};
use falak_core::placement::Health;
use falak_core::resources::Resources;
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::Ctx;

/// One node: committed facts from the ledger plus what membership and gossip say now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    /// `HEALTHY`, `SUSPECT` or `OFFLINE`.
    pub state: Health,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub free_cpu_millis: u64,
    pub free_memory_bytes: u64,
    /// Tasks running on the node.
    pub running: u32,
    /// Tasks claimed by the node and not yet running.
    pub queued: u32,
    /// Whether the node votes in the ledger.
    pub voter: bool,
    /// Whether the node is the ledger's current leader.
    pub leader: bool,
    /// Round-trip time from the answering node, when measured.
    pub rtt_ms: Option<f64>,
    pub api_url: String,
    pub cost_per_hour: f64,
    /// How the node gives workloads namespaces (`privileged`, `user` or `unavailable`: it
    /// cannot run capsules with `network: none`), as it declared at its last start; `null`
    /// when it has not said.
    #[serde(default)]
    pub namespaces: Option<Namespaces>,
}

/// A node named in another resource (the node a task ran on, a decision's winner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    pub id: NodeId,
    pub name: String,
}

impl NodeRef {
    /// The node's name from committed state (revoked nodes included), or its short id when the
    /// ledger does not know it.
    pub fn lookup(state: &LedgerState, id: NodeId) -> NodeRef {
        let name = match (state.node(&id), state.revoked_node(&id)) {
            (Some(n), _) => n.record.name.clone(),
            (None, Some(r)) => r.name.clone(),
            (None, None) => id.short(),
        };
        NodeRef { id, name }
    }
}

/// What the node observes about one node beyond committed state.
#[derive(Debug, Clone, Copy)]
pub struct NodeLive<'a> {
    pub health: Health,
    /// The node's latest gossip state, when one has arrived.
    pub gossip: Option<&'a GossipState>,
    pub voter: bool,
    pub leader: bool,
    pub rtt_ms: Option<f64>,
}

impl NodeInfo {
    /// Build a node's entry. Free resources and task counts come from gossip when the node has
    /// published any, otherwise from committed claims.
    pub fn new(entry: &NodeEntry, state: &LedgerState, live: NodeLive<'_>) -> NodeInfo {
        let record = &entry.record;
        let (free_cpu_millis, free_memory_bytes, running, queued) = match live.gossip {
            Some(g) => (g.free_cpu_millis, g.free_memory_bytes, g.running, g.queued),
            None => {
                let free = record.capacity - state.reserved(&record.id);
                let (mut running, mut queued) = (0, 0);
                for task in state.claims_of(&record.id) {
                    if task.state == falak_core::job::TaskState::Running {
                        running += 1;
                    } else {
                        queued += 1;
                    }
                }
                (free.cpu_millis, free.memory_bytes, running, queued)
            }
        };
        let api_url = match live.gossip {
            Some(g) if !g.api_url.is_empty() => g.api_url.clone(),
            _ => record.api_url.clone(),
        };
        NodeInfo {
            id: record.id,
            name: record.name.clone(),
            state: if entry.offline { Health::Offline } else { live.health },
            labels: record.labels.clone(),
            capacity: record.capacity,
            free_cpu_millis,
            free_memory_bytes,
            running,
            queued,
            voter: live.voter,
            leader: live.leader,
            rtt_ms: live.rtt_ms,
            api_url,
            cost_per_hour: record.cost_per_hour,
            namespaces: record.namespaces,
        }
    }
}

pub(crate) async fn list(State(ctx): State<Ctx>) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    ctx.ask(|reply| Action::ListNodes { reply }).await.map(Json)
}
