//! Functions in the simulation: each node runs the function host's real sans-IO core
//! (`falak_node::functions::slots::DeploymentCore`) for function `f`, with simulated instances
//! that start, serve, break and stop after seeded delays, and its slot claims and releases
//! going through the node's real ledger.
//!
//! Invariants checked here (the slot budget itself is `instance_slots.rs`'s):
//! - an instance serves only after the ledger committed its slot claim;
//! - every request a running node took gets exactly one answer (a dispatch or a rejection), and
//!   none is answered twice;
//! - after the settle, no slot the ledger says a running node holds lacks an instance behind it
//!   on that node (the node's slot reconciliation, `stale_slots`, releases leftovers), and every
//!   claim and launch the core asked for was answered.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use falak_core::function::FunctionSpec;
use falak_core::ledger::{Command, State};
use falak_core::{Millis, NodeId};
use falak_function::pool::{InstanceId, RequestId};
use falak_ledger::Ledger;
use falak_node::functions::slots::{self, ClaimFailure, DeploymentCore, Effect, Input, SlotNumbers};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The YAML of the simulated function (its `max_instances` is `instance_slots::MAX_INSTANCES`).
pub fn document(max_instances: u32) -> String {
    format!(
        "name: f\nkind: function\nruntime: python\nhandler: main.handle\nscaling: {{ max_instances: {max_instances}, idle_timeout: 1s }}"
    )
}

/// The committed claims the checkers saw, by (node, slot), fed from every replica's applied
/// events.
#[derive(Debug, Default)]
pub struct CommittedClaims(BTreeSet<(NodeId, u64)>);

impl CommittedClaims {
    pub fn observe(&mut self, event: &falak_core::ledger::LedgerEvent) {
        if let falak_core::ledger::LedgerEvent::InstanceClaimed { node, instance, .. } = event {
            self.0.insert((*node, *instance));
        }
    }
}

/// A deliberately broken driver, to show the checkers here are not blind (tests of the
/// checkers only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverBug {
    #[default]
    None,
    /// Answer every claim as committed without asking the ledger.
    ClaimWithoutLedger,
    /// Never give a slot back, and never reconcile.
    KeepSlots,
}

/// What the function hosts did in a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct FunctionStats {
    pub requests: u64,
    pub dispatched: u64,
    pub rejected: u64,
    pub served_instances: u64,
    pub at_limit: u64,
}

impl FunctionStats {
    pub fn add(&mut self, other: &FunctionStats) {
        self.requests += other.requests;
        self.dispatched += other.dispatched;
        self.rejected += other.rejected;
        self.served_instances += other.served_instances;
        self.at_limit += other.at_limit;
    }
}

/// A claim's instance and what the ledger answered.
type ClaimAnswer = (InstanceId, Result<(), ClaimFailure>);

/// One node's function host for `f`.
pub struct SimFunction {
    node: NodeId,
    core: DeploymentCore<u64>,
    /// Inputs due at a virtual time (simulated processes, finished requests).
    due: Vec<(Millis, Input<u64>)>,
    /// Claim answers from the ledger, delivered at the next step.
    claims: Arc<Mutex<Vec<ClaimAnswer>>>,
    /// Claims and launches asked for and not answered yet.
    outstanding_claims: BTreeSet<InstanceId>,
    outstanding_launches: BTreeSet<InstanceId>,
    /// Requests taken and not answered yet.
    waiting: BTreeSet<RequestId>,
    answered: BTreeSet<RequestId>,
    next_request: RequestId,
    last_reconcile: Millis,
    bug: DriverBug,
    pub stats: FunctionStats,
}

impl SimFunction {
    /// A node's function host after a (re)start: no instances; `snapshot` says whether its
    /// starts fork from a ready snapshot (claim and launch at once) or claim first.
    pub fn new(node: NodeId, spec: &FunctionSpec, first_slot: u64, snapshot: bool, bug: DriverBug) -> SimFunction {
        let mut core = DeploymentCore::new(slots::pool_config(spec, 0), SlotNumbers::starting_at(first_slot));
        core.step(0, Input::SnapshotReady(snapshot));
        SimFunction {
            node,
            core,
            due: Vec::new(),
            claims: Arc::default(),
            outstanding_claims: BTreeSet::new(),
            outstanding_launches: BTreeSet::new(),
            waiting: BTreeSet::new(),
            answered: BTreeSet::new(),
            next_request: 1,
            last_reconcile: 0,
            bug,
            stats: FunctionStats::default(),
        }
    }

    /// A request arrives that this node was elected to serve.
    pub fn request(&mut self, now: Millis, ctx: &mut Ctx<'_>) {
        let request = self.next_request;
        self.next_request += 1;
        self.waiting.insert(request);
        self.stats.requests += 1;
        self.feed(now, Input::Request { request, may_start: true }, ctx);
    }

    /// One serving instance breaks (crash, failed health check).
    pub fn break_one(&mut self, now: Millis, ctx: &mut Ctx<'_>) {
        let serving = self.core.serving();
        if serving.is_empty() {
            return;
        }
        let victim = serving[ctx.rng.gen_range(0..serving.len())].instance;
        self.feed(now, Input::Broke { instance: victim, why: "simulated crash".into() }, ctx);
    }

    /// Deliver what is due, tick, and release stale slots once a second.
    pub fn step(&mut self, now: Millis, ctx: &mut Ctx<'_>) {
        let answers: Vec<_> = std::mem::take(&mut *self.claims.lock().expect("lock"));
        for (instance, result) in answers {
            self.outstanding_claims.remove(&instance);
            if matches!(&result, Err(ClaimFailure { failure: falak_function::pool::StartFailure::AtLimit, .. })) {
                self.stats.at_limit += 1;
            }
            self.feed(now, Input::Claimed { instance, result }, ctx);
        }
        let (ready, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.due).into_iter().partition(|(at, _)| *at <= now);
        self.due = later;
        for (_, input) in ready {
            if let Input::Launched { instance, .. } = &input {
                self.outstanding_launches.remove(instance);
            }
            self.feed(now, input, ctx);
        }
        self.feed(now, Input::Tick, ctx);
        if now.saturating_sub(self.last_reconcile) >= 1_000 && self.bug != DriverBug::KeepSlots {
            self.last_reconcile = now;
            let held: BTreeSet<u64> = self.core.slots().into_iter().collect();
            for (function, slot) in slots::stale_slots(&ctx.ledger.state(), &self.node, &held, now) {
                release(ctx.ledger, self.node, function, slot, now);
            }
        }
    }

    fn feed(&mut self, now: Millis, input: Input<u64>, ctx: &mut Ctx<'_>) {
        for effect in self.core.step(now, input) {
            match effect {
                Effect::Claim { instance, slot } => {
                    self.outstanding_claims.insert(instance);
                    let ledger = ctx.ledger.clone();
                    let answers = self.claims.clone();
                    let command = Command::ClaimInstance {
                        function: "f".into(),
                        version: 1,
                        node: self.node,
                        instance: slot,
                        now,
                    };
                    if self.bug == DriverBug::ClaimWithoutLedger {
                        answers.lock().expect("lock").push((instance, Ok(())));
                        continue;
                    }
                    tokio::spawn(async move {
                        let result = slots::claim_result(ledger.write(command).await);
                        answers.lock().expect("lock").push((instance, result));
                    });
                }
                Effect::Launch { instance, slot, .. } => {
                    self.outstanding_launches.insert(instance);
                    let result = if ctx.rng.gen_bool(0.05) { Err("simulated start failure".into()) } else { Ok(slot) };
                    self.due.push((now + ctx.rng.gen_range(5..200), Input::Launched { instance, result }));
                }
                Effect::Serving { slot, .. } => {
                    self.stats.served_instances += 1;
                    if !ctx.claims.lock().expect("lock").0.contains(&(self.node, slot)) {
                        ctx.violations.push(format!(
                            "node {} serves instance slot {slot} before its claim committed",
                            self.node.short()
                        ));
                    }
                }
                Effect::Dispatch { request, .. } => {
                    self.stats.dispatched += 1;
                    self.answer(request, ctx);
                    self.due.push((now + ctx.rng.gen_range(5..100), Input::Finished { request }));
                }
                Effect::Reject { request, .. } => {
                    self.stats.rejected += 1;
                    self.answer(request, ctx);
                }
                Effect::Stop { instance, release: slot, .. } => {
                    if let Some(slot) = slot.filter(|_| self.bug != DriverBug::KeepSlots) {
                        release(ctx.ledger, self.node, "f".into(), slot, now);
                    }
                    self.due.push((now + ctx.rng.gen_range(1..50), Input::Stopped { instance }));
                }
                Effect::Release { slot } if self.bug != DriverBug::KeepSlots => {
                    release(ctx.ledger, self.node, "f".into(), slot, now);
                }
                Effect::Release { .. } => {}
                Effect::Report(_) => {}
            }
        }
    }

    fn answer(&mut self, request: RequestId, ctx: &mut Ctx<'_>) {
        if !self.waiting.remove(&request) {
            let again = self.answered.contains(&request);
            let what = if again { "answered twice" } else { "answered but never asked" };
            ctx.violations.push(format!("node {}: request {request} {what}", self.node.short()));
        }
        self.answered.insert(request);
    }

    /// Nothing outstanding, and no slot in `state` without an instance here: what the settle
    /// waits for before the checks.
    pub fn settled(&self, state: &State) -> bool {
        let mut violations = Vec::new();
        self.check(state, &mut violations);
        violations.is_empty()
    }

    /// The end-of-run checks on a node that is running, against its replica's committed state.
    pub fn check(&self, state: &State, violations: &mut Vec<String>) {
        let node = self.node.short();
        if !self.waiting.is_empty() {
            violations.push(format!("node {node}: requests {:?} were never answered", self.waiting));
        }
        if !self.outstanding_claims.is_empty() || !self.outstanding_launches.is_empty() {
            violations.push(format!(
                "node {node}: claims {:?} and launches {:?} were never answered",
                self.outstanding_claims, self.outstanding_launches
            ));
        }
        let held: BTreeSet<u64> = self.core.slots().into_iter().collect();
        let leaked: Vec<u64> = state
            .function("f")
            .map(|f| f.instances_on(&self.node).map(|s| s.instance).filter(|s| !held.contains(s)).collect())
            .unwrap_or_default();
        if !leaked.is_empty() {
            violations
                .push(format!("node {node} holds slots {leaked:?} of f in the ledger with no instance behind them"));
        }
    }
}

/// What a function host's step needs from the simulation.
pub struct Ctx<'a> {
    pub ledger: &'a Ledger,
    pub rng: &'a mut ChaCha8Rng,
    pub claims: &'a Mutex<CommittedClaims>,
    pub violations: &'a mut Vec<String>,
}

/// Give a slot back through the ledger, once (the reconciliation catches a lost release).
fn release(ledger: &Ledger, node: NodeId, function: String, slot: u64, now: Millis) {
    let ledger = ledger.clone();
    let command = Command::ReleaseInstances { node, function, instances: vec![slot], all: false, now };
    tokio::spawn(async move {
        let _ = ledger.write(command).await;
    });
}

/// The first slot number of node `index`'s `generation`-th start: distinct across restarts, as
/// the real node's are (it seeds them from the clock).
pub fn first_slot(index: usize, generation: u64) -> u64 {
    (index as u64 + 1) * 1_000_000_000 + generation * 1_000_000
}
