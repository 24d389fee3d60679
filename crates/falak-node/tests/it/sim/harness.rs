//! The simulation driver: nodes, faults, virtual time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use falak_core::capsule::CapsuleDocument;
use falak_core::election::Observed;
use falak_core::job::{Delivery, JobId, JobRequest, TaskId, TaskInputs, TaskReport};
use falak_core::ledger::{Command, Outcome, PlantedBug, State};
use falak_core::node::NodeRecord;
use falak_core::placement::Health;
use falak_core::resources::Resources;
use falak_core::{Millis, NodeId};
use falak_ledger::{Committed, Ledger, LedgerConfig, PeerInfo};
use falak_node::proposer::Proposer;
use falak_node::reconcile::{Action, ProposalKind, ReconcileConfig, Reconciler};
use falak_transport::memory::MemoryNetwork;
use falak_transport::{Protocol, Transport};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::completion;
use super::convergence::Convergence;
use super::functions::{self, CommittedClaims, SimFunction};
use super::heal::{HEAL_BOUND_MS, HealChecks};
use super::instance_slots::{self, InstanceSlots};
use super::single_claim::SingleClaim;
use super::term_fencing::TermFencing;

/// The shape of one simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub voters: usize,
    /// How long faults are injected.
    pub fault_ms: u64,
    /// How long after healing every acknowledged job has to finish.
    pub settle_ms: u64,
    pub jobs: usize,
    pub tasks_per_job: u32,
    /// A deliberately broken check in the state machine (tests of the checkers only). With
    /// `SkipAttemptCheck` every candidate also claims at once.
    pub planted_bug: PlantedBug,
    /// A deliberately broken function-host driver (tests of the function checkers only).
    pub driver_bug: functions::DriverBug,
    pub step_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 5,
            voters: 3,
            fault_ms: 8_000,
            settle_ms: 40_000,
            jobs: 3,
            tasks_per_job: 6,
            planted_bug: PlantedBug::None,
            driver_bug: functions::DriverBug::None,
            step_ms: 20,
        }
    }
}

/// What one seed produced.
#[derive(Debug, Default)]
pub struct SimReport {
    pub violations: Vec<String>,
    pub faults: Vec<String>,
    pub acknowledged: usize,
    /// What the function hosts did, summed over nodes and restarts.
    pub functions: functions::FunctionStats,
}

/// Membership's detection delays, as tuned for the real failure detector.
const SUSPECT_AFTER_MS: u64 = 400;
const OFFLINE_AFTER_MS: u64 = 1_000;
const LEASE_MS: u64 = 2_000;

#[derive(Default)]
struct Checker {
    single: SingleClaim,
    convergence: Convergence,
    slots: InstanceSlots,
    terms: TermFencing,
    violations: Vec<String>,
}

struct SimNode {
    index: usize,
    id: NodeId,
    dir: PathBuf,
    ledger: Option<Ledger>,
    proposer: Option<Proposer>,
    reconciler: Reconciler,
    /// Simulated processes: task → (fencing, finishes at, exit code).
    running: BTreeMap<TaskId, (u64, Millis, i32)>,
    failed: Arc<Mutex<Vec<ProposalKind>>>,
    collector: Option<tokio::task::JoinHandle<()>>,
    /// The function host for `f`, from the node's (re)start; `None` while it is down.
    function: Option<SimFunction>,
    /// How many times the node has started.
    generation: u64,
}

struct Sim {
    config: SimConfig,
    rng: ChaCha8Rng,
    network: MemoryNetwork,
    nodes: Vec<SimNode>,
    checker: Arc<Mutex<Checker>>,
    crashed: BTreeMap<usize, Millis>,
    cuts: BTreeMap<(usize, usize), Millis>,
    acknowledged: Arc<Mutex<Vec<JobId>>>,
    /// Job submissions whose write has not yet succeeded or given up.
    submissions_in_flight: Arc<AtomicUsize>,
    faults: Vec<String>,
    heals: HealChecks,
    /// Slot claims committed on any replica.
    claims: Arc<Mutex<CommittedClaims>>,
    function: falak_core::function::FunctionSpec,
    /// Function stats of hosts that are gone (crashed, restarted).
    stats: functions::FunctionStats,
    start: tokio::time::Instant,
    _dir: tempfile::TempDir,
}

/// Run one seed to completion on a fresh paused-clock runtime.
pub fn run_seed(seed: u64, config: &SimConfig) -> SimReport {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
    runtime.block_on(async {
        let mut sim = Sim::new(seed, config.clone());
        sim.run().await
    })
}

fn node_id(index: usize) -> NodeId {
    NodeId([index as u8 + 1; 32])
}

fn record(index: usize) -> NodeRecord {
    NodeRecord {
        id: node_id(index),
        name: format!("n{index}"),
        labels: BTreeMap::new(),
        capacity: Resources::new(2_000, 4 << 30),
        cost_per_hour: 0.0,
        transport_addr: format!("mem:{index}"),
        gossip_addr: format!("mem:{index}"),
        api_url: String::new(),
        namespaces: None,
    }
}

impl Sim {
    fn new(seed: u64, config: SimConfig) -> Sim {
        // tmpfs keeps redb's fsyncs cheap; the simulation tests logic, not disks.
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let dir = tempfile::Builder::new().prefix("falak-sim-").tempdir_in(base).expect("tempdir");
        let network = MemoryNetwork::new();
        let nodes = (0..config.nodes)
            .map(|index| SimNode {
                index,
                id: node_id(index),
                dir: dir.path().join(format!("n{index}")),
                ledger: None,
                proposer: None,
                reconciler: Reconciler::new(node_id(index), reconcile_config(&config)),
                running: BTreeMap::new(),
                failed: Arc::default(),
                collector: None,
                function: None,
                generation: 0,
            })
            .collect();
        Sim {
            rng: ChaCha8Rng::seed_from_u64(seed),
            config,
            network,
            nodes,
            checker: Arc::default(),
            crashed: BTreeMap::new(),
            cuts: BTreeMap::new(),
            acknowledged: Arc::default(),
            submissions_in_flight: Arc::default(),
            faults: Vec::new(),
            heals: HealChecks::default(),
            claims: Arc::default(),
            function: function_spec(),
            stats: functions::FunctionStats::default(),
            start: tokio::time::Instant::now(),
            _dir: dir,
        }
    }

    fn now(&self) -> Millis {
        // An arbitrary epoch keeps `now` realistic without reading the wall clock.
        1_700_000_000_000 + self.start.elapsed().as_millis() as Millis
    }

    fn elapsed(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }

    async fn run(&mut self) -> SimReport {
        for i in 0..self.nodes.len() {
            self.start_node(i).await;
        }
        if let Err(e) = self.bootstrap().await {
            return SimReport { violations: vec![format!("bootstrap failed: {e}")], ..SimReport::default() };
        }
        let fault_end = self.elapsed() + self.config.fault_ms;
        let submit_every = self.config.fault_ms / (self.config.jobs as u64 + 1);
        let mut next_submit = self.elapsed() + 100;
        let mut submitted = 0;
        while self.elapsed() < fault_end {
            if submitted < self.config.jobs && self.elapsed() >= next_submit {
                self.submit_job(1);
                submitted += 1;
                next_submit += submit_every;
            }
            self.inject_faults().await;
            self.drive_functions(true);
            self.step_all();
            self.check_heals();
            tokio::time::sleep(Duration::from_millis(self.config.step_ms)).await;
        }
        // Heal: every link back, every node restarted.
        let healed_at = self.elapsed();
        self.faults.push(format!("t={healed_at} heal all"));
        self.network.heal_all();
        self.cuts.clear();
        let down: Vec<usize> = self.crashed.keys().copied().collect();
        for i in down {
            self.restart(i).await;
        }
        self.heals.fault(healed_at);
        self.heals.healed(healed_at, "heal all".into());
        // One job submitted to the healed mesh, retried until the ledger takes it: a seed whose
        // faults refused every earlier submission still checks completion.
        self.submit_job(50);
        // Let submissions still in flight settle before judging completion, and the final heal
        // before judging it.
        let deadline = self.elapsed() + self.config.settle_ms;
        loop {
            self.drive_functions(false);
            self.step_all();
            self.check_heals();
            tokio::time::sleep(Duration::from_millis(self.config.step_ms)).await;
            let acknowledged = self.acknowledged.lock().expect("lock").clone();
            let done = self.nodes.iter().all(|n| {
                n.ledger.as_ref().is_some_and(|l| {
                    let state = l.state();
                    completion::all_terminal(&state, &acknowledged)
                        && n.function.as_ref().is_none_or(|f| f.settled(&state))
                })
            });
            let heal_judged = self.elapsed() > healed_at + HEAL_BOUND_MS;
            let submitted = self.submissions_in_flight.load(Ordering::SeqCst) == 0;
            if (done && heal_judged && submitted) || self.elapsed() >= deadline {
                break;
            }
        }
        if self.heals.checked() == 0 {
            violations_early(&self.checker, "no heal was judged, so the heal checker checked nothing");
        }
        let acknowledged = self.acknowledged.lock().expect("lock").clone();
        let mut violations = Vec::new();
        if let Some(ledger) = self.nodes.iter().find_map(|n| n.ledger.as_ref()) {
            completion::check(&ledger.state(), &acknowledged, &mut violations);
            instance_slots::check(&ledger.state(), &mut violations);
        }
        self.converge(&mut violations).await;
        for node in &self.nodes {
            if let (Some(f), Some(ledger)) = (&node.function, &node.ledger) {
                f.check(&ledger.state(), &mut violations);
            }
        }
        for node in &mut self.nodes {
            if let Some(ledger) = node.ledger.take() {
                let _ = ledger.shutdown().await;
            }
            if let Some(c) = node.collector.take() {
                c.abort();
            }
        }
        let mut checker = self.checker.lock().expect("lock");
        violations.append(&mut checker.violations);
        let mut stats = self.stats;
        for f in self.nodes.iter().filter_map(|n| n.function.as_ref()) {
            stats.add(&f.stats);
        }
        SimReport {
            violations,
            faults: std::mem::take(&mut self.faults),
            acknowledged: acknowledged.len(),
            functions: stats,
        }
    }

    async fn bootstrap(&mut self) -> Result<(), String> {
        let voters: BTreeMap<NodeId, PeerInfo> =
            (0..self.config.voters).map(|i| (node_id(i), PeerInfo::new(format!("mem:{i}")))).collect();
        let ledger = self.nodes[0].ledger.clone().ok_or("node 0 not started")?;
        ledger.initialize(voters).await.map_err(|e| e.to_string())?;
        for i in self.config.voters..self.config.nodes {
            retry(|| ledger.add_learner(node_id(i), PeerInfo::new(format!("mem:{i}")))).await?;
        }
        let now = self.now();
        // Each node admits itself: a node's record is its own to write.
        for i in 0..self.config.nodes {
            let own = self.nodes[i].ledger.clone().ok_or_else(|| format!("node {i} not started"))?;
            retry(|| own.write(Command::AdmitNode { record: record(i), now })).await?;
        }
        let (key, trust) = falak_core::signing::deployer_for_tests();
        retry(|| ledger.write(trust.clone())).await?;
        let text = "name: work\nkind: process\ncommand: [/bin/true]\nresources: { cpu: 500m, memory: 64Mi }\nplacement: { max_attempts: 3 }";
        let spec = CapsuleDocument::parse(text).map_err(|e| e.to_string())?;
        retry(|| ledger.write(Command::signed_capsule(spec.clone(), &key, now))).await?;
        let function = self.function.clone();
        retry(|| ledger.write(Command::signed_function(function.clone(), &key, now))).await?;
        Ok(())
    }

    /// Step every running node's function host: requests arrive at seeded moments (while
    /// `requests`), serving instances break now and then.
    fn drive_functions(&mut self, requests: bool) {
        let now = self.now();
        let Sim { nodes, rng, claims, checker, .. } = self;
        let mut violations = Vec::new();
        let alive: Vec<usize> = nodes.iter().filter(|n| n.function.is_some()).map(|n| n.index).collect();
        let asked = (requests && !alive.is_empty() && rng.gen_bool(0.3)).then(|| alive[rng.gen_range(0..alive.len())]);
        let broken =
            (requests && !alive.is_empty() && rng.gen_bool(0.01)).then(|| alive[rng.gen_range(0..alive.len())]);
        for node in nodes.iter_mut() {
            let (Some(function), Some(ledger)) = (node.function.as_mut(), node.ledger.as_ref()) else { continue };
            let mut ctx = functions::Ctx { ledger, rng, claims, violations: &mut violations };
            if asked == Some(node.index) {
                function.request(now, &mut ctx);
            }
            if broken == Some(node.index) {
                function.break_one(now, &mut ctx);
            }
            function.step(now, &mut ctx);
        }
        checker.lock().expect("lock").violations.append(&mut violations);
    }

    /// Submits one job through a live node; the write is retried up to `tries` times, 200 ms
    /// apart, while it fails (a leader being elected, a node restarting).
    fn submit_job(&mut self, tries: u32) {
        let alive: Vec<usize> = (0..self.nodes.len()).filter(|i| !self.crashed.contains_key(i)).collect();
        if alive.is_empty() {
            return;
        }
        let via = alive[self.rng.gen_range(0..alive.len())];
        let Some(ledger) = self.nodes[via].ledger.clone() else { return };
        let command = Command::SubmitJob {
            request: JobRequest {
                capsule: "work".into(),
                version: None,
                tasks: TaskInputs::Count(self.config.tasks_per_job),
                max_attempts: None,
                timeout_ms: None,
                delivery: Delivery::AtLeastOnce,
            },
            origin: node_id(via),
            now: self.now(),
        };
        let acknowledged = self.acknowledged.clone();
        let in_flight = self.submissions_in_flight.clone();
        in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            for _ in 0..tries {
                match ledger.write(command.clone()).await {
                    Ok(applied) => {
                        if let Outcome::JobSubmitted { job, .. } = applied.outcome {
                            acknowledged.lock().expect("lock").push(job);
                        }
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }

    async fn inject_faults(&mut self) {
        let t = self.elapsed();
        let n = self.nodes.len();
        if self.rng.gen_bool(0.012) && self.crashed.len() < 2 {
            let i = self.rng.gen_range(0..n);
            if !self.crashed.contains_key(&i) {
                self.faults.push(format!("t={t} crash n{i}"));
                self.crash(i).await;
                self.heals.fault(t);
            }
        }
        if self.rng.gen_bool(0.012)
            && let Some((&i, &since)) = self.crashed.iter().next()
            && t.saturating_sub(since) >= 500
        {
            self.faults.push(format!("t={t} restart n{i}"));
            self.restart(i).await;
            if self.cuts.is_empty() {
                self.heals.healed(t, format!("restart n{i}"));
            }
        }
        if self.rng.gen_bool(0.006) && self.cuts.is_empty() {
            // Isolate one node, or split the mesh into two sides of two and three.
            let mut side = vec![self.rng.gen_range(0..n)];
            if self.rng.gen_bool(0.5) {
                let other = (side[0] + self.rng.gen_range(1..n)) % n;
                side.push(other);
                self.faults.push(format!("t={t} partition n{}+n{other} | rest", side[0]));
            } else {
                self.faults.push(format!("t={t} isolate n{}", side[0]));
            }
            for &i in &side {
                for j in (0..n).filter(|j| !side.contains(j)) {
                    self.network.cut(node_id(i), node_id(j));
                    self.cuts.insert((i.min(j), i.max(j)), t);
                }
            }
            self.heals.fault(t);
        }
        if self.rng.gen_bool(0.008) && !self.cuts.is_empty() {
            self.faults.push(format!("t={t} heal links"));
            self.network.heal_all();
            self.cuts.clear();
            self.heals.healed(t, "heal links".into());
        }
    }

    /// Judge the heals whose bound has passed against every running replica.
    fn check_heals(&mut self) {
        let now = self.elapsed();
        let running: BTreeSet<NodeId> =
            (0..self.nodes.len()).filter(|i| !self.crashed.contains_key(i)).map(node_id).collect();
        let replicas: Vec<(usize, State)> = self
            .nodes
            .iter()
            .filter(|n| running.contains(&n.id))
            .filter_map(|n| n.ledger.as_ref().map(|l| (n.index, (*l.state()).clone())))
            .collect();
        let mut checker = self.checker.lock().expect("lock");
        self.heals.check(now, &replicas, &running, &mut checker.violations);
    }

    async fn start_node(&mut self, i: usize) {
        let planted = self.config.planted_bug;
        let node = &mut self.nodes[i];
        let transport = self.network.transport(node.id);
        let config = LedgerConfig { planted_bug: planted, ..LedgerConfig::default() };
        let ledger = Ledger::open(&node.dir, node.id, transport.clone() as Arc<dyn Transport>, config)
            .await
            .expect("open ledger");
        transport.serve(Protocol::Ledger, ledger.handler());
        for j in 0..self.config.nodes {
            transport.set_peer_addr(node_id(j), std::net::SocketAddr::from(([127, 0, 0, 1], j as u16 + 1)));
        }
        let mut rx = ledger.subscribe();
        let checker = self.checker.clone();
        let claims = self.claims.clone();
        let index = node.index;
        node.collector = Some(tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(Committed::Entry { index: log, term, applied }) => {
                        let mut c = checker.lock().expect("lock");
                        let Checker { single, convergence, slots, terms, violations } = &mut *c;
                        convergence.observe(index, log, &applied, violations);
                        slots.observe(index, &applied, violations);
                        terms.observe(index, log, term, &applied, violations);
                        let mut claims = claims.lock().expect("lock");
                        for event in &applied.events {
                            single.observe(event, violations);
                            claims.observe(event);
                        }
                    }
                    Ok(Committed::SnapshotInstalled { .. })
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        checker.lock().expect("lock").slots.snapshot_installed(index);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        }));
        node.proposer = Some(Proposer::spawn(ledger.clone()));
        node.ledger = Some(ledger);
        node.reconciler = Reconciler::new(node.id, reconcile_config(&self.config));
        node.running.clear();
        // About half the nodes start instances from a ready snapshot (claim and fork at once).
        let snapshot = self.rng.gen_bool(0.5);
        let first = functions::first_slot(i, node.generation);
        if let Some(old) = node.function.take() {
            self.stats.add(&old.stats);
        }
        node.function = Some(SimFunction::new(node.id, &self.function, first, snapshot, self.config.driver_bug));
        node.generation += 1;
    }

    async fn crash(&mut self, i: usize) {
        self.crashed.insert(i, self.elapsed());
        self.network.crash(node_id(i));
        let node = &mut self.nodes[i];
        node.proposer = None;
        if let Some(ledger) = node.ledger.take() {
            let _ = ledger.shutdown().await;
        }
        if let Some(c) = node.collector.take() {
            c.abort();
        }
        node.running.clear();
        if let Some(old) = node.function.take() {
            self.stats.add(&old.stats);
        }
    }

    async fn restart(&mut self, i: usize) {
        self.crashed.remove(&i);
        self.network.restart(node_id(i));
        self.start_node(i).await;
    }

    /// What node `i`'s failure detector would report, from ground truth.
    fn observed_by(&self, i: usize) -> BTreeMap<NodeId, Observed> {
        let t = self.elapsed();
        (0..self.nodes.len())
            .filter(|j| *j != i)
            .map(|j| {
                let since = self.crashed.get(&j).copied().or_else(|| self.cuts.get(&(i.min(j), i.max(j))).copied());
                let health = match since.map(|s| t.saturating_sub(s)) {
                    Some(d) if d >= OFFLINE_AFTER_MS => Health::Offline,
                    Some(d) if d >= SUSPECT_AFTER_MS => Health::Suspect,
                    _ => Health::Healthy,
                };
                (node_id(j), Observed { health, gossip: None, answering: false })
            })
            .collect()
    }

    fn step_all(&mut self) {
        let now = self.now();
        for i in 0..self.nodes.len() {
            if self.crashed.contains_key(&i) {
                continue;
            }
            let mut observed = self.observed_by(i);
            let exit_roll: f64 = self.rng.r#gen();
            let duration = self.rng.gen_range(20..400);
            let node = &mut self.nodes[i];
            let (Some(ledger), Some(proposer)) = (node.ledger.clone(), node.proposer.clone()) else { continue };
            for kind in node.failed.lock().expect("lock").drain(..) {
                node.reconciler.proposal_failed(kind);
            }
            // Simulated processes that finished.
            let finished: Vec<(TaskId, u64, i32)> =
                node.running.iter().filter(|(_, (_, at, _))| *at <= now).map(|(t, (f, _, c))| (*t, *f, *c)).collect();
            for (task, fencing, code) in finished {
                node.running.remove(&task);
                let report = TaskReport {
                    exit_code: Some(code),
                    error: None,
                    duration_ms: 1,
                    stdout_tail: format!("{task}\n"),
                    stderr_tail: String::new(),
                };
                node.reconciler.task_exited(task, fencing, report);
            }
            let leader_term = ledger.leader_term();
            let answering = ledger.answering(falak_node::reconcile::ANSWERING_WITHIN);
            for (id, seen) in observed.iter_mut() {
                seen.answering = answering.contains(id);
            }
            let actions = {
                let state = ledger.state();
                node.reconciler.step(&state, &observed, leader_term, now)
            };
            for action in actions {
                match action {
                    Action::Propose { command, kind } => {
                        let failed = node.failed.clone();
                        proposer.propose(
                            *command,
                            Some(Box::new(move |result| {
                                if result.is_err() || matches!(kind, ProposalKind::LeaderDuty) {
                                    failed.lock().expect("lock").push(kind);
                                }
                            })),
                        );
                    }
                    Action::Start(launch) => {
                        let code = if exit_roll < 0.1 { 1 } else { 0 };
                        node.running.insert(launch.task, (launch.fencing, now + duration, code));
                        node.reconciler.task_started(launch.task, launch.fencing);
                    }
                    Action::Stop { task, .. } => {
                        if let Some((fencing, _, _)) = node.running.remove(&task) {
                            let report = TaskReport {
                                exit_code: None,
                                error: Some("stopped".into()),
                                duration_ms: 1,
                                stdout_tail: String::new(),
                                stderr_tail: String::new(),
                            };
                            node.reconciler.task_exited(task, fencing, report);
                        }
                    }
                }
            }
        }
    }

    /// Wait for every replica to apply the same index, then compare states.
    async fn converge(&mut self, violations: &mut Vec<String>) {
        let deadline = self.elapsed() + 15_000;
        loop {
            let indexes: BTreeSet<Option<u64>> =
                self.nodes.iter().filter_map(|n| n.ledger.as_ref().map(|l| l.state().applied_index())).collect();
            if indexes.len() == 1 || self.elapsed() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let states: Vec<(usize, Option<u64>, State)> = self
            .nodes
            .iter()
            .filter_map(|n| {
                n.ledger.as_ref().map(|l| {
                    let s = l.state();
                    (n.index, s.applied_index(), (*s).clone())
                })
            })
            .collect();
        Convergence::compare_final(&states, violations);
    }
}

/// The simulated function `f`.
fn function_spec() -> falak_core::function::FunctionSpec {
    let text = functions::document(instance_slots::MAX_INSTANCES);
    let mut doc = falak_core::function::FunctionDocument::parse(&text).expect("the function document parses");
    doc.artifact = Some(falak_core::ArtifactId([1; 32]));
    doc.validate(0).expect("the function document is valid")
}

fn reconcile_config(config: &SimConfig) -> ReconcileConfig {
    let mut c = ReconcileConfig::with_lease(LEASE_MS);
    if config.planted_bug == PlantedBug::SkipAttemptCheck {
        c.election.stagger_ms = 0;
    }
    c
}

/// Record a violation found outside the checkers' own observations.
fn violations_early(checker: &Arc<Mutex<Checker>>, violation: &str) {
    checker.lock().expect("lock").violations.push(violation.to_owned());
}

/// Retry a ledger call for a few virtual seconds while a leader is elected.
async fn retry<T, E: std::fmt::Display, F, Fut>(mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut last = String::new();
    for _ in 0..50 {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}
