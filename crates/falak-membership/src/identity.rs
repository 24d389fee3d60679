//! The identity a node carries in SWIM traffic, and the codec that puts it on the wire.
//!
//! foca identifies a member by a value implementing [`foca::Identity`]. Ours is
//! [`MemberIdentity`]: the node's [`NodeId`] (its Ed25519 public key), the UDP address peers
//! reach it at, and a `generation` that grows every time the node restarts or is declared
//! OFFLINE and rejoins.
//!
//! **Conflict key.** foca's `Identity::Addr` (the key under which it keeps one member and
//! resolves conflicts) is the [`NodeId`], not the socket address. A node that restarts on a
//! new address therefore replaces its old entry instead of appearing twice, and the view
//! keyed by `NodeId` never holds two live entries for one node.
//!
//! **Announcing to an address.** A joining node knows only a seed's socket address. foca
//! accepts an `Announce` whose destination has the receiver's conflict key, so the joiner
//! addresses the seed as [`MemberIdentity::placeholder`] (the all-zero `NodeId`, which no real
//! node may use) and [`FalakCodec`] on the receiving side rewrites such a destination to its
//! own `NodeId` before foca sees it. Only `Announce` gets this treatment; every other message
//! must name its destination exactly. Addressing by `NodeId` rather than by socket address
//! also means an announce reaches a seed bound to `0.0.0.0` or known under another address.

use std::net::SocketAddr;

use bytes::{Buf, BufMut};
use falak_core::NodeId;
use foca::{Codec, Header, Member, Message, PostcardCodec};
use serde::{Deserialize, Serialize};

/// The all-zero node id: never a real node, used only to address a seed whose id is unknown.
pub const PLACEHOLDER_NODE: NodeId = NodeId([0; 32]);

/// Who a member is, as carried in every SWIM header and member update.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberIdentity {
    /// The node's Ed25519 public key.
    pub node: NodeId,
    /// Where peers send this node's datagrams.
    pub addr: SocketAddr,
    /// Grows on every restart and every rejoin; the higher generation of one node wins.
    ///
    /// The daemon should start from the Unix time in milliseconds when the process started,
    /// so a restarted node always outranks the entry its previous run left behind; a rejoin
    /// after being declared OFFLINE adds one.
    pub generation: u64,
}

impl MemberIdentity {
    pub fn new(node: NodeId, addr: SocketAddr, generation: u64) -> Self {
        MemberIdentity { node, addr, generation }
    }

    /// The destination used to announce to a seed whose node id is not known yet.
    pub fn placeholder(seed: SocketAddr) -> Self {
        MemberIdentity { node: PLACEHOLDER_NODE, addr: seed, generation: 0 }
    }

    pub fn is_placeholder(&self) -> bool {
        self.node == PLACEHOLDER_NODE
    }
}

impl foca::Identity for MemberIdentity {
    type Addr = NodeId;

    /// A node declared OFFLINE comes back as the next generation of itself, at once, instead
    /// of waiting for peers to forget it.
    fn renew(&self) -> Option<Self> {
        Some(MemberIdentity { generation: self.generation.saturating_add(1), ..self.clone() })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    /// Higher generation wins. The address breaks ties so that every member resolves the
    /// (misconfigured) case of two processes sharing one key and one generation the same way.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.addr) > (adversary.generation, adversary.addr)
    }
}

/// Why a decoded header or member was refused before foca saw it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("postcard decoding failed: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("the placeholder node id appears where a real node must be named")]
    PlaceholderIdentity,
}

/// Postcard encoding of foca's headers and members, plus the announce-by-address rewrite.
#[derive(Debug, Clone)]
pub struct FalakCodec {
    local: NodeId,
}

impl FalakCodec {
    pub fn new(local: NodeId) -> Self {
        FalakCodec { local }
    }
}

impl Codec<MemberIdentity> for FalakCodec {
    type Error = DecodeError;

    fn encode_header(&mut self, header: &Header<MemberIdentity>, buf: impl BufMut) -> Result<(), Self::Error> {
        Ok(PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<MemberIdentity>, Self::Error> {
        let mut header: Header<MemberIdentity> = PostcardCodec.decode_header(buf)?;
        if header.src.is_placeholder() || message_names_placeholder(&header.message) {
            return Err(DecodeError::PlaceholderIdentity);
        }
        if header.dst.is_placeholder() {
            if header.message != Message::Announce {
                return Err(DecodeError::PlaceholderIdentity);
            }
            // foca accepts an Announce when the destination's conflict key is ours.
            header.dst.node = self.local;
        }
        Ok(header)
    }

    fn encode_member(&mut self, member: &Member<MemberIdentity>, buf: impl BufMut) -> Result<(), Self::Error> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<MemberIdentity>, Self::Error> {
        let member: Member<MemberIdentity> = PostcardCodec.decode_member(buf)?;
        if member.id().is_placeholder() {
            return Err(DecodeError::PlaceholderIdentity);
        }
        Ok(member)
    }
}

fn message_names_placeholder(message: &Message<MemberIdentity>) -> bool {
    match message {
        Message::PingReq { target: id, .. }
        | Message::IndirectPing { origin: id, .. }
        | Message::IndirectAck { target: id, .. }
        | Message::ForwardedAck { origin: id, .. } => id.is_placeholder(),
        Message::Ping(_)
        | Message::Ack(_)
        | Message::Announce
        | Message::Feed
        | Message::Gossip
        | Message::Broadcast
        | Message::TurnUndead => false,
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn id(byte: u8, port: u16, generation: u64) -> MemberIdentity {
        MemberIdentity::new(NodeId([byte; 32]), SocketAddr::from(([127, 0, 0, 1], port)), generation)
    }

    #[test]
    fn renewed_identity_wins_over_the_old_one() {
        let old = id(1, 7000, 41);
        let new = old.renew().expect("identities always renew");
        assert_eq!(new.generation, 42);
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
    }

    #[test]
    fn conflict_resolution_is_antisymmetric_on_ties() {
        let a = id(1, 7000, 5);
        let b = id(1, 7001, 5);
        assert_ne!(a.win_addr_conflict(&b), b.win_addr_conflict(&a));
    }

    #[test]
    fn announce_to_placeholder_is_rewritten_to_the_receiver() {
        let local = id(9, 7000, 1);
        let header = Header {
            src: id(2, 7001, 1),
            src_incarnation: 0,
            dst: MemberIdentity::placeholder(local.addr),
            message: Message::Announce,
        };
        let mut bytes = Vec::new();
        FalakCodec::new(local.node).encode_header(&header, &mut bytes).expect("encodes");
        let decoded = FalakCodec::new(local.node).decode_header(&bytes[..]).expect("decodes");
        assert_eq!(decoded.dst.node, local.node);
    }

    #[test]
    fn placeholder_outside_announce_is_refused() {
        let local = id(9, 7000, 1);
        let header = Header {
            src: id(2, 7001, 1),
            src_incarnation: 0,
            dst: MemberIdentity::placeholder(local.addr),
            message: Message::Ping(3),
        };
        let mut bytes = Vec::new();
        FalakCodec::new(local.node).encode_header(&header, &mut bytes).expect("encodes");
        assert!(matches!(FalakCodec::new(local.node).decode_header(&bytes[..]), Err(DecodeError::PlaceholderIdentity)));
    }
}
