//! The ledger's decoders of untrusted bytes, for the fuzz targets (`fuzz/`) and the mutation
//! tests; not part of the ledger's API.
//!
//! Each `decode_*` reads bytes exactly as the ledger does (the serving side for requests, the
//! calling side for replies, storage for records) and, when they decode, answers the message
//! encoded again; encoding that answer decodes to the same bytes (checked by the fuzz targets).
//! `sample_*` give one genuine encoding of every message type, for seed corpora.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use falak_core::NodeId;
use falak_core::ledger::Command;
use openraft::error::{Infallible, InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotResponse, VoteRequest, VoteResponse};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state_machine::SnapshotPayload;
use crate::wire::{self, LeaderReply, LeaderRequest, LedgerRequest, SnapshotChunk};
use crate::{PeerInfo, State, TypeConfig, codec};

fn frame_round_trip<T: Serialize + DeserializeOwned>(frame: &[u8]) -> Result<Vec<u8>, String> {
    let (message, tail) = wire::decode::<T>(&Bytes::copy_from_slice(frame)).map_err(|e| e.to_string())?;
    wire::encode(&message, &tail).map(|b| b.to_vec()).map_err(|e| e.to_string())
}

/// A request frame as the ledger's server decodes it.
pub fn decode_request(frame: &[u8]) -> Result<Vec<u8>, String> {
    frame_round_trip::<LedgerRequest>(frame)
}

/// What a request frame is (`append-entries`, `vote`, `snapshot-chunk`, `leader-write`, ...).
pub fn request_kind(frame: &[u8]) -> Option<&'static str> {
    let (request, _) = wire::decode::<LedgerRequest>(&Bytes::copy_from_slice(frame)).ok()?;
    Some(match request {
        LedgerRequest::AppendEntries(_) => "append-entries",
        LedgerRequest::Vote(_) => "vote",
        LedgerRequest::InstallSnapshot(_) => "snapshot-chunk",
        LedgerRequest::Leader(LeaderRequest::Write(_)) => "leader-write",
        LedgerRequest::Leader(LeaderRequest::AddLearner { .. }) => "leader-add-learner",
        LedgerRequest::Leader(LeaderRequest::ChangeVoters { .. }) => "leader-change-voters",
        LedgerRequest::Leader(LeaderRequest::RemoveNodes { .. }) => "leader-remove-nodes",
    })
}

type AppendReply = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId, Infallible>>;
type VoteReply = Result<VoteResponse<NodeId>, RaftError<NodeId, Infallible>>;
type SnapshotReply = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// A reply frame as the calling side decodes it, trying every reply type the ledger reads.
pub fn decode_replies(frame: &[u8]) -> Vec<Result<Vec<u8>, String>> {
    vec![
        frame_round_trip::<AppendReply>(frame),
        frame_round_trip::<VoteReply>(frame),
        frame_round_trip::<SnapshotReply>(frame),
        frame_round_trip::<LeaderReply>(frame),
    ]
}

fn record_round_trip<T: Serialize + DeserializeOwned>(record: &[u8]) -> Result<Vec<u8>, String> {
    let value: T = codec::decode(record).map_err(|e| e.to_string())?;
    codec::encode(&value).map_err(|e| e.to_string())
}

/// A stored record read back: a log entry, a vote, a snapshot's metadata and its payload (which
/// a follower also decodes from a leader's snapshot chunks), and a bare command.
pub fn decode_records(record: &[u8]) -> Vec<Result<Vec<u8>, String>> {
    vec![
        record_round_trip::<Entry<TypeConfig>>(record),
        record_round_trip::<Vote<NodeId>>(record),
        record_round_trip::<SnapshotMeta<NodeId, PeerInfo>>(record),
        record_round_trip::<SnapshotPayload>(record),
        record_round_trip::<Command>(record),
    ]
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, NodeId([1; 32])), index)
}

fn membership() -> Membership<NodeId, PeerInfo> {
    let voters: BTreeSet<NodeId> = [NodeId([1; 32]), NodeId([2; 32])].into();
    let nodes: BTreeMap<NodeId, PeerInfo> =
        [1u8, 2, 3].into_iter().map(|i| (NodeId([i; 32]), PeerInfo::new(format!("127.0.0.1:700{i}")))).collect();
    Membership::new(vec![voters], nodes)
}

fn commands() -> Vec<Command> {
    vec![
        Command::Noop { now: 1_750_000_000_000 },
        Command::SetNodeOffline { node: NodeId([3; 32]), offline: true, term: 0, now: 1_750_000_000_000 },
        Command::Batch(vec![Command::Noop { now: 1 }, Command::Noop { now: 2 }]),
    ]
}

fn entries() -> Vec<Entry<TypeConfig>> {
    let mut entries = vec![
        Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank },
        Entry { log_id: log_id(1, 2), payload: EntryPayload::Membership(membership()) },
    ];
    for (i, command) in commands().into_iter().enumerate() {
        entries.push(Entry { log_id: log_id(2, 3 + i as u64), payload: EntryPayload::Normal(command) });
    }
    entries
}

fn snapshot_meta() -> SnapshotMeta<NodeId, PeerInfo> {
    SnapshotMeta {
        last_log_id: Some(log_id(2, 40)),
        last_membership: StoredMembership::new(Some(log_id(1, 2)), membership()),
        snapshot_id: "2-40-1".to_owned(),
    }
}

/// One genuine frame of every request type, from node 1 (the vote's node) to a peer.
pub fn sample_requests() -> Vec<(&'static str, Vec<u8>)> {
    let vote = Vote::new_committed(2, NodeId([1; 32]));
    let requests = vec![
        (
            "append-entries",
            LedgerRequest::AppendEntries(AppendEntriesRequest {
                vote,
                prev_log_id: Some(log_id(1, 0)),
                entries: entries(),
                leader_commit: Some(log_id(1, 2)),
            }),
            Vec::new(),
        ),
        (
            "heartbeat",
            LedgerRequest::AppendEntries(AppendEntriesRequest {
                vote,
                prev_log_id: Some(log_id(2, 5)),
                entries: Vec::new(),
                leader_commit: Some(log_id(2, 5)),
            }),
            Vec::new(),
        ),
        ("vote", LedgerRequest::Vote(VoteRequest::new(Vote::new(3, NodeId([1; 32])), Some(log_id(2, 5)))), Vec::new()),
        (
            "snapshot-chunk",
            LedgerRequest::InstallSnapshot(SnapshotChunk { vote, meta: snapshot_meta(), offset: 0, done: true }),
            codec::encode(&SnapshotPayload { state: State::default() }).unwrap_or_default(),
        ),
        ("leader-write", LedgerRequest::Leader(LeaderRequest::Write(commands().remove(2))), Vec::new()),
        (
            "leader-add-learner",
            LedgerRequest::Leader(LeaderRequest::AddLearner {
                node: NodeId([4; 32]),
                info: PeerInfo::new("127.0.0.1:7004"),
            }),
            Vec::new(),
        ),
        (
            "leader-change-voters",
            LedgerRequest::Leader(LeaderRequest::ChangeVoters {
                voters: [NodeId([1; 32]), NodeId([4; 32])].into(),
                term: Some(3),
            }),
            Vec::new(),
        ),
        (
            "leader-remove-nodes",
            LedgerRequest::Leader(LeaderRequest::RemoveNodes { nodes: [NodeId([3; 32])].into(), term: None }),
            Vec::new(),
        ),
    ];
    requests
        .into_iter()
        .filter_map(|(name, request, tail)| Some((name, wire::encode(&request, &tail).ok()?.to_vec())))
        .collect()
}

/// One genuine frame of every reply type.
pub fn sample_replies() -> Vec<(&'static str, Vec<u8>)> {
    let vote = Vote::new_committed(2, NodeId([1; 32]));
    let frame = |value: Result<Bytes, serde_json::Error>| value.map(|b| b.to_vec()).unwrap_or_default();
    vec![
        ("append-success", frame(wire::encode(&AppendReply::Ok(AppendEntriesResponse::Success), &[]))),
        ("append-conflict", frame(wire::encode(&AppendReply::Ok(AppendEntriesResponse::<NodeId>::Conflict), &[]))),
        ("vote-granted", frame(wire::encode(&VoteReply::Ok(VoteResponse::new(vote, Some(log_id(2, 5)), true)), &[]))),
        ("snapshot-done", frame(wire::encode(&SnapshotReply::Ok(InstallSnapshotResponse { vote }), &[]))),
        ("leader-not-leader", frame(wire::encode(&LeaderReply::NotLeader { leader: Some(NodeId([2; 32])) }, &[]))),
        ("leader-refused", frame(wire::encode(&LeaderReply::Refused("no".to_owned()), &[]))),
    ]
}

/// One genuine stored record of every kind the ledger reads back.
pub fn sample_records() -> Vec<(&'static str, Vec<u8>)> {
    let mut records: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let names = ["entry-blank", "entry-membership", "entry-noop", "entry-offline", "entry-batch"];
    for (name, entry) in names.into_iter().zip(entries()) {
        records.extend(codec::encode(&entry).ok().map(|bytes| (name, bytes)));
    }
    records.extend(codec::encode(&Vote::new(3, NodeId([1; 32]))).ok().map(|b| ("vote", b)));
    records.extend(codec::encode(&snapshot_meta()).ok().map(|b| ("snapshot-meta", b)));
    records.extend(codec::encode(&SnapshotPayload { state: State::default() }).ok().map(|b| ("snapshot-payload", b)));
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_append_entries_is_consistent() {
        let (_, frame) = sample_requests().into_iter().next().expect("append-entries");
        let (request, _) = wire::decode::<LedgerRequest>(&Bytes::from(frame)).expect("decodes");
        let LedgerRequest::AppendEntries(rpc) = request else { panic!("not an append-entries") };
        assert_eq!(crate::server::check_append(NodeId([1; 32]), &rpc), Ok(()));
    }

    #[test]
    fn every_sample_decodes_and_round_trips() {
        for (name, frame) in sample_requests() {
            let again = decode_request(&frame).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(again, frame, "{name}");
            assert!(request_kind(&frame).is_some(), "{name}");
        }
        for (name, frame) in sample_replies() {
            assert!(decode_replies(&frame).iter().any(|r| r.as_ref() == Ok(&frame)), "{name}");
        }
        for (name, record) in sample_records() {
            assert!(decode_records(&record).iter().any(|r| r.as_ref() == Ok(&record)), "{name}");
        }
    }
}
