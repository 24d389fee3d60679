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

/// Flips a bit, overwrites, inserts, deletes or truncates bytes; never returns the input.
fn mutate(rng: &mut rand_chacha::ChaCha8Rng, genuine: &[u8]) -> Vec<u8> {
    use rand::Rng;
    loop {
        let mut bytes = genuine.to_vec();
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..5) {
            0 => bytes[at] ^= 1 << rng.gen_range(0..8),
            1 => bytes[at] = rng.r#gen(),
            2 => bytes.insert(at, rng.r#gen()),
            3 => drop(bytes.drain(at..(at + rng.gen_range(1..8)).min(bytes.len()))),
            _ => bytes.truncate(at),
        }
        if bytes != genuine {
            return bytes;
        }
    }
}

/// Must-show: 1,000 mutations of every raft message type; none crashes the ledger.
///
/// Which layer rejects what: on the network every ledger message travels inside QUIC, whose
/// packet protection refuses every mutated datagram (`falak-transport`'s `tamper` test). This
/// test is the layer below, for bytes a peer authenticated by TLS sent mutated on purpose: the
/// frame decoder (version byte, length, JSON) refuses most; the sender check refuses raft
/// messages carrying another node's vote; the snapshot bound refuses chunks past
/// `MAX_SNAPSHOT_BYTES`. What still decodes is a message the authenticated sender was entitled
/// to send, and raft judges it like any other (an old term is answered, not obeyed). Raft
/// messages go to a real ledger's handler; writes forwarded to the leader are checked by the
/// decoder alone, since executing them waits for a leader this lone node does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mutations_of_every_raft_message_type_never_crash_the_ledger() {
    use rand::SeedableRng;

    let cluster = Cluster::empty(test_config());
    let id = node(2);
    let ledger = Ledger::open(&cluster.data_dir(id), id, cluster.net.transport(id), test_config()).await.expect("open");
    let handler = ledger.handler();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x1ed6e2);
    for (name, genuine) in falak_ledger::fuzzing::sample_requests() {
        let served = ["append-entries", "heartbeat", "vote", "snapshot-chunk"].contains(&name);
        let (mut refused, mut decoded) = (0, 0);
        for _ in 0..1000 {
            let mutated = mutate(&mut rng, &genuine);
            let accepted = if served {
                handler.handle(node(1), Bytes::from(mutated)).await.is_ok()
            } else {
                falak_ledger::fuzzing::decode_request(&mutated).is_ok()
            };
            if accepted { decoded += 1 } else { refused += 1 }
        }
        eprintln!("{name}: of 1000 mutations {refused} refused, {decoded} decoded as a valid message");
        assert_eq!(refused + decoded, 1000);
        assert!(refused > 500, "{name}: only {refused} of 1000 mutations were refused");
    }
    // Still serving, raft core alive: a genuine vote request gets a vote response, not a fatal
    // error (a panic in raft's core task would not fail this test by itself).
    let (_, vote) = falak_ledger::fuzzing::sample_requests().into_iter().find(|(n, _)| *n == "vote").expect("vote");
    let reply = handler.handle(node(1), Bytes::from(vote)).await.expect("answered");
    let reply: serde_json::Value = serde_json::from_slice(&reply[5..]).expect("json");
    eprintln!("vote reply after the mutations: {reply}");
    assert!(reply["Ok"].is_object(), "the raft core is not serving: {reply}");
    ledger.shutdown().await.expect("shutdown");
}
