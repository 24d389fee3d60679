//! Errors of the ledger facade. Each message says what failed and whether anything changed.

use std::path::PathBuf;
use std::time::Duration;

use falak_core::NodeId;

/// Why [`Ledger::open`](crate::Ledger::open) failed. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum OpenLedgerError {
    #[error("cannot create ledger directory {dir}: {source}")]
    CreateDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot make {path} owner-only ({mode:04o}): {source}")]
    Permissions { path: PathBuf, mode: u32, source: std::io::Error },
    #[error("cannot open ledger database {path}: {reason}")]
    Database { path: PathBuf, reason: String },
    #[error("ledger database {path} belongs to node {found}, not to this node {expected}; refusing to use it")]
    WrongNode { path: PathBuf, expected: String, found: String },
    #[error("cannot load the ledger snapshot: {0}")]
    Snapshot(String),
    #[error("invalid ledger configuration: {0}")]
    Config(String),
    #[error("cannot start raft: {0}")]
    Raft(String),
}

/// Why [`Ledger::initialize`](crate::Ledger::initialize) failed. The log is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum InitializeError {
    #[error("this node {0} is not among the voters given; the mesh was not initialized")]
    NotAVoter(NodeId),
    #[error("the voter set is empty; the mesh was not initialized")]
    NoVoters,
    #[error("the ledger is shut down; the mesh was not initialized")]
    Shutdown,
}

/// Why [`Ledger::write`](crate::Ledger::write) failed.
///
/// Only [`WriteError::Timeout`] leaves the outcome open: every other variant means the command
/// was not applied.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "no ledger leader reachable within {waited:?} (election in progress or no quorum); the write was not applied"
    )]
    NoLeader { waited: Duration },
    #[error(
        "leader {leader} did not confirm the write within {waited:?} (no quorum answered); it was not acknowledged and may still commit later"
    )]
    Timeout { leader: NodeId, waited: Duration },
    #[error("leader {leader} refused the write: {reason}; it was not applied")]
    Refused { leader: NodeId, reason: String },
    #[error("the write of {size} bytes exceeds the transport limit of {limit} bytes; it was not applied")]
    TooLarge { size: usize, limit: usize },
    #[error("cannot encode the command: {0}; it was not applied")]
    Encode(String),
    #[error("the ledger is shut down; the write was not applied")]
    Shutdown,
}

/// Why a membership change (add learner, change voters, remove nodes) failed.
///
/// As with writes, only [`ChangeMembershipError::Timeout`] leaves the outcome open.
#[derive(Debug, thiserror::Error)]
pub enum ChangeMembershipError {
    #[error("no ledger leader reachable within {waited:?}; membership unchanged")]
    NoLeader { waited: Duration },
    #[error("leader {leader} did not confirm the membership change within {waited:?}; it may still take effect")]
    Timeout { leader: NodeId, waited: Duration },
    #[error("leader {leader} refused the membership change: {reason}; membership unchanged")]
    Refused { leader: NodeId, reason: String },
    #[error("the ledger is shut down; membership unchanged")]
    Shutdown,
}

/// Why [`Ledger::shutdown`](crate::Ledger::shutdown) did not finish cleanly. Acknowledged writes
/// are on disk regardless: shutdown writes nothing.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("the raft task ended abnormally: {0}")]
    Raft(String),
    #[error(
        "ledger database still in use {0:?} after shutdown; reopening it in this process will fail until it is released"
    )]
    DatabaseBusy(Duration),
}
