//! The sans-IO core of one function deployment on one node: its instance pool and the ledger
//! slot each instance holds.
//!
//! [`falak_function::pool::Pool`] decides which instance serves a request and when instances
//! start and stop. This core adds what ties the pool to the mesh: every instance claims a slot
//! of the function's `max_instances` in the ledger, and
//!
//! - **an instance serves only after its slot claim committed.** A start claims the slot and
//!   launches the process at once when a snapshot is ready (the fork overlaps the commit), else
//!   claims first so that no preparation is spent when the mesh is at its limit; either way it
//!   joins the pool only when both have succeeded;
//! - **every slot is given back**: when its instance stops or fails, when the start fails after
//!   the claim committed, and when a claim's outcome is unknown (it may still commit);
//! - a start that the pool stops while it is under way finishes first, then is undone.
//!
//! The driver ([`super::deployment`]) owns processes, the ledger client and the clock; it feeds
//! one [`Input`] at a time with `now` and carries out the [`Effect`]s. The seeded simulation
//! drives this same code with simulated instances (`tests/it/sim`). Pure: no IO, no clock, no
//! randomness. `H` is the driver's handle to a running instance.

use std::collections::{BTreeMap, BTreeSet};

use falak_core::function::FunctionSpec;
use falak_core::ledger::{Applied, Outcome, RejectCode, State};
use falak_core::{Millis, NodeId};
use falak_function::pool::{Action, InstanceId, Pool, PoolConfig, RejectReason, RequestId, StartFailure};

/// How long a request may wait for a slot before it gets 429.
pub const MAX_WAIT_MS: u64 = 5_000;
/// How long an instance may take to start, including preparing the deployment on this node.
pub const START_TIMEOUT_MS: u64 = 120_000;
/// A slot the ledger says this node holds without an instance behind it is released once it is
/// this old (a claim commits before its instance exists, and may commit after its claimer gave
/// up on it).
pub const SLOT_GRACE_MS: u64 = 10_000;

/// The pool of `spec` on one node that keeps `min_instances`.
pub fn pool_config(spec: &FunctionSpec, min_instances: u32) -> PoolConfig {
    let s = spec.scaling;
    let slots = s.max_instances.saturating_mul(s.concurrency);
    PoolConfig {
        min_instances: min_instances.min(s.max_instances),
        max_instances: s.max_instances,
        concurrency: s.concurrency,
        idle_timeout_ms: s.idle_timeout_ms,
        max_queue: slots.saturating_mul(4).clamp(16, 1024),
        max_wait_ms: MAX_WAIT_MS.min(spec.timeout_ms),
        start_timeout_ms: START_TIMEOUT_MS,
    }
}

/// What a slot claim's ledger write means for the start.
pub fn claim_result<E: std::fmt::Display>(written: Result<Applied, E>) -> Result<(), ClaimFailure> {
    let refused = |failure| Err(ClaimFailure { failure, uncertain: false });
    match written {
        Ok(applied) => match applied.outcome {
            Outcome::InstanceClaimed { .. } => Ok(()),
            Outcome::Rejected(r) if r.code == RejectCode::NoFit && r.message.contains("max_instances") => {
                refused(StartFailure::AtLimit)
            }
            Outcome::Rejected(r) => refused(StartFailure::Error(r.message)),
            other => refused(StartFailure::Error(format!("unexpected ledger outcome {other:?}"))),
        },
        Err(e) => Err(ClaimFailure {
            failure: StartFailure::Error(format!("the ledger did not confirm the instance: {e}")),
            uncertain: true,
        }),
    }
}

/// The slots (function, slot) committed state says `node` holds that none of its deployments
/// holds (`held`) and that are older than [`SLOT_GRACE_MS`]: a release that never committed, a
/// claim that committed after it timed out, slots of a node that restarted. Release them.
pub fn stale_slots(state: &State, node: &NodeId, held: &BTreeSet<u64>, now: Millis) -> Vec<(String, u64)> {
    state
        .functions()
        .flat_map(|f| f.instances_on(node).map(move |s| (f.spec.name.clone(), s.instance, s.since)))
        .filter(|(_, slot, since)| !held.contains(slot) && now.saturating_sub(*since) > SLOT_GRACE_MS)
        .map(|(name, slot, _)| (name, slot))
        .collect()
}

/// One input to [`DeploymentCore::step`]: the closed set of things that happen to a deployment.
#[derive(Debug)]
pub enum Input<H> {
    /// A request arrived; `may_start`: this node was elected to start an instance for it.
    Request { request: RequestId, may_start: bool },
    /// A dispatched request finished (its response ended, or its client went away).
    Finished { request: RequestId },
    /// The ledger answered an [`Effect::Claim`].
    Claimed { instance: InstanceId, result: Result<(), ClaimFailure> },
    /// An [`Effect::Launch`] ended: the process serves, or it did not start.
    Launched { instance: InstanceId, result: Result<H, String> },
    /// A serving instance broke: it crashed, timed out, failed a health check or its disk
    /// limit. Ignored for an instance that is not serving (stopping, gone, still starting).
    Broke { instance: InstanceId, why: String },
    /// An [`Effect::Stop`] finished: the process is gone (and its slot released).
    Stopped { instance: InstanceId },
    /// Whether a snapshot (a live zygote) is ready to fork from.
    SnapshotReady(bool),
    /// Keep this many instances (the first-ranked observer keeps the function's floor).
    SetMinInstances(u32),
    /// The version was replaced or removed: reject waiting requests, stop instances once idle.
    Retire,
    /// Time passed: idle timeouts, waiting limits, start timeouts.
    Tick,
}

/// Why a slot claim failed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimFailure {
    pub failure: StartFailure,
    /// The ledger did not answer: the claim may still commit, so the slot is released anyway.
    pub uncertain: bool,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect<H> {
    /// Commit this node's claim on instance slot `slot`; answer [`Input::Claimed`].
    Claim { instance: InstanceId, slot: u64 },
    /// Start the instance's process (from the snapshot when `snapshot`, else prepare the
    /// deployment and spawn or fork); answer [`Input::Launched`].
    Launch { instance: InstanceId, slot: u64, snapshot: bool },
    /// The instance serves from now on (its claim committed): watch it, and report
    /// [`Input::Broke`] when it exits.
    Serving { instance: InstanceId, slot: u64, handle: H },
    /// Hand the request to the instance.
    Dispatch { request: RequestId, instance: InstanceId, handle: H },
    /// Answer the request with an error.
    Reject { request: RequestId, reason: RejectReason, retry_after_ms: Option<u64> },
    /// Stop the process, then release `release` if given; answer [`Input::Stopped`].
    Stop { instance: InstanceId, handle: H, release: Option<u64> },
    /// Give the slot back to the ledger.
    Release { slot: u64 },
    /// Something the node reports (log and event stream).
    Report(Report),
}

/// What an [`Effect::Report`] tells.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// An instance did not start.
    StartFailed { message: String },
    /// A serving instance broke and is being replaced.
    InstanceFailed { slot: u64, why: String },
}

/// Node-wide instance slot numbers: unique across the node's deployments and restarts (the
/// driver seeds it from the clock).
#[derive(Debug, Clone)]
pub struct SlotNumbers(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl SlotNumbers {
    pub fn starting_at(first: u64) -> SlotNumbers {
        SlotNumbers(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(first)))
    }

    fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Where a start stands while either half is outstanding.
#[derive(Debug)]
enum Half<T> {
    NotAsked,
    Pending,
    Done(T),
}

#[derive(Debug)]
enum Phase<H> {
    Starting {
        claim: Half<Result<(), ClaimFailure>>,
        launch: Half<Result<H, String>>,
        /// The pool stopped it while it started: undo the start once both halves are done.
        cancelled: bool,
    },
    Serving(H),
    Stopping,
}

#[derive(Debug)]
struct Held<H> {
    slot: u64,
    phase: Phase<H>,
}

/// A serving instance, for health and disk checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingInstance<H> {
    pub instance: InstanceId,
    pub slot: u64,
    pub handle: H,
    /// Nothing in flight.
    pub idle: bool,
}

/// The pool and the slots of one deployment on one node.
#[derive(Debug)]
pub struct DeploymentCore<H> {
    pool: Pool,
    slots: SlotNumbers,
    held: BTreeMap<InstanceId, Held<H>>,
    snapshot_ready: bool,
    retired: bool,
}

impl<H: Clone> DeploymentCore<H> {
    pub fn new(config: PoolConfig, slots: SlotNumbers) -> DeploymentCore<H> {
        DeploymentCore { pool: Pool::new(config), slots, held: BTreeMap::new(), snapshot_ready: false, retired: false }
    }

    /// Take one input; `now` must never go backwards.
    pub fn step(&mut self, now: Millis, input: Input<H>) -> Vec<Effect<H>> {
        let mut effects = Vec::new();
        let actions = match input {
            Input::Request { request, may_start } => self.pool.request(now, request, may_start),
            Input::Finished { request } => self.pool.finished(now, request),
            Input::Claimed { instance, result } => self.claimed(now, instance, result, &mut effects),
            Input::Launched { instance, result } => self.launched(now, instance, result, &mut effects),
            Input::Broke { instance, why } => self.broke(now, instance, why, &mut effects),
            Input::Stopped { instance } => match self.held.get(&instance) {
                Some(Held { phase: Phase::Stopping, .. }) => {
                    self.held.remove(&instance);
                    self.pool.stopped(now, instance)
                }
                _ => Vec::new(),
            },
            Input::SnapshotReady(ready) => {
                self.snapshot_ready = ready;
                Vec::new()
            }
            Input::SetMinInstances(min) => {
                let min = min.min(self.pool.config().max_instances);
                if self.pool.config().min_instances == min { Vec::new() } else { self.pool.set_min_instances(now, min) }
            }
            Input::Retire => {
                if std::mem::replace(&mut self.retired, true) {
                    Vec::new()
                } else {
                    self.pool.drain(now)
                }
            }
            Input::Tick => self.pool.tick(now),
        };
        self.carry_out(now, actions, &mut effects);
        effects
    }

    /// Carry out the pool's actions, and those that answering them causes.
    fn carry_out(&mut self, now: Millis, mut actions: Vec<Action>, effects: &mut Vec<Effect<H>>) {
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions {
                match action {
                    Action::Dispatch { request, instance } => match self.held.get(&instance) {
                        Some(Held { phase: Phase::Serving(handle), .. }) => {
                            effects.push(Effect::Dispatch { request, instance, handle: handle.clone() });
                        }
                        // The pool dispatches only to instances it holds ready, which serve.
                        _ => unreachable!("the pool dispatched to instance {instance}, which does not serve"),
                    },
                    Action::Reject { request, reason, retry_after_ms } => {
                        effects.push(Effect::Reject { request, reason, retry_after_ms });
                    }
                    Action::Start { instance } => {
                        let slot = self.slots.next();
                        effects.push(Effect::Claim { instance, slot });
                        let launch = if self.snapshot_ready {
                            effects.push(Effect::Launch { instance, slot, snapshot: true });
                            Half::Pending
                        } else {
                            Half::NotAsked
                        };
                        let phase = Phase::Starting { claim: Half::Pending, launch, cancelled: false };
                        self.held.insert(instance, Held { slot, phase });
                    }
                    Action::Stop { instance } => next.extend(self.stop(now, instance, effects)),
                }
            }
            actions = next;
        }
    }

    /// The pool stopped an instance: cancel its start, or stop its process.
    fn stop(&mut self, now: Millis, instance: InstanceId, effects: &mut Vec<Effect<H>>) -> Vec<Action> {
        let Some(held) = self.held.get_mut(&instance) else {
            return self.pool.stopped(now, instance);
        };
        match &mut held.phase {
            Phase::Starting { cancelled, .. } => {
                *cancelled = true;
                Vec::new()
            }
            Phase::Serving(handle) => {
                let handle = handle.clone();
                effects.push(Effect::Stop { instance, handle, release: Some(held.slot) });
                held.phase = Phase::Stopping;
                Vec::new()
            }
            Phase::Stopping => Vec::new(),
        }
    }

    fn claimed(
        &mut self,
        now: Millis,
        instance: InstanceId,
        result: Result<(), ClaimFailure>,
        effects: &mut Vec<Effect<H>>,
    ) -> Vec<Action> {
        let Some(held) = self.held.get_mut(&instance) else { return Vec::new() };
        let Phase::Starting { claim, launch, cancelled } = &mut held.phase else { return Vec::new() };
        if !matches!(claim, Half::Pending) {
            return Vec::new();
        }
        if let Err(ClaimFailure { uncertain: true, .. }) = &result {
            effects.push(Effect::Release { slot: held.slot });
        }
        // Claim first, then launch: only once the claim committed, and not for a cancelled start.
        if result.is_ok() && matches!(launch, Half::NotAsked) && !*cancelled {
            effects.push(Effect::Launch { instance, slot: held.slot, snapshot: false });
            *launch = Half::Pending;
        }
        *claim = Half::Done(result);
        self.settle(now, instance, effects)
    }

    fn launched(
        &mut self,
        now: Millis,
        instance: InstanceId,
        result: Result<H, String>,
        effects: &mut Vec<Effect<H>>,
    ) -> Vec<Action> {
        let Some(held) = self.held.get_mut(&instance) else { return Vec::new() };
        let Phase::Starting { launch, .. } = &mut held.phase else { return Vec::new() };
        if !matches!(launch, Half::Pending) {
            return Vec::new();
        }
        *launch = Half::Done(result);
        self.settle(now, instance, effects)
    }

    /// A start whose outstanding halves are all done: serve, or undo it.
    fn settle(&mut self, now: Millis, instance: InstanceId, effects: &mut Vec<Effect<H>>) -> Vec<Action> {
        let done = matches!(
            self.held.get(&instance),
            Some(Held {
                phase: Phase::Starting { claim: Half::Done(_), launch: Half::Done(_) | Half::NotAsked, .. },
                ..
            })
        );
        if !done {
            return Vec::new();
        }
        let Some(Held { slot, phase: Phase::Starting { claim: Half::Done(claim), launch, cancelled } }) =
            self.held.remove(&instance)
        else {
            unreachable!("checked above")
        };
        let launch = match launch {
            Half::Done(result) => Some(result),
            _ => None,
        };
        // A committed claim is released by whoever ends the start; an uncertain one was released
        // when it failed; a refused one holds nothing.
        let committed = claim.is_ok();
        match (claim, launch) {
            (Ok(()), Some(Ok(handle))) if !cancelled => {
                self.held.insert(instance, Held { slot, phase: Phase::Serving(handle.clone()) });
                effects.push(Effect::Serving { instance, slot, handle });
                self.pool.started(now, instance)
            }
            (claim, Some(Ok(handle))) => {
                effects.push(Effect::Stop { instance, handle, release: committed.then_some(slot) });
                match claim {
                    // A cancelled instance is STOPPING and still counts until its process is gone.
                    _ if cancelled => {
                        self.held.insert(instance, Held { slot, phase: Phase::Stopping });
                        Vec::new()
                    }
                    // The pool forgets a failed start at once; `Stopped` then finds nothing.
                    Err(c) => self.pool.start_failed(now, instance, c.failure),
                    Ok(()) => unreachable!("a committed, launched, uncancelled start serves"),
                }
            }
            (claim, launch) => {
                // No process: a committed claim is given back.
                if committed {
                    effects.push(Effect::Release { slot });
                }
                if cancelled {
                    return self.pool.stopped(now, instance);
                }
                let failure = match (claim, launch) {
                    (Err(c), _) => c.failure,
                    (Ok(()), Some(Err(message))) => {
                        effects.push(Effect::Report(Report::StartFailed { message: message.clone() }));
                        StartFailure::Error(message)
                    }
                    (Ok(()), _) => unreachable!("a committed claim of a start that was not cancelled is launched"),
                };
                self.pool.start_failed(now, instance, failure)
            }
        }
    }

    fn broke(&mut self, now: Millis, instance: InstanceId, why: String, effects: &mut Vec<Effect<H>>) -> Vec<Action> {
        let Some(held) = self.held.get_mut(&instance) else { return Vec::new() };
        let Phase::Serving(handle) = &held.phase else { return Vec::new() };
        effects.push(Effect::Report(Report::InstanceFailed { slot: held.slot, why }));
        effects.push(Effect::Stop { instance, handle: handle.clone(), release: Some(held.slot) });
        self.held.remove(&instance);
        self.pool.instance_failed(now, instance)
    }

    /// The slots this deployment holds or is claiming (for the node's slot reconciliation).
    pub fn slots(&self) -> Vec<u64> {
        self.held.values().map(|h| h.slot).collect()
    }

    /// Serving instances, for health and disk checks.
    pub fn serving(&self) -> Vec<ServingInstance<H>> {
        let view = self.pool.view();
        let idle = |id: InstanceId| {
            view.instances.iter().any(|i| i.id == id && i.state == falak_function::pool::InstanceState::Idle)
        };
        self.held
            .iter()
            .filter_map(|(&instance, held)| match &held.phase {
                Phase::Serving(handle) => {
                    Some(ServingInstance { instance, slot: held.slot, handle: handle.clone(), idle: idle(instance) })
                }
                _ => None,
            })
            .collect()
    }

    /// Every process handle the core knows: serving instances and launched starts (for a
    /// shutdown). Stopping ones are being stopped already.
    pub fn handles(&self) -> Vec<(u64, H)> {
        self.held
            .values()
            .filter_map(|h| match &h.phase {
                Phase::Serving(handle) | Phase::Starting { launch: Half::Done(Ok(handle)), .. } => {
                    Some((h.slot, handle.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The pool's instances with each one's slot and, when it serves, its handle.
    pub fn instances(&self) -> Vec<(falak_function::pool::InstanceView, Option<u64>, Option<H>)> {
        self.pool
            .view()
            .instances
            .into_iter()
            .map(|i| {
                let held = self.held.get(&i.id);
                let handle = held.and_then(|h| match &h.phase {
                    Phase::Serving(handle) => Some(handle.clone()),
                    _ => None,
                });
                (i, held.map(|h| h.slot), handle)
            })
            .collect()
    }

    pub fn instance_count(&self) -> usize {
        self.pool.instance_count()
    }

    pub fn free_slots(&self) -> u32 {
        self.pool.free_slots()
    }

    pub fn min_instances(&self) -> u32 {
        self.pool.config().min_instances
    }

    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// Retired, and every instance gone.
    pub fn is_drained(&self) -> bool {
        self.retired && self.pool.is_drained() && self.held.is_empty()
    }

    /// When the next [`Input::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.pool.next_deadline()
    }
}

#[cfg(test)]
mod tests;
