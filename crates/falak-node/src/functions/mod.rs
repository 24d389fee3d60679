//! Functions on this node: deployments kept in step with the ledger, the invoke gateway, the
//! invoke proxy, asynchronous invocations and the function metrics.
//!
//! The function host runs beside the main loop rather than inside it: invocations are the data
//! plane and must not queue behind ledger work. It reads committed state from the ledger,
//! writes to it directly (instance slots, deployments, invocations), and hands events to the
//! main loop, which publishes them.
//!
//! **Invariant:** an instance serves only after the ledger committed its slot claim (a snapshot
//! start forks while the claim commits and stops the instance if it is refused), so a function
//! never serves from more than `max_instances` instances across the mesh (an OFFLINE node's
//! slots are released by the ledger when the node is marked OFFLINE).
//!
//! Modules: [`deployment`] (one version on this node: prepare, zygote, pool driver),
//! [`gateway`] (routing and the invoke proxy), [`start`] (start labels and stage timings),
//! [`rpc`] (the node RPC messages of functions), [`invocations`] (asynchronous invocations).

pub(crate) mod deployment;
mod disk;
pub(crate) mod gateway;
pub(crate) mod invocations;
pub(crate) mod rpc;
pub mod slots;
pub(crate) mod start;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use falak_api::ApiError;
use falak_api::function::{FunctionAction, FunctionDeployed, FunctionInfo, InvocationInfo, PrepareReport};
use falak_core::function::{FunctionDocument, FunctionSpec, SnapshotPolicy};
use falak_core::gossip::FunctionGossip;
use falak_core::ledger::{Command, Outcome};
use falak_core::placement::Health;
use falak_core::{ArtifactId, NodeId};
use falak_function::{HostSandbox, WorkloadSandbox};
use falak_ledger::Ledger;
use falak_membership::MembershipSnapshot;
use falak_transport::Transport;
use tokio::sync::watch;

use self::deployment::Deployment;
use self::start::{StartInfo, StartLabel};
use crate::clock::{instant, now_millis};
use crate::main_loop::{Event, EventSender};
use crate::metrics::{Histogram, LATENCY_BOUNDS};

/// How often deployments are reconciled with the ledger without other cause.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long a deploy waits for an observer's snapshot of the new version before answering.
const READY_WAIT: Duration = Duration::from_secs(10);
/// How often unused artifacts are collected.
const GC_EVERY: Duration = Duration::from_secs(60);
/// At most this many functions are published in gossip (the busiest first).
const MAX_GOSSIP_FUNCTIONS: usize = 32;
/// How long a stopping node waits for its function processes to stop before killing their
/// cgroups (within the daemon's 5 s for the function host).
const STOP_WAIT: Duration = Duration::from_secs(4);

/// Each admitted node's labels.
type NodeLabels = BTreeMap<NodeId, BTreeMap<String, String>>;

/// Lock a mutex; a poisoned one still answers (every critical section leaves it consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every part of the function host shares.
pub(crate) struct HostContext {
    pub id: NodeId,
    pub node_name: String,
    pub api_url: String,
    /// This node's key: it signs the credential forwarded invocations carry.
    node_key: falak_transport::NodeKey,
    /// The last hop credential made for each target, reused for a few seconds (signing each
    /// request would cost every proxied invocation a signature).
    hop: Mutex<BTreeMap<NodeId, (u64, String)>>,
    /// Seals functions' secrets on deploy and opens them for the instances this node starts.
    secrets: falak_core::secret::SecretKey,
    pub ca_cert_pem: String,
    pub dir: PathBuf,
    groups_dir: PathBuf,
    pub python: PathBuf,
    pub ledger: Ledger,
    pub transport: Arc<dyn Transport>,
    membership: watch::Receiver<Arc<MembershipSnapshot>>,
    /// The node's artifacts: function bundles are fetched and unpacked there.
    pub artifacts: Arc<crate::artifacts::NodeArtifacts>,
    /// Container functions' images (peers first, then the registry).
    pub images: Arc<crate::images::NodeImages>,
    /// The OCI runtime container functions run with; `None` where the node has none.
    pub containers: Option<falak_exec::ContainerRuntime>,
    events: EventSender,
    metrics: Mutex<FunctionMetrics>,
    /// Instance slot numbers: node-wide, unique across restarts (they start from the wall clock).
    pub slots: slots::SlotNumbers,
    stop: watch::Receiver<bool>,
    /// How instances are confined, found on first use (see [`HostContext::sandbox`]).
    sandbox: tokio::sync::OnceCell<WorkloadSandbox>,
    hidden: Vec<PathBuf>,
    users: Option<Arc<falak_function::WorkloadUsers>>,
    /// Free space kept for the ledger: under it no instance starts.
    pub disk_reserve: Option<falak_exec::DiskReserve>,
}

/// Directories the instance user must pass through: it may search them, not list them.
const PASSABLE: u32 = 0o711;
/// Directories only the node reads (deployment logs).
const NODE_ONLY: u32 = 0o700;

impl HostContext {
    /// The environment of `spec`'s instances: `env` plus its secrets, opened here (only the
    /// node that runs instances ever holds them in plain).
    pub fn instance_env(&self, spec: &FunctionSpec) -> Result<BTreeMap<String, String>, String> {
        let mut env = spec.env.clone();
        let opened = self.secrets.open_all(&spec.secrets_owner(), &spec.secrets).map_err(|e| e.to_string())?;
        env.extend(opened);
        Ok(env)
    }

    /// The node's own files of a deployment (its log), under `deployments/`, which only the
    /// node may enter: instances never open the log by name, they inherit it as stdout.
    pub fn deployment_dir(&self, spec: &FunctionSpec) -> PathBuf {
        self.dir.join("deployments").join(format!("{}-{}", spec.name, spec.version))
    }

    /// A deployment's work dir (`host.py` and `run/`, where the instance sockets live): a
    /// short path, because a Unix socket path is at most 108 bytes. Under the data dir when
    /// that is short enough, else under the system's temporary directory, in a directory of
    /// the node's that instances may pass through (`0711`). The work dir itself and `run/` are
    /// made by `falak_function::prepare`.
    pub fn socket_dir(&self, spec: &FunctionSpec) -> PathBuf {
        let key = blake3::hash(format!("{}@{}", spec.name, spec.version).as_bytes()).to_hex();
        let key = &key.as_str()[..10];
        let under_data = self.dir.join("w").join(key);
        if under_data.as_os_str().len() <= 64 {
            return under_data;
        }
        let base = self.short_socket_base();
        match owned_dir(&base, PASSABLE) {
            Ok(()) => base.join(key),
            Err(e) => {
                // Someone else's directory in a shared /tmp must not hold our sockets: the long
                // path fails the preparation with a clear error instead.
                tracing::warn!(dir = %base.display(), error = %e, "cannot use the short socket dir");
                under_data
            }
        }
    }

    /// Where work dirs go when the data dir's path is too long for a socket path.
    fn short_socket_base(&self) -> PathBuf {
        std::env::temp_dir().join(format!("falak-{}", self.id.short()))
    }

    /// The confinement of `function`'s processes: the node's, with the function's own uid
    /// (its user when the node is root, its uid inside the user namespace when not).
    pub async fn sandbox_for(&self, function: &str) -> Result<WorkloadSandbox, String> {
        let mut sandbox = self.sandbox().await?.clone();
        if let Some(users) = &self.users {
            let user = users.user_for(&format!("function:{function}"));
            match sandbox.namespaces {
                falak_function::Namespaces::User => sandbox.inner_user = Some(user),
                _ => sandbox.run_as = Some(user),
            }
        }
        Ok(sandbox)
    }

    /// The `falak-hop-auth` value for a request this node forwards to `target`'s gateway now.
    pub fn hop_credential(&self, target: NodeId) -> String {
        const REUSE_MS: u64 = 5_000;
        let now = now_millis();
        let mut made = self.hop.lock().expect("hop lock");
        if let Some((at, text)) = made.get(&target)
            && *at <= now
            && now - *at < REUSE_MS
        {
            return text.clone();
        }
        let message = falak_core::access::HopCredential::message(&self.id, &target, now);
        let text = falak_core::access::HopCredential::new(self.id, now, self.node_key.sign(&message)).encode();
        made.insert(target, (now, text.clone()));
        text
    }

    /// The virtualenv cache (`0711`; each virtualenv in it readable by all, see
    /// `falak_function`'s `venv`).
    pub fn venv_dir(&self) -> PathBuf {
        self.dir.join("venvs")
    }

    /// How this node's function processes are confined: everything the host allows
    /// ([`WorkloadSandbox::from_host`]: nobody when root, seccomp, Landlock, network
    /// namespaces, cgroups under a scope of the function host's own, `node-<id>-fn`). Probed
    /// once, on first use (`FunctionHost::run` asks at startup); the probe also removes the
    /// cgroups a crashed previous run left and makes the function dirs with the modes the
    /// instance user needs.
    pub async fn sandbox(&self) -> Result<&WorkloadSandbox, String> {
        self.sandbox
            .get_or_try_init(|| async {
                let scope = self.cgroup_scope();
                let dirs = [
                    (self.dir.clone(), PASSABLE),
                    // The unpacked bundles (each bundle `0755` dirs and `0644`/`0755` files,
                    // owned by the node, as `falak_artifact::bundle::unpack` writes them):
                    // instances read them.
                    (self.artifacts.bundles_root().to_owned(), PASSABLE),
                    (self.venv_dir(), PASSABLE),
                    (self.dir.join("w"), PASSABLE),
                    (self.dir.join("deployments"), NODE_ONLY),
                ];
                let mut sandbox = tokio::task::spawn_blocking(move || probe_sandbox(&scope, &dirs))
                    .await
                    .map_err(|e| format!("probing the function sandbox failed: {e}"))?;
                // The node's list already holds the defaults (the node user's home).
                sandbox.hide.clone_from(&self.hidden);
                sandbox.hide.push(self.short_socket_base());
                Ok::<_, String>(sandbox)
            })
            .await
    }

    /// The cgroup scope of this node's function processes (beside the tasks' `node-<id>`).
    fn cgroup_scope(&self) -> String {
        format!("node-{}-fn", self.id.short())
    }

    pub fn record_group(&self, name: &str, pid: u32) {
        crate::orphans::record(&self.groups_dir, name, pid);
    }

    pub fn forget_group(&self, name: &str) {
        crate::orphans::forget(&self.groups_dir, name);
    }

    pub fn publish(&self, kind: &'static str, data: serde_json::Value) {
        let _ = self.events.send(Event::Publish { kind, data });
    }

    pub fn metrics_observe(&self, info: &StartInfo) {
        lock(&self.metrics).observe(info);
    }

    /// Resolves when the node shuts down.
    pub async fn stopping(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Give an instance slot back to the ledger (in the background, retried with backoff while
    /// the ledger cannot commit; the slot reconciliation catches what still slips through).
    pub fn release_slot(&self, function: &str, slot: u64) {
        self.forget_group(&format!("fn-{slot}"));
        let ledger = self.ledger.clone();
        let (node, function) = (self.id, function.to_owned());
        tokio::spawn(async move {
            for attempt in 0..8u32 {
                let command = Command::ReleaseInstances {
                    node,
                    function: function.clone(),
                    instances: vec![slot],
                    all: false,
                    now: now_millis(),
                };
                match ledger.write(command).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, slot, attempt, "instance slot not released yet");
                        tokio::time::sleep(Duration::from_millis(250 << attempt.min(5))).await;
                    }
                }
            }
            tracing::warn!(slot, "instance slot not released; the slot reconciliation will release it");
        });
    }

    /// Healthy peers and what they gossip, this node excluded. Only nodes the ledger lists: a
    /// revoked node may still gossip (it knows the mesh secret) but gets no invocation, and the
    /// `api_url` is the committed one.
    pub fn peers(&self) -> Vec<(NodeId, Option<falak_core::gossip::GossipState>)> {
        let snapshot = self.membership.borrow().clone();
        let state = self.ledger.state();
        snapshot
            .peers
            .iter()
            .filter(|p| p.id != self.id && crate::membership::health(p.health) == Health::Healthy)
            .filter_map(|p| {
                let entry = state.node(&p.id)?;
                // Where to reach it comes from its committed record, never from gossip: gossip is
                // sealed only by the shared mesh secret.
                let gossip = p.gossip.clone().map(|mut g| {
                    g.api_url = entry.record.api_url.clone();
                    g
                });
                Some((p.id, gossip))
            })
            .collect()
    }

    /// The unpacked bundle of `artifact`, fetched from a peer first if this node lacks it.
    pub async fn bundle_dir(&self, artifact: ArtifactId) -> Result<PathBuf, String> {
        self.artifacts.bundle_dir(artifact).await
    }

    /// What a container function's instances run: its image pulled (peers first) and
    /// unpacked, resolved with the function's `command` and container fields.
    pub async fn container(
        &self,
        spec: &FunctionSpec,
        container: &falak_core::capsule::ContainerSpec,
    ) -> Result<falak_function::ContainerHost, String> {
        let Some(runtime) = self.containers.clone() else {
            return Err(format!(
                "node {} cannot run containers (its log says why at start); install runc or crun there, or give \
                 the function `labels` that only nodes with one carry",
                self.node_name
            ));
        };
        let image = self
            .images
            .for_container(&container.image)
            .await
            .map_err(|e| format!("cannot get the image {}: {e}", container.image))?;
        let (command, container_spec) = (spec.command.clone(), container.clone());
        let run = tokio::task::spawn_blocking(move || image.run(command, &container_spec))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))?;
        let network = match spec.network.unwrap_or(falak_core::capsule::NetworkMode::Host) {
            falak_core::capsule::NetworkMode::Host => falak_sandbox::Network::Host,
            falak_core::capsule::NetworkMode::None => falak_sandbox::Network::None,
        };
        Ok(falak_function::ContainerHost { runtime, image: run.task, args: run.args, env: run.env, network })
    }
}

/// Histograms of invocations by start label and of start stages.
struct FunctionMetrics {
    by_label: BTreeMap<StartLabel, Histogram>,
    by_stage: BTreeMap<&'static str, Histogram>,
    invocations: BTreeMap<StartLabel, u64>,
}

impl FunctionMetrics {
    fn new() -> Self {
        FunctionMetrics { by_label: BTreeMap::new(), by_stage: BTreeMap::new(), invocations: BTreeMap::new() }
    }

    fn observe(&mut self, info: &StartInfo) {
        *self.invocations.entry(info.label).or_default() += 1;
        let total: Duration = info.stages.0.iter().map(|(_, d)| *d).sum();
        self.by_label.entry(info.label).or_insert_with(|| Histogram::new(LATENCY_BOUNDS)).observe(total.as_secs_f64());
        for (stage, took) in &info.stages.0 {
            self.by_stage.entry(stage).or_insert_with(|| Histogram::new(LATENCY_BOUNDS)).observe(took.as_secs_f64());
        }
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP falak_invocations_total Invocations answered by this node's gateway, by start label\n# TYPE falak_invocations_total counter"
        );
        for (label, n) in &self.invocations {
            let _ = writeln!(out, "falak_invocations_total{{start=\"{}\"}} {n}", label.name());
        }
        let name = "falak_invocation_start_seconds";
        let _ = writeln!(out, "# HELP {name} Time to the first response byte, by start label\n# TYPE {name} histogram");
        for (label, h) in &self.by_label {
            h.render_labeled(out, name, &format!("start=\"{}\"", label.name()));
        }
        let name = "falak_invocation_stage_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time spent in each start stage (route, claim, fetch, prepare, fork, spawn, init, first_byte)\n# TYPE {name} histogram"
        );
        for (stage, h) in &self.by_stage {
            h.render_labeled(out, name, &format!("stage=\"{stage}\""));
        }
    }
}

/// Functions on this node.
pub struct FunctionHost {
    ctx: Arc<HostContext>,
    /// The current version of each function this node has a deployment for.
    deployments: Mutex<BTreeMap<String, Arc<Deployment>>>,
    /// Old versions still draining.
    retired: Mutex<Vec<Arc<Deployment>>>,
    /// Functions this node observes (keeps prepared), for at-risk events.
    observing: Mutex<BTreeSet<String>>,
    /// Functions whose signature no longer verifies (their key was revoked, the stored spec
    /// changed), with why: never prepared or served here.
    refused: Mutex<BTreeMap<String, String>>,
    invocations: invocations::Running,
}

/// What the function host needs from the node.
pub struct FunctionHostParts {
    pub id: NodeId,
    pub node_name: String,
    /// This node's API base URL (asynchronous invocations go through its own gateway).
    pub api_url: String,
    /// This node's key, for the credential forwarded invocations carry.
    pub node_key: falak_transport::NodeKey,
    /// The mesh CA certificate (PEM): peers' HTTPS gateways are trusted through it.
    pub ca_cert_pem: String,
    pub data_dir: PathBuf,
    pub ledger: Ledger,
    pub transport: Arc<dyn Transport>,
    pub membership: watch::Receiver<Arc<MembershipSnapshot>>,
    /// The node's artifacts (shared with the task runner).
    pub artifacts: Arc<crate::artifacts::NodeArtifacts>,
    /// The node's images (shared with the task runner).
    pub images: Arc<crate::images::NodeImages>,
    /// The node's OCI runtime, when it has one (shared with the executor).
    pub containers: Option<falak_exec::ContainerRuntime>,
    pub events: EventSender,
    pub stop: watch::Receiver<bool>,
    pub secrets: falak_core::secret::SecretKey,
    /// What no instance may see (the node's data dir, its home, its config's list).
    pub hidden: Vec<PathBuf>,
    /// A uid per function, where the node can give one (root, or a user namespace).
    pub users: Option<Arc<falak_function::WorkloadUsers>>,
    /// Free space kept for the ledger: under it no instance starts (`crate::disk`).
    pub disk_reserve: Option<falak_exec::DiskReserve>,
}

impl FunctionHost {
    pub fn new(parts: FunctionHostParts) -> Arc<FunctionHost> {
        let dir = parts.data_dir.join("functions");
        let python = std::env::var_os("FALAK_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
        let ctx = Arc::new(HostContext {
            id: parts.id,
            node_name: parts.node_name,
            api_url: parts.api_url,
            node_key: parts.node_key,
            hop: Mutex::new(BTreeMap::new()),
            ca_cert_pem: parts.ca_cert_pem,
            dir,
            groups_dir: parts.data_dir.join("groups"),
            python,
            ledger: parts.ledger,
            transport: parts.transport,
            membership: parts.membership,
            artifacts: parts.artifacts,
            images: parts.images,
            containers: parts.containers,
            events: parts.events,
            metrics: Mutex::new(FunctionMetrics::new()),
            slots: slots::SlotNumbers::starting_at(now_millis().saturating_mul(1000)),
            stop: parts.stop,
            secrets: parts.secrets,
            sandbox: tokio::sync::OnceCell::new(),
            hidden: parts.hidden,
            users: parts.users,
            disk_reserve: parts.disk_reserve,
        });
        Arc::new(FunctionHost {
            ctx,
            deployments: Mutex::new(BTreeMap::new()),
            retired: Mutex::new(Vec::new()),
            observing: Mutex::new(BTreeSet::new()),
            refused: Mutex::new(BTreeMap::new()),
            invocations: invocations::Running::default(),
        })
    }

    /// Keep deployments in step with the ledger until the node stops; then stop every
    /// function process of this node (instances, zygotes, their cgroups).
    pub async fn run(self: Arc<Self>) {
        // Probe the sandbox now: its warnings belong to startup, and the leftovers of a
        // crashed run go before anything new starts.
        if let Err(e) = self.ctx.sandbox().await {
            tracing::error!(error = %e, "function instances cannot start on this node");
        }
        // Container instances too: their runtime died with the node, and where no cgroup
        // holds them they still run.
        let removed = self.remove_leftover_containers().await;
        if removed > 0 {
            tracing::warn!(containers = removed, "removed function containers the previous run of this node left");
        }
        // Slots a previous run of this node held are stale: its instances died with it.
        let release = Command::ReleaseInstances {
            node: self.ctx.id,
            function: String::new(),
            instances: vec![],
            all: true,
            now: now_millis(),
        };
        let ledger = self.ctx.ledger.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                if ledger.write(release.clone()).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let mut committed = self.ctx.ledger.subscribe();
        let mut membership = self.ctx.membership.clone();
        let mut tick = tokio::time::interval(SYNC_EVERY);
        let mut gc = tokio::time::interval(GC_EVERY);
        loop {
            tokio::select! {
                _ = self.ctx.stopping() => break,
                c = committed.recv() => {
                    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
                    let mut relevant = match c {
                        Ok(c) => concerns_functions(&c),
                        Err(RecvError::Lagged(_)) => true,
                        Err(RecvError::Closed) => break,
                    };
                    // Coalesce a burst of commits into one pass, and skip bursts that change
                    // nothing this host looks at (task traffic): the tick catches up anyway.
                    loop {
                        match committed.try_recv() {
                            Ok(c) => relevant |= concerns_functions(&c),
                            Err(TryRecvError::Lagged(_)) => relevant = true,
                            Err(_) => break,
                        }
                    }
                    if !relevant {
                        continue;
                    }
                }
                _ = membership.changed() => {}
                _ = tick.tick() => self.reconcile_slots(),
                _ = gc.tick() => self.ctx.artifacts.collect_garbage(),
            }
            self.sync();
            invocations::run_owned(&self);
        }
        let all: Vec<Arc<Deployment>> = lock(&self.deployments).values().cloned().collect();
        for d in &all {
            d.retire();
        }
        self.stop_all().await;
    }

    /// Delete every container instance left in this node's work dirs (`falak_function`'s
    /// `remove_leftover_containers`); the number deleted.
    async fn remove_leftover_containers(&self) -> usize {
        let (runtime, bases) = (self.ctx.containers.clone(), [self.ctx.dir.join("w"), self.ctx.short_socket_base()]);
        tokio::task::spawn_blocking(move || falak_function::remove_leftover_containers(runtime.as_ref(), &bases))
            .await
            .unwrap_or(0)
    }

    /// Stop every deployment's processes (bounded), then remove the function host's cgroup
    /// scope, which kills whatever a stop did not reach.
    async fn stop_all(&self) {
        let all = self.all_deployments();
        let stopped = futures_util::future::join_all(all.iter().map(|d| d.shutdown()));
        if tokio::time::timeout(STOP_WAIT, stopped).await.is_err() {
            tracing::warn!("function instances did not all stop in time; their cgroups are killed");
        }
        // Containers no stop reached (where no cgroup holds them, removing the scope would not).
        let left = self.remove_leftover_containers().await;
        if left > 0 {
            tracing::warn!(containers = left, "deleted function containers that did not stop in time");
        }
        let cgroups = self.ctx.sandbox.get().and_then(|s| s.cgroups.clone());
        if let Some(cgroups) = cgroups {
            let removed = tokio::task::spawn_blocking(move || cgroups.remove_scope()).await;
            if let Ok(Err(e)) = removed {
                tracing::warn!(error = %e, "cannot remove the function host's cgroup scope");
            }
        }
    }

    /// Release ledger slots this node holds without an instance behind them (a release that
    /// never committed, a claim that committed after it timed out).
    fn reconcile_slots(&self) {
        let held: BTreeSet<u64> = self.all_deployments().iter().flat_map(|d| d.slots()).collect();
        let stale = slots::stale_slots(&self.ctx.ledger.state(), &self.ctx.id, &held, now_millis());
        for (function, slot) in stale {
            tracing::info!(%function, slot, "releasing an instance slot with no instance behind it");
            self.ctx.release_slot(&function, slot);
        }
    }

    /// Bring local deployments in line with committed state and the orbit.
    fn sync(self: &Arc<Self>) {
        // Read committed state first and let go of its lock before taking `deployments`: the
        // gateway takes them in the same order.
        let (entries, labels, refused): (Vec<(FunctionSpec, u64)>, NodeLabels, BTreeMap<String, String>) = {
            let state = self.ctx.ledger.state();
            // Every node verifies a function's signature before it prepares or serves it.
            let mut refused = BTreeMap::new();
            let verified = state.functions().filter(|f| {
                let check = state.check_signature(
                    falak_core::signing::SpecKind::Function,
                    &f.spec.signed_form(),
                    f.signature.as_ref(),
                );
                check.map_err(|e| refused.insert(f.spec.name.clone(), e.to_string())).is_ok()
            });
            let entries = verified.map(|f| (f.spec.clone(), f.deployed_at)).collect();
            let labels = state.nodes().filter(|n| !n.offline).map(|n| (n.record.id, n.record.labels.clone())).collect();
            (entries, labels, refused)
        };
        {
            let mut known = lock(&self.refused);
            for (name, reason) in &refused {
                if known.get(name) != Some(reason) {
                    tracing::warn!(function = %name, %reason, "function refused");
                    self.ctx.publish("function_refused", serde_json::json!({"function": name, "reason": reason}));
                }
            }
            *known = refused;
        }
        let deployed_at: BTreeMap<String, u64> = entries.iter().map(|(f, at)| (f.name.clone(), *at)).collect();
        let functions: Vec<FunctionSpec> = entries.into_iter().map(|(f, _)| f).collect();
        let live: BTreeSet<String> = functions.iter().map(|f| f.name.clone()).collect();
        let peers = self.ctx.peers();
        let mut deployments = lock(&self.deployments);
        // Removed functions: retire.
        let gone: Vec<String> = deployments.keys().filter(|n| !live.contains(*n)).cloned().collect();
        for name in gone {
            if let Some(d) = deployments.remove(&name) {
                d.retire();
                lock(&self.retired).push(d);
            }
        }
        let mut observing = lock(&self.observing);
        for spec in functions {
            let fits =
                |id: &NodeId| labels.get(id).is_some_and(|l| spec.labels.iter().all(|(k, v)| l.get(k) == Some(v)));
            let orbit = orbit(&spec, self.ctx.id, &peers, fits);
            let observer = orbit.contains(&self.ctx.id);
            let primary = orbit.first() == Some(&self.ctx.id);
            let current = deployments.get(&spec.name).filter(|d| d.spec.version == spec.version).cloned();
            let deployment = match current {
                Some(d) => Some(d),
                None => {
                    if let Some(old) = deployments.remove(&spec.name) {
                        old.retire();
                        lock(&self.retired).push(old);
                    }
                    // Deploy a local copy when this node observes it; others on demand.
                    if observer {
                        let min = if primary { spec.scaling.min_instances } else { 0 };
                        let d = Deployment::new(self.ctx.clone(), spec.clone(), min);
                        deployments.insert(spec.name.clone(), d.clone());
                        Some(d)
                    } else {
                        None
                    }
                }
            };
            // The first-ranked observer keeps the floor; it moves with the orbit.
            if let Some(d) = &deployment {
                d.set_min_instances(if primary { spec.scaling.min_instances } else { 0 });
            }
            if observer && !observing.contains(&spec.name) {
                observing.insert(spec.name.clone());
                let recruited = deployed_at.get(&spec.name).is_some_and(|at| now_millis().saturating_sub(*at) > 5_000);
                if recruited {
                    self.ctx.publish(
                        "function_at_risk",
                        serde_json::json!({"function": spec.name, "observers": spec.observers, "recruited": self.ctx.id}),
                    );
                }
            } else if !observer {
                observing.remove(&spec.name);
            }
            // Observers keep the deployment prepared and its snapshot ready (again after a
            // zygote died or a preparation failed); the deployment decides whether it needs to.
            if let Some(d) = deployment.filter(|_| observer) {
                d.warm();
            }
        }
        lock(&self.retired).retain(|d| !d.is_drained());
    }

    /// The deployment of the current version of `spec`, created on demand.
    pub(crate) fn deployment_for(&self, spec: &FunctionSpec) -> Arc<Deployment> {
        let mut deployments = lock(&self.deployments);
        // The current version, or a newer one the caller's spec predates: serve with it.
        if let Some(d) = deployments.get(&spec.name).filter(|d| d.spec.version >= spec.version) {
            return d.clone();
        }
        if let Some(old) = deployments.remove(&spec.name) {
            old.retire();
            lock(&self.retired).push(old);
        }
        let d = Deployment::new(self.ctx.clone(), spec.clone(), 0);
        deployments.insert(spec.name.clone(), d.clone());
        d
    }

    /// Why `name` is not served here, when its signature does not verify.
    pub(crate) fn refused(&self, name: &str) -> Option<String> {
        lock(&self.refused).get(name).cloned()
    }

    pub(crate) fn local(&self, name: &str) -> Option<Arc<Deployment>> {
        lock(&self.deployments).get(name).cloned()
    }

    pub(crate) fn ctx(&self) -> &Arc<HostContext> {
        &self.ctx
    }

    pub(crate) fn api_url(&self) -> String {
        self.ctx.api_url.clone()
    }

    /// Current and draining deployments.
    pub(crate) fn all_deployments(&self) -> Vec<Arc<Deployment>> {
        let mut all: Vec<Arc<Deployment>> = lock(&self.deployments).values().cloned().collect();
        all.extend(lock(&self.retired).iter().cloned());
        all
    }

    /// What this node gossips about its functions.
    pub fn gossip(&self) -> Vec<(String, FunctionGossip)> {
        let deployments = lock(&self.deployments);
        let mut all: Vec<(String, FunctionGossip)> = deployments
            .values()
            .map(|d| {
                (
                    d.spec.name.clone(),
                    FunctionGossip {
                        version: d.spec.version,
                        instances: d.instance_count(),
                        free_slots: d.free_slots(),
                        prepared: d.is_prepared(),
                        snapshot: d.has_snapshot(),
                    },
                )
            })
            .collect();
        all.sort_by_key(|(name, g)| (std::cmp::Reverse(g.instances), std::cmp::Reverse(g.snapshot), name.clone()));
        all.truncate(MAX_GOSSIP_FUNCTIONS);
        all
    }

    /// Append the function metrics in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        lock(&self.ctx.metrics).render(out);
        let deployments = lock(&self.deployments);
        let _ = writeln!(
            out,
            "# HELP falak_function_instances Instances of each function on this node\n# TYPE falak_function_instances gauge"
        );
        for d in deployments.values() {
            let _ = writeln!(out, "falak_function_instances{{function=\"{}\"}} {}", d.spec.name, d.instance_count());
        }
    }

    /// Answer one function-management action (called from the main loop; never blocks it).
    pub fn handle(self: &Arc<Self>, action: FunctionAction) {
        let this = self.clone();
        tokio::spawn(async move { this.answer(action).await });
    }

    async fn answer(self: Arc<Self>, action: FunctionAction) {
        match action {
            FunctionAction::StoreArtifact { bytes, reply } => {
                let _ = reply.send(self.ctx.artifacts.store_bundle(bytes).await);
            }
            FunctionAction::Deploy { document, signature, idempotency, reply } => {
                let _ = reply.send(self.deploy(*document, signature, idempotency).await);
            }
            FunctionAction::List { reply } => {
                let state = self.ctx.ledger.state();
                let _ = reply.send(Ok(state.functions().map(FunctionInfo::of).collect()));
            }
            FunctionAction::Get { name, reply } => {
                let state = self.ctx.ledger.state();
                let _ = reply.send(state.function(&name).map(FunctionInfo::of).ok_or_else(|| not_found(&name)));
            }
            FunctionAction::Remove { name, reply } => {
                let info = self.ctx.ledger.state().function(&name).map(FunctionInfo::of);
                let result = match info {
                    None => Err(not_found(&name)),
                    Some(info) => self
                        .write(Command::RemoveFunction { name: name.clone(), now: now_millis() }, None)
                        .await
                        .map(|_| info),
                };
                let _ = reply.send(result);
            }
            FunctionAction::Rollback { name, version, reply } => {
                let command = Command::RollbackFunction { name: name.clone(), version, now: now_millis() };
                let result = self.write(command, None).await.and_then(|_| {
                    let state = self.ctx.ledger.state();
                    state.function(&name).map(FunctionInfo::of).ok_or_else(|| not_found(&name))
                });
                let _ = reply.send(result);
            }
            FunctionAction::Instances { name, reply } => {
                let _ = reply.send(rpc::gather_instances(&self, &name).await);
            }
            FunctionAction::Logs { name, max_bytes, reply } => {
                let _ = reply.send(rpc::gather_logs(&self, &name, max_bytes).await);
            }
            FunctionAction::Invoke { name, submission, idempotency, reply } => {
                let _ = reply.send(invocations::submit(&self, &name, &submission, idempotency.as_ref()).await);
            }
            FunctionAction::GetInvocation { name, id, reply } => {
                let state = self.ctx.ledger.state();
                let result = state
                    .invocation(id)
                    .filter(|i| i.function == name)
                    .map(InvocationInfo::of)
                    .ok_or_else(|| ApiError::not_found(format!("function {name} has no invocation {id}")));
                let _ = reply.send(result);
            }
        }
    }

    /// Validate, prepare here (so a broken bundle or dependency fails the deploy, not the first
    /// request), then commit.
    async fn deploy(
        self: &Arc<Self>,
        document: FunctionDocument,
        signature: Option<falak_core::signing::SpecSignature>,
        idempotency: Option<falak_core::ledger::IdempotencyKey>,
    ) -> Result<FunctionDeployed, ApiError> {
        let mut spec = document.validate(0)?;
        let asked = falak_core::ledger::RequestFingerprint::of("deploy_function", &spec.signed_form());
        // Verified before anything is prepared.
        let checked = self.ctx.ledger.state().check_signature(
            falak_core::signing::SpecKind::Function,
            &spec.signed_form(),
            signature.as_ref(),
        );
        if let Err(refused) = checked {
            return Err(ApiError::new(falak_api::ErrorCode::Forbidden, refused.to_string()));
        }
        // Secrets are sealed here, before the trial preparation or anything is written.
        let owner = spec.secrets_owner();
        self.ctx.secrets.seal_all(&owner, &mut spec.secrets, rand::random);
        if let Some(artifact) = spec.artifact
            && !self.ctx.artifacts.store().contains(artifact)
        {
            return Err(ApiError::invalid(format!(
                "bundle {artifact} is not stored on this node; upload it first with POST /api/v1/artifacts (falak fn deploy does)"
            )));
        }
        let started = instant();
        let trial = Deployment::new(self.ctx.clone(), FunctionSpec { version: 0, ..spec.clone() }, 0);
        let prepared = trial.ensure_prepared().await;
        let snapshot = trial.has_snapshot();
        trial.retire();
        let prepared = prepared.map_err(ApiError::invalid)?;
        let dependencies = prepared.0.venv().is_some();
        let millis = started.elapsed().as_millis() as u64;
        let command = Command::DeployFunction { spec: spec.clone(), signature, now: now_millis() };
        let outcome = self.write(crate::api::keyed(command, idempotency.as_ref(), asked), idempotency.as_ref()).await?;
        match outcome {
            Outcome::FunctionDeployed { name, version, unchanged } => {
                // Answer once an observer has the new version's snapshot ready, so the first
                // request starts from it (bounded: observers keep warming after the answer).
                if spec.snapshot == SnapshotPolicy::Zygote {
                    self.wait_for_snapshot(&name, version, READY_WAIT).await;
                }
                Ok(FunctionDeployed {
                    name,
                    version,
                    unchanged,
                    artifact: spec.artifact,
                    image: spec.container.as_ref().map(|c| c.image.clone()),
                    prepare: PrepareReport {
                        node: self.ctx.node_name.clone(),
                        millis,
                        dependencies,
                        snapshot: snapshot || spec.snapshot == SnapshotPolicy::None,
                    },
                })
            }
            other => Err(ApiError::internal(format!("unexpected ledger outcome {other:?}"))),
        }
    }

    /// Wait until this node or a peer (by gossip) has a snapshot of `name@version`, or `limit`.
    async fn wait_for_snapshot(&self, name: &str, version: u32, limit: Duration) -> bool {
        let deadline = instant() + limit;
        loop {
            let local = self.local(name).is_some_and(|d| d.spec.version == version && d.has_snapshot());
            let remote = self.ctx.peers().iter().any(|(_, g)| {
                g.as_ref().and_then(|g| g.function(name)).is_some_and(|f| f.version == version && f.snapshot)
            });
            if local || remote {
                return true;
            }
            if instant() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Write `command` (keyed by the client's `key`, when it sent one) and answer with its
    /// outcome.
    pub(crate) async fn write(
        &self,
        command: Command,
        key: Option<&falak_core::ledger::IdempotencyKey>,
    ) -> Result<Outcome, ApiError> {
        match self.ctx.ledger.write(command).await {
            Ok(applied) => match applied.outcome {
                Outcome::Rejected(r) => Err(r.into()),
                other => Ok(other),
            },
            Err(e) => Err(crate::api::write_error(&e, key)),
        }
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("no function named {name}; list them with `falak fn list`"))
}

/// Whether a committed entry changes what `FunctionHost::sync` and the invocation runner read:
/// functions, and which nodes are admitted and online (orbits, invocation owners).
fn concerns_functions(committed: &falak_ledger::Committed) -> bool {
    use falak_core::ledger::LedgerEvent as E;
    match committed {
        falak_ledger::Committed::SnapshotInstalled { .. } => true,
        falak_ledger::Committed::Entry { applied, .. } => applied.events.iter().any(|e| {
            matches!(
                e,
                E::FunctionDeployed { .. }
                    | E::FunctionRemoved { .. }
                    | E::NodeAdmitted { .. }
                    | E::NodeRevoked { .. }
                    | E::NodeOffline { .. }
                    | E::NodeOnline { .. }
            )
        }),
    }
}

/// The observers of a function: healthy nodes (this one included) that carry its labels,
/// ranked by rendezvous hashing of the function name and node id, up to `observers`. Every node
/// computes the same orbit from the same membership view; a lost observer is replaced by the
/// next-ranked node.
pub(crate) fn orbit(
    spec: &FunctionSpec,
    me: NodeId,
    peers: &[(NodeId, Option<falak_core::gossip::GossipState>)],
    fits: impl Fn(&NodeId) -> bool,
) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = peers.iter().map(|(id, _)| *id).chain([me]).filter(|id| fits(id)).collect();
    nodes.sort();
    nodes.dedup();
    let mut ranked: Vec<(blake3::Hash, NodeId)> = nodes
        .into_iter()
        .map(|id| {
            let mut h = blake3::Hasher::new();
            h.update(spec.name.as_bytes());
            h.update(&id.0);
            (h.finalize(), id)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.as_bytes().cmp(a.0.as_bytes()));
    ranked.into_iter().take(spec.observers as usize).map(|(_, id)| id).collect()
}

/// Where the function host keeps things under the node's data dir.
pub fn functions_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("functions")
}

/// Probe what confines function processes (a cgroup scope of their own), remove the cgroups a
/// crashed run left in it, and make the function dirs with their modes. Warns, at startup,
/// when instances will not be able to reach the dirs. Blocking.
fn probe_sandbox(scope: &str, dirs: &[(PathBuf, u32)]) -> WorkloadSandbox {
    let host = HostSandbox::detect(Some(scope));
    if let Some(cgroups) = &host.cgroups {
        let left = cgroups.remove_leftovers();
        if left > 0 {
            tracing::warn!(cgroups = left, "removed function cgroups the previous run of this node left");
        }
    }
    let sandbox = WorkloadSandbox::from_host(&host);
    if !host.network_namespaces {
        tracing::warn!("function instances share the node's network: this host cannot make network namespaces");
    }
    for (dir, mode) in dirs {
        if let Err(e) = owned_dir(dir, *mode) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make a function dir");
        }
    }
    if let (Some(user), Some((functions, _))) = (sandbox.run_as, dirs.first())
        && let Some(blocked) = falak_function::unreachable_by(user, functions)
    {
        tracing::warn!(
            "function instances run as uid {} but cannot reach {}: {blocked}; every deployment will fail to prepare \
             until every directory above it is searchable by that user (chmod o+x)",
            user.uid,
            functions.display()
        );
    }
    tracing::info!(sandbox = ?sandbox, "function sandbox");
    sandbox
}

/// Make `dir` (and its parents) and give it `mode`; it must be a directory of this process's
/// user, not a symlink. Blocking.
fn owned_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        return Err(std::io::Error::other(format!("{} is not a directory of uid {me}", dir.display())));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}
