//! Following the mesh's nodes while `falak up` runs: its own children, nodes started again by
//! hand (found through the `node.pid` each `falak node` writes), restarts with `--restart`, and
//! the stop that ends them all.
//!
//! `mesh.json` follows every change: a node that exits is listed without a pid until a process
//! runs it again. `falak up` runs while any node of the mesh runs (with `--restart`, until it
//! is stopped), and removes `mesh.json` only once none does.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use futures_util::future::OptionFuture;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::*;
use crate::cli::node::NodeProcess;

/// How often the node dirs' pid files, adopted nodes and due restarts are looked at.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// How often a stopping node that is not a child of `falak up` is looked at.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long a node that is not a child gets to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A node's process as `falak up` knows it.
pub(super) enum Process {
    /// A child of this `falak up`, in its own process group.
    Child { child: Child, pid: u32 },
    /// Started by someone else (by hand) and found through its pid file. Not a child, so its
    /// end is noticed by looking, and only the process itself is ever signalled.
    Adopted(NodeProcess),
    /// Not running; how the last process ended.
    Exited(String),
}

/// A node of the mesh.
pub(super) struct MeshNode {
    pub(super) setup: NodeSetup,
    pub(super) client: Client,
    pub(super) process: Process,
    /// Bumped whenever another process runs the node, so news about an earlier one is dropped.
    generation: u64,
    /// When the current process was started or found, for `--restart`'s backoff.
    since: Instant,
    backoff: Backoff,
    /// When `--restart` starts the node again.
    restart_at: Option<Instant>,
}

impl MeshNode {
    pub(super) fn name(&self) -> &str {
        &self.setup.name
    }

    pub(super) fn pid(&self) -> Option<u32> {
        match &self.process {
            Process::Child { pid, .. } => Some(*pid),
            Process::Adopted(process) => Some(process.pid),
            Process::Exited(_) => None,
        }
    }

    pub(super) fn running(&self) -> bool {
        self.pid().is_some()
    }

    /// How the last process ended, once it has.
    pub(super) fn exit(&self) -> Option<&str> {
        match &self.process {
            Process::Exited(how) => Some(how),
            _ => None,
        }
    }

    /// Whether a child has exited (reaping it); adopted nodes are looked at by [`Supervisor`].
    pub(super) fn reap(&mut self) -> bool {
        if let Process::Child { child, pid } = &mut self.process
            && let Some(status) = child.try_wait().transpose()
        {
            self.process = Process::Exited(describe_exit(*pid, status));
        }
        !self.running()
    }

    /// Wait until the process has ended, and say so.
    async fn wait_stopped(&mut self, verb: &str) {
        let how = match &mut self.process {
            Process::Child { child, pid } => describe_exit(*pid, child.wait().await),
            Process::Adopted(process) => {
                while process.alive() {
                    tokio::time::sleep(STOP_POLL).await;
                }
                format!("pid {}", process.pid)
            }
            Process::Exited(_) => return,
        };
        println!("{} {verb} ({how})", self.setup.name);
        self.process = Process::Exited(how);
    }
}

/// `pid 12, exit status: 0`.
fn describe_exit(pid: u32, status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => format!("pid {pid}, {status}"),
        Err(error) => format!("pid {pid}, status unknown: {error}"),
    }
}

/// `--restart`'s wait before starting a node again: 1 s, doubling to 30 s while the node keeps
/// exiting, back to 1 s once it ran for a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);
    /// A node that ran this long was healthy; its next restart waits [`Backoff::FIRST`] again.
    const HEALTHY: Duration = Duration::from_secs(60);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The wait before restarting a node that exited after running for `ran`.
    fn delay(&mut self, ran: Duration) -> Duration {
        if ran >= Self::HEALTHY {
            self.next = Self::FIRST;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }
}

/// `--demo`, run while the nodes are followed.
pub(super) type Demo = Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

/// What the supervisor wakes up for.
enum Event {
    Signal(&'static str),
    DemoFinished(anyhow::Result<()>),
    /// A child ended (already reaped): how.
    ChildExited(usize, String),
    /// A node that runs again answered `/readyz`, or gave up after [`READY_TIMEOUT`] with the
    /// last reason, for the process of this generation.
    Readiness {
        index: usize,
        generation: u64,
        not_ready: Option<String>,
    },
    /// Time to look at pid files, adopted nodes and due restarts.
    Poll,
}

/// The mesh's nodes and `mesh.json`, kept in step.
pub(super) struct Supervisor {
    root: PathBuf,
    /// `--restart`.
    restart: bool,
    /// The binary nodes are started with (set by `start`).
    exe: PathBuf,
    pub(super) nodes: Vec<MeshNode>,
    /// `mesh.json` as last written, once the mesh is up.
    record: Option<MeshRecord>,
    /// Whether the last write of `mesh.json` failed (warned about once).
    record_failing: bool,
}

impl Supervisor {
    pub(super) fn new(root: &Path, restart: bool) -> Supervisor {
        Supervisor {
            root: root.to_owned(),
            restart,
            exe: PathBuf::new(),
            nodes: Vec::new(),
            record: None,
            record_failing: false,
        }
    }

    /// Start a child for every node.
    pub(super) fn start(&mut self, setups: &[NodeSetup]) -> anyhow::Result<()> {
        self.exe = std::env::current_exe().context("cannot find the falak binary to start nodes with")?;
        let root = &self.root;
        let token = read_admin_token(root)?;
        let ca_path = root.join(mesh_files::CREDENTIALS_DIR).join("ca.crt");
        let ca =
            fs::read_to_string(&ca_path).with_context(|| format!("cannot read the mesh CA {}", ca_path.display()))?;
        let key_path = root.join(mesh_files::CREDENTIALS_DIR).join("deployer.key");
        let key = fs::read_to_string(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
        let deployer = std::sync::Arc::new(
            falak_core::signing::DeployerKey::from_pem(&key).with_context(|| key_path.display().to_string())?,
        );
        for setup in setups {
            let client = Client::new(&setup.api_url())?
                .with_ca(&ca)?
                .with_token(Some(token.clone()))
                .with_deployer(Some(deployer.clone()));
            let (child, pid) = spawn_node(&self.exe, setup)?;
            println!("started {} (pid {pid}), log {}", setup.name, setup.log_path().display());
            self.nodes.push(MeshNode {
                setup: setup.clone(),
                client,
                process: Process::Child { child, pid },
                generation: 0,
                since: falak_node::clock::instant(),
                backoff: Backoff::new(),
                restart_at: None,
            });
        }
        Ok(())
    }

    /// Write `mesh.json` for the first time, the nodes as they run now.
    pub(super) fn record(&mut self, mut record: MeshRecord) -> anyhow::Result<MeshRecord> {
        for (i, node) in self.nodes.iter().enumerate() {
            record.set_pid(i, node.pid());
        }
        record.write(&self.root.join(MESH_JSON))?;
        self.record = Some(record.clone());
        Ok(record)
    }

    /// Follow the nodes (running `demo` meanwhile) until a signal; an error when the demo
    /// fails, or when no node runs any more and none will.
    pub(super) async fn supervise(&mut self, signals: &mut Signals, mut demo: Option<Demo>) -> anyhow::Result<()> {
        let mut poll = tokio::time::interval(FOLLOW_POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut readiness = JoinSet::new();
        loop {
            let event = tokio::select! {
                signal = signals.recv() => Event::Signal(signal),
                Some(result) = OptionFuture::from(demo.as_mut()), if demo.is_some() => Event::DemoFinished(result),
                (index, how) = next_exit(&mut self.nodes) => Event::ChildExited(index, how),
                Some(Ok((index, generation, not_ready))) = readiness.join_next(), if !readiness.is_empty() => {
                    Event::Readiness { index, generation, not_ready }
                }
                _ = poll.tick() => Event::Poll,
            };
            let now = falak_node::clock::instant();
            match event {
                Event::Signal(signal) => {
                    println!("{signal}: stopping the mesh");
                    return Ok(());
                }
                Event::DemoFinished(result) => {
                    result.context("the demo failed")?;
                    demo = None;
                }
                Event::ChildExited(index, how) => self.exited(index, how, true, now),
                Event::Readiness { index, generation, not_ready } => {
                    let node = &self.nodes[index];
                    if node.generation == generation && node.running() {
                        match not_ready {
                            None => println!("{} is ready", node.name()),
                            Some(reason) => {
                                println!("{} is not ready after {}s: {reason}", node.name(), READY_TIMEOUT.as_secs())
                            }
                        }
                    }
                }
                Event::Poll => {}
            }
            // After every event, not only on the poll: a node started by hand just before the
            // last original one died must count before deciding that none runs.
            self.follow(now, &mut readiness);
            self.sync_record();
            if !self.restart && self.nodes.iter().all(|n| !n.running()) {
                bail!(
                    "every node has exited; see their logs under {}; `falak up` starts the mesh again",
                    self.root.display()
                );
            }
        }
    }

    /// Node `index` has just exited (`how`): say how to get it back, or schedule its restart.
    /// A child's output is in the node's log; a node started by hand wrote wherever it was told.
    fn exited(&mut self, index: usize, how: String, child: bool, now: Instant) {
        let node = &mut self.nodes[index];
        let log = if child { format!("; log {}", node.setup.log_path().display()) } else { String::new() };
        if self.restart {
            let delay = node.backoff.delay(now.saturating_duration_since(node.since));
            node.restart_at = Some(now + delay);
            println!("node {} exited ({how}); restarting it in {}s (--restart){log}", node.name(), delay.as_secs());
        } else {
            println!(
                "node {} exited ({how}); the others keep running; start it again with `{} node -c {}` \
                 and `falak up` follows it{log}",
                node.name(),
                crate::cli::self_command(),
                node.setup.config_path().display(),
            );
        }
        node.process = Process::Exited(how);
    }

    /// Notice adopted nodes that ended, nodes started by hand, and restarts that are due.
    fn follow(&mut self, now: Instant, readiness: &mut JoinSet<(usize, u64, Option<String>)>) {
        for index in 0..self.nodes.len() {
            if let Process::Adopted(process) = self.nodes[index].process
                && !process.alive()
            {
                self.exited(index, format!("pid {}", process.pid), false, now);
            }
            let node = &mut self.nodes[index];
            if node.running() {
                continue;
            }
            // A node started by hand wins over a pending restart.
            if let Some(process) = NodeProcess::running_in(&node.setup.dir) {
                println!("{} runs again (pid {}, started outside `falak up`); following it", node.name(), process.pid);
                self.run_again(index, Process::Adopted(process), now, readiness);
                continue;
            }
            if node.restart_at.is_some_and(|at| at <= now) {
                match spawn_node(&self.exe, &node.setup) {
                    Ok((child, pid)) => {
                        println!("restarted {} (pid {pid}), log {}", node.name(), node.setup.log_path().display());
                        self.run_again(index, Process::Child { child, pid }, now, readiness);
                    }
                    Err(error) => {
                        // A failed start counts as a run of no time, so the backoff grows.
                        self.nodes[index].since = now;
                        self.exited(index, format!("cannot start it: {error:#}"), true, now);
                    }
                }
            }
        }
    }

    fn run_again(
        &mut self,
        index: usize,
        process: Process,
        now: Instant,
        readiness: &mut JoinSet<(usize, u64, Option<String>)>,
    ) {
        let node = &mut self.nodes[index];
        node.process = process;
        node.since = now;
        node.restart_at = None;
        node.generation += 1;
        readiness.spawn(watch_ready(node.client.clone(), index, node.generation));
    }

    /// Rewrite `mesh.json` when a node's pid changed since it was last written.
    fn sync_record(&mut self) {
        let Some(record) = &self.record else { return };
        let pids: Vec<Option<u32>> = self.nodes.iter().map(MeshNode::pid).collect();
        if record.pids().eq(pids.iter().copied()) && !self.record_failing {
            return;
        }
        let mut record = record.clone();
        for (i, pid) in pids.into_iter().enumerate() {
            record.set_pid(i, pid);
        }
        let path = self.root.join(MESH_JSON);
        match record.write(&path) {
            Ok(()) => {
                self.record = Some(record);
                self.record_failing = false;
            }
            Err(error) if !self.record_failing => {
                eprintln!("{error:#}; it may list pids of nodes that have exited; trying again");
                self.record_failing = true;
            }
            Err(_) => {}
        }
    }

    /// SIGTERM every running node, adopted ones too (never their process group); SIGKILL
    /// whatever still runs after the grace period or a second signal. An error names the nodes
    /// that still run after all that, which `mesh.json` then keeps listing.
    pub(super) async fn stop(&mut self, signals: &mut Signals) -> anyhow::Result<()> {
        // A node started by hand since the last look is stopped too.
        for node in &mut self.nodes {
            if node.reap()
                && let Some(process) = NodeProcess::running_in(&node.setup.dir)
            {
                node.process = Process::Adopted(process);
            }
        }
        let running = self.nodes.iter().filter(|n| n.running()).count();
        if running > 0 {
            println!("stopping {} (SIGTERM; Ctrl-C again to kill them)", count(running));
            self.signal_all(libc::SIGTERM);
            let forced = {
                let waits = join_all(self.nodes.iter_mut().map(|node| node.wait_stopped("stopped")));
                tokio::select! {
                    _ = waits => None,
                    _ = tokio::time::sleep(STOP_GRACE) => Some(format!("still running after {}s", STOP_GRACE.as_secs())),
                    signal = signals.recv() => Some(format!("{signal} again")),
                }
            };
            if let Some(why) = forced {
                println!("killing the nodes that still run (SIGKILL): {why}");
                self.signal_all(libc::SIGKILL);
                let waits = join_all(self.nodes.iter_mut().map(|node| node.wait_stopped("killed")));
                let _ = tokio::time::timeout(KILL_WAIT, waits).await;
            }
        }
        self.sync_record();
        let mut survivors = Vec::new();
        for node in &self.nodes {
            // A node started by hand while the others stopped counts too.
            let pid = node.pid().or_else(|| NodeProcess::running_in(&node.setup.dir).map(|p| p.pid));
            if let Some(pid) = pid {
                survivors.push((node.name(), pid));
            }
        }
        if survivors.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = survivors.iter().map(|(name, pid)| format!("{name} (pid {pid})")).collect();
        let pids: Vec<String> = survivors.iter().map(|(_, pid)| pid.to_string()).collect();
        let kept = match &self.record {
            Some(_) => format!("; {} keeps listing them", self.root.join(MESH_JSON).display()),
            None => String::new(),
        };
        bail!(
            "nodes still run after the stop: {}; stop them yourself: `kill -9 {}`{kept}",
            list.join(", "),
            pids.join(" ")
        )
    }

    /// Send `signal` to every running node: a child's whole process group for SIGKILL, an
    /// adopted node's process alone.
    fn signal_all(&mut self, signal: i32) {
        for node in &mut self.nodes {
            match &mut node.process {
                Process::Child { child, pid } => {
                    if signal == libc::SIGKILL {
                        send_signal(-(*pid as i32), signal);
                        let _ = child.start_kill();
                    } else {
                        send_signal(*pid as i32, signal);
                    }
                }
                Process::Adopted(process) => match process.signal(signal) {
                    Ok(_) => {}
                    Err(error) => eprintln!("cannot signal {} (pid {}): {error}", node.setup.name, process.pid),
                },
                Process::Exited(_) => {}
            }
        }
    }
}

/// The next child to exit, reaped, and how it ended; never resolves when no child runs.
async fn next_exit(nodes: &mut [MeshNode]) -> (usize, String) {
    let waits: Vec<_> = nodes
        .iter_mut()
        .enumerate()
        .filter_map(|(i, node)| match &mut node.process {
            Process::Child { child, pid } => {
                let pid = *pid;
                Some(Box::pin(async move { (i, describe_exit(pid, child.wait().await)) }))
            }
            _ => None,
        })
        .collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    select_all(waits).await.0
}

/// Ask a node that runs again for `/readyz` until it is ready (`None`) or [`READY_TIMEOUT`]
/// passes (the last reason).
async fn watch_ready(client: Client, index: usize, generation: u64) -> (usize, u64, Option<String>) {
    let mut last = String::from("no answer yet");
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(reason) = not_ready_reason(&client).await {
            last = reason;
            tokio::time::sleep(READY_POLL).await;
        }
    })
    .await
    .is_ok();
    (index, generation, (!ready).then_some(last))
}

/// `kill(2)`; a negative pid names a process group. Only called for children not yet reaped,
/// so the pid cannot belong to another process.
fn send_signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_forgive_a_healthy_run() {
        let mut backoff = Backoff::new();
        let quick = Duration::from_secs(2);
        let delays: Vec<u64> = (0..7).map(|_| backoff.delay(quick).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff.delay(Duration::from_secs(60)).as_secs(), 1, "a minute of running resets it");
        assert_eq!(backoff.delay(quick).as_secs(), 2);
    }
}
