//! One function version on this node: its prepared bundle, its zygote, its instance pool and
//! the driver that carries out the pool's actions.
//!
//! The pool ([`falak_function::pool::Pool`]) decides; this driver starts and stops processes,
//! claims and releases instance slots in the ledger, and hands requests to instances. The warm
//! path (a free slot on a ready instance) takes one short lock and no ledger write.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use falak_api::ApiError;
use falak_api::function::gateway_error;
use falak_core::function::{FunctionSpec, SnapshotPolicy};
use falak_core::ledger::{Command, Outcome, RejectCode};
use falak_function::pool::{Action, InstanceId, Pool, PoolConfig, RejectReason, RequestId, StartFailure};
use falak_function::{
    BoxBody, CgroupLimits, DEFAULT_MAX_PIDS, HostSpec, Instance, InstanceError, Prepared, WorkloadSandbox, Zygote,
};
use http_body_util::BodyExt;
use tokio::sync::{Notify, oneshot};

use super::start::{Stages, StartInfo, StartLabel};
use super::{HostContext, lock};
use crate::clock::{instant, now_millis};

/// How long a stopping instance gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a request may wait for a slot before it gets 429.
const MAX_WAIT_MS: u64 = 5_000;
/// How long an instance may take to start, including preparing the deployment on this node.
const START_TIMEOUT_MS: u64 = 120_000;
/// How often idle instances are health-checked.
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// How long a health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What a waiting request is told.
enum Assignment {
    /// `finish` tells the pool the request is done when dropped, wherever that happens (also
    /// when the waiting client went away and the assignment is never read).
    Go {
        pool_id: InstanceId,
        instance: Arc<Instance>,
        /// How the instance started, with when it became ready: the start is the request's
        /// only if the request was already waiting then.
        fresh: Option<(StartInfo, std::time::Instant)>,
        finish: FinishGuard,
    },
    Reject {
        reason: RejectReason,
        retry_after_ms: Option<u64>,
    },
}

/// One running instance as the driver knows it.
struct Live {
    instance: Arc<Instance>,
    /// Node-wide id: the key of its slot in the ledger.
    slot: u64,
    /// How it started and when it became ready, handed to the first request it serves.
    fresh: Option<(StartInfo, std::time::Instant)>,
    stopping: bool,
    label: StartLabel,
}

/// The prepared deployment, once prepared.
#[derive(Default)]
struct Prep {
    prepared: Option<Arc<Prepared>>,
    /// The last failure and when it happened; tried again after [`PREPARE_RETRY`] (a peer or
    /// the package index may have been unreachable).
    failed: Option<(String, std::time::Instant)>,
}

/// How long a failed preparation is remembered before the next start tries again.
const PREPARE_RETRY: Duration = Duration::from_secs(10);

pub(crate) struct Deployment {
    pub spec: FunctionSpec,
    ctx: Arc<HostContext>,
    prep: tokio::sync::Mutex<Prep>,
    zygote: Mutex<Option<Arc<Zygote>>>,
    pool: Mutex<Pool>,
    live: Mutex<BTreeMap<InstanceId, Live>>,
    /// Starting instances by pool id: the slot they claim and whether the pool stopped them.
    starting: Mutex<BTreeMap<InstanceId, (u64, Arc<AtomicBool>)>>,
    waiters: Mutex<HashMap<RequestId, oneshot::Sender<Assignment>>>,
    next_request: AtomicU64,
    wake: Notify,
    /// When the ticker plans to wake next (ms since the epoch).
    wake_at: AtomicU64,
    retired: AtomicBool,
    prepared_flag: AtomicBool,
    warming: AtomicBool,
    /// When preparing last failed (ms since the epoch; 0 when it never did).
    failed_at: AtomicU64,
    /// Set once every process of the deployment has been stopped (see [`Deployment::shutdown`]).
    shut_down: tokio::sync::OnceCell<()>,
}

impl Deployment {
    pub fn new(ctx: Arc<HostContext>, spec: FunctionSpec, min_instances: u32) -> Arc<Deployment> {
        let s = spec.scaling;
        let slots = s.max_instances.saturating_mul(s.concurrency);
        let config = PoolConfig {
            min_instances,
            max_instances: s.max_instances,
            concurrency: s.concurrency,
            idle_timeout_ms: s.idle_timeout_ms,
            max_queue: slots.saturating_mul(4).clamp(16, 1024),
            max_wait_ms: MAX_WAIT_MS.min(spec.timeout_ms),
            start_timeout_ms: START_TIMEOUT_MS,
        };
        let deployment = Arc::new(Deployment {
            spec,
            ctx,
            prep: tokio::sync::Mutex::new(Prep::default()),
            zygote: Mutex::new(None),
            pool: Mutex::new(Pool::new(config)),
            live: Mutex::new(BTreeMap::new()),
            starting: Mutex::new(BTreeMap::new()),
            waiters: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            wake: Notify::new(),
            wake_at: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            prepared_flag: AtomicBool::new(false),
            warming: AtomicBool::new(false),
            failed_at: AtomicU64::new(0),
            shut_down: tokio::sync::OnceCell::new(),
        });
        tokio::spawn(deployment.clone().ticker());
        deployment
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Free request slots on ready instances (for gossip and routing).
    pub fn free_slots(&self) -> u32 {
        lock(&self.pool).free_slots()
    }

    pub fn instance_count(&self) -> u32 {
        lock(&self.pool).view().instances.len() as u32
    }

    pub fn is_prepared(&self) -> bool {
        self.prepared_flag.load(Ordering::Relaxed)
    }

    /// Keep `min` instances here (the first-ranked observer keeps the function's floor).
    pub fn set_min_instances(self: &Arc<Self>, min: u32) {
        if lock(&self.pool).config().min_instances == min.min(self.spec.scaling.max_instances) {
            return;
        }
        let actions = self.feed(|pool, now| pool.set_min_instances(now, min));
        self.execute(actions);
    }

    /// Whether an observer should (re)warm it: not prepared, or its zygote is gone.
    pub fn needs_warming(&self) -> bool {
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        let retry_ms = PREPARE_RETRY.as_millis() as u64;
        !self.is_retired()
            && now_millis().saturating_sub(failed_at) >= retry_ms
            && (!self.is_prepared() || self.spec.snapshot == SnapshotPolicy::Zygote && !self.has_snapshot())
    }

    /// Claim the one warming run at a time; `false` when one is under way.
    pub fn begin_warming(&self) -> bool {
        !self.warming.swap(true, Ordering::SeqCst)
    }

    pub fn end_warming(&self) {
        self.warming.store(false, Ordering::SeqCst);
    }

    pub fn has_snapshot(&self) -> bool {
        lock(&self.zygote).as_ref().is_some_and(|z| z.is_alive())
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Retired and every instance gone.
    pub fn is_drained(&self) -> bool {
        self.is_retired() && lock(&self.pool).is_drained()
    }

    /// Instances for `falak fn instances`.
    pub fn instances(&self) -> Vec<falak_api::function::InstanceInfo> {
        let view = lock(&self.pool).view();
        let live = lock(&self.live);
        let now = now_millis();
        view.instances
            .iter()
            .map(|i| {
                let l = live.get(&i.id);
                falak_api::function::InstanceInfo {
                    node: self.ctx.id.to_string(),
                    node_name: self.ctx.node_name.clone(),
                    instance: l.map_or(0, |l| l.slot),
                    version: self.spec.version,
                    state: format!("{:?}", i.state).to_uppercase(),
                    in_flight: i.in_flight,
                    start: l.map_or("-", |l| l.label.name()).to_owned(),
                    pid: l.and_then(|l| l.instance.pid()),
                    age_ms: now.saturating_sub(i.since),
                }
            })
            .collect()
    }

    /// Retire this version: reject waiting requests, stop instances once idle, then the zygote.
    pub fn retire(self: &Arc<Self>) {
        if self.retired.swap(true, Ordering::SeqCst) {
            return;
        }
        let actions = self.feed(|pool, now| pool.drain(now));
        self.execute(actions);
        self.wake.notify_one();
    }

    /// Prepare the deployment on this node (fetch, unpack, dependencies, zygote) if it is not.
    /// Returns the stage timings of the work done now.
    pub async fn ensure_prepared(self: &Arc<Self>) -> Result<(Arc<Prepared>, Stages), String> {
        let waited = instant();
        let mut prep = self.prep.lock().await;
        if self.is_retired() {
            return Err(format!("{} was retired", self.spec.deployment()));
        }
        // Waiting for a preparation already under way (an observer warming its snapshot)
        // counts as preparing.
        let waited = waited.elapsed();
        if let Some(p) = &prep.prepared {
            let mut stages = Stages::default();
            if waited > Duration::from_millis(1) {
                stages.push("prepare", waited);
            }
            if self.spec.snapshot == SnapshotPolicy::Zygote && !self.has_snapshot() {
                let t = instant();
                if let Err(e) = self.start_zygote(p).await {
                    self.failed_at.store(now_millis(), Ordering::Relaxed);
                    return Err(e);
                }
                stages.push("snapshot", t.elapsed());
            }
            return Ok((p.clone(), stages));
        }
        if let Some((e, at)) = &prep.failed
            && at.elapsed() < PREPARE_RETRY
        {
            return Err(e.clone());
        }
        let mut stages = Stages::default();
        let result = self.prepare_now(&mut stages).await;
        match result {
            Ok(p) => {
                let p = Arc::new(p);
                prep.prepared = Some(p.clone());
                self.prepared_flag.store(true, Ordering::Relaxed);
                if self.spec.snapshot == SnapshotPolicy::Zygote {
                    let t = instant();
                    if let Err(e) = self.start_zygote(&p).await {
                        prep.failed = Some((e.clone(), instant()));
                        self.failed_at.store(now_millis(), Ordering::Relaxed);
                        return Err(e);
                    }
                    stages.push("snapshot", t.elapsed());
                }
                Ok((p, stages))
            }
            Err(e) => {
                prep.failed = Some((e.clone(), instant()));
                self.failed_at.store(now_millis(), Ordering::Relaxed);
                Err(e)
            }
        }
    }

    async fn prepare_now(&self, stages: &mut Stages) -> Result<Prepared, String> {
        let t = instant();
        let bundle_dir = self.ctx.bundle_dir(self.spec.artifact).await?;
        stages.push("fetch", t.elapsed());
        let t = instant();
        let sandbox = self.ctx.sandbox_for(&self.spec.name).await?;
        // The log's dir is the node's alone; `prepare` makes the work dir (the instances').
        let deployment_dir = self.ctx.deployment_dir(&self.spec);
        let work_dir = self.ctx.socket_dir(&self.spec);
        std::fs::create_dir_all(&deployment_dir)
            .map_err(|e| format!("cannot create {}: {e}", deployment_dir.display()))?;
        let log = deployment_dir.join("log");
        let env = self.ctx.instance_env(&self.spec)?;
        let spec = host_spec(&self.spec, env, bundle_dir, work_dir, log, &self.ctx.python, sandbox);
        let prepared = falak_function::prepare(spec, &self.ctx.venv_dir())
            .await
            .map_err(|e| format!("preparing {} on node {}: {e}", self.spec.deployment(), self.ctx.node_name))?;
        stages.push("prepare", t.elapsed());
        Ok(prepared)
    }

    async fn start_zygote(&self, prepared: &Prepared) -> Result<(), String> {
        let zygote = Zygote::start(prepared)
            .await
            .map_err(|e| format!("starting {} on node {}: {e}", self.spec.deployment(), self.ctx.node_name))?;
        self.ctx.record_group(&format!("fn-zygote-{}-{}", self.spec.name, self.spec.version), zygote.pid());
        let zygote = Arc::new(zygote);
        *lock(&self.zygote) = Some(zygote.clone());
        // Retired meanwhile: nothing will fork from it, and `shutdown` may already have looked
        // for a zygote to stop.
        if self.is_retired() {
            lock(&self.zygote).take();
            zygote.stop().await;
        }
        Ok(())
    }

    /// Serve one request with a local instance. `may_start`: this node was elected to start one
    /// if none is free.
    pub async fn serve(self: &Arc<Self>, request: http::Request<BoxBody>, may_start: bool, route: Stages) -> Response {
        let rid = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(rid, tx);
        let waited = instant();
        let actions = self.feed(|pool, now| pool.request(now, rid, may_start));
        self.execute(actions);
        let assignment = match rx.await {
            Ok(a) => a,
            Err(_) => {
                return gateway_error(
                    ApiError::unavailable("the function's deployment was retired; retry"),
                    Some(1000),
                );
            }
        };
        let (pool_id, instance, fresh, finish) = match assignment {
            Assignment::Go { pool_id, instance, fresh, finish } => (pool_id, instance, fresh, finish),
            Assignment::Reject { reason, retry_after_ms } => return self.rejection(reason, retry_after_ms),
        };
        // A request that arrived after the instance was ready (one kept for min_instances)
        // found it warm.
        let fresh = fresh.filter(|(_, ready)| waited <= *ready).map(|(info, _)| info);
        let mut info = fresh.unwrap_or_else(|| StartInfo::warm(route.clone()));
        if info.label != StartLabel::Warm {
            info.stages.prepend(route);
        }
        let wait = waited.elapsed();
        if wait > Duration::from_millis(1) && info.label == StartLabel::Warm {
            info.stages.push("queue", wait);
        }
        let sent = instant();
        let timeout = Duration::from_millis(self.spec.timeout_ms);
        let result = tokio::time::timeout(timeout, instance.send(request)).await;
        match result {
            Err(_) => {
                self.instance_broke(pool_id, "timed out");
                drop(finish);
                gateway_error(
                    ApiError::timeout(format!(
                        "function {} did not answer within its timeout of {} ms; the instance was replaced",
                        self.spec.name, self.spec.timeout_ms
                    )),
                    None,
                )
            }
            Ok(Err(e)) => {
                // The exit watcher may have seen the crash first and stopped the instance.
                let crashed =
                    matches!(e, InstanceError::Crashed { .. } | InstanceError::Stopped { .. }) || !instance.is_alive();
                let message = if let (true, Some(limit)) = (crashed, instance.memory_kill()) {
                    self.instance_broke(pool_id, "crashed");
                    format!(
                        "function {}: the instance was killed by its memory limit ({limit} bytes) while serving the \
                         request; it is being replaced; give the function more memory (resources.memory) if it needs it",
                        self.spec.name
                    )
                } else if crashed {
                    self.instance_broke(pool_id, "crashed");
                    format!(
                        "function {}: the instance exited while serving the request; it is being replaced ({e})",
                        self.spec.name
                    )
                } else {
                    format!("function {}: {e}", self.spec.name)
                };
                drop(finish);
                gateway_error(ApiError::bad_gateway(message), None)
            }
            Ok(Ok(response)) => {
                info.stages.push("first_byte", sent.elapsed());
                self.ctx.metrics_observe(&info);
                let (mut parts, body) = response.into_parts();
                if let Ok(v) = http::HeaderValue::from_str(&info.header()) {
                    parts.headers.insert(falak_api::function::START_HEADER, v);
                }
                let body = GuardedBody { inner: body, _finish: finish };
                Response::from_parts(parts, Body::new(body))
            }
        }
    }

    /// Give the pool one input. When its next deadline moves earlier than the ticker's planned
    /// wake-up (an instance just went idle, a request started waiting), wake the ticker.
    fn feed(&self, input: impl FnOnce(&mut Pool, falak_core::Millis) -> Vec<Action>) -> Vec<Action> {
        let (actions, deadline) = {
            let mut pool = lock(&self.pool);
            let actions = input(&mut pool, now_millis());
            (actions, pool.next_deadline())
        };
        if let Some(at) = deadline
            && at < self.wake_at.load(Ordering::Relaxed)
        {
            self.wake_at.store(at, Ordering::Relaxed);
            self.wake.notify_one();
        }
        actions
    }

    fn rejection(&self, reason: RejectReason, retry_after_ms: Option<u64>) -> Response {
        let name = &self.spec.name;
        let max = self.spec.scaling.max_instances;
        match reason {
            RejectReason::QueueFull => gateway_error(
                ApiError::too_many_requests(format!(
                    "function {name} is at capacity ({max} instances × {} concurrent requests, queue full); retry after the time in Retry-After",
                    self.spec.scaling.concurrency
                )),
                retry_after_ms.or(Some(1000)),
            ),
            RejectReason::WaitedTooLong => gateway_error(
                ApiError::too_many_requests(format!(
                    "function {name} had no free instance within {MAX_WAIT_MS} ms; retry after the time in Retry-After"
                )),
                retry_after_ms.or(Some(1000)),
            ),
            RejectReason::StartFailed(message) => {
                gateway_error(ApiError::bad_gateway(format!("function {name} could not start: {message}")), None)
            }
            RejectReason::Draining => gateway_error(
                ApiError::unavailable(format!(
                    "function {name} version {} is being replaced; retry",
                    self.spec.version
                )),
                Some(1000),
            ),
        }
    }

    /// An instance failed a request (crash, timeout): forget it, stop it, let the pool replace it.
    /// One the kernel killed for its memory limit is reported as such, whatever `why` says.
    fn instance_broke(self: &Arc<Self>, pool_id: InstanceId, why: &str) {
        let removed = lock(&self.live).remove(&pool_id);
        let Some(live) = removed else { return };
        let memory = live.instance.memory_kill().map(|limit| format!("killed by its memory limit ({limit} bytes)"));
        let why = memory.as_deref().unwrap_or(why);
        tracing::warn!(function = %self.spec.name, instance = live.slot, why, "instance replaced");
        self.ctx.publish(
            "instance_failed",
            serde_json::json!({"function": self.spec.name, "instance": live.slot, "node": self.ctx.id, "reason": why}),
        );
        let actions = self.feed(|pool, now| pool.instance_failed(now, pool_id));
        self.execute(actions);
        let this = self.clone();
        tokio::spawn(async move {
            live.instance.stop(STOP_GRACE).await;
            this.ctx.release_slot(&this.spec.name, live.slot);
        });
    }

    /// Carry out the pool's decisions.
    fn execute(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Dispatch { request, instance } => self.dispatch(request, instance),
                Action::Reject { request, reason, retry_after_ms } => {
                    if let Some(tx) = lock(&self.waiters).remove(&request) {
                        let _ = tx.send(Assignment::Reject { reason, retry_after_ms });
                    }
                }
                Action::Start { instance } => {
                    tokio::spawn(self.clone().start(instance));
                }
                Action::Stop { instance } => {
                    tokio::spawn(self.clone().stop(instance));
                }
            }
        }
    }

    fn dispatch(self: &Arc<Self>, request: RequestId, pool_id: InstanceId) {
        // From here on the guard answers `finished` exactly once, whether the waiter gets the
        // assignment, has gone away, or the instance vanished.
        let finish = FinishGuard { deployment: self.clone(), request };
        let go = {
            let mut live = lock(&self.live);
            live.get_mut(&pool_id).map(|l| (l.instance.clone(), l.fresh.take()))
        };
        let tx = lock(&self.waiters).remove(&request);
        if let (Some((instance, fresh)), Some(tx)) = (go, tx) {
            let _ = tx.send(Assignment::Go { pool_id, instance, fresh, finish });
        }
    }

    async fn start(self: Arc<Self>, pool_id: InstanceId) {
        let slot = self.ctx.next_slot();
        let cancelled = Arc::new(AtomicBool::new(false));
        lock(&self.starting).insert(pool_id, (slot, cancelled.clone()));
        let result = self.start_instance(pool_id, slot).await;
        lock(&self.starting).remove(&pool_id);
        let actions = if cancelled.load(Ordering::SeqCst) {
            // The pool stopped this instance while it started: undo the start, then answer the
            // stop (the pool waits for `stopped`).
            let live = lock(&self.live).remove(&pool_id);
            if let Some(live) = live {
                live.instance.stop(STOP_GRACE).await;
                self.ctx.release_slot(&self.spec.name, live.slot);
            }
            self.feed(|pool, now| pool.stopped(now, pool_id))
        } else {
            match result {
                Ok(()) => self.feed(|pool, now| pool.started(now, pool_id)),
                Err(failure) => {
                    if let StartFailure::Error(message) = &failure {
                        tracing::warn!(function = %self.spec.name, %message, "instance did not start");
                        self.ctx.publish(
                            "instance_start_failed",
                            serde_json::json!({"function": self.spec.name, "node": self.ctx.id, "error": message}),
                        );
                    }
                    self.feed(|pool, now| pool.start_failed(now, pool_id, failure))
                }
            }
        };
        self.execute(actions);
    }

    /// The ledger slots this deployment's instances hold or are claiming.
    pub fn slots(&self) -> Vec<u64> {
        let mut slots: Vec<u64> = lock(&self.live).values().map(|l| l.slot).collect();
        slots.extend(lock(&self.starting).values().map(|(slot, _)| *slot));
        slots
    }

    async fn start_instance(self: &Arc<Self>, pool_id: InstanceId, slot: u64) -> Result<(), StartFailure> {
        let reserve = self.ctx.disk_reserve.clone();
        let below = tokio::task::spawn_blocking(move || super::disk::below_reserve(reserve.as_ref())).await;
        if let Ok(Some(below)) = below {
            return Err(StartFailure::Error(below));
        }
        let release = |this: &Arc<Self>| this.ctx.release_slot(&this.spec.name, slot);
        // A snapshot start forks while the slot claim commits: the instance exists a few
        // milliseconds early but serves only once the claim has committed, and is stopped at
        // once when the claim is refused.
        let ready = lock(&self.zygote).clone().filter(|z| z.is_alive());
        if let Some(zygote) = ready {
            let claim = async {
                let t = instant();
                (self.claim(slot).await, t.elapsed())
            };
            let fork = async {
                let t = instant();
                (zygote.fork(slot).await, t.elapsed())
            };
            let ((claimed, claim_took), (forked, fork_took)) = tokio::join!(claim, fork);
            let mut stages = Stages::default();
            stages.push("claim", claim_took);
            stages.push("fork", fork_took);
            return match (claimed, forked) {
                (Ok(()), Ok(instance)) => {
                    self.admit(pool_id, slot, Arc::new(instance), StartLabel::Snapshot, stages).await
                }
                (Ok(()), Err(e)) => {
                    release(self);
                    Err(StartFailure::Error(e.to_string()))
                }
                (Err(failure), Ok(instance)) => {
                    instance.stop(STOP_GRACE).await;
                    Err(failure)
                }
                (Err(failure), Err(_)) => Err(failure),
            };
        }
        // Otherwise claim first, so that no preparation is spent when the mesh is at its limit.
        let mut stages = Stages::default();
        let t = instant();
        self.claim(slot).await?;
        stages.push("claim", t.elapsed());
        let had_snapshot = self.has_snapshot();
        let (prepared, prep_stages) = match self.ensure_prepared().await {
            Ok(p) => p,
            Err(e) => {
                release(self);
                return Err(StartFailure::Error(e));
            }
        };
        stages.extend(prep_stages);
        let zygote = lock(&self.zygote).clone().filter(|z| z.is_alive());
        let t = instant();
        let (started, label) = match zygote {
            Some(z) => {
                let label = if had_snapshot { StartLabel::Snapshot } else { StartLabel::Cold };
                (z.fork(slot).await, label)
            }
            None => (falak_function::spawn(&prepared, slot).await, StartLabel::Cold),
        };
        let instance = match started {
            Ok(i) => Arc::new(i),
            Err(e) => {
                release(self);
                return Err(StartFailure::Error(e.to_string()));
            }
        };
        let timings = instance.timings();
        if label == StartLabel::Snapshot || timings.kind == falak_function::StartKind::Fork {
            stages.push("fork", t.elapsed());
        } else {
            stages.push("spawn", Duration::from_micros(timings.spawn_us));
            stages.push("init", t.elapsed().saturating_sub(Duration::from_micros(timings.spawn_us)));
        }
        self.admit(pool_id, slot, instance, label, stages).await
    }

    /// Commit this node's claim on one of the function's instance slots.
    async fn claim(&self, slot: u64) -> Result<(), StartFailure> {
        let claim = Command::ClaimInstance {
            function: self.spec.name.clone(),
            version: self.spec.version,
            node: self.ctx.id,
            instance: slot,
            now: now_millis(),
        };
        match self.ctx.ledger.write(claim).await {
            Ok(applied) => match applied.outcome {
                Outcome::InstanceClaimed { .. } => Ok(()),
                Outcome::Rejected(r) if r.code == RejectCode::NoFit && r.message.contains("max_instances") => {
                    Err(StartFailure::AtLimit)
                }
                Outcome::Rejected(r) => Err(StartFailure::Error(r.message)),
                other => Err(StartFailure::Error(format!("unexpected ledger outcome {other:?}"))),
            },
            Err(e) => {
                // The claim may still commit later; give it back in case it does.
                self.ctx.release_slot(&self.spec.name, slot);
                Err(StartFailure::Error(format!("the ledger did not confirm the instance: {e}")))
            }
        }
    }

    /// A started instance with a committed slot joins the live set (unless the deployment was
    /// retired meanwhile).
    async fn admit(
        self: &Arc<Self>,
        pool_id: InstanceId,
        slot: u64,
        instance: Arc<Instance>,
        label: StartLabel,
        stages: Stages,
    ) -> Result<(), StartFailure> {
        if let Some(pid) = instance.pid() {
            self.ctx.record_group(&format!("fn-{slot}"), pid);
        }
        if self.is_retired() {
            instance.stop(STOP_GRACE).await;
            self.ctx.release_slot(&self.spec.name, slot);
            return Err(StartFailure::Error("the deployment was retired while the instance started".into()));
        }
        let info = StartInfo { label, stages };
        let fresh = Some((info, instant()));
        lock(&self.live).insert(pool_id, Live { instance: instance.clone(), slot, fresh, stopping: false, label });
        tokio::spawn(self.clone().watch_exit(pool_id, instance));
        Ok(())
    }

    /// When an instance exits on its own, the pool replaces it.
    async fn watch_exit(self: Arc<Self>, pool_id: InstanceId, instance: Arc<Instance>) {
        instance.exited().await;
        let unexpected =
            lock(&self.live).get(&pool_id).is_some_and(|l| !l.stopping && Arc::ptr_eq(&l.instance, &instance));
        if unexpected {
            self.instance_broke(pool_id, "exited");
        }
    }

    async fn stop(self: Arc<Self>, pool_id: InstanceId) {
        // A start under way finishes first; it sees the flag and answers `stopped` itself.
        if let Some((_, cancelled)) = lock(&self.starting).get(&pool_id) {
            cancelled.store(true, Ordering::SeqCst);
            return;
        }
        let live = {
            let mut live = lock(&self.live);
            if let Some(l) = live.get_mut(&pool_id) {
                l.stopping = true;
            }
            live.get(&pool_id).map(|l| (l.instance.clone(), l.slot))
        };
        if let Some((instance, slot)) = live {
            instance.stop(STOP_GRACE).await;
            lock(&self.live).remove(&pool_id);
            self.ctx.release_slot(&self.spec.name, slot);
        }
        let actions = self.feed(|pool, now| pool.stopped(now, pool_id));
        self.execute(actions);
    }

    /// Check idle instances; one that fails is replaced like a crashed one.
    fn check_health(self: &Arc<Self>) {
        let idle: Vec<InstanceId> = lock(&self.pool)
            .view()
            .instances
            .iter()
            .filter(|i| i.state == falak_function::pool::InstanceState::Idle)
            .map(|i| i.id)
            .collect();
        for pool_id in idle {
            let Some(instance) = lock(&self.live).get(&pool_id).filter(|l| !l.stopping).map(|l| l.instance.clone())
            else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let healthy = matches!(tokio::time::timeout(HEALTH_TIMEOUT, instance.health()).await, Ok(Ok(())));
                let same = lock(&this.live).get(&pool_id).is_some_and(|l| Arc::ptr_eq(&l.instance, &instance));
                if !healthy && same {
                    this.instance_broke(pool_id, "failed its health check");
                }
            });
        }
    }

    /// Measure each live instance's private directory against the disk limit and replace those
    /// over it (`super::disk`); `None` before the deployment is prepared.
    fn check_disk(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let prepared = self.prep.try_lock().ok()?.prepared.clone()?;
        let instances: Vec<(InstanceId, std::path::PathBuf)> = lock(&self.live)
            .iter()
            .filter(|(_, l)| !l.stopping)
            .map(|(id, l)| (*id, prepared.tmp_dir(&format!("i{}", l.slot))))
            .collect();
        let (limit, log) = (self.spec.disk_limit_bytes(), self.ctx.deployment_dir(&self.spec).join("log"));
        let this = self.clone();
        Some(tokio::spawn(async move {
            let over = tokio::task::spawn_blocking(move || super::disk::over_limit(instances, limit, &log)).await;
            for pool_id in over.unwrap_or_default() {
                this.instance_broke(pool_id, &super::disk::reason(limit));
            }
        }))
    }

    /// Runs the pool's timers; ends when a retired deployment has drained, stopping its zygote.
    async fn ticker(self: Arc<Self>) {
        let mut last_health = instant();
        let (mut last_disk, mut disk_check) = (instant(), None::<tokio::task::JoinHandle<()>>);
        loop {
            let deadline = lock(&self.pool).next_deadline();
            let now = now_millis();
            let wait = match deadline {
                Some(at) => Duration::from_millis(at.saturating_sub(now)),
                None => Duration::from_secs(1),
            }
            .min(HEALTH_EVERY)
            .min(super::disk::CHECK_EVERY);
            self.wake_at.store(now + wait.as_millis() as u64, Ordering::Relaxed);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.ctx.stopping() => break,
            }
            let actions = lock(&self.pool).tick(now_millis());
            self.execute(actions);
            if last_health.elapsed() >= HEALTH_EVERY {
                last_health = instant();
                self.check_health();
            }
            if last_disk.elapsed() >= super::disk::CHECK_EVERY && disk_check.as_ref().is_none_or(|c| c.is_finished()) {
                last_disk = instant();
                disk_check = self.check_disk();
            }
            if self.is_retired() && lock(&self.pool).is_drained() {
                break;
            }
        }
        self.shutdown().await;
    }

    /// Stop everything this deployment runs here — instances (at once, each with its grace
    /// period), then the zygote — with their cgroups. Once: a second caller (the ticker and a
    /// stopping node) waits for the first.
    pub(crate) async fn shutdown(&self) {
        self.shut_down.get_or_init(|| self.stop_processes()).await;
    }

    async fn stop_processes(&self) {
        let live: Vec<(Arc<Instance>, u64)> = lock(&self.live).values().map(|l| (l.instance.clone(), l.slot)).collect();
        let stops = live.into_iter().map(|(instance, slot)| async move {
            instance.stop(STOP_GRACE).await;
            self.ctx.release_slot(&self.spec.name, slot);
        });
        futures_util::future::join_all(stops).await;
        let zygote = lock(&self.zygote).take();
        if let Some(z) = zygote {
            z.stop().await;
            self.ctx.forget_group(&format!("fn-zygote-{}-{}", self.spec.name, self.spec.version));
        }
    }
}

fn host_spec(
    spec: &FunctionSpec,
    env: std::collections::BTreeMap<String, String>,
    bundle_dir: std::path::PathBuf,
    work_dir: std::path::PathBuf,
    log_path: std::path::PathBuf,
    python: &std::path::Path,
    sandbox: WorkloadSandbox,
) -> HostSpec {
    HostSpec {
        function: spec.name.clone(),
        deployment: spec.deployment(),
        runtime: spec.runtime,
        handler: spec.handler.clone(),
        command: spec.command.clone(),
        env,
        bundle_dir,
        log_path,
        work_dir,
        python: python.to_path_buf(),
        limits: instance_limits(spec),
        sandbox: WorkloadSandbox {
            rlimits: sandbox
                .rlimits
                .into_iter()
                .chain([super::disk::file_size_rlimit(spec.disk_limit_bytes())])
                .collect(),
            ..sandbox
        },
    }
}

/// The cgroup limits of each process of `spec`: its per-instance resources. The zygote gets
/// the same, and each instance forked from it its own, so a node holds at most
/// `max_instances + 1` times `resources.memory` for a function (less: the pages instances
/// share with the zygote count once, in the zygote's).
fn instance_limits(spec: &FunctionSpec) -> CgroupLimits {
    let positive = |n: u64| (n > 0).then_some(n);
    CgroupLimits {
        memory_bytes: positive(spec.resources.memory_bytes),
        cpu_millis: positive(spec.resources.cpu_millis),
        max_pids: Some(DEFAULT_MAX_PIDS),
    }
}

/// Tells the pool a request finished when its response body is done or dropped.
struct FinishGuard {
    deployment: Arc<Deployment>,
    request: RequestId,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        let actions = self.deployment.feed(|pool, now| pool.finished(now, self.request));
        self.deployment.execute(actions);
    }
}

/// A response body that finishes its request when it ends or is dropped.
struct GuardedBody {
    inner: BoxBody,
    _finish: FinishGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = falak_function::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Turn an axum request into the function host's request type.
pub(crate) fn to_host_request(request: axum::extract::Request) -> http::Request<BoxBody> {
    request.map(|body| SyncBody(Mutex::new(body)).map_err(|e| Box::new(e) as falak_function::BoxError).boxed())
}

/// A request body that is `Sync` (the function host's body type asks for it; axum's is not).
/// The mutex is never contended: polling takes `&mut self`.
pub(crate) struct SyncBody<B>(pub Mutex<B>);

impl<B: http_body::Body + Unpin> http_body::Body for SyncBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let inner = self.get_mut().0.get_mut().unwrap_or_else(PoisonError::into_inner);
        std::pin::Pin::new(inner).poll_frame(cx)
    }
}
