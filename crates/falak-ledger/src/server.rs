//! The serving side of `Protocol::Ledger`: raft RPCs from peers and operations forwarded to the
//! leader.
//!
//! **Invariant:** a raft message is accepted only from the node it claims to come from (the
//! vote's node must be the transport-authenticated sender), so a compromised or confused peer
//! cannot speak for another node's leadership or candidacy. Undecodable frames are refused with
//! an error, never a panic.

use std::collections::BTreeSet;
use std::io::{Cursor, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use falak_core::NodeId;
use falak_core::ledger::Command;
use falak_transport::Handler;
use futures_util::future::BoxFuture;
use openraft::error::{ClientWriteError, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{AppendEntriesRequest, ClientWriteResponse, InstallSnapshotResponse};
use openraft::{ChangeMembers, EntryPayload, Membership, Raft, Snapshot, SnapshotMeta, SnapshotSegmentId, Vote};

use crate::state_machine::SnapshotPayload;
use crate::wire::{self, DecodeFrameError, LeaderReply, LeaderRequest, LedgerRequest, SnapshotChunk};
use crate::{PeerInfo, TypeConfig, codec};

/// The largest snapshot a follower accepts (chunk offset plus length). Snapshot chunks are
/// written into one in-memory buffer at the offset they name, so without this bound a single
/// chunk naming a huge offset would make the follower allocate that much.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// The largest command the leader appends, as JSON: half the transport's default 16 MiB
/// message limit, so an AppendEntries carrying it alone always fits. A larger entry, once
/// appended, could never be replicated and would stall the log for good.
pub const MAX_COMMAND_BYTES: usize = 8 << 20;
/// How deep `Command::Batch` may nest (the proposer uses one level). An entry nests a few JSON
/// levels deeper inside AppendEntries than inside the forwarded write, so a command close to
/// serde_json's 128-level limit would be accepted here and refused by every follower.
pub const MAX_BATCH_DEPTH: usize = 8;

/// Serves `Protocol::Ledger` for one node; registered on the transport by the node.
pub(crate) struct LedgerServer {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) write_timeout: Duration,
    pub(crate) receiving: SharedReceiving,
}

/// A snapshot being received in chunks: its id and the bytes so far, written at the offsets the
/// chunks name (as openraft's own receiver does).
pub(crate) struct Receiving {
    id: String,
    data: Cursor<Vec<u8>>,
}

pub(crate) type SharedReceiving = Arc<tokio::sync::Mutex<Option<Receiving>>>;

impl Handler for LedgerServer {
    fn handle(&self, from: NodeId, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let raft = self.raft.clone();
        let write_timeout = self.write_timeout;
        let receiving = self.receiving.clone();
        Box::pin(async move {
            serve(&raft, &receiving, from, body, write_timeout).await.map_err(|e| {
                tracing::warn!(%from, error = %e, "refused ledger request");
                e.to_string()
            })
        })
    }
}

/// Why a ledger request was refused without being processed.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Frame(#[from] DecodeFrameError),
    #[error("cannot encode the reply: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{kind} from node {from} carries the vote of node {claimed}; refused")]
    Impersonation { kind: &'static str, from: NodeId, claimed: String },
    #[error("snapshot chunk ends at byte {end}, past the limit of {MAX_SNAPSHOT_BYTES} bytes; refused")]
    SnapshotTooLarge { end: u64 },
    #[error("snapshot {id} from node {from} is refused: {reason}; nothing installed")]
    BadSnapshot { id: String, from: NodeId, reason: String },
    #[error("append-entries from node {from} is inconsistent: {reason}; refused")]
    InconsistentAppend { from: NodeId, reason: String },
}

async fn serve(
    raft: &Raft<TypeConfig>,
    receiving: &SharedReceiving,
    from: NodeId,
    body: Bytes,
    write_timeout: Duration,
) -> Result<Bytes, ServeError> {
    let (request, tail) = wire::decode::<LedgerRequest>(&body)?;
    let reply = match request {
        LedgerRequest::AppendEntries(rpc) => {
            check_sender("append-entries", from, &rpc.vote)?;
            check_append(from, &rpc).map_err(|reason| ServeError::InconsistentAppend { from, reason })?;
            wire::encode(&raft.append_entries(rpc).await, &[])?
        }
        LedgerRequest::Vote(rpc) => {
            check_sender("vote request", from, &rpc.vote)?;
            wire::encode(&raft.vote(rpc).await, &[])?
        }
        LedgerRequest::InstallSnapshot(chunk) => {
            check_sender("snapshot chunk", from, &chunk.vote)?;
            let end = chunk.offset.saturating_add(tail.len() as u64);
            if end > MAX_SNAPSHOT_BYTES {
                return Err(ServeError::SnapshotTooLarge { end });
            }
            wire::encode(&receive_snapshot(raft, receiving, from, chunk, &tail).await?, &[])?
        }
        LedgerRequest::Leader(op) => {
            let reply = match op {
                // The leader's own voter planner makes membership changes (`falak-node`'s
                // `voters.rs`); no other node may ask for one.
                LeaderRequest::AddLearner { .. }
                | LeaderRequest::ChangeVoters { .. }
                | LeaderRequest::RemoveNodes { .. } => LeaderReply::Refused(format!(
                    "node {} asked for a change of the ledger's members; only the leader's own voter planner makes \
                         one, so it was refused",
                    from.short()
                )),
                LeaderRequest::Write(_) => execute(raft, op, write_timeout, from).await,
            };
            wire::encode(&reply, &[])?
        }
    };
    Ok(reply)
}

type SnapshotOutcome = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// Openraft's chunked snapshot receiver (`Raft::install_snapshot`), with one addition: the
/// assembled snapshot must decode before it is handed to raft. Raft treats a snapshot it cannot
/// install as a storage failure and stops for good, so one bad snapshot from a peer would take
/// this node's ledger down.
async fn receive_snapshot(
    raft: &Raft<TypeConfig>,
    receiving: &SharedReceiving,
    from: NodeId,
    chunk: SnapshotChunk,
    data: &[u8],
) -> Result<SnapshotOutcome, ServeError> {
    let my_vote = match raft.with_raft_state(|state| *state.vote_ref()).await {
        Ok(vote) => vote,
        Err(fatal) => return Ok(Err(RaftError::Fatal(fatal))),
    };
    // As openraft: only a vote at least as high as ours (votes are partially ordered).
    if matches!(chunk.vote.partial_cmp(&my_vote), None | Some(std::cmp::Ordering::Less)) {
        return Ok(Ok(InstallSnapshotResponse { vote: my_vote }));
    }
    let id = chunk.meta.snapshot_id.clone();
    check_snapshot_meta(from, chunk.vote.leader_id().term, &chunk.meta).map_err(|reason| ServeError::BadSnapshot {
        id: id.clone(),
        from,
        reason,
    })?;
    let mut receiving = receiving.lock().await;
    if receiving.as_ref().is_none_or(|r| r.id != id) {
        if chunk.offset != 0 {
            let mismatch = SnapshotMismatch {
                expect: SnapshotSegmentId { id: id.clone(), offset: 0 },
                got: SnapshotSegmentId { id, offset: chunk.offset },
            };
            return Ok(Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch))));
        }
        *receiving = Some(Receiving { id: id.clone(), data: Cursor::new(Vec::new()) });
    }
    let Some(current) = receiving.as_mut() else { unreachable!("set just above") };
    current.data.set_position(chunk.offset);
    // Writing into memory cannot fail; the offset was bounded by MAX_SNAPSHOT_BYTES.
    let _ = current.data.write_all(data);
    if !chunk.done {
        return Ok(Ok(InstallSnapshotResponse { vote: my_vote }));
    }
    let Some(done) = receiving.take() else { unreachable!("set just above") };
    let bytes = done.data.into_inner();
    if let Err(e) = codec::decode::<SnapshotPayload>(&bytes) {
        return Err(ServeError::BadSnapshot { id, from, reason: format!("its payload does not decode: {e}") });
    }
    let snapshot = Snapshot { meta: chunk.meta, snapshot: Box::new(Cursor::new(bytes)) };
    Ok(raft.install_full_snapshot(chunk.vote, snapshot).await.map(Into::into).map_err(RaftError::Fatal))
}

fn check_sender(kind: &'static str, from: NodeId, vote: &Vote<NodeId>) -> Result<(), ServeError> {
    match vote.leader_id().voted_for() {
        Some(claimed) if claimed == from => Ok(()),
        claimed => Err(ServeError::Impersonation {
            kind,
            from,
            claimed: claimed.map_or_else(|| "nobody".to_owned(), |c| c.to_string()),
        }),
    }
}

/// What openraft assumes of an AppendEntries and only checks in debug builds: the entries
/// follow `prev_log_id` one index after another, with terms that never decrease and never pass
/// the sender's own term. Broken by a peer, that would misplace entries in this node's log.
pub(crate) fn check_append(from: NodeId, rpc: &AppendEntriesRequest<TypeConfig>) -> Result<(), String> {
    let term = rpc.vote.leader_id().term;
    let first = rpc.prev_log_id.map_or(0, |id| id.index + 1);
    let mut last_term = rpc.prev_log_id.map_or(0, |id| id.leader_id.term);
    for (expected, (i, entry)) in (first..).zip(rpc.entries.iter().enumerate()) {
        let id = entry.log_id;
        if id.index != expected {
            return Err(format!("entry {i} has index {}, expected {expected}", id.index));
        }
        if id.leader_id.term < last_term || id.leader_id.term > term {
            return Err(format!("entry {i} has term {}, outside {last_term}..={term}", id.leader_id.term));
        }
        if id.leader_id.term == term && id.leader_id.node_id != from {
            return Err(format!("entry {i} names another leader for the sender's own term {term}"));
        }
        if let EntryPayload::Membership(membership) = &entry.payload {
            check_membership(membership).map_err(|reason| format!("entry {i}: {reason}"))?;
        }
        last_term = id.leader_id.term;
    }
    Ok(())
}

/// What openraft assumes of a membership config (it checks only the ones it builds itself).
fn check_membership(membership: &Membership<NodeId, PeerInfo>) -> Result<(), String> {
    let configs = membership.get_joint_config();
    if configs.is_empty() || configs.len() > 2 || configs.iter().any(BTreeSet::is_empty) {
        return Err(format!("membership has {} voter sets, some empty; expected one or two non-empty", configs.len()));
    }
    let nodes: BTreeSet<&NodeId> = membership.nodes().map(|(id, _)| id).collect();
    if let Some(voter) = membership.voter_ids().find(|v| !nodes.contains(v)) {
        return Err(format!("voter {voter} has no node entry"));
    }
    Ok(())
}

/// A snapshot's metadata must describe a state raft can be in.
fn check_snapshot_meta(from: NodeId, term: u64, meta: &SnapshotMeta<NodeId, PeerInfo>) -> Result<(), String> {
    // In one term only one node leads: a log id of the sender's term names the sender.
    if let Some(id) = &meta.last_log_id
        && id.leader_id.term == term
        && id.leader_id.node_id != from
    {
        return Err(format!("its last log entry names another leader for the sender's own term {term}"));
    }
    if meta.last_membership.log_id() > &meta.last_log_id {
        return Err("its membership is newer than its last log entry".to_owned());
    }
    check_membership(meta.last_membership.membership())
}

type ClientWriteOutcome =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, crate::PeerInfo>>>;

/// Run a leader-only operation on this node's raft, bounded by `bound`. `from` sent it (this
/// node for its own): a write is appended stamped with it ([`Command::Sent`]).
pub(crate) async fn execute(raft: &Raft<TypeConfig>, op: LeaderRequest, bound: Duration, from: NodeId) -> LeaderReply {
    if let LeaderRequest::Write(command) = &op
        && let Err(reason) = check_command(command)
    {
        return LeaderReply::Refused(reason);
    }
    let op = match op {
        LeaderRequest::Write(command) => LeaderRequest::Write(Command::Sent { by: from, command: Box::new(command) }),
        other => other,
    };
    if let LeaderRequest::ChangeVoters { term: Some(planned), .. }
    | LeaderRequest::RemoveNodes { term: Some(planned), .. } = &op
    {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let leading = m.state == openraft::ServerState::Leader && m.current_leader == Some(m.id);
        if !leading || m.current_term != *planned {
            return LeaderReply::Refused(format!(
                "the membership change was planned by the leader of term {planned}; this node is {} in term {}, so the plan is stale and was not applied",
                if leading { "the leader" } else { "not the leader" },
                m.current_term
            ));
        }
    }
    let is_write = matches!(op, LeaderRequest::Write(_));
    let outcome: Result<ClientWriteOutcome, _> = match op {
        LeaderRequest::Write(command) => tokio::time::timeout(bound, raft.client_write(command)).await,
        // Non-blocking: the learner is added once the membership entry commits; catching up
        // happens in the background (watch `metrics().replication`).
        LeaderRequest::AddLearner { node, info } => {
            tokio::time::timeout(bound, raft.add_learner(node, info, false)).await
        }
        // Demoted voters stay as learners (`retain = true`): every admitted non-voter holds
        // the whole ledger (ADR 0001). Dead nodes are dropped with `RemoveNodes`.
        LeaderRequest::ChangeVoters { voters, .. } => {
            tokio::time::timeout(bound, raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true)).await
        }
        LeaderRequest::RemoveNodes { nodes, .. } => {
            tokio::time::timeout(bound, raft.change_membership(ChangeMembers::RemoveNodes(nodes), false)).await
        }
    };
    match outcome {
        Err(_elapsed) => LeaderReply::Unconfirmed,
        Ok(Ok(response)) => match response.data {
            Some(applied) if is_write => LeaderReply::Written { index: response.log_id.index, applied },
            None if !is_write => LeaderReply::MembershipChanged,
            _ => LeaderReply::Refused(format!("entry {} produced an unexpected result", response.log_id)),
        },
        // Openraft answers ForwardToLeader only for entries it did not append, or appended and
        // then truncated: the operation certainly did not commit, so it is safe to retry.
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            LeaderReply::NotLeader { leader: forward.leader_id }
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => LeaderReply::Refused(e.to_string()),
        Ok(Err(RaftError::Fatal(_))) => LeaderReply::Stopped,
    }
}

/// Whether `command` may enter the log: every replica must be able to decode and replicate it,
/// and it names no origin (the leader stamps that).
pub(crate) fn check_command(command: &Command) -> Result<(), String> {
    if names_an_origin(command) {
        return Err("the command names its own origin (`Sent`); the ledger stamps the sender, so it was refused".into());
    }
    let depth = batch_depth(command);
    if depth > MAX_BATCH_DEPTH {
        return Err(format!("command nests batches or keys {depth} deep, past the limit of {MAX_BATCH_DEPTH}"));
    }
    let size = serde_json::to_vec(command).map_err(|e| format!("command does not encode: {e}"))?.len();
    if size > MAX_COMMAND_BYTES {
        return Err(format!("command is {size} bytes as JSON, past the limit of {MAX_COMMAND_BYTES} bytes"));
    }
    Ok(())
}

/// Whether `command` holds a [`Command::Sent`] anywhere; without recursion, since the command
/// may come from a peer.
fn names_an_origin(command: &Command) -> bool {
    let mut stack = vec![command];
    while let Some(command) = stack.pop() {
        match command {
            Command::Sent { .. } => return true,
            Command::Batch(inner) => stack.extend(inner.iter()),
            Command::Idempotent { command, .. } => stack.push(command),
            _ => {}
        }
    }
    false
}

/// How many `Batch` and `Idempotent` levels `command` has (0 for a plain command); without
/// recursion, since the command may come from a peer.
fn batch_depth(command: &Command) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(command, 0)];
    while let Some((command, depth)) = stack.pop() {
        match command {
            Command::Batch(inner) => {
                deepest = deepest.max(depth + 1);
                stack.extend(inner.iter().map(|c| (c, depth + 1)));
            }
            Command::Idempotent { command, .. } => {
                deepest = deepest.max(depth + 1);
                stack.push((command, depth + 1));
            }
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Command {
        (0..depth).fold(Command::Noop { now: 1 }, |c, _| Command::Batch(vec![c]))
    }

    #[test]
    fn a_command_that_names_its_own_origin_is_refused_however_deep() {
        let forged = Command::Sent { by: NodeId([2; 32]), command: Box::new(Command::Noop { now: 1 }) };
        let hidden = Command::Batch(vec![
            Command::Noop { now: 1 },
            Command::Idempotent {
                key: "k".parse().unwrap(),
                request: falak_core::ledger::RequestFingerprint([0; 32]),
                command: Box::new(Command::Batch(vec![forged.clone()])),
            },
        ]);
        for command in [forged, hidden] {
            let refused = check_command(&command).unwrap_err();
            assert!(refused.contains("names its own origin"), "{refused}");
        }
        assert_eq!(check_command(&Command::Batch(vec![Command::Noop { now: 1 }])), Ok(()));
    }

    #[test]
    fn batches_nested_past_the_limit_are_refused() {
        assert_eq!(batch_depth(&Command::Noop { now: 1 }), 0);
        assert_eq!(batch_depth(&nested(3)), 3);
        assert!(check_command(&nested(MAX_BATCH_DEPTH)).is_ok());
        assert_eq!(
            check_command(&nested(MAX_BATCH_DEPTH + 1)),
            Err("command nests batches or keys 9 deep, past the limit of 8".to_owned())
        );
        // Keys count as levels too: a chain of keyed writes cannot slip past the limit.
        let keyed = (0..MAX_BATCH_DEPTH + 1).fold(Command::Noop { now: 1 }, |c, i| Command::Idempotent {
            key: format!("k{i}").parse().unwrap(),
            request: falak_core::ledger::RequestFingerprint([0; 32]),
            command: Box::new(c),
        });
        assert_eq!(batch_depth(&keyed), MAX_BATCH_DEPTH + 1);
        assert!(check_command(&keyed).is_err());
    }

    #[test]
    fn commands_over_the_size_limit_are_refused() {
        let big = Command::Batch(vec![Command::Noop { now: u64::MAX }; MAX_COMMAND_BYTES / 20 + 1]);
        let e = check_command(&big).expect_err("refused");
        assert!(e.ends_with(&format!("past the limit of {MAX_COMMAND_BYTES} bytes")), "{e}");
    }
}
