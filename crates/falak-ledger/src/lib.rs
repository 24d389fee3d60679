//! Falak's ledger: the replicated, durable record of everything that needs agreement.
//!
//! The ledger runs Raft through `openraft` (the stable 0.9 line). Its log, vote, committed index
//! and snapshots live in one `redb` file, `ledger.redb`, in the node's data directory; the
//! applied [`State`] lives in memory and is rebuilt on start from the latest snapshot plus the
//! committed log after it. Raft messages and forwarded writes travel over the node transport
//! under [`Protocol::Ledger`](falak_transport::Protocol::Ledger).
//!
//! The node daemon uses only [`Ledger`]: open it, register [`Ledger::handler`] on the
//! transport, [`Ledger::initialize`] a new mesh, then [`Ledger::write`] commands from any node
//! and react to [`Ledger::subscribe`].
//!
//! **Invariant:** [`Ledger::write`] answers only after the command is committed (stored durably
//! by a majority of voters) and applied on the leader.
//! **Boundary:** this crate never executes workloads and never interprets commands: it hands
//! them to [`State::apply`] in log order on every replica.
//!
//! `docs/design/ledger.md` describes what is stored where and what happens on each fault.

mod codec;
mod config;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod history;
mod ledger;
mod log_store;
mod network;
mod server;
mod state_machine;
mod store;
mod wire;

use std::fmt;
use std::io::Cursor;

use falak_core::ledger::{Applied, Command};
use serde::{Deserialize, Serialize};

pub use falak_core::NodeId;
pub use falak_core::ledger::State;

pub use crate::config::LedgerConfig;
pub use crate::error::{ChangeMembershipError, InitializeError, OpenLedgerError, ShutdownError, WriteError};
pub use crate::history::{HistoryEvent, HistoryPage, MAX_PAGE_EVENTS, RETAINED_EVENTS, ReadHistoryError};
pub use crate::ledger::{Ledger, LedgerMetrics, LedgerStatus, Role, StateGuard};
pub use crate::server::{MAX_BATCH_DEPTH, MAX_COMMAND_BYTES, MAX_SNAPSHOT_BYTES};
pub use crate::state_machine::Committed;
// The storage halves on their own, for openraft's storage test suite and the simulation
// harness; the node uses only `Ledger`.
pub use crate::log_store::LogStore;
pub use crate::state_machine::StateMachineStore;
pub use crate::store::{LedgerTypes, open_store};

openraft::declare_raft_types!(
    /// The openraft type configuration of Falak's ledger.
    ///
    /// Entries carry a core [`Command`]; applying one yields `Some(Applied)`, while blank and
    /// membership entries yield `None`.
    pub TypeConfig:
        D = Command,
        R = Option<Applied>,
        NodeId = NodeId,
        Node = PeerInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What the ledger records about each member so that voters and learners can reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The node's QUIC address, `ip:port`. Handed to the transport when a replication stream to
    /// the node starts.
    pub addr: String,
}

impl PeerInfo {
    pub fn new(addr: impl Into<String>) -> Self {
        PeerInfo { addr: addr.into() }
    }
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}
