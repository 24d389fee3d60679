//! The `ledger.redb` file: its tables, how it is opened, and how disk work leaves the runtime.
//!
//! One redb database holds everything the ledger persists, in three tables:
//!
//! | table      | key              | value                                        |
//! | ---------- | ---------------- | -------------------------------------------- |
//! | `log`      | log index (u64)  | one encoded `Entry`                          |
//! | `meta`     | `vote`, `committed`, `last_purged`, `node_id` | encoded log ids / vote / id |
//! | `snapshot` | `meta`, `data`   | the latest snapshot's metadata and payload   |
//!
//! The event history lives beside it in `events.redb` (see `history`), so that its writes
//! never queue behind the log's fsyncs.
//!
//! The ledger directory is owner-only (0700) and both database files 0600: they hold every
//! spec, token hash and result of the mesh. The modes are set at every open, not only when the
//! files are made, so a directory made by an older version or under a loose umask is tightened.
//!
//! All values are versioned records (see `codec`). redb commits are atomic and checksummed, so
//! a crash leaves either the previous or the next committed state, never a torn one.
//!
//! The storage types are generic over [`LedgerTypes`] so openraft's storage test suite can run
//! against them with its own `u64` node ids; the node uses [`crate::TypeConfig`].

use std::io::Cursor;
use std::ops::Deref;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use falak_core::ledger::{Applied, Command};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::watch;

use crate::codec;
use crate::error::OpenLedgerError;
use crate::log_store::LogStore;
use crate::state_machine::StateMachineStore;

/// File name of the ledger database inside the data directory.
pub(crate) const FILE_NAME: &str = "ledger.redb";
/// The mode of the ledger directory: the node's user only.
pub(crate) const DIR_MODE: u32 = 0o700;
/// The mode of the database files in it.
pub(crate) const FILE_MODE: u32 = 0o600;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_NODE_ID: &str = "node_id";
pub(crate) const KEY_SNAPSHOT_META: &str = "meta";
pub(crate) const KEY_SNAPSHOT_DATA: &str = "data";

/// The openraft type configurations this storage works with: entries carry a core [`Command`],
/// snapshots are in-memory byte buffers.
pub trait LedgerTypes:
    openraft::RaftTypeConfig<
        D = Command,
        R = Option<Applied>,
        Entry = openraft::Entry<Self>,
        SnapshotData = Cursor<Vec<u8>>,
    >
{
}

impl<T> LedgerTypes for T where
    T: openraft::RaftTypeConfig<
            D = Command,
            R = Option<Applied>,
            Entry = openraft::Entry<T>,
            SnapshotData = Cursor<Vec<u8>>,
        >
{
}

/// Open (or create) `dir/ledger.redb` and build the log store and the state machine on it.
///
/// The state machine starts from the latest stored snapshot; openraft re-applies the committed
/// log after it when the `Raft` is created. `owner` is recorded on first open and checked on
/// every later one, so a data directory copied from another node is refused instead of
/// impersonating it.
pub async fn open_store<C: LedgerTypes>(
    dir: &Path,
    owner: C::NodeId,
    cache_bytes: usize,
) -> Result<(LogStore<C>, StateMachineStore<C>), OpenLedgerError> {
    let path = dir.join(FILE_NAME);
    let dir_for_history = dir.to_path_buf();
    let dir = dir.to_path_buf();
    let db = blocking(move || open_database::<C>(&dir, &owner, cache_bytes))
        .await
        .map_err(|reason| OpenLedgerError::Database { path, reason })??;
    let db = Arc::new(LedgerDb { db, closed: ClosedSignal::new() });
    let state_machine = StateMachineStore::load(db.clone(), &dir_for_history).await?;
    Ok((LogStore::new(db), state_machine))
}

fn open_database<C: LedgerTypes>(
    dir: &Path,
    owner: &C::NodeId,
    cache_bytes: usize,
) -> Result<Database, OpenLedgerError> {
    make_private(dir)?;
    let path = dir.join(FILE_NAME);
    let database_error = |reason: String| OpenLedgerError::Database { path: path.clone(), reason };
    let db =
        Database::builder().set_cache_size(cache_bytes).create(&path).map_err(|e| database_error(e.to_string()))?;

    // Create every table up front so readers never see "table does not exist", and claim the
    // file for this node on first open.
    let txn = db.begin_write().map_err(|e| database_error(e.to_string()))?;
    {
        txn.open_table(LOG).map_err(|e| database_error(e.to_string()))?;
        txn.open_table(SNAPSHOT).map_err(|e| database_error(e.to_string()))?;
        let mut meta = txn.open_table(META).map_err(|e| database_error(e.to_string()))?;
        let stored = meta.get(KEY_NODE_ID).map_err(|e| database_error(e.to_string()))?.map(|v| v.value().to_vec());
        match stored {
            None => {
                let bytes = codec::encode(owner).map_err(|e| database_error(e.to_string()))?;
                meta.insert(KEY_NODE_ID, bytes.as_slice()).map_err(|e| database_error(e.to_string()))?;
            }
            Some(bytes) => {
                let found: C::NodeId =
                    codec::decode(&bytes).map_err(|e| database_error(format!("node id record: {e}")))?;
                if &found != owner {
                    return Err(OpenLedgerError::WrongNode {
                        path,
                        expected: owner.to_string(),
                        found: found.to_string(),
                    });
                }
            }
        }
    }
    txn.commit().map_err(|e| database_error(e.to_string()))?;
    Ok(db)
}

/// Make the ledger directory if needed and give it and its database files their owner-only
/// modes, however they were made. The files are made here (empty: redb initializes an empty
/// file) so that no database file ever exists with a wider mode.
fn make_private(dir: &Path) -> Result<(), OpenLedgerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| OpenLedgerError::CreateDir { dir: dir.to_path_buf(), source })?;
    set_mode(dir, DIR_MODE)?;
    for name in [FILE_NAME, crate::history::FILE_NAME] {
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|source| OpenLedgerError::Permissions { path: path.clone(), mode: FILE_MODE, source })?;
        let mode = file.metadata().map(|m| m.permissions().mode() & 0o7777);
        if !matches!(mode, Ok(m) if m == FILE_MODE) {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
                .map_err(|source| OpenLedgerError::Permissions { path, mode: FILE_MODE, source })?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), OpenLedgerError> {
    let error = |source| OpenLedgerError::Permissions { path: path.to_path_buf(), mode, source };
    let current = std::fs::metadata(path).map_err(error)?.permissions().mode() & 0o7777;
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(error)?;
    }
    Ok(())
}

/// The open database, shared by the log store, the state machine and their helper tasks.
///
/// redb releases its file lock only when the `Database` is dropped, which happens on whichever
/// task lets go last and takes a flush. [`LedgerDb::closed`] tells when that has finished, so
/// shutdown can promise the file is free to reopen.
pub(crate) struct LedgerDb {
    db: Database,
    // Dropped after `db` (fields drop in declaration order), so the signal follows the close.
    closed: ClosedSignal,
}

/// Becomes `true` when dropped: placed after a database handle in a struct, it tells when the
/// handle was closed.
pub(crate) struct ClosedSignal(watch::Sender<bool>);

impl ClosedSignal {
    pub(crate) fn new() -> ClosedSignal {
        ClosedSignal(watch::Sender::new(false))
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

impl Drop for ClosedSignal {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl LedgerDb {
    /// Becomes `true` once the database is closed and its file lock released.
    pub(crate) fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }
}

impl Deref for LedgerDb {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Begin a write transaction with the given durability.
///
/// `Durability::Immediate` fsyncs before `commit` returns; `Durability::None` is made durable by
/// the next immediate commit and is used only for hints that are safe to lose.
pub(crate) fn begin_write(db: &Database, durability: Durability) -> Result<WriteTransaction, redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    Ok(txn)
}

/// Read one versioned record from a `&str`-keyed table.
pub(crate) fn read_record<T: serde::de::DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(table)?;
    match table.get(key)? {
        None => Ok(None),
        Some(value) => Ok(Some(codec::decode(value.value())?)),
    }
}

/// Write one versioned record to a `&str`-keyed table in its own transaction.
pub(crate) fn write_record<T: serde::Serialize>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
    durability: Durability,
) -> Result<(), StoreError> {
    let bytes = codec::encode(value)?;
    let txn = begin_write(db, durability)?;
    txn.open_table(table)?.insert(key, bytes.as_slice())?;
    txn.commit()?;
    Ok(())
}

/// Anything that can go wrong touching `ledger.redb`; converted to openraft's `StorageError`
/// at the trait boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ledger database: {0}")]
    Database(#[from] redb::Error),
    #[error("ledger record: {0}")]
    Decode(#[from] codec::DecodeRecordError),
    #[error("encoding ledger record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("ledger disk task failed: {0}")]
    Task(String),
}

macro_rules! from_redb_error {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(e: $ty) -> Self {
                StoreError::Database(e.into())
            }
        }
    )*};
}
from_redb_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Run disk work on tokio's blocking pool so redb reads and fsyncs never stall the runtime's
/// worker threads (raft timers and heartbeats run there).
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|e| e.to_string())
}

/// [`blocking`] for work that returns a [`StoreError`].
pub(crate) async fn blocking_store<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    blocking(work).await.map_err(StoreError::Task)?
}
