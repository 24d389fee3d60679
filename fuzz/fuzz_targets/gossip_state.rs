//! Gossip updates (a node's published state inside membership broadcasts): decode, and every
//! update that decodes encodes to bytes that decode to the same update. (Not to the same
//! bytes: postcard accepts over-long varints and a map's repeated keys.)
#![no_main]

use falak_core::NodeId;
use falak_membership::gossip::{GossipTable, GossipUpdate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(update) = GossipUpdate::decode(data) {
        let encoded = update.encode().expect("a decoded update encodes");
        assert_eq!(GossipUpdate::decode(&encoded).expect("re-decodes"), update, "the update does not round-trip");
        let table = GossipTable::shared(NodeId([9; 32]));
        GossipTable::lock(&table).offer(update);
    }
});
