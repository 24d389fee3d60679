//! A mesh of ledgers in one process: real redb files in a tempdir, a fake in-memory network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use falak_core::ledger::{Command, State};
use falak_ledger::{Ledger, LedgerConfig, NodeId, PeerInfo, Role};
use falak_transport::{Protocol, Transport};
use tempfile::TempDir;
use tokio::time::Instant;

use falak_transport::MemoryNetwork;

pub fn node(i: u8) -> NodeId {
    NodeId([i; 32])
}

/// Timings for tests: the production raft timers, a short write bound and frequent snapshots
/// only where a test asks for them.
pub fn test_config() -> LedgerConfig {
    LedgerConfig { write_timeout: Duration::from_secs(3), cache_bytes: 4 * 1024 * 1024, ..LedgerConfig::default() }
}

pub struct Cluster {
    pub net: MemoryNetwork,
    pub config: LedgerConfig,
    dir: TempDir,
    live: BTreeMap<NodeId, Ledger>,
}

impl Cluster {
    /// Start `voters` nodes (ids 1..=voters) and bootstrap them as the voters of a new mesh.
    pub async fn voters(voters: u8, config: LedgerConfig) -> Cluster {
        let mut cluster = Cluster::empty(config);
        let members: BTreeMap<NodeId, PeerInfo> =
            (1..=voters).map(|i| (node(i), PeerInfo::new(format!("127.0.0.1:{}", 7000 + u16::from(i))))).collect();
        for id in members.keys() {
            cluster.start(*id).await;
        }
        cluster.ledger(node(1)).initialize(members).await.expect("initialize");
        cluster.wait_leader(Duration::from_secs(5)).await;
        cluster
    }

    pub fn empty(config: LedgerConfig) -> Cluster {
        Cluster { net: MemoryNetwork::new(), config, dir: TempDir::new().expect("tempdir"), live: BTreeMap::new() }
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(id.short())
    }

    /// Open (or reopen) the node's ledger from its data dir and put it on the network.
    pub async fn start(&mut self, id: NodeId) -> Ledger {
        self.net.restart(id);
        let transport = self.net.transport(id);
        let ledger =
            Ledger::open(&self.data_dir(id), id, transport.clone(), self.config.clone()).await.expect("open ledger");
        transport.serve(Protocol::Ledger, ledger.handler());
        self.live.insert(id, ledger.clone());
        ledger
    }

    /// Kill the node: it drops off the network at once, then its raft stops. The ledger writes
    /// nothing at shutdown, so everything acknowledged is on disk exactly as after kill -9;
    /// only the committed-index hint may be fresher than a real crash would leave it (redb
    /// flushes non-durable commits on close). `kill9.rs` covers a real SIGKILL.
    pub async fn crash(&mut self, id: NodeId) {
        self.net.crash(id);
        if let Some(ledger) = self.live.remove(&id) {
            ledger.shutdown().await.expect("shutdown releases the database");
        }
    }

    pub fn ledger(&self, id: NodeId) -> &Ledger {
        self.live.get(&id).unwrap_or_else(|| panic!("node {} is not running", id.short()))
    }

    pub fn live(&self) -> impl Iterator<Item = &Ledger> {
        self.live.values()
    }

    pub fn live_ids(&self) -> Vec<NodeId> {
        self.live.keys().copied().collect()
    }

    /// Wait until one live node is leader and every live voter agrees on it.
    pub async fn wait_leader(&self, within: Duration) -> NodeId {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = BTreeSet::new();
            let mut lead = None;
            for ledger in self.live() {
                let metrics = ledger.metrics().await;
                if metrics.role == Role::Leader {
                    lead = Some(metrics.id);
                }
                if metrics.voters.contains(&metrics.id) {
                    leaders.insert(metrics.leader);
                }
            }
            if let Some(lead) = lead
                && leaders.len() == 1
                && leaders.contains(&Some(lead))
            {
                return lead;
            }
            assert!(Instant::now() < deadline, "no agreed leader within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until every live node's state equals `expected`.
    pub async fn wait_converged(&self, expected: &serde_json::Value, within: Duration) {
        for ledger in self.live() {
            wait_state(ledger, expected, within).await;
        }
    }

    pub async fn shutdown(mut self) {
        for id in self.live_ids() {
            self.crash(id).await;
        }
    }
}

/// The state as JSON: the ledger's `State` is opaque here, compared through its serde form.
/// The leadership term it records depends on the elections a run happened to have, not on
/// the commands, so it is left out.
pub fn state_json(state: &State) -> serde_json::Value {
    let mut value = serde_json::to_value(state).expect("state serializes");
    if let Some(map) = value.as_object_mut() {
        map.remove("term");
    }
    value
}

/// The state a ledger must reach after applying `commands` in order.
pub fn expected_state(commands: &[Command]) -> serde_json::Value {
    let mut state = State::default();
    for command in commands {
        state.apply(command);
    }
    state_json(&state)
}

pub async fn wait_state(ledger: &Ledger, expected: &serde_json::Value, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let current = state_json(&ledger.state());
        if &current == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} state {current} did not reach {expected} within {within:?}",
            ledger.id().short()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A distinct test command.
pub fn noop(i: u64) -> Command {
    Command::Noop { now: 1_000 + i }
}
