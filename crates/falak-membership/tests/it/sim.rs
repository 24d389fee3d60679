//! An in-process network of `Membership` cores with virtual time.
//!
//! Packets travel through one time-ordered queue with a seeded latency (and optional loss);
//! links can be cut, nodes crashed, paused and restarted. No sockets, no clock: a run is a
//! pure function of its seed, so a failing seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::time::Duration;

use falak_core::NodeId;
use falak_core::gossip::{GOSSIP_FORMAT, GossipState};
use falak_membership::{
    Health, MemberIdentity, Membership, MembershipConfig, MembershipEvent, MembershipTimer, MeshSecret, Output,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const SECRET: MeshSecret = MeshSecret([42; 32]);

pub fn node_id(index: usize) -> NodeId {
    NodeId([u8::try_from(index + 1).expect("small mesh"); 32])
}

pub fn addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, u8::try_from(index + 1).expect("small mesh")], 7000))
}

pub fn gossip(version: u64, running: u32) -> GossipState {
    GossipState { format: GOSSIP_FORMAT, version, running, ..GossipState::default() }
}

enum Delivery {
    Packet { to: usize, from: SocketAddr, bytes: bytes::Bytes },
    Timer { node: usize, run: u64, timer: MembershipTimer },
}

pub struct SimNode {
    pub core: Membership,
    /// Bumped on crash and restart so timers of a dead run are discarded.
    run: u64,
    pub up: bool,
    paused: Option<Vec<Delivery>>,
    /// Every event this node emitted, with the virtual time it happened.
    pub events: Vec<(Duration, MembershipEvent)>,
    /// The highest (generation, version) of each peer's gossip this node has shown in its view.
    pub seen_gossip: BTreeMap<NodeId, (u64, u64)>,
}

pub struct Sim {
    pub nodes: Vec<SimNode>,
    pub now: Duration,
    pub config: MembershipConfig,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    pending: BTreeMap<u64, Delivery>,
    seq: u64,
    rng: ChaCha8Rng,
    cut: BTreeSet<(usize, usize)>,
    pub loss: f64,
}

impl Sim {
    /// `size` nodes, none joined yet.
    pub fn new(seed: u64, size: usize, config: MembershipConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nodes = (0..size)
            .map(|i| SimNode {
                core: new_core(i, 1, &config, &mut rng),
                run: 0,
                up: true,
                paused: None,
                events: Vec::new(),
                seen_gossip: BTreeMap::new(),
            })
            .collect();
        Sim {
            nodes,
            now: Duration::ZERO,
            config,
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            rng,
            cut: BTreeSet::new(),
            loss: 0.0,
        }
    }

    /// `size` nodes, each joining through node 0, run until `settle`.
    pub fn joined(seed: u64, size: usize, config: MembershipConfig, settle: Duration) -> Sim {
        let mut sim = Sim::new(seed, size, config);
        for i in 1..size {
            sim.join(i, 0);
        }
        sim.run_for(settle);
        sim
    }

    pub fn join(&mut self, node: usize, seed: usize) {
        let now = self.now;
        self.nodes[node].core.join(now, addr(seed)).expect("join accepted");
        self.drain(node);
    }

    pub fn set_gossip(&mut self, node: usize, state: GossipState) {
        let now = self.now;
        self.nodes[node].core.set_local_gossip(now, state).expect("gossip accepted");
        self.drain(node);
    }

    /// Stops a node dead: no more packets in or out, its timers are void.
    pub fn crash(&mut self, node: usize) {
        self.nodes[node].up = false;
        self.nodes[node].run += 1;
        self.nodes[node].paused = None;
    }

    /// Starts a crashed node again as a new generation and joins it through `seed`.
    pub fn restart(&mut self, node: usize, generation: u64, seed: usize) {
        let core = new_core(node, generation, &self.config, &mut self.rng);
        let entry = &mut self.nodes[node];
        entry.core = core;
        entry.up = true;
        entry.run += 1;
        // A new process starts with an empty view; monotonicity is per run.
        entry.seen_gossip.clear();
        self.join(node, seed);
    }

    /// Freezes a node: what reaches it waits until `resume`, like a SIGSTOPped process.
    pub fn pause(&mut self, node: usize) {
        self.nodes[node].paused = Some(Vec::new());
    }

    /// Delivers everything a paused node missed, datagrams before timers as the driver does.
    pub fn resume(&mut self, node: usize) {
        let Some(mut missed) = self.nodes[node].paused.take() else { return };
        missed.sort_by_key(|d| matches!(d, Delivery::Timer { .. }));
        for delivery in missed {
            self.deliver(delivery);
        }
    }

    pub fn partition(&mut self, side: &[usize]) {
        for &a in side {
            for b in 0..self.nodes.len() {
                if !side.contains(&b) {
                    self.cut.insert((a.min(b), a.max(b)));
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn run_for(&mut self, span: Duration) {
        self.run_until(self.now + span);
    }

    pub fn run_until(&mut self, end: Duration) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > end {
                break;
            }
            self.queue.pop();
            self.now = at;
            if let Some(delivery) = self.pending.remove(&seq) {
                self.deliver(delivery);
            }
        }
        self.now = end;
    }

    /// Runs until `done` holds (checked after every delivery) or `limit` passes; returns when.
    pub fn run_until_true(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> Option<Duration> {
        let end = self.now + limit;
        if done(self) {
            return Some(self.now);
        }
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > end {
                break;
            }
            self.queue.pop();
            self.now = at;
            if let Some(delivery) = self.pending.remove(&seq) {
                self.deliver(delivery);
                if done(self) {
                    return Some(self.now);
                }
            }
        }
        self.now = end;
        None
    }

    /// Whether `observer` currently sees `subject` with `health`.
    pub fn sees(&self, observer: usize, subject: usize, health: Health) -> bool {
        self.nodes[observer].core.health(&node_id(subject)) == Some(health)
    }

    /// Whether every live node sees every other live node HEALTHY.
    pub fn all_healthy(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].up).collect();
        live.iter().all(|&a| live.iter().all(|&b| a == b || self.sees(a, b, Health::Healthy)))
    }

    /// When `observer` first reported `event` at or after `since`.
    pub fn first_event(&self, observer: usize, event: MembershipEvent, since: Duration) -> Option<Duration> {
        self.nodes[observer].events.iter().find(|(at, e)| *at >= since && *e == event).map(|(at, _)| *at)
    }

    fn deliver(&mut self, delivery: Delivery) {
        let node = match &delivery {
            Delivery::Packet { to, .. } => *to,
            Delivery::Timer { node, .. } => *node,
        };
        if let Some(missed) = self.nodes[node].paused.as_mut() {
            missed.push(delivery);
            return;
        }
        let now = self.now;
        match delivery {
            Delivery::Packet { to, from, bytes } => {
                if self.nodes[to].up {
                    self.nodes[to].core.handle_datagram(now, from, &bytes);
                }
            }
            Delivery::Timer { node, run, timer } => {
                if self.nodes[node].up && self.nodes[node].run == run {
                    self.nodes[node].core.handle_timer(now, timer);
                }
            }
        }
        self.drain(node);
    }

    fn drain(&mut self, node: usize) {
        while let Some(output) = self.nodes[node].core.poll_output() {
            match output {
                Output::Send { to, bytes } => {
                    let Some(target) = (0..self.nodes.len()).find(|&i| addr(i) == to) else { continue };
                    let lost = self.rng.gen_bool(self.loss);
                    let cut = self.cut.contains(&(node.min(target), node.max(target)));
                    if lost || cut || !self.nodes[node].up {
                        continue;
                    }
                    let latency = Duration::from_micros(self.rng.gen_range(200..2000));
                    self.push(latency, Delivery::Packet { to: target, from: addr(node), bytes });
                }
                Output::Schedule { after, timer } => {
                    let run = self.nodes[node].run;
                    self.push(after, Delivery::Timer { node, run, timer });
                }
                Output::Event(event) => {
                    self.record(node, event);
                }
            }
        }
    }

    fn record(&mut self, node: usize, event: MembershipEvent) {
        let now = self.now;
        let entry = &mut self.nodes[node];
        entry.events.push((now, event));
        if let MembershipEvent::Gossip(subject) = event {
            let view = entry.core.view();
            let Some(peer) = view.iter().find(|v| v.id == subject) else { return };
            let Some(state) = &peer.gossip else { return };
            let seen = (peer.generation, state.version);
            let previous = entry.seen_gossip.insert(subject, seen);
            assert!(
                previous.is_none_or(|p| p < seen),
                "node {node} saw gossip of {subject:?} go from {previous:?} to {seen:?}"
            );
        }
    }

    fn push(&mut self, after: Duration, delivery: Delivery) {
        let seq = self.seq;
        self.seq += 1;
        self.pending.insert(seq, delivery);
        self.queue.push(Reverse((self.now + after, seq)));
    }
}

fn new_core(index: usize, generation: u64, config: &MembershipConfig, rng: &mut ChaCha8Rng) -> Membership {
    let identity = MemberIdentity::new(node_id(index), addr(index), generation);
    Membership::new(identity, &SECRET, config.clone(), ChaCha8Rng::seed_from_u64(rng.r#gen())).expect("valid core")
}
