//! One function version on this node: its prepared bundle, its zygote, its instance pool, and
//! the single task that owns them all.
//!
//! The owner steps the deployment's sans-IO core ([`super::slots::DeploymentCore`]: the pool
//! and the ledger slots) over one closed event enum ([`Msg`]), as the main loop steps the
//! reconciler, and carries out the core's effects by spawning the IO (claims, launches, stops)
//! whose outcomes come back as messages. Nothing is shared between tasks but the inbox and a
//! published [`Status`]; the handle ([`Deployment`]) only sends messages and reads the status.
//! A request costs two messages (its arrival, its end) and no ledger write on the warm path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use falak_api::ApiError;
use falak_api::function::gateway_error;
use falak_core::function::{FunctionSpec, SnapshotPolicy};
use falak_core::ledger::Command;
use falak_function::pool::{InstanceId, RejectReason, RequestId};
use falak_function::{
    BoxBody, CgroupLimits, DEFAULT_MAX_PIDS, HostSpec, Instance, InstanceError, Prepared, WorkloadSandbox, Zygote,
};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::HostContext;
use super::slots::{ClaimFailure, DeploymentCore, Effect, Input, MAX_WAIT_MS, Report};
use super::start::{Stages, StartInfo, StartLabel};
use crate::clock::{instant, now_millis};

/// How long a stopping instance gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often idle instances are health-checked.
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// How long a health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a failed preparation is remembered before the next start tries again (a peer or
/// the package index may have been unreachable).
const PREPARE_RETRY: Duration = Duration::from_secs(10);

/// A started instance: the core's handle to it.
pub(crate) struct Running {
    instance: Instance,
    label: StartLabel,
    /// The stages of its launch (the claim's is added when it serves).
    stages: Stages,
}

type Handle = Arc<Running>;

/// What the owner of a deployment hears: the closed set of its events.
enum Msg {
    /// An input for the core, from a task the owner spawned (a launch ended, a stop finished,
    /// an instance broke, a request finished).
    Core(Input<Handle>),
    /// The ledger answered a claim, which took `took`.
    Claimed {
        instance: InstanceId,
        result: Result<(), ClaimFailure>,
        took: Duration,
    },
    /// A request to serve; answered once an instance is assigned or the request is turned away.
    Request {
        may_start: bool,
        reply: oneshot::Sender<Assignment>,
    },
    /// Prepare the deployment (fetch, unpack, dependencies, zygote) unless it is; answered
    /// when it is, or has failed.
    Prepare {
        reply: oneshot::Sender<Result<PreparedNow, String>>,
    },
    /// An observer's nudge: prepare (again) if it is not, or its zygote has gone.
    Warm,
    /// A preparation ended.
    PrepareDone(PrepareOutcome),
    /// The zygote with this pid exited.
    ZygoteExited(u32),
    SetMinInstances(u32),
    Retire,
    /// List the instances for `falak fn instances`.
    Instances {
        reply: oneshot::Sender<Vec<falak_api::function::InstanceInfo>>,
    },
    /// Stop every process now; answered when they are gone.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The prepared deployment, as a launch sees it.
#[derive(Clone)]
struct PreparedNow {
    prepared: Arc<Prepared>,
    zygote: Option<Arc<Zygote>>,
    stages: Stages,
}

/// What a preparation produced: the prepared deployment even when only its zygote failed.
struct PrepareOutcome {
    prepared: Option<Arc<Prepared>>,
    zygote: Option<Arc<Zygote>>,
    stages: Stages,
    error: Option<String>,
}

/// What a waiting request is told.
enum Assignment {
    /// `finish` tells the pool the request is done when dropped, wherever that happens (also
    /// when the waiting client went away and the assignment is never read).
    Go {
        instance: Handle,
        pool_id: InstanceId,
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

/// What the owner publishes after every event, for readers that must not wait (routing,
/// gossip, metrics).
#[derive(Debug, Clone, Default)]
struct Status {
    free_slots: u32,
    instances: u32,
    prepared: bool,
    snapshot: bool,
    /// Retired and every process gone (or the node stopping): the owner has ended.
    ended: bool,
    slots: Vec<u64>,
}

/// The handle to one deployment's owner.
pub(crate) struct Deployment {
    pub spec: FunctionSpec,
    ctx: Arc<HostContext>,
    inbox: mpsc::UnboundedSender<Msg>,
    status: watch::Receiver<Status>,
}

impl Deployment {
    pub fn new(ctx: Arc<HostContext>, spec: FunctionSpec, min_instances: u32) -> Arc<Deployment> {
        let config = super::slots::pool_config(&spec, min_instances);
        let (inbox, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(Status::default());
        let owner = Owner {
            core: DeploymentCore::new(config, ctx.slots.clone()),
            spec: spec.clone(),
            ctx: ctx.clone(),
            inbox: rx,
            tx: inbox.clone(),
            status: status_tx,
            next_request: 1,
            waiters: HashMap::new(),
            fresh: HashMap::new(),
            claim_took: HashMap::new(),
            prep: Prep::default(),
            shutdown: Vec::new(),
        };
        // The first step: keep `min_instances` from the start.
        let _ = inbox.send(Msg::Core(Input::Tick));
        tokio::spawn(owner.run());
        Arc::new(Deployment { spec, ctx, inbox, status })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    fn status(&self) -> watch::Ref<'_, Status> {
        self.status.borrow()
    }

    /// Free request slots on ready instances (for gossip and routing).
    pub fn free_slots(&self) -> u32 {
        self.status().free_slots
    }

    pub fn instance_count(&self) -> u32 {
        self.status().instances
    }

    pub fn is_prepared(&self) -> bool {
        self.status().prepared
    }

    pub fn has_snapshot(&self) -> bool {
        self.status().snapshot
    }

    /// Retired and every process gone: the deployment can be forgotten.
    pub fn is_drained(&self) -> bool {
        self.status().ended
    }

    /// The ledger slots this deployment's instances hold or are claiming.
    pub fn slots(&self) -> Vec<u64> {
        self.status().slots.clone()
    }

    /// Keep `min` instances here (the first-ranked observer keeps the function's floor).
    pub fn set_min_instances(&self, min: u32) {
        let _ = self.inbox.send(Msg::SetMinInstances(min));
    }

    /// Retire this version: reject waiting requests, stop instances once idle, then the zygote.
    pub fn retire(&self) {
        let _ = self.inbox.send(Msg::Retire);
    }

    /// An observer keeps the deployment prepared and its snapshot ready: prepare it (again)
    /// unless it is, a preparation is under way, or one failed less than [`PREPARE_RETRY`] ago.
    pub fn warm(&self) {
        let _ = self.inbox.send(Msg::Warm);
    }

    /// Prepare the deployment on this node (fetch, unpack, dependencies, zygote) if it is not;
    /// the stage timings of the work done for it.
    pub async fn ensure_prepared(&self) -> Result<(Arc<Prepared>, Stages), String> {
        let (reply, answer) = oneshot::channel();
        let _ = self.inbox.send(Msg::Prepare { reply });
        let retired = || format!("{} was retired", self.spec.deployment());
        answer.await.map_err(|_| retired())?.map(|p| (p.prepared, p.stages))
    }

    /// Instances for `falak fn instances`.
    pub async fn instances(&self) -> Vec<falak_api::function::InstanceInfo> {
        let (reply, answer) = oneshot::channel();
        let _ = self.inbox.send(Msg::Instances { reply });
        answer.await.unwrap_or_default()
    }

    /// Stop everything this deployment runs here — instances (at once, each with its grace
    /// period), then the zygote — with their cgroups. Any number of callers wait for the same
    /// stop; once the owner has ended, there is nothing to wait for.
    pub(crate) async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        if self.inbox.send(Msg::Shutdown { reply }).is_ok() {
            let _ = answer.await;
        }
    }

    /// Serve one request with a local instance. `may_start`: this node was elected to start one
    /// if none is free.
    pub async fn serve(&self, request: http::Request<BoxBody>, may_start: bool, route: Stages) -> Response {
        let (reply, answer) = oneshot::channel();
        let waited = instant();
        let retired =
            || gateway_error(ApiError::unavailable("the function's deployment was retired; retry"), Some(1000));
        if self.inbox.send(Msg::Request { may_start, reply }).is_err() {
            return retired();
        }
        let Ok(assignment) = answer.await else { return retired() };
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
        let result = tokio::time::timeout(timeout, instance.instance.send(request)).await;
        match result {
            Err(_) => {
                self.broke(pool_id, &instance, "timed out");
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
                let crashed = matches!(e, InstanceError::Crashed { .. } | InstanceError::Stopped { .. })
                    || !instance.instance.is_alive();
                let message = if let (true, Some(limit)) = (crashed, instance.instance.memory_kill()) {
                    self.broke(pool_id, &instance, "crashed");
                    format!(
                        "function {}: the instance was killed by its memory limit ({limit} bytes) while serving the \
                         request; it is being replaced; give the function more memory (resources.memory) if it needs it",
                        self.spec.name
                    )
                } else if crashed {
                    self.broke(pool_id, &instance, "crashed");
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

    /// An instance failed a request (crash, timeout): the core replaces it.
    fn broke(&self, pool_id: InstanceId, instance: &Running, why: &str) {
        let why = broke_reason(&instance.instance, why);
        let _ = self.inbox.send(Msg::Core(Input::Broke { instance: pool_id, why }));
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
}

/// Why a broken instance is replaced: one the kernel killed for its memory limit is reported as
/// such, whatever `why` says.
fn broke_reason(instance: &Instance, why: &str) -> String {
    match instance.memory_kill() {
        Some(limit) => format!("killed by its memory limit ({limit} bytes)"),
        None => why.to_owned(),
    }
}

/// The deployment's preparation.
#[derive(Default)]
struct Prep {
    prepared: Option<Arc<Prepared>>,
    zygote: Option<Arc<Zygote>>,
    /// The last failure and when it happened.
    failed: Option<(String, std::time::Instant)>,
    /// Launches and callers waiting for the preparation under way; `None` when none is.
    waiting: Option<Vec<oneshot::Sender<Result<PreparedNow, String>>>>,
    /// The preparation under way is an observer's warming: say how it went.
    announce: bool,
}

/// The single owner of one deployment.
struct Owner {
    spec: FunctionSpec,
    ctx: Arc<HostContext>,
    core: DeploymentCore<Handle>,
    inbox: mpsc::UnboundedReceiver<Msg>,
    /// For the tasks the owner spawns, to answer.
    tx: mpsc::UnboundedSender<Msg>,
    status: watch::Sender<Status>,
    next_request: RequestId,
    waiters: HashMap<RequestId, oneshot::Sender<Assignment>>,
    /// How each instance that serves but has not served yet started, and when it was ready.
    fresh: HashMap<InstanceId, (StartInfo, std::time::Instant)>,
    /// How long each start's claim took, until it serves.
    claim_took: HashMap<InstanceId, Duration>,
    prep: Prep,
    shutdown: Vec<oneshot::Sender<()>>,
}

impl Owner {
    async fn run(mut self) {
        let mut last_health = instant();
        let (mut last_disk, mut disk_check) = (instant(), None::<tokio::task::JoinHandle<()>>);
        let ctx = self.ctx.clone();
        loop {
            let now = now_millis();
            let wait = match self.core.next_deadline() {
                Some(at) => Duration::from_millis(at.saturating_sub(now)),
                None => Duration::from_secs(1),
            }
            .min(HEALTH_EVERY)
            .min(super::disk::CHECK_EVERY);
            tokio::select! {
                msg = self.inbox.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                _ = tokio::time::sleep(wait) => self.step(Input::Tick),
                _ = ctx.stopping() => break,
            }
            if last_health.elapsed() >= HEALTH_EVERY {
                last_health = instant();
                self.check_health();
            }
            if last_disk.elapsed() >= super::disk::CHECK_EVERY && disk_check.as_ref().is_none_or(|c| c.is_finished()) {
                last_disk = instant();
                disk_check = self.check_disk();
            }
            self.publish();
            // A preparation under way finishes first: its zygote is then stopped with the rest.
            if !self.shutdown.is_empty() || self.core.is_drained() && self.prep.waiting.is_none() {
                break;
            }
        }
        if let Some(check) = disk_check {
            check.abort();
        }
        self.stop_processes().await;
        self.status.send_modify(|s| {
            s.ended = true;
            s.free_slots = 0;
            s.snapshot = false;
        });
        // Answer everyone still waiting: stops are done; requests and preparations are turned
        // away by dropping their reply channels.
        self.inbox.close();
        while let Ok(msg) = self.inbox.try_recv() {
            if let Msg::Shutdown { reply } = msg {
                self.shutdown.push(reply);
            }
        }
        for reply in self.shutdown.drain(..) {
            let _ = reply.send(());
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Core(input) => self.step(input),
            Msg::Claimed { instance, result, took } => {
                self.claim_took.insert(instance, took);
                self.step(Input::Claimed { instance, result });
            }
            Msg::Request { may_start, reply } => {
                let request = self.next_request;
                self.next_request += 1;
                self.waiters.insert(request, reply);
                self.step(Input::Request { request, may_start });
            }
            Msg::Prepare { reply } => self.prepare(Some(reply), false),
            Msg::Warm => {
                let recently_failed = self.prep.failed.as_ref().is_some_and(|(_, at)| at.elapsed() < PREPARE_RETRY);
                let needed = self.prep.prepared.is_none()
                    || self.spec.snapshot == SnapshotPolicy::Zygote && self.prep.zygote.is_none();
                if needed && !recently_failed && self.prep.waiting.is_none() && !self.core.is_retired() {
                    self.prepare(None, true);
                }
            }
            Msg::PrepareDone(outcome) => self.prepared(outcome),
            Msg::ZygoteExited(pid) => {
                if self.prep.zygote.as_ref().is_some_and(|z| z.pid() == pid) {
                    self.prep.zygote = None;
                    self.step(Input::SnapshotReady(false));
                }
            }
            Msg::SetMinInstances(min) => self.step(Input::SetMinInstances(min)),
            Msg::Retire => self.step(Input::Retire),
            Msg::Instances { reply } => {
                let _ = reply.send(self.instances());
            }
            Msg::Shutdown { reply } => self.shutdown.push(reply),
        }
    }

    /// Step the core and carry out its effects.
    fn step(&mut self, input: Input<Handle>) {
        let effects = self.core.step(now_millis(), input);
        for effect in effects {
            self.carry_out(effect);
        }
    }

    fn carry_out(&mut self, effect: Effect<Handle>) {
        match effect {
            Effect::Claim { instance, slot } => {
                let (ctx, spec, tx) = (self.ctx.clone(), self.spec.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let t = instant();
                    let result = claim(&ctx, &spec, slot).await;
                    let _ = tx.send(Msg::Claimed { instance, result, took: t.elapsed() });
                });
            }
            Effect::Launch { instance, slot, snapshot } => {
                let zygote = self.prep.zygote.clone().filter(|z| snapshot && z.is_alive());
                let (ctx, tx) = (self.ctx.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let result = launch(&ctx, &tx, zygote, slot).await.map(Arc::new);
                    let _ = tx.send(Msg::Core(Input::Launched { instance, result }));
                });
            }
            Effect::Serving { instance, slot, handle } => {
                let mut stages = Stages::default();
                if let Some(took) = self.claim_took.remove(&instance) {
                    stages.push("claim", took);
                }
                stages.extend(handle.stages.clone());
                self.fresh.insert(instance, (StartInfo { label: handle.label, stages }, instant()));
                if let Some(pid) = handle.instance.pid() {
                    self.ctx.record_group(&format!("fn-{slot}"), pid);
                }
                // When it exits on its own, the core replaces it (an expected exit finds it
                // stopping, and the core ignores it).
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    handle.instance.exited().await;
                    let why = broke_reason(&handle.instance, "exited");
                    let _ = tx.send(Msg::Core(Input::Broke { instance, why }));
                });
            }
            Effect::Dispatch { request, instance, handle } => {
                // From here on the guard answers `Finished` exactly once, whether the waiter gets
                // the assignment or has gone away.
                let finish = FinishGuard { inbox: self.tx.clone(), request };
                let fresh = self.fresh.remove(&instance);
                if let Some(reply) = self.waiters.remove(&request) {
                    let _ = reply.send(Assignment::Go { instance: handle, pool_id: instance, fresh, finish });
                }
            }
            Effect::Reject { request, reason, retry_after_ms } => {
                if let Some(reply) = self.waiters.remove(&request) {
                    let _ = reply.send(Assignment::Reject { reason, retry_after_ms });
                }
            }
            Effect::Stop { instance, handle, release } => {
                self.fresh.remove(&instance);
                let (ctx, name, tx) = (self.ctx.clone(), self.spec.name.clone(), self.tx.clone());
                tokio::spawn(async move {
                    handle.instance.stop(STOP_GRACE).await;
                    if let Some(slot) = release {
                        ctx.release_slot(&name, slot);
                    }
                    let _ = tx.send(Msg::Core(Input::Stopped { instance }));
                });
            }
            Effect::Release { slot } => self.ctx.release_slot(&self.spec.name, slot),
            Effect::Report(Report::StartFailed { message }) => {
                tracing::warn!(function = %self.spec.name, %message, "instance did not start");
                self.ctx.publish(
                    "instance_start_failed",
                    serde_json::json!({"function": self.spec.name, "node": self.ctx.id, "error": message}),
                );
            }
            Effect::Report(Report::InstanceFailed { slot, why }) => {
                tracing::warn!(function = %self.spec.name, instance = slot, %why, "instance replaced");
                self.ctx.publish(
                    "instance_failed",
                    serde_json::json!({"function": self.spec.name, "instance": slot, "node": self.ctx.id, "reason": why}),
                );
            }
        }
    }

    /// Answer `reply` with the prepared deployment, preparing it first if it is not (or its
    /// zygote is gone); `announce`: an observer's warming, whose outcome is published.
    fn prepare(&mut self, reply: Option<oneshot::Sender<Result<PreparedNow, String>>>, announce: bool) {
        if self.core.is_retired() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(format!("{} was retired", self.spec.deployment())));
            }
            return;
        }
        let zygote_missing =
            self.spec.snapshot == SnapshotPolicy::Zygote && !self.prep.zygote.as_ref().is_some_and(|z| z.is_alive());
        if let (Some(prepared), false) = (&self.prep.prepared, zygote_missing) {
            let now =
                PreparedNow { prepared: prepared.clone(), zygote: self.prep.zygote.clone(), stages: Stages::default() };
            if let Some(reply) = reply {
                let _ = reply.send(Ok(now));
            }
            return;
        }
        if let Some(waiting) = &mut self.prep.waiting {
            waiting.extend(reply);
            return;
        }
        if let Some((error, at)) = &self.prep.failed
            && at.elapsed() < PREPARE_RETRY
        {
            if let Some(reply) = reply {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
        self.prep.waiting = Some(reply.into_iter().collect());
        self.prep.announce = announce;
        let (ctx, spec, tx) = (self.ctx.clone(), self.spec.clone(), self.tx.clone());
        let prepared = self.prep.prepared.clone();
        tokio::spawn(async move {
            let outcome = prepare(&ctx, &spec, prepared).await;
            let _ = tx.send(Msg::PrepareDone(outcome));
        });
    }

    fn prepared(&mut self, outcome: PrepareOutcome) {
        let PrepareOutcome { prepared, zygote, stages, error } = outcome;
        let started = std::mem::take(&mut self.prep.waiting).unwrap_or_default();
        if prepared.is_some() {
            self.prep.prepared = prepared;
        }
        if let Some(zygote) = zygote {
            if self.core.is_retired() {
                // Nothing will fork from it.
                tokio::spawn(async move { zygote.stop().await });
            } else {
                let (tx, watched) = (self.tx.clone(), zygote.clone());
                tokio::spawn(async move {
                    watched.exited().await;
                    let _ = tx.send(Msg::ZygoteExited(watched.pid()));
                });
                self.ctx.record_group(&self.zygote_group(), zygote.pid());
                self.prep.zygote = Some(zygote);
                self.step(Input::SnapshotReady(true));
            }
        }
        let answer = match (&error, &self.prep.prepared) {
            (None, Some(p)) => Ok(PreparedNow { prepared: p.clone(), zygote: self.prep.zygote.clone(), stages }),
            (Some(e), _) => Err(e.clone()),
            (None, None) => Err("the preparation ended without a result".to_owned()),
        };
        if std::mem::take(&mut self.prep.announce) {
            let spec = &self.spec;
            match &answer {
                Ok(now) => self.ctx.publish(
                    "observer_warmed",
                    serde_json::json!({"function": spec.name, "version": spec.version, "node": self.ctx.id, "ms": now.stages.total().as_millis() as u64, "snapshot": self.prep.zygote.is_some()}),
                ),
                Err(e) => self.ctx.publish(
                    "function_prepare_failed",
                    serde_json::json!({"function": spec.name, "version": spec.version, "node": self.ctx.id, "error": e}),
                ),
            }
        }
        self.prep.failed = error.map(|e| (e, instant()));
        // Whoever is answered next reads the status (`has_snapshot`) as of this preparation.
        self.publish();
        for reply in started {
            let _ = reply.send(answer.clone());
        }
    }

    fn zygote_group(&self) -> String {
        format!("fn-zygote-{}-{}", self.spec.name, self.spec.version)
    }

    fn publish(&self) {
        let status = Status {
            free_slots: self.core.free_slots(),
            instances: self.core.instance_count() as u32,
            prepared: self.prep.prepared.is_some(),
            snapshot: self.prep.zygote.as_ref().is_some_and(|z| z.is_alive()),
            ended: false,
            slots: self.core.slots(),
        };
        self.status.send_replace(status);
    }

    fn instances(&self) -> Vec<falak_api::function::InstanceInfo> {
        let now = now_millis();
        self.core
            .instances()
            .into_iter()
            .map(|(view, slot, handle)| falak_api::function::InstanceInfo {
                node: self.ctx.id.to_string(),
                node_name: self.ctx.node_name.clone(),
                instance: slot.unwrap_or(0),
                version: self.spec.version,
                state: format!("{:?}", view.state).to_uppercase(),
                in_flight: view.in_flight,
                start: handle.as_ref().map_or("-", |h| h.label.name()).to_owned(),
                pid: handle.and_then(|h| h.instance.pid()),
                age_ms: now.saturating_sub(view.since),
            })
            .collect()
    }

    /// Check idle instances; one that fails is replaced like a crashed one.
    fn check_health(&self) {
        for serving in self.core.serving().into_iter().filter(|s| s.idle) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let checked = tokio::time::timeout(HEALTH_TIMEOUT, serving.handle.instance.health()).await;
                if !matches!(checked, Ok(Ok(()))) {
                    let why = broke_reason(&serving.handle.instance, "failed its health check");
                    let _ = tx.send(Msg::Core(Input::Broke { instance: serving.instance, why }));
                }
            });
        }
    }

    /// Measure each serving instance's private directory against the disk limit and replace
    /// those over it (`super::disk`); `None` before the deployment is prepared.
    fn check_disk(&self) -> Option<tokio::task::JoinHandle<()>> {
        let prepared = self.prep.prepared.clone()?;
        let instances: Vec<(InstanceId, std::path::PathBuf)> =
            self.core.serving().into_iter().map(|s| (s.instance, prepared.tmp_dir(&format!("i{}", s.slot)))).collect();
        let (limit, log) = (self.spec.disk_limit_bytes(), self.ctx.deployment_dir(&self.spec).join("log"));
        let tx = self.tx.clone();
        Some(tokio::spawn(async move {
            let over = tokio::task::spawn_blocking(move || super::disk::over_limit(instances, limit, &log)).await;
            for instance in over.unwrap_or_default() {
                let _ = tx.send(Msg::Core(Input::Broke { instance, why: super::disk::reason(limit) }));
            }
        }))
    }

    /// Stop every process: instances at once (each with its grace period), then the zygote.
    async fn stop_processes(&mut self) {
        let (ctx, name) = (&self.ctx, &self.spec.name);
        let stops = self.core.handles().into_iter().map(|(slot, handle)| async move {
            handle.instance.stop(STOP_GRACE).await;
            ctx.release_slot(name, slot);
        });
        futures_util::future::join_all(stops).await;
        if let Some(zygote) = self.prep.zygote.take() {
            zygote.stop().await;
            self.ctx.forget_group(&self.zygote_group());
        }
    }
}

/// Commit this node's claim on one of the function's instance slots.
async fn claim(ctx: &HostContext, spec: &FunctionSpec, slot: u64) -> Result<(), ClaimFailure> {
    let claim = Command::ClaimInstance {
        function: spec.name.clone(),
        version: spec.version,
        node: ctx.id,
        instance: slot,
        now: now_millis(),
    };
    super::slots::claim_result(ctx.ledger.write(claim).await)
}

/// Start one instance: fork it from `zygote` when given, else prepare the deployment (through
/// the owner) and fork or spawn.
async fn launch(
    ctx: &HostContext,
    owner: &mpsc::UnboundedSender<Msg>,
    zygote: Option<Arc<Zygote>>,
    slot: u64,
) -> Result<Running, String> {
    let reserve = ctx.disk_reserve.clone();
    let below = tokio::task::spawn_blocking(move || super::disk::below_reserve(reserve.as_ref())).await;
    if let Ok(Some(below)) = below {
        return Err(below);
    }
    let mut stages = Stages::default();
    if let Some(zygote) = zygote {
        let t = instant();
        let instance = zygote.fork(slot).await.map_err(|e| e.to_string())?;
        stages.push("fork", t.elapsed());
        return Ok(Running { instance, label: StartLabel::Snapshot, stages });
    }
    let (reply, answer) = oneshot::channel();
    owner.send(Msg::Prepare { reply }).map_err(|_| "the deployment has ended".to_owned())?;
    let now = answer.await.map_err(|_| "the deployment has ended".to_owned())??;
    let had_snapshot = now.stages.0.iter().all(|(stage, _)| *stage != "snapshot") && now.zygote.is_some();
    stages.extend(now.stages);
    let zygote = now.zygote.filter(|z| z.is_alive());
    let t = instant();
    let (started, label) = match &zygote {
        Some(z) => (z.fork(slot).await, if had_snapshot { StartLabel::Snapshot } else { StartLabel::Cold }),
        None => (falak_function::spawn(&now.prepared, slot).await, StartLabel::Cold),
    };
    let instance = started.map_err(|e| e.to_string())?;
    let timings = instance.timings();
    if zygote.is_some() || timings.kind == falak_function::StartKind::Fork {
        stages.push("fork", t.elapsed());
    } else {
        stages.push("spawn", Duration::from_micros(timings.spawn_us));
        stages.push("init", t.elapsed().saturating_sub(Duration::from_micros(timings.spawn_us)));
    }
    Ok(Running { instance, label, stages })
}

/// Prepare the deployment (unless `prepared` already is) and start its zygote when its policy
/// asks for one.
async fn prepare(ctx: &HostContext, spec: &FunctionSpec, prepared: Option<Arc<Prepared>>) -> PrepareOutcome {
    let mut stages = Stages::default();
    let prepared = match prepared {
        Some(p) => p,
        None => match prepare_now(ctx, spec, &mut stages).await {
            Ok(p) => Arc::new(p),
            Err(error) => return PrepareOutcome { prepared: None, zygote: None, stages, error: Some(error) },
        },
    };
    if spec.snapshot != SnapshotPolicy::Zygote {
        return PrepareOutcome { prepared: Some(prepared), zygote: None, stages, error: None };
    }
    let t = instant();
    match Zygote::start(&prepared).await {
        Ok(zygote) => {
            stages.push("snapshot", t.elapsed());
            PrepareOutcome { prepared: Some(prepared), zygote: Some(Arc::new(zygote)), stages, error: None }
        }
        Err(e) => {
            let error = format!("starting {} on node {}: {e}", spec.deployment(), ctx.node_name);
            PrepareOutcome { prepared: Some(prepared), zygote: None, stages, error: Some(error) }
        }
    }
}

async fn prepare_now(ctx: &HostContext, spec: &FunctionSpec, stages: &mut Stages) -> Result<Prepared, String> {
    let t = instant();
    // A bundle, or a container's image (its root stands where the bundle would).
    let (bundle_dir, container) = match (spec.artifact, spec.container.as_deref()) {
        (_, Some(container)) => {
            let host = ctx.container(spec, container).await?;
            (host.image.rootfs.clone(), Some(host))
        }
        (Some(artifact), None) => (ctx.bundle_dir(artifact).await?, None),
        (None, None) => return Err(format!("{} has neither a bundle nor an image", spec.deployment())),
    };
    stages.push("fetch", t.elapsed());
    let t = instant();
    let sandbox = ctx.sandbox_for(&spec.name).await?;
    // The log's dir is the node's alone; `prepare` makes the work dir (the instances').
    let deployment_dir = ctx.deployment_dir(spec);
    let work_dir = ctx.socket_dir(spec);
    std::fs::create_dir_all(&deployment_dir).map_err(|e| format!("cannot create {}: {e}", deployment_dir.display()))?;
    let log = deployment_dir.join("log");
    let env = ctx.instance_env(spec)?;
    let mut host = host_spec(spec, env, bundle_dir, work_dir, log, &ctx.python, sandbox);
    host.container = container;
    let prepared = falak_function::prepare(host, &ctx.venv_dir())
        .await
        .map_err(|e| format!("preparing {} on node {}: {e}", spec.deployment(), ctx.node_name))?;
    stages.push("prepare", t.elapsed());
    Ok(prepared)
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
        container: None,
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
    inbox: mpsc::UnboundedSender<Msg>,
    request: RequestId,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        let _ = self.inbox.send(Msg::Core(Input::Finished { request: self.request }));
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
