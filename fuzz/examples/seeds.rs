//! Writes the seed corpora under `fuzz/corpus/<target>/`: one genuine encoding of every message
//! type each target decodes. Run from the repository root:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Files are named by what they hold, so re-running it rewrites the same files.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use falak_artifact::{ChunkReply, ChunkRequest, encode_reply};
use falak_core::gossip::{FunctionGossip, GOSSIP_FORMAT, GossipState};
use falak_core::{ArtifactId, NodeId};
use falak_membership::gossip::{GOSSIP_UPDATE_FORMAT, GossipUpdate};
use falak_membership::{MemberIdentity, Membership, MembershipConfig, MeshSecret, Output};
use falak_transport::quic::fuzzing::{Reply, encode_reply as encode_frame_reply, encode_request};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(name), bytes).expect("seed written");
}

fn membership_seeds() {
    // Genuine datagrams of a join: node 1 announces to node 0, node 0 answers with a feed.
    let secret = MeshSecret([7; 32]);
    let core = |i: u8| {
        let identity =
            MemberIdentity::new(NodeId([i + 1; 32]), SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(i))), 1);
        Membership::new(identity, &secret, MembershipConfig::lan(), ChaCha8Rng::seed_from_u64(u64::from(i)))
            .expect("core")
    };
    let (mut seed, mut joiner) = (core(0), core(1));
    joiner.join(Duration::ZERO, SocketAddr::from(([127, 0, 0, 1], 7000))).expect("join");
    let sends = |m: &mut Membership| {
        std::iter::from_fn(|| m.poll_output())
            .filter_map(|o| match o {
                Output::Send { bytes, .. } => Some(bytes),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let announce = sends(&mut joiner);
    for (i, datagram) in announce.iter().enumerate() {
        write("membership_packet", &format!("sealed-announce-{i}"), datagram);
        seed.handle_datagram(Duration::ZERO, SocketAddr::from(([127, 0, 0, 1], 7001)), datagram);
    }
    for (i, datagram) in sends(&mut seed).iter().enumerate() {
        write("membership_packet", &format!("sealed-reply-{i}"), datagram);
    }
    // The packet inside a seal, for the target's sealed path.
    let plain = falak_membership::seal::Sealer::new(&secret).open(&announce[0]).expect("opens");
    write("membership_packet", "plain-announce", &plain);
}

fn gossip_seeds() {
    let mut state = GossipState {
        format: GOSSIP_FORMAT,
        version: 42,
        free_cpu_millis: 1500,
        free_memory_bytes: 1 << 30,
        running: 2,
        queued: 1,
        api_url: "http://127.0.0.1:7070".to_owned(),
        ..GossipState::default()
    };
    state.rtt_micros.insert(NodeId([2; 32]), 350);
    state.functions.push((
        "resize".to_owned(),
        FunctionGossip { version: 3, instances: 2, free_slots: 5, prepared: true, snapshot: true },
    ));
    let update = GossipUpdate { format: GOSSIP_UPDATE_FORMAT, node: NodeId([1; 32]), generation: 7, state };
    write("gossip_state", "full", &update.encode().expect("encodes"));
    let empty = GossipUpdate {
        format: GOSSIP_UPDATE_FORMAT,
        node: NodeId([1; 32]),
        generation: 1,
        state: GossipState::default(),
    };
    write("gossip_state", "empty", &empty.encode().expect("encodes"));
}

fn transport_seeds() {
    write("transport_frame", "request", &encode_request(b"\x01\x02\0\0\0{}"));
    write("transport_frame", "request-empty", &encode_request(b""));
    write("transport_frame", "reply-ok", &encode_frame_reply(Reply::Ok(Bytes::from_static(b"pong"))));
    write("transport_frame", "reply-handler", &encode_frame_reply(Reply::Handler("the handler failed".into())));
    write("transport_frame", "reply-refused", &encode_frame_reply(Reply::Refused("not admitted".into())));
    write(
        "transport_frame",
        "reply-too-large",
        &encode_frame_reply(Reply::TooLarge { size: 20 << 20, limit: 16 << 20 }),
    );

    let issued = std::time::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let ca = falak_transport::MeshCa::generate("seed", issued).expect("ca");
    let key = falak_transport::NodeKey::generate().expect("key");
    let cert = ca.issue(key.id(), "node-1", issued).expect("cert");
    write("node_cert", "node-cert", cert.der());
    write("node_cert", "ca-cert", ca.root().der());
}

fn ledger_seeds() {
    for (name, frame) in falak_ledger::fuzzing::sample_requests() {
        write("ledger_wire", &format!("request-{name}"), &frame);
    }
    for (name, frame) in falak_ledger::fuzzing::sample_replies() {
        write("ledger_wire", &format!("reply-{name}"), &frame);
    }
    for (name, record) in falak_ledger::fuzzing::sample_records() {
        write("ledger_entry", name, &record);
    }
}

fn artifact_seeds() {
    let id = ArtifactId([0xab; 32]);
    write("artifact_fetch", "request", &ChunkRequest::new(id, 4 << 20, 4 << 20).encode());
    let digest = falak_artifact::Sha256Digest([0xcd; 32]);
    write("artifact_fetch", "request-sha256", &ChunkRequest::new(digest, 0, 4 << 20).encode());
    write("artifact_fetch", "reply-chunk", &encode_reply(&ChunkReply::Chunk { total_size: 11 }, b"hello world"));
    write("artifact_fetch", "reply-not-found", &encode_reply(&ChunkReply::NotFound, &[]));
    write(
        "artifact_fetch",
        "reply-error",
        &encode_reply(&ChunkReply::Error { message: "offset past the end".into() }, &[]),
    );
}

fn bundle_seeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir_all(root.join("pkg/sub")).expect("dirs");
    fs::write(root.join("main.py"), "def handler(event):\n    return event\n").expect("file");
    fs::write(root.join("pkg/sub/data.txt"), "data\n").expect("file");
    std::os::unix::fs::symlink("../main.py", root.join("pkg/link.py")).expect("link");
    let packed = falak_artifact::pack(root).expect("packs");
    write("bundle_unpack", "bundle.tar.gz", &packed);
    // The same archive uncompressed, and a refused one with an escaping path.
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&packed[..]), &mut plain).expect("gunzip");
    write("bundle_unpack", "bundle.tar", &plain);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    // `append_data` refuses `..`; write the name into the header by hand.
    header.as_gnu_mut().expect("gnu").name[..9].copy_from_slice(b"../escape");
    header.set_cksum();
    builder.append(&header, &b"bad"[..]).expect("appends");
    let escaping = builder.into_inner().expect("tar");
    write("bundle_unpack", "escaping.tar", &escaping);
    // An image layer is a tar (or tar.gz) too; the same seeds, and a manifest.
    write("image_layer", "bundle.tar.gz", &packed);
    write("image_layer", "bundle.tar", &plain);
    write("image_layer", "escaping.tar", &escaping);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "a".repeat(64)), "size": 2 },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", "b".repeat(64)), "size": 10 }],
    });
    write("image_layer", "manifest.json", &serde_json::to_vec(&manifest).expect("json"));
}

fn spec_seeds() {
    let yaml = [
        (
            "capsule.yaml",
            "name: hello\nkind: process\ncommand: [echo, hi]\nenv: { A: b }\nresources: { cpu: 500m, memory: 64Mi }\nplacement: { strategy: spread, labels: { zone: a }, max_attempts: 3 }\ntimeout: 30s\n",
        ),
        ("function.yaml", "name: resize\nruntime: python\nhandler: main:handler\n"),
        ("job.yaml", "capsule: hello\ninputs: [a, b, c]\n"),
        ("service.yaml", "name: web\ncapsule: hello\nreplicas: 2\n"),
        ("node.yaml", "name: edge-1\nlabels: { zone: a }\ncapacity: { cpu: 2, memory: 1Gi }\nlease: 3s\n"),
        ("aliases.yaml", "name: &n hello\nkind: process\ncommand: [*n, *n]\n"),
    ];
    for (name, text) in yaml {
        write("spec_yaml", name, text.as_bytes());
    }
    let json = [
        ("capsule.json", r#"{"name":"hello","kind":"process","command":["echo","hi"],"resources":{"cpu":"500m"}}"#),
        ("job.json", r#"{"capsule":"hello","inputs":["a","b"]}"#),
        ("service.json", r#"{"name":"web","capsule":"hello","replicas":2}"#),
        ("workload.json", r#"{"kind":"job","capsule":"hello"}"#),
    ];
    for (name, text) in json {
        write("spec_json", name, text.as_bytes());
    }
}

fn node_seeds() {
    // Through JSON, so fields added to the token later take their defaults here.
    let token: falak_node::mesh_files::JoinToken = serde_json::from_value(serde_json::json!({
        "mesh": "demo",
        "api_url": "http://127.0.0.1:7070",
        "gossip_seed": "127.0.0.1:7946",
        "secret": "07".repeat(32),
    }))
    .expect("a token");
    write("join_token", "token", token.encode().as_bytes());
    write(
        "node_rpc",
        "task-logs",
        br#"{"TaskLogs":{"task":"0000000000000001-0","attempt":1,"stream":"stdout","max_bytes":65536}}"#,
    );
    write("node_rpc", "function-instances", br#"{"Function":{"Instances":{"function":"resize"}}}"#);
    write("node_rpc", "function-logs", br#"{"Function":{"Logs":{"function":"resize","max_bytes":4096}}}"#);
}

fn main() {
    assert!(Path::new("fuzz/Cargo.toml").exists(), "run from the repository root");
    membership_seeds();
    gossip_seeds();
    transport_seeds();
    ledger_seeds();
    artifact_seeds();
    bundle_seeds();
    spec_seeds();
    node_seeds();
}
