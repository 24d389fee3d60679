//! Gossip state carried as foca custom broadcasts.
//!
//! Each node publishes one [`GossipState`]; it travels as a [`GossipUpdate`] piggybacked on
//! SWIM messages. The order between two updates of one node is `(generation, version)`: a
//! node's restart (new generation) outranks anything its previous run published even though
//! the daemon's version counter starts over, and within one run the higher version wins. A
//! receiver keeps only the highest update per node and relays only updates that were new to
//! it, which is what lets foca stop disseminating superseded ones ([`GossipKey`] invalidates
//! older keys of the same node).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use falak_core::NodeId;
use falak_core::gossip::{GOSSIP_FORMAT, GossipState};
use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};

use crate::identity::MemberIdentity;

/// Current format of [`GossipUpdate`] on the wire.
pub const GOSSIP_UPDATE_FORMAT: u8 = 1;
/// Largest encoded update: leaves room in a 1400-byte datagram for the seal, the SWIM header
/// (two identities) and the broadcast's length prefix.
pub const MAX_GOSSIP_BYTES: usize = 1024;

/// Whether `state`, published by `node`, fits in one gossip update ([`MAX_GOSSIP_BYTES`]).
pub fn gossip_fits(node: NodeId, state: &GossipState) -> bool {
    let update = GossipUpdate { format: GOSSIP_UPDATE_FORMAT, node, generation: u64::MAX, state: state.clone() };
    update.encode().is_ok_and(|bytes| bytes.len() <= MAX_GOSSIP_BYTES)
}

/// One node's gossip state as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipUpdate {
    pub format: u8,
    pub node: NodeId,
    pub generation: u64,
    pub state: GossipState,
}

impl GossipUpdate {
    pub fn key(&self) -> GossipKey {
        GossipKey { node: self.node, generation: self.generation, version: self.state.version }
    }

    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    /// Decodes one update, refusing trailing bytes so one buffer means one update.
    ///
    /// Bounded: nothing over [`MAX_GOSSIP_BYTES`] is decoded, and postcard reads every length
    /// prefix against the bytes actually left (a `Vec` of 2^60 elements in 20 bytes fails at
    /// the end of the input, having reserved at most what serde's cautious size hint allows),
    /// so an update costs memory in proportion to its size. Nesting is fixed by the type.
    pub fn decode(data: &[u8]) -> Result<Self, GossipDecodeError> {
        if data.len() > MAX_GOSSIP_BYTES {
            return Err(GossipDecodeError::TooLarge { size: data.len(), limit: MAX_GOSSIP_BYTES });
        }
        let (update, rest) = postcard::take_from_bytes::<GossipUpdate>(data)?;
        if !rest.is_empty() {
            return Err(GossipDecodeError::TrailingBytes(rest.len()));
        }
        Ok(update)
    }
}

/// Why a received broadcast is not a gossip update.
#[derive(Debug, thiserror::Error)]
pub enum GossipDecodeError {
    #[error("gossip update does not decode: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("gossip update is followed by {0} unexpected bytes")]
    TrailingBytes(usize),
    #[error("gossip update of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// Identifies one update in foca's dissemination backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipKey {
    node: NodeId,
    generation: u64,
    version: u64,
}

impl Invalidates for GossipKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && (self.generation, self.version) >= (other.generation, other.version)
    }
}

/// A peer's latest gossip state and the generation that published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGossip {
    pub generation: u64,
    pub state: GossipState,
}

/// Counters kept by the gossip table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipCounters {
    pub accepted: u64,
    pub stale: u64,
    pub unknown_format: u64,
}

/// The highest gossip update seen per peer.
///
/// Shared between [`GossipHandler`] (which foca owns and calls while decoding a packet) and
/// the core that reads it; foca offers no way back to its handler, hence the `Arc<Mutex>`.
/// Only one thread ever drives a core, so the lock is never contended.
#[derive(Debug)]
pub struct GossipTable {
    local: NodeId,
    entries: HashMap<NodeId, StoredGossip>,
    /// Nodes whose state changed since the core last drained this list, in arrival order.
    fresh: Vec<NodeId>,
    counters: GossipCounters,
}

pub type SharedGossipTable = Arc<Mutex<GossipTable>>;

impl GossipTable {
    pub fn shared(local: NodeId) -> SharedGossipTable {
        Arc::new(Mutex::new(GossipTable {
            local,
            entries: HashMap::new(),
            fresh: Vec::new(),
            counters: GossipCounters::default(),
        }))
    }

    /// Locks a shared table; a panic elsewhere cannot leave it half-updated, so poison is moot.
    pub fn lock(table: &SharedGossipTable) -> std::sync::MutexGuard<'_, GossipTable> {
        table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `update` if it is newer than what is known for its node; says whether it was.
    pub fn offer(&mut self, update: GossipUpdate) -> bool {
        if update.node == self.local {
            // We are the only writer of our own state; echoes of it carry nothing new.
            return false;
        }
        if update.format != GOSSIP_UPDATE_FORMAT || update.state.format != GOSSIP_FORMAT {
            self.counters.unknown_format += 1;
            return false;
        }
        let newer = match self.entries.get(&update.node) {
            Some(known) => (update.generation, update.state.version) > (known.generation, known.state.version),
            None => true,
        };
        if !newer {
            self.counters.stale += 1;
            return false;
        }
        self.counters.accepted += 1;
        self.fresh.push(update.node);
        self.entries.insert(update.node, StoredGossip { generation: update.generation, state: update.state });
        true
    }

    pub fn get(&self, node: &NodeId) -> Option<&StoredGossip> {
        self.entries.get(node)
    }

    pub fn remove(&mut self, node: &NodeId) {
        self.entries.remove(node);
    }

    pub fn take_fresh(&mut self) -> Vec<NodeId> {
        std::mem::take(&mut self.fresh)
    }

    pub fn counters(&self) -> GossipCounters {
        self.counters
    }
}

/// foca's view of gossip: decide whether a received update is news worth relaying.
#[derive(Debug)]
pub struct GossipHandler {
    table: SharedGossipTable,
}

impl GossipHandler {
    pub fn new(table: SharedGossipTable) -> Self {
        GossipHandler { table }
    }
}

impl BroadcastHandler<MemberIdentity> for GossipHandler {
    type Key = GossipKey;
    type Error = GossipDecodeError;

    fn receive_item(&mut self, data: &[u8], sender: Option<&MemberIdentity>) -> Result<Option<GossipKey>, Self::Error> {
        let update = GossipUpdate::decode(data)?;
        let key = update.key();
        if sender.is_none() {
            // Our own state, queued by the core (which already checked it): always disseminate,
            // including re-announcements of an unchanged version for members that just joined.
            return Ok(Some(key));
        }
        Ok(GossipTable::lock(&self.table).offer(update).then_some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(node: u8, generation: u64, version: u64) -> GossipUpdate {
        GossipUpdate {
            format: GOSSIP_UPDATE_FORMAT,
            node: NodeId([node; 32]),
            generation,
            state: GossipState { format: GOSSIP_FORMAT, version, ..GossipState::default() },
        }
    }

    #[test]
    fn higher_generation_or_version_replaces_lower_never_the_reverse() {
        let table = GossipTable::shared(NodeId([9; 32]));
        let mut t = GossipTable::lock(&table);
        assert!(t.offer(update(1, 10, 5)));
        assert!(!t.offer(update(1, 10, 4)), "older version");
        assert!(!t.offer(update(1, 10, 5)), "same version");
        assert!(t.offer(update(1, 10, 6)));
        assert!(t.offer(update(1, 11, 1)), "a restart outranks the old run's versions");
        assert!(!t.offer(update(1, 10, 99)), "the old run can never come back");
        assert_eq!(t.get(&NodeId([1; 32])).map(|g| (g.generation, g.state.version)), Some((11, 1)));
        assert_eq!(t.take_fresh(), vec![NodeId([1; 32]); 3]);
        assert_eq!(t.counters(), GossipCounters { accepted: 3, stale: 3, unknown_format: 0 });
    }

    #[test]
    fn own_state_and_unknown_formats_are_ignored() {
        let table = GossipTable::shared(NodeId([9; 32]));
        let mut t = GossipTable::lock(&table);
        assert!(!t.offer(update(9, 1, 1)));
        let mut future = update(1, 1, 1);
        future.state.format = GOSSIP_FORMAT + 1;
        assert!(!t.offer(future));
        assert_eq!(t.counters().unknown_format, 1);
        assert!(t.get(&NodeId([1; 32])).is_none());
    }

    #[test]
    fn newer_key_invalidates_older_of_the_same_node_only() {
        let old = update(1, 1, 1).key();
        let new = update(1, 1, 2).key();
        assert!(new.invalidates(&old));
        assert!(!old.invalidates(&new));
        assert!(!update(2, 5, 5).key().invalidates(&old));
    }

    #[test]
    fn decode_refuses_updates_over_the_size_limit_before_decoding() {
        let bytes = vec![0u8; MAX_GOSSIP_BYTES + 1];
        assert!(matches!(
            GossipUpdate::decode(&bytes),
            Err(GossipDecodeError::TooLarge { size, limit: MAX_GOSSIP_BYTES }) if size == MAX_GOSSIP_BYTES + 1
        ));
    }

    #[test]
    fn a_huge_length_prefix_fails_at_the_end_of_the_input() {
        // format, node, generation, then a state whose `rtt_micros` claims 2^63 entries.
        let mut bytes = update(1, 1, 1).encode().expect("encodes");
        let state_at = 1 + 32 + 1;
        bytes.truncate(state_at + 1 + 1 + 1 + 1 + 1 + 1);
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(GossipUpdate::decode(&bytes), Err(GossipDecodeError::Postcard(_))));
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut bytes = update(1, 1, 1).encode().expect("encodes");
        bytes.push(0);
        assert!(matches!(GossipUpdate::decode(&bytes), Err(GossipDecodeError::TrailingBytes(1))));
    }
}

#[cfg(test)]
mod fit_tests {
    use falak_core::gossip::FunctionGossip;

    use super::*;

    #[test]
    fn a_state_fits_until_its_functions_overflow_a_datagram() {
        let node = NodeId([1; 32]);
        let mut state = GossipState { format: GOSSIP_FORMAT, version: 1, ..GossipState::default() };
        state.functions.push(("a".repeat(63), FunctionGossip::default()));
        assert!(gossip_fits(node, &state));
        for i in 0..40 {
            state.functions.push((format!("{i}{}", "f".repeat(60)), FunctionGossip::default()));
        }
        assert!(!gossip_fits(node, &state));
    }
}
