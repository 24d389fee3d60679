//! A real SIGKILL: a child process writes to a one-voter ledger and is killed mid-stream; every
//! write it acknowledged must be there when the ledger reopens.
//!
//! The child is this test binary run again with `FALAK_LEDGER_KILL9_DIR` set, executing only
//! [`kill9_child_writer`]; without the variable that test does nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use falak_ledger::{Ledger, PeerInfo};

use falak_core::ledger::State;

use crate::cluster::{Cluster, node, noop, state_json, test_config};
use falak_transport::MemoryNetwork;

const DIR_VAR: &str = "FALAK_LEDGER_KILL9_DIR";
const ACKS_BEFORE_KILL: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_child_writer() {
    let Some(dir) = std::env::var_os(DIR_VAR) else { return };
    let id = node(1);
    let ledger = Ledger::open(dir.as_ref(), id, MemoryNetwork::new().transport(id), test_config()).await.expect("open");
    ledger.initialize(BTreeMap::from([(id, PeerInfo::new("127.0.0.1:7001"))])).await.expect("initialize");
    for i in 0.. {
        ledger.write(noop(i)).await.expect("write");
        // Printed only after the write was acknowledged.
        println!("acked {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let cluster = Cluster::empty(test_config());
    let dir = cluster.data_dir(node(1));
    let mut child = Process::new(std::env::current_exe().expect("test binary"))
        .args(["kill9::kill9_child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child writer");
    let stdout = child.stdout.take().expect("child stdout");
    let acked = tokio::task::spawn_blocking(move || {
        let mut acked = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child output");
            if let Some(i) = line.strip_prefix("acked ").and_then(|n| n.parse::<u64>().ok()) {
                acked = Some(i);
                if i + 1 >= ACKS_BEFORE_KILL {
                    break;
                }
            }
        }
        acked
    })
    .await
    .expect("reader")
    .expect("child acknowledged writes");
    assert!(acked + 1 >= ACKS_BEFORE_KILL, "the child stopped by itself after {} writes", acked + 1);
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap child");

    let id = node(1);
    let ledger = Ledger::open(&dir, id, cluster.net.transport(id), test_config()).await.expect("reopen after kill -9");
    // The one voter elects itself and commits everything in its log: every acknowledged write,
    // plus any the child stored after the last line we read (it kept writing until the kill).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let state = state_json(&ledger.state());
        if is_prefix_state(&state, acked) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "state after kill -9: {state}, acknowledged {}", acked + 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And the reopened ledger keeps working.
    let before = state_json(&ledger.state());
    ledger.write(noop(10_000)).await.expect("write after reopen");
    assert_ne!(state_json(&ledger.state()), before);
    ledger.shutdown().await.expect("shutdown");
}

/// Whether `state` is the state after applying `noop(0..=n)` for some `n >= acked`.
fn is_prefix_state(state: &serde_json::Value, acked: u64) -> bool {
    let mut expected = State::default();
    for i in 0..=acked + 10_000 {
        expected.apply(&noop(i));
        if i >= acked && state_json(&expected) == *state {
            return true;
        }
    }
    false
}
