//! The node's view of membership: the UDP driver's snapshots turned into what the main loop
//! uses (per-node [`Observed`] health and gossip) plus the health changes since the last look.

use std::collections::BTreeMap;
use std::sync::Arc;

use falak_core::NodeId;
use falak_core::election::Observed;
use falak_core::gossip::GossipState;
use falak_core::placement::Health;
use falak_membership::{MembershipHandle, MembershipSnapshot};
use tokio::sync::watch;

/// The main loop's end of the membership driver.
pub struct MembershipLink {
    handle: Arc<MembershipHandle>,
    watch: watch::Receiver<Arc<MembershipSnapshot>>,
    last: BTreeMap<NodeId, Health>,
}

/// Translate the driver's health into placement's.
pub fn health(h: falak_membership::Health) -> Health {
    match h {
        falak_membership::Health::Healthy => Health::Healthy,
        falak_membership::Health::Suspect => Health::Suspect,
        falak_membership::Health::Offline => Health::Offline,
    }
}

impl MembershipLink {
    pub fn new(handle: Arc<MembershipHandle>) -> MembershipLink {
        let watch = handle.watch();
        MembershipLink { handle, watch, last: BTreeMap::new() }
    }

    /// Wait for the next published snapshot; `false` once the driver has stopped (the caller
    /// should then stop asking: this future never resolves again).
    pub async fn changed(&mut self) -> bool {
        if self.watch.changed().await.is_ok() {
            return true;
        }
        std::future::pending::<()>().await;
        false
    }

    /// Every peer's health and gossip, and the health changes since the previous call.
    pub fn snapshot(&mut self) -> (BTreeMap<NodeId, Observed>, Vec<(NodeId, Health)>) {
        let snapshot = self.watch.borrow_and_update().clone();
        let observed: BTreeMap<NodeId, Observed> = snapshot
            .peers
            .iter()
            // Whether it answers the ledger is filled in by the main loop (`Ledger::answering`).
            .map(|peer| {
                (peer.id, Observed { health: health(peer.health), gossip: peer.gossip.clone(), answering: false })
            })
            .collect();
        let mut changes = Vec::new();
        for (node, seen) in &observed {
            if self.last.get(node) != Some(&seen.health) {
                changes.push((*node, seen.health));
            }
        }
        self.last = observed.iter().map(|(node, seen)| (*node, seen.health)).collect();
        (observed, changes)
    }

    /// Publish this node's gossip state in the background.
    pub fn set_local_gossip(&self, state: GossipState) {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            if let Err(error) = handle.set_local_gossip(state).await {
                tracing::debug!(%error, "gossip state not published");
            }
        });
    }

    pub fn handle(&self) -> &Arc<MembershipHandle> {
        &self.handle
    }
}
