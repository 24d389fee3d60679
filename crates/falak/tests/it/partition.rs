//! Partitions heal cleanly (issue 9), with real processes: the ledger leader is cut off from the
//! others (every UDP datagram to and from its transport and gossip ports on loopback dropped,
//! `falak_bench::netfilter`) for 5–10 s, the majority elects another leader, then the cut is
//! healed. Within 3 s of the heal every node must see every node HEALTHY, a job submitted after
//! it must run on every node, and no view may show a node OFFLINE once the job is done.
//! Repeated 10 times on 3 nodes and 5 times on 5. A first test checks the cut itself on plain
//! sockets: both directions dropped, removed on heal, on drop, on panic and, for a process that
//! died holding one, by the next cut.
//!
//! These tests need root and iptables (`.ci/run` installs it; CI runs as root). Without them
//! they fail saying which is missing; they never skip.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use falak_api::job::JobSubmission;
use falak_bench::heal::{View, agreed_leader, all_healthy, describe, views};
use falak_bench::netfilter::{CHAIN_PREFIX, Isolation, leftover_chains};
use falak_core::job::{JobState, TaskState};
use falak_core::placement::Health;

use crate::procs::Mesh;

/// One task per node at a time: each asks 3 of a node's 4 cpus, so balanced placement must put
/// the job's tasks, one per node, on every node; a node left out of placement shows as a task
/// that ran elsewhere, after another finished. Each sleeps so that all run at once.
const ONE_PER_NODE: &str = r#"name: one-per-node
kind: process
command: ["/bin/sh", "-c", "sleep 2; echo $FALAK_TASK_INDEX"]
resources: { cpu: 3000m, memory: 16Mi }
placement: { strategy: balanced, max_attempts: 3 }
"#;

/// Heal → every node HEALTHY in every node's view.
const HEAL_LIMIT: Duration = Duration::from_secs(3);

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_falak"))
}

#[test]
fn an_isolation_drops_datagrams_both_ways_until_healed_or_dropped() {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    }
    let (a_addr, b_addr) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    let gets = |from: &UdpSocket, to: &UdpSocket, to_addr| {
        from.send_to(b"ping", to_addr).expect("send succeeds even when cut off");
        let mut buf = [0u8; 16];
        to.recv_from(&mut buf).is_ok()
    };
    assert!(gets(&a, &b, b_addr) && gets(&b, &a, a_addr), "loopback UDP works before the cut");

    let cut = Isolation::ports("a", &[a_addr.port()]).expect("cutting a port off (needs root and iptables)");
    assert!(!gets(&a, &b, b_addr), "a datagram from the isolated port was delivered");
    assert!(!gets(&b, &a, a_addr), "a datagram to the isolated port was delivered");
    let dropped = cut.dropped().expect("counters");
    assert!(dropped.iter().all(|d| d.packets >= 1), "each rule dropped the datagram sent its way: {dropped:?}");
    let chain = cut.chain().to_owned();
    cut.heal().expect("healed");
    assert!(gets(&a, &b, b_addr) && gets(&b, &a, a_addr), "loopback UDP works again after the heal");
    assert!(!leftover_chains().expect("iptables -S").contains(&chain), "{chain} removed by heal");

    // A panic unwinding through the owner heals too.
    let panicked = std::sync::Mutex::new(String::new());
    let unwound = std::panic::catch_unwind(|| {
        let cut = Isolation::ports("a", &[a_addr.port()]).expect("cut");
        *panicked.lock().expect("lock") = cut.chain().to_owned();
        panic!("a failing test (on purpose)");
    });
    assert!(unwound.is_err());
    let chain = panicked.into_inner().expect("lock");
    assert!(gets(&a, &b, b_addr), "the cut of a panicking owner is healed");
    assert!(!leftover_chains().expect("iptables -S").contains(&chain), "{chain} removed by the unwinding");

    // A chain left by a process that is gone (a test killed mid-cut) is swept by the next cut.
    let mut child = Command::new("/bin/true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("reaped");
    let stale = format!("{CHAIN_PREFIX}{dead}-0");
    let stale = stale.as_str();
    for args in [
        vec!["-N", stale],
        vec!["-A", stale, "-p", "udp", "--dport", "9", "-j", "DROP"],
        vec!["-I", "INPUT", "1", "-j", stale],
    ] {
        let status = Command::new("iptables").arg("-w").args(&args).status().expect("iptables runs");
        assert!(status.success(), "iptables {args:?}");
    }
    let cut = Isolation::ports("a", &[a_addr.port()]).expect("cut");
    let left = leftover_chains().expect("iptables -S");
    assert!(!left.iter().any(|c| c == stale), "{stale} of dead process {dead} not swept: {left:?}");
    let rules = String::from_utf8(Command::new("iptables").args(["-w", "-S"]).output().expect("iptables").stdout)
        .expect("text");
    assert!(!rules.contains(&format!("-j {stale}")), "the jump to {stale} not swept:\n{rules}");
    let chain = cut.chain().to_owned();
    drop(cut);
    assert!(!leftover_chains().expect("iptables -S").contains(&chain), "{chain} removed by drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_heal_cleanly_after_ten_leader_partitions() {
    partitions_of_the_leader(3, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_heal_cleanly_after_five_leader_partitions() {
    partitions_of_the_leader(5, 5).await;
}

/// `rounds` times: cut the leader off for 5–10 s (5 s in the first round, 10 s in the last),
/// check that the others elect a new leader meanwhile, heal, and check the mesh is whole again.
async fn partitions_of_the_leader(nodes: usize, rounds: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mesh = Mesh::start(binary(), dir.path(), nodes);
    mesh.wait_ready(Duration::from_secs(30)).await;
    mesh.nodes[0].client.apply_capsule_text(ONE_PER_NODE).await.expect("capsule applied");
    for round in 0..rounds {
        let hold = Duration::from_millis(5_000 + 5_000 * round as u64 / (rounds as u64 - 1).max(1));
        let leader = settled(&mesh, round).await;
        let others = mesh.running_except(&[leader]);
        let mut situation = format!("{} (leader) cut off for {}", mesh.nodes[leader].name, secs(hold));

        let cut = Isolation::node(&mesh, leader).expect("cutting the leader off (needs root and iptables)");
        let t0 = Instant::now();
        let new_leader = loop {
            if let Some(l) = agreed_leader(&mesh, &others).await
                && l != leader
            {
                break l;
            }
            if t0.elapsed() > hold {
                let v = views(&mesh).await;
                panic!("{}", failure(&mesh, round, &situation, "the others elected no new leader", &v, &[leader]));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        situation.push_str(&format!("; {} elected after {}", mesh.nodes[new_leader].name, secs(t0.elapsed())));
        tokio::time::sleep_until((t0 + hold).into()).await;
        // Really cut off: datagrams were dropped to and from both ports.
        let dropped = cut.dropped().expect("drop counters");
        if dropped.len() != 4 || dropped.iter().any(|d| d.packets == 0) {
            let v = views(&mesh).await;
            let what = format!("not every rule of the cut dropped datagrams: {dropped:?}");
            panic!("{}", failure(&mesh, round, &situation, &what, &v, &[leader]));
        }
        cut.heal().expect("healed");
        let healed = Instant::now();

        // Every node sees every node HEALTHY within 3 s of the heal.
        loop {
            let v = views(&mesh).await;
            if all_healthy(&mesh, &v) {
                break;
            }
            if healed.elapsed() > HEAL_LIMIT {
                let what = format!("not every node HEALTHY in every node's view {} after the heal", secs(HEAL_LIMIT));
                panic!("{}", failure(&mesh, round, &situation, &what, &v, &[leader, new_leader]));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let whole = healed.elapsed();

        // A job submitted after the heal runs on every node.
        let via = round % nodes;
        if let Err(what) = job_on_every_node(&mesh, via).await {
            let v = views(&mesh).await;
            let what = format!("the job submitted after the heal (via {}): {what}", mesh.nodes[via].name);
            panic!("{}", failure(&mesh, round, &situation, &what, &v, &[leader, new_leader]));
        }
        // And no stale OFFLINE mark landed after the first all-HEALTHY answer.
        let v = views(&mesh).await;
        let offline = |view: &View| view.nodes.as_ref().map_or(true, |l| l.iter().any(|n| n.state == Health::Offline));
        if v.iter().any(offline) {
            let what = "a node OFFLINE (or not answering) in some view after the job";
            panic!("{}", failure(&mesh, round, &situation, what, &v, &[leader, new_leader]));
        }
        eprintln!("round {round}: {situation}; healed: every node HEALTHY everywhere after {}", secs(whole));
    }
}

/// Submit a job of one task per node through node `via`, wait for it to end, and check that it
/// completed with a task on every node; what went wrong otherwise.
async fn job_on_every_node(mesh: &Mesh, via: usize) -> Result<(), String> {
    let client = &mesh.nodes[via].client;
    let n = mesh.nodes.len();
    let submission =
        JobSubmission { capsule: "one-per-node".into(), tasks: Some(n as u32), ..JobSubmission::default() };
    let job = client.submit_job(&submission).await.map_err(|e| format!("not accepted: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        if let Ok(info) = client.job(job.id).await
            && info.state != JobState::Running
        {
            break info;
        }
        if Instant::now() > deadline {
            return Err(format!("{} not finished within 30 s: {:?}", job.id, client.job_tasks(job.id).await));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tasks = client.job_tasks(job.id).await.map_err(|e| format!("listing the tasks of {}: {e}", job.id))?;
    let used: BTreeSet<&str> = tasks.iter().filter_map(|t| t.node.as_ref().map(|n| n.name.as_str())).collect();
    let everyone: BTreeSet<&str> = mesh.nodes.iter().map(|n| n.name.as_str()).collect();
    if info.state == JobState::Completed && tasks.iter().all(|t| t.state == TaskState::Completed) && used == everyone {
        return Ok(());
    }
    let placed: Vec<String> = tasks
        .iter()
        .map(|t| {
            let node = t.node.as_ref().map_or("-", |n| n.name.as_str());
            format!("{} {} on {node} (attempt {})", t.id, t.state.name(), t.attempt)
        })
        .collect();
    Err(format!("{} ended {} without running on every node: {}", job.id, info.state.name(), placed.join(", ")))
}

/// The leader every node names, once every node also sees every node HEALTHY.
async fn settled(mesh: &Mesh, round: usize) -> usize {
    let all = mesh.running_except(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = views(mesh).await;
        if let Some(leader) = agreed_leader(mesh, &all).await
            && all_healthy(mesh, &v)
        {
            return leader;
        }
        if Instant::now() > deadline {
            let what = "no leader every node agrees on, with every node HEALTHY, within 30 s";
            panic!("{}", failure(mesh, round, "before cutting the leader off", what, &v, &all));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A failure message: the round, what was going on, what went wrong, what each node sees, and
/// the log tails of the nodes involved.
fn failure(mesh: &Mesh, round: usize, situation: &str, what: &str, views: &[View], logs: &[usize]) -> String {
    let mut text = format!("round {round} ({situation}): {what}\nviews:\n{}\n", describe(views));
    let mut shown = BTreeSet::new();
    for &i in logs {
        if shown.insert(i) {
            let tail = without_colors(&mesh.nodes[i].log_tail(25));
            text.push_str(&format!("--- log tail of {}:\n{tail}\n", mesh.nodes[i].name));
        }
    }
    text
}

/// `text` without the terminal color sequences (`ESC [ ... m`) the node's log carries.
fn without_colors(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `[`, parameters, and the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
