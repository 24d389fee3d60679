//! The event history: the events of every entry this replica applied, kept on disk by log
//! index so a reader can resume from any event id, on any node, across restarts.
//!
//! Applying an entry yields the same events on every replica, so `(index, n)` names one event
//! everywhere ([`EventId`]). The state machine writes each applied entry's events to
//! `events.redb` (beside `ledger.redb`, so the log's fsyncs never wait for it) before it
//! publishes the entry as [`crate::Committed`]: a reader woken by the publication finds the
//! events on disk.
//!
//! **Retention:** the newest [`RETAINED_EVENTS`] events, whole entries at a time; older ones
//! are dropped oldest first. Readers asking for events before the retained window are told
//! where the history resumes ([`HistoryPage::gap`]).
//!
//! **Durability:** writes are not fsynced one by one. The history is made durable every
//! [`DURABLE_EVERY`] writes, before every snapshot is stored, and at shutdown. After a crash the
//! replica replays the committed log after its snapshot, which writes those entries' events
//! again, so the history stays complete. Should it ever hold less than the snapshot covers (a
//! write failed, a snapshot was installed from the leader), it restarts after that point and
//! says so to readers rather than pretending to be complete.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use falak_core::Millis;
use falak_core::ledger::{EventId, LedgerEvent};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec;
use crate::store::StoreError;

/// File name of the event history inside the ledger directory.
pub(crate) const FILE_NAME: &str = "events.redb";
/// How many events a replica keeps: about 15 MB of JSON.
pub const RETAINED_EVENTS: u64 = 100_000;
/// A durable (fsynced) commit of the history every this many writes.
pub(crate) const DURABLE_EVERY: u64 = 256;
/// The most events one [`History::read`] returns.
pub const MAX_PAGE_EVENTS: usize = 4_096;

/// Log index → (how many events, the encoded [`EntryEvents`]).
const EVENTS: TableDefinition<u64, (u32, &[u8])> = TableDefinition::new("events");
/// `start`, `written`, `count` as u64.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const KEY_START: &str = "start";
const KEY_WRITTEN: &str = "written";
const KEY_COUNT: &str = "count";

/// The events of one applied entry, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EntryEvents {
    /// The ledger clock after the entry was applied (the same on every replica).
    pub at: Millis,
    pub events: Vec<LedgerEvent>,
}

/// One event of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    pub id: EventId,
    /// The ledger clock when its entry was applied, in milliseconds since the Unix epoch.
    pub at: Millis,
    pub event: LedgerEvent,
}

/// What one [`History::read`] found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryPage {
    /// In history order, after the position asked for (or after [`HistoryPage::gap`]).
    pub events: Vec<HistoryEvent>,
    /// Set when events after the position asked for are no longer (or never were) held here:
    /// the page resumes at this log index instead.
    pub gap: Option<u64>,
    /// The last log index whose events this replica has written: once a reader has everything
    /// through it, the next events are those of later entries.
    pub written: u64,
}

/// Why the history could not be read. The replica's state is unaffected.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the event history {path}: {source}")]
pub struct ReadHistoryError {
    path: PathBuf,
    source: StoreError,
}

impl ReadHistoryError {
    pub(crate) fn task(reason: String) -> ReadHistoryError {
        ReadHistoryError { path: PathBuf::from(FILE_NAME), source: StoreError::Task(reason) }
    }

    pub(crate) fn shut_down() -> ReadHistoryError {
        ReadHistoryError::task("the ledger is shut down".to_owned())
    }
}

/// The on-disk history, shared by the state machine (which writes) and readers.
pub(crate) struct History {
    db: Database,
    path: PathBuf,
    /// Writes since the last durable commit. (redb runs one write transaction at a time, so
    /// writers from apply, snapshots and shutdown need no lock of their own.)
    since_durable: AtomicU64,
    /// The last index written, for snapshot builders waiting on it.
    written: watch::Sender<u64>,
    // Dropped after `db` (fields drop in declaration order), so the signal follows the close.
    closed: crate::store::ClosedSignal,
}

impl History {
    /// Open (or create) `dir/events.redb`. `snapshot` is the log index the state machine's
    /// snapshot covers: the log is replayed after it, so the history must reach at least it.
    pub(crate) fn open(dir: &Path, snapshot: u64) -> Result<History, StoreError> {
        let path = dir.join(FILE_NAME);
        let db = Database::builder().set_cache_size(4 << 20).create(&path)?;
        let txn = db.begin_write()?;
        let written = {
            txn.open_table(EVENTS)?;
            let meta = txn.open_table(META)?;
            let start = meta.get(KEY_START)?.map(|v| v.value());
            let written = meta_value(&meta, KEY_WRITTEN)?;
            if start.is_none() || written < snapshot {
                if start.is_some() {
                    tracing::warn!(
                        written,
                        snapshot,
                        "the event history stops before the ledger snapshot; it resumes after the snapshot"
                    );
                }
                drop(meta);
                reset(&txn, snapshot)?;
                snapshot
            } else {
                written
            }
        };
        txn.commit()?;
        Ok(History {
            db,
            path,
            since_durable: AtomicU64::new(0),
            written: watch::Sender::new(written),
            closed: crate::store::ClosedSignal::new(),
        })
    }

    /// Becomes `true` once the history's file is closed.
    pub(crate) fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Record the events of applied entries, in log order. Entries without events still move
    /// `written` on.
    pub(crate) fn write(&self, entries: &[(u64, EntryEvents)]) -> Result<(), StoreError> {
        let Some(last) = entries.last().map(|(index, _)| *index) else { return Ok(()) };
        let durable = self.since_durable.fetch_add(1, Ordering::Relaxed) + 1 >= DURABLE_EVERY;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None })?;
        {
            let mut table = txn.open_table(EVENTS)?;
            let mut meta = txn.open_table(META)?;
            let mut count = meta_value(&meta, KEY_COUNT)?;
            let mut start = meta_value(&meta, KEY_START)?;
            for (index, entry) in entries.iter().filter(|(_, e)| !e.events.is_empty()) {
                let bytes = codec::encode(entry)?;
                let n = entry.events.len() as u32;
                // A replayed entry overwrites what it wrote before: count it once.
                if let Some(old) = table.insert(*index, (n, bytes.as_slice()))? {
                    count = count.saturating_sub(u64::from(old.value().0));
                }
                count += u64::from(n);
            }
            // Drop the oldest entries, whole, once past the window by a tenth (so trimming is
            // occasional work, not a delete per write).
            if count > RETAINED_EVENTS + RETAINED_EVENTS / 10 {
                while count > RETAINED_EVENTS {
                    let Some((index, value)) = table.pop_first()? else { break };
                    count = count.saturating_sub(u64::from(value.value().0));
                    start = start.max(index.value() + 1);
                }
            }
            meta.insert(KEY_COUNT, count)?;
            meta.insert(KEY_START, start)?;
            meta.insert(KEY_WRITTEN, last)?;
        }
        txn.commit()?;
        if durable {
            self.since_durable.store(0, Ordering::Relaxed);
        }
        self.written.send_replace(last);
        Ok(())
    }

    /// A write failed: the history cannot claim to be complete through `index`. It resumes
    /// after it.
    pub(crate) fn mark_gap(&self, index: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let start = meta_value(&meta, KEY_START)?;
            meta.insert(KEY_START, start.max(index + 1))?;
            let written = meta_value(&meta, KEY_WRITTEN)?;
            meta.insert(KEY_WRITTEN, written.max(index))?;
        }
        txn.commit()?;
        self.written.send_replace(index);
        Ok(())
    }

    /// The replica's state was replaced by a snapshot up to `index`: the events before it are
    /// not contiguous with what comes next, so the history starts afresh after it.
    pub(crate) fn restart_after(&self, index: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        reset(&txn, index)?;
        txn.commit()?;
        self.since_durable.store(0, Ordering::Relaxed);
        self.written.send_replace(index);
        Ok(())
    }

    /// Make everything written so far durable, once the events of entry `index` are written
    /// (the snapshot covering `index` is about to be stored, and the log before it purged).
    /// Waits at most `limit` for the writer to get there; says whether it did.
    pub(crate) async fn make_durable_through(
        self: &std::sync::Arc<Self>,
        index: u64,
        limit: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let mut written = self.written.subscribe();
        let reached = tokio::time::timeout(limit, written.wait_for(|w| *w >= index)).await.is_ok_and(|r| r.is_ok());
        let history = self.clone();
        crate::store::blocking_store(move || history.flush()).await?;
        Ok(reached)
    }

    /// A durable commit: everything written before it survives a crash.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(META)?;
        txn.commit()?;
        self.since_durable.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Up to `limit` events after `after` (from the start of the retained history when
    /// `None`).
    pub(crate) fn read(&self, after: Option<EventId>, limit: usize) -> Result<HistoryPage, ReadHistoryError> {
        self.read_inner(after, limit.clamp(1, MAX_PAGE_EVENTS))
            .map_err(|source| ReadHistoryError { path: self.path.clone(), source })
    }

    fn read_inner(&self, after: Option<EventId>, limit: usize) -> Result<HistoryPage, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let start = meta_value(&meta, KEY_START)?;
        let written = meta_value(&meta, KEY_WRITTEN)?;
        let table = txn.open_table(EVENTS)?;
        // The first entry the reader still needs. Entries before `start` are gone (dropped from
        // the window, or never held here): a reader that needs one is told where it resumes.
        let first_needed = match after {
            None => start,
            Some(id) if id.n == u32::MAX => id.index.saturating_add(1),
            Some(id) => id.index,
        };
        let gap = (first_needed < start).then_some(start);
        let mut events = Vec::new();
        for row in table.range(first_needed.max(start)..)? {
            let (index, value) = row?;
            let index = index.value();
            let entry: EntryEvents = codec::decode(value.value().1)?;
            for (n, event) in entry.events.into_iter().enumerate() {
                let id = EventId::new(index, n as u32);
                if gap.is_some() || after.is_none_or(|after| id > after) {
                    events.push(HistoryEvent { id, at: entry.at, event });
                }
            }
            if events.len() >= limit {
                break;
            }
        }
        Ok(HistoryPage { events, gap, written })
    }

    /// The position after which the last `count` retained events follow: where a reader that
    /// wants only recent history begins. `None` when fewer are retained (read from the start).
    pub(crate) fn tail_start(&self, count: u64) -> Result<Option<EventId>, ReadHistoryError> {
        let inner = || -> Result<Option<EventId>, StoreError> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(EVENTS)?;
            let mut seen = 0u64;
            for row in table.iter()?.rev() {
                let (index, value) = row?;
                let (index, n) = (index.value(), u64::from(value.value().0));
                if seen + n >= count {
                    // `skip` events of this entry come before the tail.
                    let skip = seen + n - count;
                    return Ok(Some(match skip {
                        0 => EventId::end_of(index.saturating_sub(1)),
                        skip => EventId::new(index, (skip - 1) as u32),
                    }));
                }
                seen += n;
            }
            Ok(None)
        };
        inner().map_err(|source| ReadHistoryError { path: self.path.clone(), source })
    }
}

/// A counter of the `meta` table; 0 when not written yet.
fn meta_value(meta: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, StoreError> {
    Ok(meta.get(key)?.map_or(0, |v| v.value()))
}

/// Empty the history and start it after `index`.
fn reset(txn: &redb::WriteTransaction, index: u64) -> Result<(), StoreError> {
    txn.delete_table(EVENTS)?;
    txn.open_table(EVENTS)?;
    let mut meta = txn.open_table(META)?;
    meta.insert(KEY_START, index + 1)?;
    meta.insert(KEY_WRITTEN, index)?;
    meta.insert(KEY_COUNT, 0)?;
    Ok(())
}
