//! The applied ledger state and its snapshots (openraft's `RaftStateMachine`).
//!
//! Applying is in memory: committed commands go through [`State::apply`] under a write lock on
//! the shared [`Replica`], which the node reads without copying. Durability comes from the log,
//! not from the state: the state (with its last-applied log id and membership) is persisted only
//! as a snapshot, and on start the state machine loads the latest snapshot and openraft
//! re-applies the committed log after it. Writing the whole state on every apply would cost an
//! fsync per entry for nothing the log does not already guarantee.
//!
//! Every replica, voters and learners alike, publishes each applied entry as a [`Committed`] so
//! the node can react to committed changes.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use falak_core::ledger::{Applied, State};

use crate::history::{EntryEvents, History};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::codec;
use crate::error::OpenLedgerError;
use crate::store::{
    KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, LedgerDb, LedgerTypes, SNAPSHOT, StoreError, begin_write, blocking_store,
};

/// How many committed changes a slow subscriber may fall behind before it sees `Lagged`.
const COMMITTED_CHANNEL_CAPACITY: usize = 4096;

/// A change to the applied state, published on every replica in log order.
#[derive(Debug, Clone, PartialEq)]
pub enum Committed {
    /// The command at log `index`, appended by the leader of `term`, was applied and produced
    /// `applied`. Its events are in the history ([`crate::Ledger::history`]) by now.
    Entry { index: u64, term: u64, applied: Applied },
    /// The state was replaced by a snapshot covering the log up to `index` (this replica was too
    /// far behind to replay the log). Subscribers should re-read the whole state.
    SnapshotInstalled { index: u64 },
}

/// The in-memory applied state, shared by the state machine and the node.
pub(crate) struct Replica<C: LedgerTypes> {
    applied: RwLock<AppliedState<C>>,
    committed: broadcast::Sender<Committed>,
}

/// The state together with the log position it reflects, kept under one lock so snapshots see
/// a consistent pair.
pub(crate) struct AppliedState<C: LedgerTypes> {
    pub(crate) state: State,
    pub(crate) last_applied: Option<LogId<C::NodeId>>,
    pub(crate) membership: StoredMembership<C::NodeId, C::Node>,
}

impl<C: LedgerTypes> Replica<C> {
    fn new(applied: AppliedState<C>) -> Self {
        let (committed, _) = broadcast::channel(COMMITTED_CHANNEL_CAPACITY);
        Replica { applied: RwLock::new(applied), committed }
    }

    /// Give a fresh replica a state with a planted bug (tests of the invariant checkers only).
    /// A replica that already applied entries keeps its state: the bug travels in snapshots.
    pub(crate) fn plant_bug(&self, bug: falak_core::ledger::PlantedBug) {
        let mut applied = self.applied.write().unwrap_or_else(PoisonError::into_inner);
        if applied.last_applied.is_none() {
            applied.state = State::with_planted_bug(bug);
        }
    }

    /// Read access to the applied state. Do not hold it across an `.await`: it blocks apply.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, AppliedState<C>> {
        // A panic inside `State::apply` poisons the lock; the state it left is still the best
        // there is to read, and the raft core has stopped applying by then anyway.
        self.applied.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, AppliedState<C>> {
        self.applied.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes applied from now on, in log order.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.committed.subscribe()
    }
}

/// The snapshot payload: the whole state, versioned by the record format.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotPayload {
    pub(crate) state: State,
}

/// The state-machine half of the ledger storage.
pub struct StateMachineStore<C: LedgerTypes> {
    db: Arc<LedgerDb>,
    replica: Arc<Replica<C>>,
    history: Arc<History>,
    /// Distinguishes snapshots built at the same log id (openraft requires unique ids).
    snapshot_seq: Arc<AtomicU64>,
}

impl<C: LedgerTypes> StateMachineStore<C> {
    /// Load the latest snapshot from `db`, or start empty, and open the event history in `dir`.
    pub(crate) async fn load(db: Arc<LedgerDb>, dir: &std::path::Path) -> Result<Self, OpenLedgerError> {
        let reader = db.clone();
        let stored = blocking_store(move || read_snapshot::<C>(&reader))
            .await
            .map_err(|e| OpenLedgerError::Snapshot(e.to_string()))?;
        let applied = match stored {
            None => {
                AppliedState { state: State::default(), last_applied: None, membership: StoredMembership::default() }
            }
            Some((meta, data)) => {
                let payload: SnapshotPayload =
                    codec::decode(&data).map_err(|e| OpenLedgerError::Snapshot(format!("snapshot payload: {e}")))?;
                AppliedState { state: payload.state, last_applied: meta.last_log_id, membership: meta.last_membership }
            }
        };
        let snapshot = applied.last_applied.as_ref().map_or(0, |id| id.index);
        let history_dir = dir.to_path_buf();
        let history = blocking_store(move || History::open(&history_dir, snapshot)).await.map_err(|e| {
            OpenLedgerError::Database { path: dir.join(crate::history::FILE_NAME), reason: e.to_string() }
        })?;
        Ok(StateMachineStore {
            db,
            replica: Arc::new(Replica::new(applied)),
            history: Arc::new(history),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The shared applied state this state machine updates.
    pub(crate) fn replica(&self) -> Arc<Replica<C>> {
        self.replica.clone()
    }

    /// The event history this state machine writes.
    pub(crate) fn history(&self) -> Arc<History> {
        self.history.clone()
    }
}

type StoredSnapshot<C> =
    (SnapshotMeta<<C as openraft::RaftTypeConfig>::NodeId, <C as openraft::RaftTypeConfig>::Node>, Vec<u8>);

fn read_snapshot<C: LedgerTypes>(db: &Database) -> Result<Option<StoredSnapshot<C>>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let (Some(meta), Some(data)) = (table.get(KEY_SNAPSHOT_META)?, table.get(KEY_SNAPSHOT_DATA)?) else {
        return Ok(None);
    };
    Ok(Some((codec::decode(meta.value())?, data.value().to_vec())))
}

/// Store a snapshot unless a newer one is already stored (a snapshot being built can race with
/// one being installed from the leader). Meta and data commit together, with fsync, because
/// the log before this snapshot may be purged right after.
fn write_snapshot<C: LedgerTypes>(
    db: &Database,
    meta: &SnapshotMeta<C::NodeId, C::Node>,
    data: &[u8],
) -> Result<bool, StoreError> {
    let meta_bytes = codec::encode(meta)?;
    let txn = begin_write(db, Durability::Immediate)?;
    {
        let mut table = txn.open_table(SNAPSHOT)?;
        if let Some(stored) = table.get(KEY_SNAPSHOT_META)? {
            let stored: SnapshotMeta<C::NodeId, C::Node> = codec::decode(stored.value())?;
            if stored.last_log_id > meta.last_log_id {
                return Ok(false);
            }
        }
        table.insert(KEY_SNAPSHOT_META, meta_bytes.as_slice())?;
        table.insert(KEY_SNAPSHOT_DATA, data)?;
    }
    txn.commit()?;
    Ok(true)
}

/// Builds a snapshot from a consistent copy of the applied state.
pub struct SnapshotBuilder<C: LedgerTypes> {
    db: Arc<LedgerDb>,
    replica: Arc<Replica<C>>,
    history: Arc<History>,
    snapshot_seq: Arc<AtomicU64>,
}

impl<C: LedgerTypes> RaftSnapshotBuilder<C> for SnapshotBuilder<C> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<C::NodeId>> {
        // Clone under the lock (fast), serialize outside it (slow) so apply is blocked briefly.
        let (state, last_log_id, last_membership) = {
            let applied = self.replica.read();
            (applied.state.clone(), applied.last_applied.clone(), applied.membership.clone())
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &last_log_id {
            Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
            None => format!("empty-{seq}"),
        };
        // The log before the snapshot may be purged once it is stored, and a restarted replica
        // replays only the log after it: the history must hold the snapshot's events durably
        // first.
        let covered = last_log_id.as_ref().map_or(0, |id| id.index);
        match self.history.make_durable_through(covered, std::time::Duration::from_secs(5)).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(index = covered, "event history lags the snapshot being built"),
            Err(e) => tracing::warn!(error = %e, "cannot make the event history durable before a snapshot"),
        }
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let db = self.db.clone();
        let stored_meta = meta.clone();
        let data = blocking_store(move || {
            let data = codec::encode(&SnapshotPayload { state })?;
            write_snapshot::<C>(&db, &stored_meta, &data)?;
            Ok(data)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "ledger snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl<C: LedgerTypes> RaftStateMachine<C> for StateMachineStore<C> {
    type SnapshotBuilder = SnapshotBuilder<C>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<C::NodeId>>, StoredMembership<C::NodeId, C::Node>), StorageError<C::NodeId>> {
        let applied = self.replica.read();
        Ok((applied.last_applied.clone(), applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<Applied>>, StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let mut published = Vec::new();
        let mut recorded = Vec::new();
        {
            let mut applied = self.replica.write();
            for entry in entries {
                let index = entry.log_id.index;
                let term = entry.log_id.leader_id.term;
                applied.last_applied = Some(entry.log_id.clone());
                let events = match entry.payload {
                    EntryPayload::Blank => {
                        replies.push(None);
                        Vec::new()
                    }
                    EntryPayload::Normal(command) => {
                        // The store is generic for openraft's storage suite, whose ids are
                        // numbers: there, no leader duty is checked against the leader.
                        let leader = (&entry.log_id.leader_id.node_id as &dyn std::any::Any)
                            .downcast_ref::<falak_core::NodeId>();
                        let outcome = applied.state.apply_entry(term, leader.copied(), &command);
                        let events = outcome.events.clone();
                        published.push(Committed::Entry { index, term, applied: outcome.clone() });
                        replies.push(Some(outcome));
                        events
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        replies.push(None);
                        Vec::new()
                    }
                };
                recorded.push((index, EntryEvents { at: applied.state.clock(), events }));
            }
        }
        // The history first, so that a subscriber woken by the publication finds the events
        // on disk. A history that cannot be written must not stop the ledger: it records the
        // gap, and readers are told where it resumes.
        let history = self.history.clone();
        let last = recorded.last().map(|(index, _)| *index);
        if let Err(e) = blocking_store(move || history.write(&recorded)).await {
            tracing::error!(error = %e, "cannot write the event history; readers will see a gap");
            if let Some(last) = last {
                let history = self.history.clone();
                let _ = blocking_store(move || history.mark_gap(last)).await;
            }
        }
        // Publish after releasing the lock so a subscriber that reads the state on receipt
        // already sees the change. No subscriber is not an error.
        for change in published {
            let _ = self.replica.committed.send(change);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            replica: self.replica.clone(),
            history: self.history.clone(),
            snapshot_seq: self.snapshot_seq.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<C::NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<C::NodeId, C::Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        let data = snapshot.into_inner();
        let payload: SnapshotPayload =
            codec::decode(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // Persist first: if that fails the in-memory state is left as it was.
        let db = self.db.clone();
        let stored_meta = meta.clone();
        blocking_store(move || write_snapshot::<C>(&db, &stored_meta, &data))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        {
            let mut applied = self.replica.write();
            applied.state = payload.state;
            applied.last_applied = meta.last_log_id.clone();
            applied.membership = meta.last_membership.clone();
        }
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        // The events between what this replica applied and the snapshot never reached it.
        let history = self.history.clone();
        if let Err(e) = blocking_store(move || history.restart_after(index)).await {
            tracing::error!(error = %e, "cannot restart the event history after an installed snapshot");
        }
        let _ = self.replica.committed.send(Committed::SnapshotInstalled { index });
        tracing::info!(snapshot = %meta, "ledger snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<C::NodeId>> {
        let db = self.db.clone();
        let stored = blocking_store(move || read_snapshot::<C>(&db))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
