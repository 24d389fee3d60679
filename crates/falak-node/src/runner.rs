//! Starts and stops task attempts through the executor and reports their lifecycle as events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use falak_core::job::{LEDGER_TAIL_BYTES, TaskId, TaskReport};
use falak_core::secret::SecretKey;
use falak_exec::{Executor, RunAs, Running, TaskSpec};

use crate::main_loop::{Event, EventSender, TaskEvent};
use crate::reconcile::TaskLaunch;

/// How long a stopped task gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

struct Slot {
    fencing: u64,
    handle: Mutex<Option<Arc<dyn Running>>>,
    stop_requested: AtomicBool,
}

/// How many attempts one node starts at the same time; the rest wait their turn.
pub const MAX_CONCURRENT_STARTS: usize = 16;

/// Who a node's tasks run as.
#[derive(Debug, Clone)]
pub enum TaskUsers {
    /// The executor's default (the node's own user; nobody for a root node without a pool).
    Default,
    /// Every task as this user (the node config's `run_as`).
    All(RunAs),
    /// Each capsule as a uid of its own, so tasks of one capsule cannot read another's files,
    /// logs or processes.
    PerCapsule(Arc<falak_exec::WorkloadUsers>),
}

impl TaskUsers {
    fn for_capsule(&self, capsule: &str) -> Option<RunAs> {
        match self {
            TaskUsers::Default => None,
            TaskUsers::All(user) => Some(*user),
            TaskUsers::PerCapsule(users) => Some(users.user_for(&format!("capsule:{capsule}"))),
        }
    }
}

/// The task attempts this node has started, by task.
pub struct Runner {
    executor: Arc<dyn Executor>,
    tasks_dir: PathBuf,
    /// Process groups of running attempts (see [`crate::orphans`]).
    groups_dir: PathBuf,
    /// Who tasks run as (see [`TaskUsers`]).
    users: TaskUsers,
    /// Opens the capsules' sealed secrets.
    secrets: SecretKey,
    /// Attempts being started at once (workdir, cgroups, Landlock, spawn), at most
    /// [`MAX_CONCURRENT_STARTS`]: a burst of thousands of claims must not tie up every blocking
    /// thread and CPU with sandbox setup while the node's membership and ledger need to answer.
    starts: Arc<tokio::sync::Semaphore>,
    slots: BTreeMap<TaskId, Arc<Slot>>,
    /// Where capsules' code comes from (fetched from peers, unpacked once per node).
    artifacts: Arc<crate::artifacts::NodeArtifacts>,
    /// Where container capsules' images come from (peers first, then the registry).
    images: Arc<crate::images::NodeImages>,
}

impl Runner {
    pub fn new(
        executor: Arc<dyn Executor>,
        tasks_dir: PathBuf,
        groups_dir: PathBuf,
        users: TaskUsers,
        secrets: SecretKey,
        artifacts: Arc<crate::artifacts::NodeArtifacts>,
        images: Arc<crate::images::NodeImages>,
    ) -> Runner {
        let starts = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_STARTS));
        Runner { executor, tasks_dir, groups_dir, users, secrets, starts, slots: BTreeMap::new(), artifacts, images }
    }

    /// The node's artifacts, where capsules' code comes from.
    pub fn artifacts(&self) -> &Arc<crate::artifacts::NodeArtifacts> {
        &self.artifacts
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    /// The working directory of one attempt; logs live there.
    pub fn workdir(tasks_dir: &Path, task: TaskId, attempt: u32) -> PathBuf {
        tasks_dir.join(format!("{task}.a{attempt}"))
    }

    pub fn tasks_dir(&self) -> &Path {
        &self.tasks_dir
    }

    /// Start an attempt in the background; `Started` and `Exited` arrive as events.
    pub fn start(&mut self, mut launch: TaskLaunch, tx: EventSender) {
        // Secrets join the environment here, in the node that runs the task, and nowhere else.
        for (name, sealed) in std::mem::take(&mut launch.secrets) {
            match self.secrets.open(&launch.capsule, &name, &sealed) {
                Ok(value) => {
                    launch.env.insert(name, value);
                }
                Err(e) => {
                    launch.refused.get_or_insert_with(|| format!("not run: {e}"));
                }
            }
        }
        if let Some(reason) = launch.refused {
            tracing::warn!(task = %launch.task, %reason, "task refused");
            let report = not_started(reason);
            let (task, fencing) = (launch.task, launch.fencing);
            let _ = tx.send(Event::Task(TaskEvent::Exited { task, fencing, report, started: false }));
            return;
        }
        let mut spec = TaskSpec::new(
            launch.task.to_string(),
            launch.attempt,
            launch.command,
            Self::workdir(&self.tasks_dir, launch.task, launch.attempt),
        );
        spec.env = launch.env;
        spec.stdin = launch.stdin;
        spec.timeout = launch.timeout_ms.map(Duration::from_millis);
        spec.limits.cpu_millis = Some(launch.resources.cpu_millis);
        spec.limits.memory_bytes = Some(launch.resources.memory_bytes);
        spec.limits.disk_bytes = Some(launch.disk_bytes);
        spec.run_as = self.users.for_capsule(&launch.capsule);
        spec.network = match launch.network {
            falak_core::capsule::NetworkMode::None => falak_exec::Network::None,
            falak_core::capsule::NetworkMode::Host => falak_exec::Network::Host,
        };
        spec.output_tail_bytes = LEDGER_TAIL_BYTES;
        let slot = Arc::new(Slot {
            fencing: launch.fencing,
            handle: Mutex::new(None),
            stop_requested: AtomicBool::new(false),
        });
        self.slots.insert(launch.task, slot.clone());
        let executor = self.executor.clone();
        let (task, fencing) = (launch.task, launch.fencing);
        let groups_dir = self.groups_dir.clone();
        let group_name = format!("{task}.a{}", launch.attempt);
        let starts = self.starts.clone();
        let (artifacts, artifact) = (self.artifacts.clone(), launch.artifact);
        let (images, container) = (self.images.clone(), launch.container);
        tokio::spawn(async move {
            // A container's image likewise: pulled once per node, peers first.
            if let Some(container) = container {
                let image = container.image.clone();
                // Its read-only mounts' bundles as well, each unpacked once per node.
                let mut mounts = Vec::new();
                for mount in &container.mounts {
                    match artifacts.bundle_dir(mount.artifact).await {
                        Ok(source) => {
                            mounts.push(falak_exec::ReadOnlyMount { source, destination: mount.path.clone() })
                        }
                        Err(e) => {
                            let message =
                                format!("cannot get the bundle {} mounted at {}: {e}", mount.artifact, mount.path);
                            let report = not_started(message);
                            let _ = tx.send(Event::Task(TaskEvent::Exited { task, fencing, report, started: false }));
                            return;
                        }
                    }
                }
                let ready = match images.for_container(&image).await {
                    Ok(ready) => {
                        let built =
                            tokio::task::spawn_blocking(move || container_spec(spec, &container, ready, mounts)).await;
                        built.unwrap_or_else(|e| Err(e.to_string()))
                    }
                    Err(e) => Err(format!("cannot get the image {image}: {e}")),
                };
                match ready {
                    Ok(ready) => spec = ready,
                    Err(e) => {
                        tracing::warn!(%task, %image, error = %e, "cannot prepare the container");
                        let report = not_started(e);
                        let _ = tx.send(Event::Task(TaskEvent::Exited { task, fencing, report, started: false }));
                        return;
                    }
                }
            }
            // The code first (from a peer if need be; one transfer per node however many
            // attempts wait for it), outside the start permits: a slow fetch holds up no other
            // capsule's starts.
            if let Some(artifact) = artifact {
                match artifacts.bundle_dir(artifact).await {
                    Ok(dir) => spec.code = Some(dir),
                    Err(e) => {
                        tracing::warn!(%task, %artifact, error = %e, "cannot get the capsule's code");
                        let report = not_started(format!("cannot get the capsule's code (bundle {artifact}): {e}"));
                        let _ = tx.send(Event::Task(TaskEvent::Exited { task, fencing, report, started: false }));
                        return;
                    }
                }
            }
            let permit = starts.acquire_owned().await.expect("the start semaphore is never closed");
            let started = executor.start(spec).await;
            drop(permit);
            match started {
                Ok(handle) => {
                    if let Some(pid) = handle.pid() {
                        crate::orphans::record(&groups_dir, &group_name, pid);
                    }
                    *slot.handle.lock().expect("slot lock") = Some(handle.clone());
                    let _ = tx.send(Event::Task(TaskEvent::Started { task, fencing }));
                    let exit = if slot.stop_requested.load(Ordering::SeqCst) {
                        handle.stop(STOP_GRACE).await
                    } else {
                        handle.wait().await
                    };
                    crate::orphans::forget(&groups_dir, &group_name);
                    let _ = tx.send(Event::Task(TaskEvent::Exited {
                        task,
                        fencing,
                        report: exit.to_report(),
                        started: true,
                    }));
                }
                Err(e) => {
                    tracing::warn!(%task, error = %e, "task failed to start");
                    let report = not_started(format!("failed to start: {e}"));
                    let _ = tx.send(Event::Task(TaskEvent::Exited { task, fencing, report, started: false }));
                }
            }
        });
    }

    /// Stop an attempt (the whole process group); its `Exited` event follows.
    pub fn stop(&mut self, task: TaskId, fencing: u64) {
        let Some(slot) = self.slots.get(&task).filter(|s| s.fencing == fencing) else { return };
        slot.stop_requested.store(true, Ordering::SeqCst);
        if let Some(handle) = slot.handle.lock().expect("slot lock").clone() {
            tokio::spawn(async move {
                handle.stop(STOP_GRACE).await;
            });
        }
    }

    /// The attempt ended; drop its slot.
    pub fn forget(&mut self, task: TaskId, fencing: u64) {
        if self.slots.get(&task).is_some_and(|s| s.fencing == fencing) {
            self.slots.remove(&task);
        }
    }

    /// Stop everything (node shutdown) and wait for it.
    pub async fn stop_all(&mut self, grace: Duration) {
        let handles: Vec<Arc<dyn Running>> =
            self.slots.values().filter_map(|s| s.handle.lock().expect("slot lock").clone()).collect();
        futures_util::future::join_all(handles.iter().map(|h| h.stop(grace))).await;
        self.slots.clear();
    }
}

/// `spec` as a container of `image`: Kubernetes' rules for the process (`command` replaces the
/// image's entrypoint, `args` its `cmd`; a `command` alone drops the `cmd`), the image's
/// environment under the capsule's, the capsule's working directory and user over the image's.
/// Blocking (the user may be a name in the image's `/etc/passwd`).
fn container_spec(
    mut spec: TaskSpec,
    container: &falak_core::capsule::ContainerSpec,
    image: crate::images::ContainerImage,
    mounts: Vec<falak_exec::ReadOnlyMount>,
) -> Result<TaskSpec, String> {
    let run = image.run(std::mem::take(&mut spec.command), container)?;
    spec.command = run.args;
    let mut env = run.env;
    env.append(&mut spec.env);
    spec.env = env;
    spec.run_as = None;
    spec.container = Some(falak_exec::ContainerTask { mounts, ..run.task });
    Ok(spec)
}

/// The report of an attempt that never started, saying why.
fn not_started(error: String) -> TaskReport {
    TaskReport {
        exit_code: None,
        error: Some(error),
        duration_ms: 0,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
    }
}
