//! The instance pool of one function deployment on one node: a sans-IO state machine.
//!
//! The driver (in `falak-node`) owns processes, sockets and the clock; it feeds the pool one
//! input at a time with `now` and carries out the [`Action`]s it returns. The pool decides which
//! instance serves a request, when requests wait or are turned away, and when instances start
//! and stop. It does no IO and reads no clock; `now` must never go backwards.
//!
//! # Instance states
//!
//! `STARTING → IDLE ⇄ BUSY → STOPPING`. [`Action::Start`] creates an instance in `STARTING`; the
//! driver answers with [`Pool::started`] (→ `IDLE`) or [`Pool::start_failed`] (forgotten). An
//! instance is `BUSY` while at least one request is in flight on it, `IDLE` otherwise.
//! [`Action::Stop`] moves any instance to `STOPPING` (a `STARTING` one too: the driver cancels
//! the start); the driver answers with [`Pool::stopped`] and the pool forgets it. `STOPPING`
//! instances still count against `max_instances`: their processes are alive.
//! [`Pool::instance_failed`] forgets an instance in any state at once.
//!
//! # Rules
//!
//! - **Dispatch**: a request goes to a ready instance with a free slot, the most recently used
//!   first (so few instances stay hot and the rest idle out), ties to the lowest id. Otherwise it
//!   waits in a FIFO queue of at most `max_queue`, or is rejected at once with
//!   [`RejectReason::QueueFull`]. A slot that frees up goes to the oldest waiting request.
//! - **Scale up**: the pool starts an instance when a waiting request that was allowed to cause
//!   a start (`may_start`) is not covered by the capacity already starting (`STARTING` instances
//!   × `concurrency`, counting queue positions up to the last such request), and fewer than
//!   `max_instances` instances exist in any state. Also whenever fewer than `min_instances`
//!   instances are starting or ready.
//! - **Scale down**: [`Pool::tick`] stops an instance that has had nothing in flight for
//!   `idle_timeout_ms`, least recently used first, as long as more than `min_instances` stay.
//! - **Waiting**: a request that has waited `max_wait_ms` is rejected by the next tick with
//!   [`RejectReason::WaitedTooLong`], unless an instance is starting (then requests wait for
//!   the start to succeed, fail or time out). A request waits only while something can serve it: a
//!   starting or ready instance, or a start that waits only for a stopping instance to go.
//!   Otherwise it is rejected at once, with the reason of the last start failure during the
//!   start backoff, else [`RejectReason::QueueFull`].
//! - **Start failures** pause every start for [`START_BACKOFF_MS`], so a broken function or an
//!   exhausted mesh-wide budget does not cause a start per request. Waiting requests keep
//!   waiting if another instance is starting or ready; if none is, they are rejected at once:
//!   after [`StartFailure::AtLimit`] with [`RejectReason::QueueFull`] (a capacity answer, 429 with
//!   Retry-After), after [`StartFailure::Error`] with [`RejectReason::StartFailed`] carrying the
//!   message (502). An instance still `STARTING` after `start_timeout_ms` is stopped and counts as
//!   a start failure with a message saying so.
//! - **Failed instances**: [`Pool::instance_failed`] forgets the instance and its in-flight
//!   requests, which are never dispatched again: the driver answers them (ask [`Pool::in_flight`]
//!   first). A replacement starts if waiting requests or `min_instances` need one.
//! - **Draining** retires the deployment: waiting and new requests are rejected with
//!   [`RejectReason::Draining`], idle and starting instances stop at once, busy ones when their
//!   last request finishes. [`Pool::is_drained`] says when the pool can be dropped.
//! - **Retry-After**: every capacity rejection ([`RejectReason::is_capacity`]) carries an
//!   estimate: the mean service time (an exponential average of finished requests, 1 s before
//!   the first) × (1 + waiting requests / (`max_instances` × `concurrency`)), clamped to 1–60 s.
//!
//! Every request the driver passes to [`Pool::request`] gets exactly one [`Action::Dispatch`] or
//! one [`Action::Reject`], unless the instance it was dispatched to fails.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use falak_core::Millis;

/// Assigned by the pool, unique per pool.
pub type InstanceId = u64;
/// Assigned by the driver, unique per pool.
pub type RequestId = u64;

/// How long every start pauses after a start failure or start timeout.
pub const START_BACKOFF_MS: u64 = 1_000;
/// The service time assumed for Retry-After before any request has finished.
const DEFAULT_SERVICE_MS: u64 = 1_000;
const MIN_RETRY_AFTER_MS: u64 = 1_000;
const MAX_RETRY_AFTER_MS: u64 = 60_000;

/// Scaling and admission limits of one deployment on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Instances to keep even when idle (scale to zero when 0).
    pub min_instances: u32,
    /// Ceiling on instances in any state (`STOPPING` counts: their processes are still alive).
    pub max_instances: u32,
    /// Requests one instance serves at once; 0 is taken as 1.
    pub concurrency: u32,
    /// An instance idle this long, above `min_instances`, is stopped.
    pub idle_timeout_ms: u64,
    /// Requests that may wait for a slot; beyond it, reject at once.
    pub max_queue: u32,
    /// How long a request may wait before it is rejected.
    pub max_wait_ms: u64,
    /// An instance `STARTING` longer than this is given up (and stopped).
    pub start_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    Starting,
    Idle,
    /// At least one request in flight.
    Busy,
    Stopping,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the request to the instance, then call [`Pool::finished`] when its response is complete.
    Dispatch { request: RequestId, instance: InstanceId },
    /// Start the instance, then call [`Pool::started`] or [`Pool::start_failed`].
    Start { instance: InstanceId },
    /// Stop the instance (cancel its start if it is starting), then call [`Pool::stopped`].
    Stop { instance: InstanceId },
    /// Answer the request with an error; `retry_after_ms` is set for capacity rejections.
    Reject { request: RequestId, reason: RejectReason, retry_after_ms: Option<u64> },
}

/// Why a request was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// No slot now and none can be had soon: the queue is full, or no instance is starting or
    /// ready and none may start (`max_instances`, the mesh-wide budget, `may_start` false).
    QueueFull,
    /// The request waited `max_wait_ms` without a slot freeing up.
    WaitedTooLong,
    /// The instance that would have served it failed to start; nothing else can serve it.
    StartFailed(String),
    /// The deployment is being retired.
    Draining,
}

impl RejectReason {
    /// A capacity answer (HTTP 429 with Retry-After) rather than a failure (502/503).
    pub fn is_capacity(&self) -> bool {
        matches!(self, RejectReason::QueueFull | RejectReason::WaitedTooLong)
    }
}

/// Why an instance did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFailure {
    /// The mesh-wide instance budget said no (other nodes hold the slots).
    AtLimit,
    /// The start itself failed; the message is shown to the requests that waited for it.
    Error(String),
}

/// A snapshot of the pool, for the API, metrics and gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    /// In id order.
    pub instances: Vec<InstanceView>,
    pub queued: u32,
    pub free_slots: u32,
    pub draining: bool,
    pub totals: PoolTotals,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub id: InstanceId,
    pub state: InstanceState,
    pub in_flight: u32,
    /// When the instance entered `state`.
    pub since: Millis,
    /// When a request was last dispatched to or finished on it (when it became ready, before).
    pub last_used: Millis,
}

/// Counts of actions and inputs since the pool was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolTotals {
    pub dispatched: u64,
    pub rejected: u64,
    pub starts: u64,
    pub start_failures: u64,
    pub stops: u64,
    pub instance_failures: u64,
}

/// The instance pool of one deployment on one node.
#[derive(Debug, Clone)]
pub struct Pool {
    config: PoolConfig,
    next_instance: InstanceId,
    instances: BTreeMap<InstanceId, Instance>,
    queue: VecDeque<Waiting>,
    /// Requests in flight: the instance and when they were dispatched.
    dispatched: BTreeMap<RequestId, (InstanceId, Millis)>,
    draining: bool,
    backoff: Option<Backoff>,
    /// Exponential average of how long requests took, for Retry-After.
    service_ms: Option<u64>,
    totals: PoolTotals,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Stopping,
}

#[derive(Debug, Clone)]
struct Instance {
    phase: Phase,
    since: Millis,
    last_used: Millis,
    in_flight: BTreeSet<RequestId>,
}

#[derive(Debug, Clone)]
struct Waiting {
    request: RequestId,
    arrived: Millis,
    may_start: bool,
}

/// Starts are paused until `until`; requests nothing else can serve meanwhile get `reason`.
#[derive(Debug, Clone)]
struct Backoff {
    until: Millis,
    reason: RejectReason,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Pool {
        let config = PoolConfig { concurrency: config.concurrency.max(1), ..config };
        Pool {
            config,
            next_instance: 1,
            instances: BTreeMap::new(),
            queue: VecDeque::new(),
            dispatched: BTreeMap::new(),
            draining: false,
            backoff: None,
            service_ms: None,
            totals: PoolTotals::default(),
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Change `min_instances` (the node keeping the function's floor changed): instances start
    /// at once up to the new floor, or idle out down to it.
    pub fn set_min_instances(&mut self, now: Millis, min_instances: u32) -> Vec<Action> {
        self.config.min_instances = min_instances.min(self.config.max_instances);
        let mut out = Vec::new();
        if !self.draining {
            self.settle(now, &mut out);
        }
        out
    }

    /// A new request. With `may_start` false it only uses instances that are ready or starting,
    /// or waits for them; it never causes a start.
    pub fn request(&mut self, now: Millis, request: RequestId, may_start: bool) -> Vec<Action> {
        debug_assert!(!self.dispatched.contains_key(&request), "request {request} is already in flight");
        let mut out = Vec::new();
        if self.draining {
            self.reject(request, RejectReason::Draining, None, &mut out);
            return out;
        }
        if let Some(instance) = self.pick_instance() {
            debug_assert!(self.queue.is_empty(), "a free slot while requests wait");
            self.dispatch(now, request, instance, &mut out);
            return out;
        }
        if self.queue.len() >= self.config.max_queue as usize {
            let retry_after = self.retry_after_ms();
            self.reject(request, RejectReason::QueueFull, Some(retry_after), &mut out);
            return out;
        }
        self.queue.push_back(Waiting { request, arrived: now, may_start });
        self.settle(now, &mut out);
        out
    }

    /// The instance is ready: it takes waiting requests. Ignored unless it is `STARTING`.
    pub fn started(&mut self, now: Millis, instance: InstanceId) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(i) = self.instances.get_mut(&instance) else { return out };
        if i.phase != Phase::Starting {
            return out;
        }
        i.phase = Phase::Ready;
        i.since = now;
        i.last_used = now;
        self.settle(now, &mut out);
        out
    }

    /// The instance did not start; the pool forgets it and pauses starts for [`START_BACKOFF_MS`].
    /// For an instance already `STOPPING` this counts as [`Pool::stopped`].
    pub fn start_failed(&mut self, now: Millis, instance: InstanceId, failure: StartFailure) -> Vec<Action> {
        let mut out = Vec::new();
        match self.instances.get(&instance).map(|i| i.phase) {
            Some(Phase::Starting) => {
                self.instances.remove(&instance);
                let reason = match failure {
                    StartFailure::AtLimit => RejectReason::QueueFull,
                    StartFailure::Error(message) => RejectReason::StartFailed(message),
                };
                self.start_failure(now, reason);
            }
            Some(Phase::Stopping) => {
                self.instances.remove(&instance);
            }
            Some(Phase::Ready) | None => return out,
        }
        self.settle(now, &mut out);
        out
    }

    /// The request's response is complete. Unknown requests (e.g. on a failed instance) are ignored.
    pub fn finished(&mut self, now: Millis, request: RequestId) -> Vec<Action> {
        let mut out = Vec::new();
        let Some((instance, dispatched_at)) = self.dispatched.remove(&request) else { return out };
        let sample = now.saturating_sub(dispatched_at);
        self.service_ms = Some(match self.service_ms {
            None => sample,
            Some(mean) => mean.saturating_mul(7).saturating_add(sample) / 8,
        });
        let i = self.instances.get_mut(&instance).expect("an instance with requests in flight is known");
        i.in_flight.remove(&request);
        i.last_used = now;
        if i.in_flight.is_empty() && i.phase == Phase::Ready {
            i.since = now;
            if self.draining {
                self.stop(now, instance, &mut out);
            }
        }
        self.settle(now, &mut out);
        out
    }

    /// The instance crashed, turned unhealthy or timed out. The pool forgets it and its in-flight
    /// requests (never dispatched again; the driver answers them, from [`Pool::in_flight`] asked
    /// before this call) and kills nothing: the driver disposes of whatever is left of the process.
    pub fn instance_failed(&mut self, now: Millis, instance: InstanceId) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(i) = self.instances.remove(&instance) else { return out };
        for request in &i.in_flight {
            self.dispatched.remove(request);
        }
        self.totals.instance_failures += 1;
        self.settle(now, &mut out);
        out
    }

    /// The instance's process is gone. An instance that was not `STOPPING` has failed.
    pub fn stopped(&mut self, now: Millis, instance: InstanceId) -> Vec<Action> {
        match self.instances.get(&instance).map(|i| i.phase) {
            None => Vec::new(),
            Some(Phase::Stopping) => {
                self.instances.remove(&instance);
                let mut out = Vec::new();
                self.settle(now, &mut out);
                out
            }
            Some(Phase::Starting | Phase::Ready) => self.instance_failed(now, instance),
        }
    }

    /// Timeouts: starts past `start_timeout_ms` are stopped, waits past `max_wait_ms` rejected,
    /// instances idle for `idle_timeout_ms` above `min_instances` stopped; then starts that are due.
    pub fn tick(&mut self, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        let start_timeout = self.config.start_timeout_ms;
        let timed_out: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(_, i)| i.phase == Phase::Starting && now >= i.since.saturating_add(start_timeout))
            .map(|(id, _)| *id)
            .collect();
        for instance in timed_out {
            self.stop(now, instance, &mut out);
            let message = format!("the instance did not become ready within {start_timeout} ms");
            self.start_failure(now, RejectReason::StartFailed(message));
        }

        let retry_after = self.retry_after_ms();
        // A request waiting for an instance that is still starting waits for that start (its
        // success, failure or `start_timeout_ms`), not for `max_wait_ms`: a slow cold start
        // must not turn the request that caused it into a 429.
        let starting = self.instances.values().any(|i| i.phase == Phase::Starting);
        while let Some(w) = self.queue.front()
            && !starting
            && now >= w.arrived.saturating_add(self.config.max_wait_ms)
        {
            let request = w.request;
            self.queue.pop_front();
            self.reject(request, RejectReason::WaitedTooLong, Some(retry_after), &mut out);
        }

        if !self.draining {
            let idle_timeout = self.config.idle_timeout_ms;
            let mut idle: Vec<(Millis, InstanceId)> = self
                .instances
                .iter()
                .filter(|(_, i)| {
                    i.phase == Phase::Ready && i.in_flight.is_empty() && now >= i.last_used.saturating_add(idle_timeout)
                })
                .map(|(id, i)| (i.last_used, *id))
                .collect();
            idle.sort_unstable();
            let mut live = self.live();
            for (_, instance) in idle {
                if live <= self.config.min_instances {
                    break;
                }
                self.stop(now, instance, &mut out);
                live -= 1;
            }
        }

        self.settle(now, &mut out);
        out
    }

    /// Retire the deployment: reject waiting requests, stop idle and starting instances now and
    /// busy ones when their last request finishes. New requests are rejected. Idempotent.
    pub fn drain(&mut self, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        if self.draining {
            return out;
        }
        self.draining = true;
        while let Some(w) = self.queue.pop_front() {
            self.reject(w.request, RejectReason::Draining, None, &mut out);
        }
        let to_stop: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(_, i)| i.phase == Phase::Starting || (i.phase == Phase::Ready && i.in_flight.is_empty()))
            .map(|(id, _)| *id)
            .collect();
        for instance in to_stop {
            self.stop(now, instance, &mut out);
        }
        out
    }

    /// Draining and every instance gone: the pool can be dropped.
    pub fn is_drained(&self) -> bool {
        self.draining && self.instances.is_empty()
    }

    /// The requests in flight on the instance, in id order.
    pub fn in_flight(&self, instance: InstanceId) -> Vec<RequestId> {
        self.instances.get(&instance).map(|i| i.in_flight.iter().copied().collect()).unwrap_or_default()
    }

    /// Free concurrency on ready instances (published in gossip). Zero while draining.
    pub fn free_slots(&self) -> u32 {
        if self.draining {
            return 0;
        }
        self.instances
            .values()
            .filter(|i| i.phase == Phase::Ready)
            .map(|i| self.config.concurrency.saturating_sub(i.in_flight.len() as u32))
            .fold(0u32, u32::saturating_add)
    }

    pub fn has_free_slot(&self) -> bool {
        self.pick_instance().is_some()
    }

    /// Instances in any state (what [`Pool::view`] lists, without building it).
    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    pub fn view(&self) -> PoolView {
        let instances = self
            .instances
            .iter()
            .map(|(id, i)| InstanceView {
                id: *id,
                state: match i.phase {
                    Phase::Starting => InstanceState::Starting,
                    Phase::Ready if i.in_flight.is_empty() => InstanceState::Idle,
                    Phase::Ready => InstanceState::Busy,
                    Phase::Stopping => InstanceState::Stopping,
                },
                in_flight: i.in_flight.len() as u32,
                since: i.since,
                last_used: i.last_used,
            })
            .collect();
        PoolView {
            instances,
            queued: self.queue.len() as u32,
            free_slots: self.free_slots(),
            draining: self.draining,
            totals: self.totals,
        }
    }

    /// The earliest time [`Pool::tick`] has something to do, so the driver can sleep until then.
    /// After `tick(now)` it is `None` or later than `now`.
    pub fn next_deadline(&self) -> Option<Millis> {
        let starting = self.instances.values().any(|i| i.phase == Phase::Starting);
        let waits = self.queue.front().filter(|_| !starting).map(|w| w.arrived.saturating_add(self.config.max_wait_ms));
        let starts = self
            .instances
            .values()
            .filter(|i| i.phase == Phase::Starting)
            .map(|i| i.since.saturating_add(self.config.start_timeout_ms))
            .min();
        let idle = if !self.draining && self.live() > self.config.min_instances {
            self.instances
                .values()
                .filter(|i| i.phase == Phase::Ready && i.in_flight.is_empty())
                .map(|i| i.last_used.saturating_add(self.config.idle_timeout_ms))
                .min()
        } else {
            None
        };
        let backoff = self.backoff.as_ref().filter(|_| self.starts_wanted() > 0).map(|b| b.until);
        [waits, starts, idle, backoff].into_iter().flatten().min()
    }

    /// After every input: hand free slots to waiting requests, start what is needed, and turn
    /// away waiting requests that nothing can serve.
    fn settle(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.backoff.as_ref().is_some_and(|b| now >= b.until) {
            self.backoff = None;
        }
        while !self.queue.is_empty()
            && let Some(instance) = self.pick_instance()
        {
            let w = self.queue.pop_front().expect("the queue is not empty");
            self.dispatch(now, w.request, instance, out);
        }
        if self.backoff.is_none() {
            for _ in 0..self.starts_wanted() {
                let instance = self.next_instance;
                self.next_instance += 1;
                let i = Instance { phase: Phase::Starting, since: now, last_used: now, in_flight: BTreeSet::new() };
                self.instances.insert(instance, i);
                self.totals.starts += 1;
                out.push(Action::Start { instance });
            }
        }
        if self.queue.is_empty() || self.live() > 0 {
            return;
        }
        // Nothing starting or ready. Waiting still makes sense only for a start that is held up
        // by stopping instances occupying `max_instances`.
        let start_held = self.backoff.is_none()
            && !self.draining
            && self.config.max_instances > 0
            && self.queue.iter().any(|w| w.may_start);
        if start_held {
            return;
        }
        let reason = self.backoff.as_ref().map_or(RejectReason::QueueFull, |b| b.reason.clone());
        let retry_after = reason.is_capacity().then(|| self.retry_after_ms());
        while let Some(w) = self.queue.pop_front() {
            self.reject(w.request, reason.clone(), retry_after, out);
        }
    }

    /// How many instances to start now, ignoring the backoff.
    fn starts_wanted(&self) -> u32 {
        if self.draining {
            return 0;
        }
        let room = self.config.max_instances.saturating_sub(self.instances.len() as u32);
        let for_min = self.config.min_instances.saturating_sub(self.live());
        let starting = self.instances.values().filter(|i| i.phase == Phase::Starting).count() as u64;
        let concurrency = u64::from(self.config.concurrency);
        // Waiting requests are served in order, so new capacity must reach the last one that may start.
        let demand = self.queue.iter().rposition(|w| w.may_start).map_or(0, |p| p as u64 + 1);
        let for_queue = demand.saturating_sub(starting * concurrency).div_ceil(concurrency);
        (for_min as u64).max(for_queue).min(u64::from(room)) as u32
    }

    /// The ready instance with a free slot used most recently, ties to the lowest id.
    fn pick_instance(&self) -> Option<InstanceId> {
        if self.draining {
            return None;
        }
        self.instances
            .iter()
            .filter(|(_, i)| i.phase == Phase::Ready && i.in_flight.len() < self.config.concurrency as usize)
            .max_by_key(|(id, i)| (i.last_used, Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Instances starting or ready.
    fn live(&self) -> u32 {
        self.instances.values().filter(|i| i.phase != Phase::Stopping).count() as u32
    }

    fn start_failure(&mut self, now: Millis, reason: RejectReason) {
        self.totals.start_failures += 1;
        self.backoff = Some(Backoff { until: now.saturating_add(START_BACKOFF_MS), reason });
    }

    fn retry_after_ms(&self) -> u64 {
        let service = self.service_ms.unwrap_or(DEFAULT_SERVICE_MS);
        let capacity = (u64::from(self.config.max_instances) * u64::from(self.config.concurrency)).max(1);
        let rounds = 1 + self.queue.len() as u64 / capacity;
        service.saturating_mul(rounds).clamp(MIN_RETRY_AFTER_MS, MAX_RETRY_AFTER_MS)
    }

    fn dispatch(&mut self, now: Millis, request: RequestId, instance: InstanceId, out: &mut Vec<Action>) {
        let i = self.instances.get_mut(&instance).expect("dispatch to a known instance");
        if i.in_flight.is_empty() {
            i.since = now;
        }
        i.in_flight.insert(request);
        i.last_used = now;
        self.dispatched.insert(request, (instance, now));
        self.totals.dispatched += 1;
        out.push(Action::Dispatch { request, instance });
    }

    fn stop(&mut self, now: Millis, instance: InstanceId, out: &mut Vec<Action>) {
        let i = self.instances.get_mut(&instance).expect("stop a known instance");
        i.phase = Phase::Stopping;
        i.since = now;
        self.totals.stops += 1;
        out.push(Action::Stop { instance });
    }

    fn reject(&mut self, request: RequestId, reason: RejectReason, retry_after_ms: Option<u64>, out: &mut Vec<Action>) {
        self.totals.rejected += 1;
        out.push(Action::Reject { request, reason, retry_after_ms });
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::QueueFull => f.write_str("the function is at capacity"),
            RejectReason::WaitedTooLong => f.write_str("no instance of the function became free in time"),
            RejectReason::StartFailed(message) => write!(f, "the function's instance failed to start: {message}"),
            RejectReason::Draining => f.write_str("this deployment of the function is being retired"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Dispatch { request, instance } => write!(f, "dispatch request {request} to instance {instance}"),
            Action::Start { instance } => write!(f, "start instance {instance}"),
            Action::Stop { instance } => write!(f, "stop instance {instance}"),
            Action::Reject { request, reason, retry_after_ms: None } => write!(f, "reject request {request}: {reason}"),
            Action::Reject { request, reason, retry_after_ms: Some(ms) } => {
                write!(f, "reject request {request}: {reason} (retry after {ms} ms)")
            }
        }
    }
}

#[cfg(test)]
mod tests;
