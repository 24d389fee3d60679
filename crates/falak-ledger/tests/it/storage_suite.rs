//! openraft's own storage test suite against the redb log store and state machine.

use std::io::Cursor;

use falak_core::ledger::{Applied, Command};
use falak_ledger::{LogStore, StateMachineStore, open_store};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

// The suite builds node ids from integers, so it runs on a type config with `u64` ids; the
// storage code is the same generic code the node runs with `falak_core::NodeId`.
openraft::declare_raft_types!(
    pub SuiteConfig:
        D = Command,
        R = Option<Applied>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<SuiteConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

struct RedbStoreBuilder;

impl StoreBuilder<SuiteConfig, LogStore<SuiteConfig>, StateMachineStore<SuiteConfig>, TempDir> for RedbStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore<SuiteConfig>, StateMachineStore<SuiteConfig>), StorageError<u64>> {
        let dir = TempDir::new().expect("tempdir");
        let (log, state_machine) =
            open_store::<SuiteConfig>(dir.path(), 0, 1024 * 1024).await.expect("open ledger store");
        Ok((dir, log, state_machine))
    }
}

#[test]
fn redb_storage_passes_the_openraft_suite() {
    Suite::test_all(RedbStoreBuilder).expect("openraft storage suite");
}
