//! Messages of `Protocol::Ledger` and their framing.
//!
//! A frame is `[WIRE_V1] [json length: u32 LE] [json] [binary tail]`. The JSON part is a
//! [`LedgerRequest`] or a response; the tail carries raw bytes that JSON would bloat (snapshot
//! chunks). The protocol version is also in the ALPN (`falak/ledger/1`); the byte lets one
//! connection reject a frame from a newer build with a clear error instead of misparsing it.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use falak_core::NodeId;
use falak_core::ledger::{Applied, Command};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{PeerInfo, TypeConfig};

pub(crate) const WIRE_V1: u8 = 1;
const HEADER_LEN: usize = 5;

/// A request sent to a peer's ledger.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum LedgerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot; the chunk's bytes travel in the frame's tail.
    InstallSnapshot(SnapshotChunk),
    /// Something only the leader can do, forwarded by a node that is not the leader.
    Leader(LeaderRequest),
}

/// An `InstallSnapshotRequest` without its data.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotChunk {
    pub vote: Vote<NodeId>,
    pub meta: SnapshotMeta<NodeId, PeerInfo>,
    pub offset: u64,
    pub done: bool,
}

/// Operations that must run on the leader.
#[allow(clippy::large_enum_variant, reason = "one per forwarded operation, moved once; never stored in bulk")]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderRequest {
    Write(Command),
    AddLearner {
        node: NodeId,
        info: PeerInfo,
    },
    /// `term`: planned by the leader of that term; refused on any other leader or term.
    ChangeVoters {
        voters: BTreeSet<NodeId>,
        #[serde(default)]
        term: Option<u64>,
    },
    RemoveNodes {
        nodes: BTreeSet<NodeId>,
        #[serde(default)]
        term: Option<u64>,
    },
}

/// The leader's answer to a [`LeaderRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderReply {
    /// The write committed as log entry `index` and was applied with this result.
    Written { index: u64, applied: Applied },
    /// The membership change committed.
    MembershipChanged,
    /// The receiver is not the leader; it names the leader if it knows one. Nothing was done.
    NotLeader { leader: Option<NodeId> },
    /// The leader did not see the operation commit within its bound; it may still commit.
    Unconfirmed,
    /// The leader refused the operation; nothing was done.
    Refused(String),
    /// The leader is shutting down; the operation may or may not have been appended.
    Stopped,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeFrameError {
    #[error("ledger frame of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("ledger frame has wire version {0}, this build speaks version {WIRE_V1}")]
    Version(u8),
    #[error("ledger frame declares {declared} bytes of json but has {available}")]
    Length { declared: usize, available: usize },
    #[error("ledger frame json is invalid: {0}")]
    Json(#[from] serde_json::Error),
}

/// Frame `message` with an optional binary `tail`.
pub(crate) fn encode<T: Serialize>(message: &T, tail: &[u8]) -> Result<Bytes, serde_json::Error> {
    let json = serde_json::to_vec(message)?;
    // A JSON message over 4 GiB cannot be framed; serde_json cannot fail this way, so report it
    // as a custom serialization error rather than panicking.
    let len = u32::try_from(json.len())
        .map_err(|_| <serde_json::Error as serde::ser::Error>::custom("ledger message exceeds 4 GiB"))?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + json.len() + tail.len());
    out.put_u8(WIRE_V1);
    out.put_u32_le(len);
    out.put_slice(&json);
    out.put_slice(tail);
    Ok(out.freeze())
}

/// Read a frame written by [`encode`]: the message and its tail.
pub(crate) fn decode<T: DeserializeOwned>(frame: &Bytes) -> Result<(T, Bytes), DecodeFrameError> {
    if frame.len() < HEADER_LEN {
        return Err(DecodeFrameError::Short(frame.len()));
    }
    if frame[0] != WIRE_V1 {
        return Err(DecodeFrameError::Version(frame[0]));
    }
    let declared = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let available = frame.len() - HEADER_LEN;
    if declared > available {
        return Err(DecodeFrameError::Length { declared, available });
    }
    let message = serde_json::from_slice(&frame[HEADER_LEN..HEADER_LEN + declared])?;
    Ok((message, frame.slice(HEADER_LEN + declared..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_their_tail() {
        let request = LeaderRequest::Write(Command::Noop { now: 7 });
        let frame = encode(&request, b"tail").unwrap();
        let (decoded, tail): (LeaderRequest, Bytes) = decode(&frame).unwrap();
        assert!(matches!(decoded, LeaderRequest::Write(Command::Noop { now: 7 })));
        assert_eq!(&tail[..], b"tail");
    }

    #[test]
    fn bad_frames_are_refused_not_panicked_on() {
        assert!(matches!(decode::<LeaderRequest>(&Bytes::from_static(b"\x01")), Err(DecodeFrameError::Short(1))));
        assert!(matches!(
            decode::<LeaderRequest>(&Bytes::from_static(b"\x02\0\0\0\0")),
            Err(DecodeFrameError::Version(2))
        ));
        assert!(matches!(
            decode::<LeaderRequest>(&Bytes::from_static(b"\x01\xff\0\0\0{}")),
            Err(DecodeFrameError::Length { declared: 255, available: 2 })
        ));
        assert!(matches!(
            decode::<LeaderRequest>(&Bytes::from_static(b"\x01\x02\0\0\0{}")),
            Err(DecodeFrameError::Json(_))
        ));
    }
}
