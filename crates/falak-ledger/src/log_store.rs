//! The raft log, vote and committed index in `ledger.redb` (openraft's `RaftLogStorage`).
//!
//! **Invariant:** an append is reported flushed to openraft only after its redb transaction
//! committed with `Durability::Immediate` (fsync), so an entry this node acknowledged to a
//! leader survives kill -9. The vote is saved the same way before openraft acts on it.
//!
//! Openraft serializes all calls on the log store (appends, truncates, purges, vote saves), and
//! each is awaited to completion, so redb's single writer never sees them out of order. Log
//! readers (one per replication stream) share the database and use read transactions.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use tokio::sync::watch;

use crate::codec;
use crate::store::{
    KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG, LedgerDb, LedgerTypes, META, StoreError, begin_write,
    blocking_store, read_record, write_record,
};

/// The log half of the ledger storage. Cheap to clone: clones share the database.
pub struct LogStore<C: LedgerTypes> {
    db: Arc<LedgerDb>,
    _types: PhantomData<fn() -> C>,
}

impl<C: LedgerTypes> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore { db: self.db.clone(), _types: PhantomData }
    }
}

impl<C: LedgerTypes> LogStore<C> {
    pub(crate) fn new(db: Arc<LedgerDb>) -> Self {
        LogStore { db, _types: PhantomData }
    }

    /// Becomes `true` once every user of the database has let go of it and it is closed.
    pub(crate) fn database_closed(&self) -> watch::Receiver<bool> {
        self.db.closed()
    }
}

fn read_entries<C: LedgerTypes>(db: &Database, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<C::Entry>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(LOG)?;
    let mut entries = Vec::new();
    for row in table.range::<u64>(range)? {
        let (_, value) = row?;
        entries.push(codec::decode(value.value())?);
    }
    Ok(entries)
}

fn read_log_state<C: LedgerTypes>(db: &Database) -> Result<LogState<C>, StoreError> {
    let last_purged_log_id: Option<LogId<C::NodeId>> = read_record(db, META, KEY_LAST_PURGED)?;
    let txn = db.begin_read()?;
    let table = txn.open_table(LOG)?;
    let last_entry = match table.last()? {
        Some((_, value)) => Some(codec::decode::<C::Entry>(value.value())?.log_id),
        None => None,
    };
    Ok(LogState { last_log_id: last_entry.or_else(|| last_purged_log_id.clone()), last_purged_log_id })
}

fn write_entries(db: &Database, entries: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
    let txn = begin_write(db, Durability::Immediate)?;
    {
        let mut table = txn.open_table(LOG)?;
        for (index, bytes) in &entries {
            table.insert(*index, bytes.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Delete `range` of the log and, for purges, record the purged id in the same transaction so
/// a crash never leaves a hole between the purged id and the first entry.
fn delete_entries<NID: openraft::NodeId>(
    db: &Database,
    range: (Bound<u64>, Bound<u64>),
    purged: Option<&LogId<NID>>,
) -> Result<(), StoreError> {
    let txn = begin_write(db, Durability::Immediate)?;
    {
        let mut table = txn.open_table(LOG)?;
        table.retain_in::<u64, _>(range, |_, _| false)?;
        if let Some(purged) = purged {
            let bytes = codec::encode(purged)?;
            txn.open_table(META)?.insert(KEY_LAST_PURGED, bytes.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

impl<C: LedgerTypes> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let db = self.db.clone();
        blocking_store(move || read_entries::<C>(&db, bounds)).await.map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl<C: LedgerTypes> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let db = self.db.clone();
        blocking_store(move || read_log_state::<C>(&db)).await.map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let db = self.db.clone();
        let vote = vote.clone();
        blocking_store(move || write_record(&db, META, KEY_VOTE, &vote, Durability::Immediate))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        let db = self.db.clone();
        blocking_store(move || read_record(&db, META, KEY_VOTE)).await.map_err(|e| StorageIOError::read_vote(&e).into())
    }

    /// The committed id is a restart hint (re-apply up to here before hearing from a leader),
    /// so it is written without its own fsync: the next append's fsync persists it, and losing
    /// it only means re-applying less until the leader's next heartbeat.
    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> Result<(), StorageError<C::NodeId>> {
        let db = self.db.clone();
        blocking_store(move || write_record(&db, META, KEY_COMMITTED, &committed, Durability::None))
            .await
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        let db = self.db.clone();
        let stored: Option<Option<LogId<C::NodeId>>> = blocking_store(move || read_record(&db, META, KEY_COMMITTED))
            .await
            .map_err(|e| StorageIOError::read(&e))?;
        Ok(stored.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id.clone(), &e))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let db = self.db.clone();
        match blocking_store(move || write_entries(&db, encoded)).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let db = self.db.clone();
        let range = (Bound::Included(log_id.index), Bound::Unbounded);
        blocking_store(move || delete_entries::<C::NodeId>(&db, range, None))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let db = self.db.clone();
        let range = (Bound::Unbounded, Bound::Included(log_id.index));
        blocking_store(move || delete_entries(&db, range, Some(&log_id)))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
