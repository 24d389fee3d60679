//! Bad input on the ledger protocol is refused with an error, never a crash.

use bytes::Bytes;
use falak_ledger::Ledger;

use crate::cluster::{Cluster, node, test_config};

async fn lone_ledger(cluster: &Cluster) -> Ledger {
    let id = node(1);
    Ledger::open(&cluster.data_dir(id), id, cluster.net.transport(id), test_config()).await.expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_are_refused() {
    let cluster = Cluster::empty(test_config());
    let ledger = lone_ledger(&cluster).await;
    let handler = ledger.handler();
    for body in [&b""[..], b"\x01", b"\x07\0\0\0\0", b"\x01\x10\0\0\0{not json", b"\x01\x02\0\0\0{}"] {
        let result = handler.handle(node(2), Bytes::copy_from_slice(body)).await;
        assert!(result.is_err(), "frame {body:?} was accepted");
    }
    ledger.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_request_for_another_node_is_refused() {
    let cluster = Cluster::empty(test_config());
    let ledger = lone_ledger(&cluster).await;
    // Node 2 asks for votes on behalf of node 3.
    let request = openraft::raft::VoteRequest::new(openraft::Vote::new(5, node(3)), None);
    let vote = serde_json::json!({ "Vote": request });
    let json = serde_json::to_vec(&vote).expect("json");
    let mut frame = vec![1u8];
    frame.extend_from_slice(&u32::try_from(json.len()).expect("small").to_le_bytes());
    frame.extend_from_slice(&json);
    let err = ledger.handler().handle(node(2), Bytes::from(frame)).await.expect_err("impersonation refused");
    assert!(err.contains("carries the vote of node"), "unexpected error: {err}");
    assert_eq!(ledger.metrics().await.term, 0, "the forged vote must not change the term");
    ledger.shutdown().await.expect("shutdown");
}
