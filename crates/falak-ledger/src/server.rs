//! The serving side of `Protocol::Ledger`: raft RPCs from peers and operations forwarded to the
//! leader.
//!
//! **Invariant:** a raft message is accepted only from the node it claims to come from (the
//! vote's node must be the transport-authenticated sender), so a compromised or confused peer
//! cannot speak for another node's leadership or candidacy. Undecodable frames are refused with
//! an error, never a panic.

use std::time::Duration;

use bytes::Bytes;
use falak_core::NodeId;
use falak_transport::Handler;
use futures_util::future::BoxFuture;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{ClientWriteResponse, InstallSnapshotRequest};
use openraft::{ChangeMembers, Raft, Vote};

use crate::TypeConfig;
use crate::wire::{self, DecodeFrameError, LeaderReply, LeaderRequest, LedgerRequest};

/// Serves `Protocol::Ledger` for one node; registered on the transport by the node.
pub(crate) struct LedgerServer {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) write_timeout: Duration,
}

impl Handler for LedgerServer {
    fn handle(&self, from: NodeId, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let raft = self.raft.clone();
        let write_timeout = self.write_timeout;
        Box::pin(async move {
            serve(&raft, from, body, write_timeout).await.map_err(|e| {
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
}

async fn serve(
    raft: &Raft<TypeConfig>,
    from: NodeId,
    body: Bytes,
    write_timeout: Duration,
) -> Result<Bytes, ServeError> {
    let (request, tail) = wire::decode::<LedgerRequest>(&body)?;
    let reply = match request {
        LedgerRequest::AppendEntries(rpc) => {
            check_sender("append-entries", from, &rpc.vote)?;
            wire::encode(&raft.append_entries(rpc).await, &[])?
        }
        LedgerRequest::Vote(rpc) => {
            check_sender("vote request", from, &rpc.vote)?;
            wire::encode(&raft.vote(rpc).await, &[])?
        }
        LedgerRequest::InstallSnapshot(chunk) => {
            check_sender("snapshot chunk", from, &chunk.vote)?;
            let rpc = InstallSnapshotRequest {
                vote: chunk.vote,
                meta: chunk.meta,
                offset: chunk.offset,
                data: tail.to_vec(),
                done: chunk.done,
            };
            wire::encode(&raft.install_snapshot(rpc).await, &[])?
        }
        LedgerRequest::Leader(op) => wire::encode(&execute(raft, op, write_timeout).await, &[])?,
    };
    Ok(reply)
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

type ClientWriteOutcome =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, crate::PeerInfo>>>;

/// Run a leader-only operation on this node's raft, bounded by `bound`.
pub(crate) async fn execute(raft: &Raft<TypeConfig>, op: LeaderRequest, bound: Duration) -> LeaderReply {
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
        LeaderRequest::ChangeVoters { voters } => {
            tokio::time::timeout(bound, raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true)).await
        }
        LeaderRequest::RemoveNodes { nodes } => {
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
