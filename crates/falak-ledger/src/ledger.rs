//! [`Ledger`], the facade the node daemon uses: open, bootstrap, write from any node, read the
//! applied state, watch committed changes, manage voters, shut down.
//!
//! Writes and membership changes run on the leader. A node that is not the leader forwards them
//! over `Protocol::Ledger`; while an election is in progress (no leader, or the presumed leader
//! is unreachable or says it is not the leader) it retries until
//! [`LedgerConfig::write_timeout`], then fails with a clear error.
//!
//! **Retry safety:** a retry happens only when the operation did not reach a leader that
//! could take it: no leader known, the target answered that it is not the leader (openraft
//! says so only for entries it did not keep), or the transport could not reach it. Two gaps
//! remain, both when a leader dies or loses its connection mid-request: the transport may
//! report a request the leader did receive as unreachable, and a leader shutting down answers
//! `Stopped` for entries it may already have replicated. The retry may then apply the command
//! twice, so commands should be idempotent against committed state (claims are: a second
//! claim for an attempt is rejected). Client sessions with request ids would close the gap.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, RwLockReadGuard};
use std::time::Duration;

use bytes::Bytes;
use falak_core::NodeId;
use falak_core::ledger::{Applied, Command, State};
use falak_transport::{Handler, Protocol, Transport, TransportError};
use openraft::error::{InitializeError as RaftInitializeError, RaftError};
use openraft::{Raft, ServerState};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::config::LedgerConfig;
use crate::error::{ChangeMembershipError, InitializeError, OpenLedgerError, ShutdownError, WriteError};
use crate::history::{History, HistoryPage, ReadHistoryError};
use crate::network::LedgerNetwork;
use crate::server::{self, LedgerServer};
use crate::state_machine::{AppliedState, Committed, Replica};
use crate::store::open_store;
use crate::wire::{self, LeaderReply, LeaderRequest, LedgerRequest};

/// How long [`Ledger::write`] waits for this replica to apply its own committed write.
pub const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(2);
use crate::{PeerInfo, TypeConfig};

/// Pause between attempts to find a leader while none is known.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// One node's handle on the replicated ledger. Cheap to clone; clones share the node.
#[derive(Clone)]
pub struct Ledger {
    id: NodeId,
    raft: Raft<TypeConfig>,
    replica: Arc<Replica<TypeConfig>>,
    transport: Arc<dyn Transport>,
    config: LedgerConfig,
    /// Lets [`Ledger::shutdown`] wait until raft's tasks have released the database file.
    database_closed: watch::Receiver<bool>,
    /// Nodes to ask for the leader while this node knows none (a node that is not yet a member
    /// of the ledger: a new node's first write finds the leader through them).
    contacts: Arc<std::sync::RwLock<Vec<NodeId>>>,
    /// The snapshot being received from a leader, shared by every handler of this ledger.
    receiving: crate::server::SharedReceiving,
    /// The events of every applied entry, by log index. Owned by the state machine, so that
    /// shutdown closes its file whatever handles remain.
    history: std::sync::Weak<History>,
    history_closed: watch::Receiver<bool>,
    /// When each peer last answered this node's raft RPCs.
    answered: crate::network::Answered,
}

/// Who leads the ledger and how far this replica is, as of now: what API answers carry so a
/// client can tell whose view is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerStatus {
    /// The highest leadership term this node has seen.
    pub term: u64,
    /// The leader of that term, when known.
    pub leader: Option<NodeId>,
    /// The last log index applied to this replica's state.
    pub applied: Option<u64>,
}

/// Read access to the applied state, without copying it.
///
/// Holding it blocks apply on this node: drop it before any `.await`.
pub struct StateGuard<'a>(RwLockReadGuard<'a, AppliedState<TypeConfig>>);

impl Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0.state
    }
}

impl StateGuard<'_> {
    /// The index of the last log entry reflected in this state.
    pub fn applied_index(&self) -> Option<u64> {
        self.0.last_applied.as_ref().map(|id| id.index)
    }
}

/// This node's role in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    /// Replicates the log but does not vote (also a node not yet in any membership).
    Learner,
    Shutdown,
}

/// A summary of the ledger as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerMetrics {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// `None` when unknown (for instance after shutdown).
    pub committed: Option<u64>,
    pub snapshot: Option<u64>,
    /// The last log index purged from this node's log (covered by its snapshot).
    pub purged: Option<u64>,
    /// On the leader: each member's last replicated index.
    pub replication: Option<BTreeMap<NodeId, Option<u64>>>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
}

impl Ledger {
    /// Open the ledger stored in `dir` (creating `dir/ledger.redb` if needed) and start raft.
    ///
    /// The node must then register [`Ledger::handler`] for `Protocol::Ledger` on `transport`.
    /// A fresh node waits to be initialized ([`Ledger::initialize`]) or added by a leader; a
    /// restarted node recovers its state from disk and rejoins.
    pub async fn open(
        dir: &Path,
        id: NodeId,
        transport: Arc<dyn Transport>,
        config: LedgerConfig,
    ) -> Result<Ledger, OpenLedgerError> {
        let raft_config = Arc::new(config.raft_config()?);
        let (log_store, state_machine) = open_store::<TypeConfig>(dir, id, config.cache_bytes).await?;
        let replica = state_machine.replica();
        let history = Arc::downgrade(&state_machine.history());
        let history_closed = state_machine.history().closed();
        if config.planted_bug != falak_core::ledger::PlantedBug::None {
            replica.plant_bug(config.planted_bug);
        }
        let database_closed = log_store.database_closed();
        let answered = crate::network::Answered::default();
        let network = LedgerNetwork::new(transport.clone(), answered.clone());
        let raft = Raft::new(id, raft_config, network, log_store, state_machine)
            .await
            .map_err(|e| OpenLedgerError::Raft(e.to_string()))?;
        tracing::info!(node = %id, dir = %dir.display(), "ledger opened");
        Ok(Ledger {
            id,
            raft,
            replica,
            transport,
            config,
            database_closed,
            contacts: Arc::default(),
            receiving: Arc::default(),
            history,
            history_closed,
            answered,
        })
    }

    /// The handler to register on the transport for `Protocol::Ledger`.
    pub fn handler(&self) -> Arc<dyn Handler> {
        Arc::new(LedgerServer {
            raft: self.raft.clone(),
            write_timeout: self.config.write_timeout,
            receiving: self.receiving.clone(),
        })
    }

    /// Bootstrap a new mesh with these voters (this node must be one of them).
    ///
    /// Idempotent: on a node whose log is not empty (already initialized, or already joined)
    /// it does nothing. Calling it on several of the voters with the same set is safe; calling
    /// it with different sets on different nodes would create two meshes.
    pub async fn initialize(&self, voters: BTreeMap<NodeId, PeerInfo>) -> Result<(), InitializeError> {
        if voters.is_empty() {
            return Err(InitializeError::NoVoters);
        }
        if !voters.contains_key(&self.id) {
            return Err(InitializeError::NotAVoter(self.id));
        }
        match self.raft.initialize(voters).await {
            Ok(()) | Err(RaftError::APIError(RaftInitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(RaftInitializeError::NotInMembers(_))) => Err(InitializeError::NotAVoter(self.id)),
            Err(RaftError::Fatal(_)) => Err(InitializeError::Shutdown),
        }
    }

    /// Commit `command` and return what applying it produced on the leader.
    ///
    /// Answers only after the entry is stored by a majority of voters and applied on the
    /// leader. From a follower or learner the write is forwarded to the leader.
    ///
    /// Read-your-writes: it answers once this replica has applied the entry too (or after
    /// [`READ_YOUR_WRITES_WAIT`], when this replica is cut off from the leader), so a read of
    /// [`Ledger::state`] that follows sees the write.
    pub async fn write(&self, command: Command) -> Result<Applied, WriteError> {
        match self.on_leader(LeaderRequest::Write(command)).await {
            Ok(LeaderReply::Written { index, applied }) => {
                self.wait_applied(index, READ_YOUR_WRITES_WAIT).await;
                Ok(applied)
            }
            Ok(other) => Err(WriteError::Refused { leader: self.id, reason: format!("unexpected reply {other:?}") }),
            Err(e) => Err(match e {
                LeaderCallError::NoLeader(waited) => WriteError::NoLeader { waited },
                LeaderCallError::Unconfirmed { leader, waited } => WriteError::Timeout { leader, waited },
                LeaderCallError::Refused { leader, reason } => WriteError::Refused { leader, reason },
                LeaderCallError::TooLarge { size, limit } => WriteError::TooLarge { size, limit },
                LeaderCallError::Encode(reason) => WriteError::Encode(reason),
                LeaderCallError::Shutdown => WriteError::Shutdown,
            }),
        }
    }

    /// Wait until this replica has applied log entry `index`, at most `limit`; says whether it has.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> bool {
        let mut committed = self.subscribe();
        let deadline = Instant::now() + limit;
        loop {
            if self.state().applied_index().is_some_and(|applied| applied >= index) {
                return true;
            }
            match tokio::time::timeout_at(deadline, committed.recv()).await {
                Err(_elapsed) => return false,
                Ok(Err(broadcast::error::RecvError::Closed)) => return false,
                Ok(_) => {}
            }
        }
    }

    /// Read the applied state in place. See [`StateGuard`].
    pub fn state(&self) -> StateGuard<'_> {
        StateGuard(self.replica.read())
    }

    /// Committed changes from now on, in log order, on this replica.
    ///
    /// Subscribe first, then read [`Ledger::state`], so nothing falls between. On
    /// `RecvError::Lagged` or [`Committed::SnapshotInstalled`], re-read the whole state.
    pub fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.replica.subscribe()
    }

    /// Add `node` as a learner: it starts receiving the log. Returns once the membership entry
    /// commits, without waiting for the learner to catch up.
    pub async fn add_learner(&self, node: NodeId, info: PeerInfo) -> Result<(), ChangeMembershipError> {
        self.change_membership(LeaderRequest::AddLearner { node, info }).await
    }

    /// Make exactly `voters` the voting members (joint consensus, two entries).
    ///
    /// Every new voter must already be a learner that has caught up ([`Ledger::add_learner`],
    /// then watch [`LedgerMetrics::replication`]). Voters left out stay as learners; remove a
    /// dead one with [`Ledger::remove_learners`].
    ///
    /// With `planned_in`, the change was planned by the leader of that term from its own view,
    /// and is refused (changing nothing) unless it runs on the leader of that same term: a
    /// deposed leader's plan never reaches its successor.
    pub async fn change_voters(
        &self,
        voters: BTreeSet<NodeId>,
        planned_in: Option<u64>,
    ) -> Result<(), ChangeMembershipError> {
        self.change_membership(LeaderRequest::ChangeVoters { voters, term: planned_in }).await
    }

    /// Remove learners from the membership; they stop receiving the log. `planned_in` as for
    /// [`Ledger::change_voters`].
    ///
    /// The leader keeps the log a member still needs (openraft does not purge entries an
    /// in-flight replication stream covers), so an OFFLINE node should be removed rather than
    /// left as a learner.
    pub async fn remove_learners(
        &self,
        nodes: BTreeSet<NodeId>,
        planned_in: Option<u64>,
    ) -> Result<(), ChangeMembershipError> {
        self.change_membership(LeaderRequest::RemoveNodes { nodes, term: planned_in }).await
    }

    /// Ledger events after `after` (from the start of the retained history when `None`), at
    /// most `limit`: the one event history every replica shares, read from this replica's
    /// disk. See [`crate::RETAINED_EVENTS`] for how far back it goes.
    pub async fn history(
        &self,
        after: Option<falak_core::ledger::EventId>,
        limit: usize,
    ) -> Result<HistoryPage, ReadHistoryError> {
        self.read_history(move |history| history.read(after, limit)).await
    }

    /// The position after which the last `count` retained events follow (`None` when fewer are
    /// retained): where a reader that wants only recent history starts.
    pub async fn history_tail(&self, count: u64) -> Result<Option<falak_core::ledger::EventId>, ReadHistoryError> {
        self.read_history(move |history| history.tail_start(count)).await
    }

    /// Run a read of the history on the blocking pool (redb reads touch the disk).
    async fn read_history<T: Send + 'static>(
        &self,
        read: impl FnOnce(&History) -> Result<T, ReadHistoryError> + Send + 'static,
    ) -> Result<T, ReadHistoryError> {
        let history = self.history.upgrade().ok_or_else(ReadHistoryError::shut_down)?;
        match tokio::task::spawn_blocking(move || read(&history)).await {
            Ok(result) => result,
            Err(join) => Err(ReadHistoryError::task(join.to_string())),
        }
    }

    /// The peers that answered one of this node's raft RPCs within `within`: connected, their
    /// ledger serving. On the leader, which heartbeats every member every 50 ms, every live
    /// member; elsewhere, whoever this node last asked for a vote.
    pub fn answering(&self, within: Duration) -> BTreeSet<NodeId> {
        self.answered.within(within)
    }

    /// The term this node leads in, when it is the leader.
    pub fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id)).then_some(m.current_term)
    }

    /// Term, leader and applied index as of now; cheap (no IO, no await).
    pub fn status(&self) -> LedgerStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        LedgerStatus { term: m.current_term, leader: m.current_leader, applied: m.last_applied.map(|id| id.index) }
    }

    async fn change_membership(&self, op: LeaderRequest) -> Result<(), ChangeMembershipError> {
        match self.on_leader(op).await {
            Ok(LeaderReply::MembershipChanged) => Ok(()),
            Ok(other) => {
                Err(ChangeMembershipError::Refused { leader: self.id, reason: format!("unexpected reply {other:?}") })
            }
            Err(e) => Err(match e {
                LeaderCallError::NoLeader(waited) => ChangeMembershipError::NoLeader { waited },
                LeaderCallError::Unconfirmed { leader, waited } => ChangeMembershipError::Timeout { leader, waited },
                LeaderCallError::Refused { leader, reason } => ChangeMembershipError::Refused { leader, reason },
                LeaderCallError::TooLarge { size, limit } => ChangeMembershipError::Refused {
                    leader: self.id,
                    reason: format!("request of {size} bytes exceeds the transport limit of {limit}"),
                },
                LeaderCallError::Encode(reason) => ChangeMembershipError::Refused { leader: self.id, reason },
                LeaderCallError::Shutdown => ChangeMembershipError::Shutdown,
            }),
        }
    }

    /// This node's view of the ledger.
    pub async fn metrics(&self) -> LedgerMetrics {
        let committed = self.raft.with_raft_state(|st| st.committed.as_ref().map(|id| id.index)).await.ok().flatten();
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        LedgerMetrics {
            id: self.id,
            role: match m.state {
                ServerState::Leader => Role::Leader,
                ServerState::Follower => Role::Follower,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Shutdown,
            },
            term: m.current_term,
            leader: m.current_leader,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|id| id.index),
            committed,
            snapshot: m.snapshot.map(|id| id.index),
            purged: m.purged.map(|id| id.index),
            replication: m.replication.map(|r| r.into_iter().map(|(id, log)| (id, log.map(|l| l.index))).collect()),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
        }
    }

    /// The leader this node currently knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Nodes to forward leader requests to while this node knows no leader; they answer with
    /// the leader or take the request themselves.
    pub fn set_contacts(&self, contacts: Vec<NodeId>) {
        let contacts = contacts.into_iter().filter(|c| *c != self.id).collect();
        *self.contacts.write().unwrap_or_else(std::sync::PoisonError::into_inner) = contacts;
    }

    /// The next contact to ask, round robin by attempt.
    fn contact(&self, attempt: usize) -> Option<NodeId> {
        let contacts = self.contacts.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (!contacts.is_empty()).then(|| contacts[attempt % contacts.len()])
    }

    /// The underlying openraft handle, for the simulation harness and diagnostics.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stop raft on this node and release `ledger.redb`.
    ///
    /// Shutdown writes nothing: everything acknowledged is already on disk, so a crash and a
    /// shutdown leave the same files. Once this returns `Ok`, the directory can be reopened.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        let stopped = self.raft.shutdown().await.map_err(|e| ShutdownError::Raft(e.to_string()));
        // Nothing applies any more: make what the event history holds durable (after a crash,
        // replaying the log after the snapshot rewrites what was not).
        if let Some(history) = self.history.upgrade()
            && let Ok(Err(e)) = tokio::task::spawn_blocking(move || history.flush()).await
        {
            tracing::warn!(error = %e, "cannot flush the event history at shutdown");
        }
        // Replication and snapshot tasks drop their handles on the database shortly after the
        // raft core stops; wait for that so the file lock is released.
        let bound = Duration::from_secs(2);
        let (mut closed, mut history_closed) = (self.database_closed.clone(), self.history_closed.clone());
        let both = async move {
            // The sender is dropped only after it signalled; a closed channel means closed.
            let _ = closed.wait_for(|closed| *closed).await;
            let _ = history_closed.wait_for(|closed| *closed).await;
        };
        if tokio::time::timeout(bound, both).await.is_err() {
            return Err(ShutdownError::DatabaseBusy(bound));
        }
        tracing::info!(node = %self.id, "ledger shut down");
        stopped
    }

    /// Run `op` on the leader: here if this node leads, else forwarded; retried while no
    /// leader can take it, up to `write_timeout`.
    async fn on_leader(&self, op: LeaderRequest) -> Result<LeaderReply, LeaderCallError> {
        let bound = self.config.write_timeout;
        let start = Instant::now();
        let deadline = start + bound;
        let frame = wire::encode(&LedgerRequest::Leader(op.clone()), &[])
            .map_err(|e| LeaderCallError::Encode(e.to_string()))?;
        let mut hint: Option<NodeId> = None;
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            if self.raft.metrics().borrow().running_state.is_err() {
                return Err(LeaderCallError::Shutdown);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(LeaderCallError::NoLeader(bound));
            }
            let followed_hint = hint.is_some();
            let target = hint.take().or_else(|| self.leader()).or_else(|| self.contact(attempt));
            let reply = match target {
                None => None,
                Some(leader) if leader == self.id => {
                    Some((leader, server::execute(&self.raft, op.clone(), remaining, self.id).await))
                }
                Some(leader) => {
                    self.forward(leader, frame.clone(), remaining, start).await?.map(|reply| (leader, reply))
                }
            };
            // No reply means nobody to ask, or the target could not take it: wait for the
            // election to settle.
            if let Some((tried, reply)) = reply {
                match reply {
                    LeaderReply::Written { .. } | LeaderReply::MembershipChanged => return Ok(reply),
                    LeaderReply::NotLeader { leader } => {
                        // Follow a fresh hint at once, but not hint after hint: two nodes with
                        // stale views could otherwise bounce the request without pause.
                        if let Some(next) = leader.filter(|next| *next != tried && !followed_hint) {
                            hint = Some(next);
                            continue;
                        }
                    }
                    LeaderReply::Stopped if tried == self.id => return Err(LeaderCallError::Shutdown),
                    // A remote leader is shutting down; the next leader will take the operation.
                    LeaderReply::Stopped => {}
                    LeaderReply::Unconfirmed => {
                        return Err(LeaderCallError::Unconfirmed { leader: tried, waited: start.elapsed() });
                    }
                    LeaderReply::Refused(reason) => return Err(LeaderCallError::Refused { leader: tried, reason }),
                }
            }
            tokio::time::sleep(RETRY_INTERVAL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Send a leader request to `leader`. `Ok(None)` means it certainly was not processed and
    /// can be retried elsewhere.
    async fn forward(
        &self,
        leader: NodeId,
        frame: Bytes,
        remaining: Duration,
        start: Instant,
    ) -> Result<Option<LeaderReply>, LeaderCallError> {
        let request = self.transport.request(leader, Protocol::Ledger, frame);
        // A leader that died takes the request down with it silently (no answer until the
        // connection idles out). Once this node hears from a new leader, stop waiting: the
        // outcome is open (`Unconfirmed`), and the caller decides whether to retry.
        let mut metrics = self.raft.metrics();
        let leader_moved = async move {
            loop {
                if metrics.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if metrics.borrow().current_leader.is_some_and(|now| now != leader) {
                    return;
                }
            }
        };
        let reply = tokio::select! {
            reply = tokio::time::timeout(remaining, request) => reply,
            () = leader_moved => return Err(LeaderCallError::Unconfirmed { leader, waited: start.elapsed() }),
        };
        let reply = match reply {
            Err(_elapsed) => return Err(LeaderCallError::Unconfirmed { leader, waited: start.elapsed() }),
            Ok(Ok(reply)) => reply,
            Ok(Err(
                TransportError::UnknownPeer(_) | TransportError::Unreachable { .. } | TransportError::Refused { .. },
            )) => return Ok(None),
            Ok(Err(TransportError::TooLarge { size, limit })) => return Err(LeaderCallError::TooLarge { size, limit }),
            Ok(Err(TransportError::Closed)) => return Err(LeaderCallError::Shutdown),
            Ok(Err(TransportError::Timeout(_))) => {
                return Err(LeaderCallError::Unconfirmed { leader, waited: start.elapsed() });
            }
            Ok(Err(TransportError::Handler(reason))) => return Err(LeaderCallError::Refused { leader, reason }),
        };
        match wire::decode::<LeaderReply>(&reply) {
            Ok((reply, _)) => Ok(Some(reply)),
            Err(e) => Err(LeaderCallError::Refused { leader, reason: format!("unreadable reply: {e}") }),
        }
    }
}

/// Why a leader-only operation did not complete; mapped to each operation's public error.
enum LeaderCallError {
    NoLeader(Duration),
    Unconfirmed { leader: NodeId, waited: Duration },
    Refused { leader: NodeId, reason: String },
    TooLarge { size: usize, limit: usize },
    Encode(String),
    Shutdown,
}
