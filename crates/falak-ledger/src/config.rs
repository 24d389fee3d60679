//! Ledger tuning: raft timers, snapshot policy, payload limits and the write bound.

use std::time::Duration;

use crate::error::OpenLedgerError;

/// How the ledger runs. [`LedgerConfig::default`] is what the node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Raft cluster name, used in logs and to catch misrouted traffic.
    pub cluster_name: String,
    /// How often the leader sends heartbeats (and replicates if idle).
    pub heartbeat_interval: Duration,
    /// The election timeout range. Openraft 0.9 lets a follower that has a leader start an
    /// election only after the leader lease (= `election_timeout_max`) plus a random timeout
    /// in this range, checked on a tick of 1.5 heartbeats: with 50 ms heartbeats and 100–200
    /// ms, a follower campaigns 300–475 ms after the last heartbeat, so a killed leader is
    /// replaced and the new one commits in about 400 ms (target p50 ≤ 500 ms). 150–300 ms would
    /// take 450–675 ms.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_every: u64,
    /// Applied entries kept in the log behind the snapshot, so a briefly lagging follower
    /// catches up from the log instead of receiving a whole snapshot.
    pub logs_kept_after_snapshot: u64,
    /// At most this many entries per AppendEntries message.
    pub max_payload_entries: u64,
    /// Snapshots are sent in chunks of at most this many bytes (kept under the transport's
    /// message limit).
    pub snapshot_chunk_bytes: u64,
    /// How long one snapshot chunk may take to be sent and stored by the receiver.
    pub install_snapshot_timeout: Duration,
    /// The bound on [`Ledger::write`](crate::Ledger::write) and membership changes: how long
    /// to look for a leader through an election, and to wait for the commit.
    pub write_timeout: Duration,
    /// redb page cache, in bytes. The ledger file is small (the log is purged behind
    /// snapshots), so a modest cache keeps the idle node's memory low.
    pub cache_bytes: usize,
    /// A deliberately broken state machine check, for tests that prove the simulation's
    /// checkers catch it. Always `PlantedBug::None` outside those tests.
    pub planted_bug: falak_core::ledger::PlantedBug,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            cluster_name: "falak".to_owned(),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(100),
            election_timeout_max: Duration::from_millis(200),
            snapshot_every: 5_000,
            logs_kept_after_snapshot: 1_000,
            max_payload_entries: 8,
            snapshot_chunk_bytes: 1024 * 1024,
            install_snapshot_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(3),
            cache_bytes: 16 * 1024 * 1024,
            planted_bug: falak_core::ledger::PlantedBug::None,
        }
    }
}

impl LedgerConfig {
    /// The openraft configuration this ledger config stands for.
    pub(crate) fn raft_config(&self) -> Result<openraft::Config, OpenLedgerError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            install_snapshot_timeout: millis(self.install_snapshot_timeout),
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            // Purging is one redb transaction; batching avoids one per applied entry. Never
            // batch more than a snapshot interval, so the log behind each snapshot does go.
            purge_batch_size: self.snapshot_every.clamp(1, 64),
            ..Default::default()
        };
        config.validate().map_err(|e| OpenLedgerError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_for_openraft() {
        let config = LedgerConfig::default().raft_config().unwrap();
        assert_eq!(config.heartbeat_interval, 50);
        assert_eq!((config.election_timeout_min, config.election_timeout_max), (100, 200));
    }

    #[test]
    fn heartbeat_slower_than_election_is_refused() {
        let config = LedgerConfig { heartbeat_interval: Duration::from_millis(500), ..LedgerConfig::default() };
        assert!(matches!(config.raft_config(), Err(OpenLedgerError::Config(_))));
    }
}
