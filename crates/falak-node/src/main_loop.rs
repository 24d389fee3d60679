//! The node's one event loop over a closed [`Event`] enum.
//!
//! Everything that changes the node's view arrives here: API actions, committed ledger
//! entries, membership changes, task lifecycle events, proposal outcomes and the tick. After
//! each burst of events the loop runs the sans-IO [`Reconciler`] once and carries out its
//! actions. Nothing in the loop blocks: ledger writes, task starts and remote calls run in
//! spawned tasks that report back as events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use falak_core::NodeId;
use falak_core::election::Observed;
use falak_core::gossip::{GOSSIP_FORMAT, GossipState};
use falak_core::job::{TaskId, TaskReport};
use falak_core::ledger::{Command, LedgerEvent, Outcome};
use falak_core::node::NodeRecord;
use falak_ledger::{Committed, Ledger, PeerInfo, WriteError};
use tokio::sync::{broadcast, mpsc};

use crate::clock::{instant, now_millis};
use crate::config::NodeConfig;
use crate::events::EventBus;
use crate::membership::MembershipLink;
use crate::metrics::Metrics;
use crate::proposer::Proposer;
use crate::reconcile::{Action, ProposalKind, ReconcileConfig, Reconciler};
use crate::runner::Runner;
use crate::transport::NodeTransport;

/// How often orbit prefetch ranks the capsules (`crate::prefetch`).
const PREFETCH_EVERY: Duration = Duration::from_millis(500);

/// How often the loop wakes without other events: stagger timers, lease renewal, duties.
pub const TICK: Duration = Duration::from_millis(50);
/// How often gossip state is republished.
const GOSSIP_EVERY: Duration = Duration::from_millis(500);
/// How often the leader reviews ledger membership (learners and voters).
const VOTERS_EVERY: Duration = Duration::from_secs(1);

/// Everything the main loop reacts to.
pub enum Event {
    Task(TaskEvent),
    Proposal {
        kind: ProposalKind,
        result: Result<Outcome, Arc<WriteError>>,
        proposed_at: Instant,
    },
    /// A background job finished.
    Background {
        what: Background,
        result: Result<(), String>,
    },
    /// Fresh ledger membership (voters, learners, leader), read in the background.
    LedgerView(LedgerView),
    /// Something for the event mesh from a part of the node that runs beside the loop.
    Publish {
        kind: &'static str,
        data: serde_json::Value,
    },
    /// The disk reserve, as last checked: `Err` while free space is under it.
    Disk(Result<(), falak_exec::disk::BelowReserveError>),
}

/// Work the loop hands to a spawned task, one at a time per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    /// This node's own `AdmitNode`.
    Admit,
    /// The leader's voter and learner changes.
    Voters,
}

/// The ledger's membership as last read.
#[derive(Debug, Clone, Default)]
pub struct LedgerView {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

/// What the runner reports about one task attempt.
pub enum TaskEvent {
    Started {
        task: TaskId,
        fencing: u64,
    },
    /// The attempt ended; `started` is false when it never got going (bad command, workdir).
    Exited {
        task: TaskId,
        fencing: u64,
        report: TaskReport,
        started: bool,
    },
}

/// Internal events are unbounded: they are produced by this node's own bounded activity
/// (running tasks, in-flight proposals), never directly by clients.
pub type EventSender = mpsc::UnboundedSender<Event>;

pub struct MainLoop {
    pub(crate) id: NodeId,
    pub(crate) config: NodeConfig,
    pub(crate) record: NodeRecord,
    pub(crate) ledger: Ledger,
    pub(crate) proposer: Proposer,
    pub(crate) reconciler: Reconciler,
    pub(crate) runner: Runner,
    pub(crate) membership: MembershipLink,
    pub(crate) transport: NodeTransport,
    pub(crate) events: EventBus,
    pub(crate) metrics: Metrics,
    pub(crate) observed: BTreeMap<NodeId, Observed>,
    /// Orbit prefetch of capsules' code (`crate::prefetch`).
    prefetch: Arc<crate::prefetch::Prefetch>,
    last_prefetch: std::time::Instant,
    /// Node ids the transport accepts: admitted in the ledger, or bootstrap voters.
    pub(crate) admitted: Arc<RwLock<BTreeSet<NodeId>>>,
    pub(crate) authority: Option<Arc<crate::join::JoinAuthority>>,
    pub(crate) secrets: falak_core::secret::SecretKey,
    /// The credentials in this node's `bootstrap.json`: it is not ready before its replica holds them.
    pub(crate) bootstrap_credentials: (Vec<falak_core::access::TokenId>, Vec<falak_core::signing::DeployerId>),
    pub(crate) functions: Arc<crate::functions::FunctionHost>,
    pub(crate) images: Arc<crate::images::NodeImages>,
    pub(crate) tx: EventSender,
    rx: mpsc::UnboundedReceiver<Event>,
    actions: mpsc::Receiver<falak_api::Action>,
    committed: broadcast::Receiver<Committed>,
    pub(crate) self_admitted: bool,
    admitting: bool,
    voters_busy: bool,
    /// Review ledger membership at the next tick rather than within `VOTERS_EVERY`: this node
    /// took office, or a node came back or was admitted.
    voters_due: bool,
    /// The term this node last led in, to notice taking office.
    led_in: Option<u64>,
    gossip_version: u64,
    pub(crate) last_gossip_state: Option<GossipState>,
    pub(crate) ledger_view: LedgerView,
    view_busy: bool,
    last_gossip: Instant,
    last_voters: Instant,
    /// Free space kept for the ledger (`crate::disk`); under it the node claims nothing.
    disk_reserve: falak_exec::DiskReserve,
    disk_busy: bool,
    last_disk: Instant,
}

/// What the loop needs to start.
pub struct MainLoopParts {
    pub id: NodeId,
    pub config: NodeConfig,
    pub record: NodeRecord,
    pub ledger: Ledger,
    pub runner: Runner,
    pub membership: MembershipLink,
    pub transport: NodeTransport,
    pub admitted: Arc<RwLock<BTreeSet<NodeId>>>,
    pub actions: mpsc::Receiver<falak_api::Action>,
    /// Present when this node holds the mesh CA key and so can admit joiners.
    pub authority: Option<Arc<crate::join::JoinAuthority>>,
    /// Seals the secrets of capsules this node receives.
    pub secrets: falak_core::secret::SecretKey,
    /// The admin token and deployer key ids the mesh was provisioned with (from
    /// `bootstrap.json`; empty on joiners).
    pub bootstrap_credentials: (Vec<falak_core::access::TokenId>, Vec<falak_core::signing::DeployerId>),
    pub functions: Arc<crate::functions::FunctionHost>,
    /// Image pulls and imports (`crate::images`).
    pub images: Arc<crate::images::NodeImages>,
    /// The loop's event channel, made by the caller so parts beside the loop can send to it.
    pub events: (EventSender, mpsc::UnboundedReceiver<Event>),
    /// Free space kept on the data dir's filesystem for the ledger.
    pub disk_reserve: falak_exec::DiskReserve,
}

impl MainLoop {
    pub fn new(parts: MainLoopParts) -> MainLoop {
        let (tx, rx) = parts.events;
        let committed = parts.ledger.subscribe();
        let lease_ms = parts.config.lease.as_millis() as u64;
        let now = instant();
        let mut reconciler = Reconciler::new(parts.id, ReconcileConfig::with_lease(lease_ms));
        // A node that starts under its reserve claims nothing from its first step on.
        reconciler.pause_claims(parts.disk_reserve.check().is_err());
        let prefetch = crate::prefetch::Prefetch::new(
            parts.id,
            parts.runner.artifacts().clone(),
            parts.images.clone(),
            tx.clone(),
        );
        MainLoop {
            id: parts.id,
            prefetch,
            last_prefetch: now,
            proposer: Proposer::spawn(parts.ledger.clone()),
            reconciler,
            config: parts.config,
            record: parts.record,
            ledger: parts.ledger,
            runner: parts.runner,
            membership: parts.membership,
            transport: parts.transport,
            events: EventBus::new(parts.id),
            metrics: Metrics::default(),
            observed: BTreeMap::new(),
            admitted: parts.admitted,
            authority: parts.authority,
            secrets: parts.secrets,
            bootstrap_credentials: parts.bootstrap_credentials,
            functions: parts.functions,
            images: parts.images,
            tx,
            rx,
            actions: parts.actions,
            committed,
            self_admitted: false,
            admitting: false,
            voters_busy: false,
            voters_due: false,
            led_in: None,
            // Versions only grow, across restarts too: start from the wall clock.
            gossip_version: now_millis(),
            last_gossip_state: None,
            ledger_view: LedgerView::default(),
            view_busy: false,
            last_gossip: now,
            last_voters: now,
            disk_reserve: parts.disk_reserve,
            disk_busy: false,
            last_disk: now,
        }
    }

    /// Run until `shutdown` fires; then stop every running task.
    pub async fn run(mut self, mut shutdown: broadcast::Receiver<()>) {
        self.refresh_admitted();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut dirty = tokio::select! {
                _ = shutdown.recv() => break,
                Some(action) = self.actions.recv() => { self.handle_action(action); false }
                Some(event) = self.rx.recv() => self.handle(event),
                committed = self.committed.recv() => self.handle_committed(committed),
                changed = self.membership.changed() => { if changed { self.refresh_observed() } else { false } }
                _ = tick.tick() => self.on_tick(),
            };
            // Drain what else is ready so one reconcile covers the whole burst.
            for _ in 0..4096 {
                match self.committed.try_recv() {
                    Ok(c) => dirty |= self.handle_committed(Ok(c)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        dirty |= self.handle_committed(Err(broadcast::error::RecvError::Lagged(n)))
                    }
                    Err(_) => break,
                }
            }
            while let Ok(event) = self.rx.try_recv() {
                dirty |= self.handle(event);
            }
            if dirty {
                self.reconcile();
            }
        }
        self.runner.stop_all(Duration::from_secs(2)).await;
    }

    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Task(TaskEvent::Started { task, fencing }) => {
                self.metrics.tasks_started += 1;
                self.reconciler.task_started(task, fencing);
                true
            }
            Event::Task(TaskEvent::Exited { task, fencing, report, started }) => {
                if !started {
                    self.metrics.tasks_failed_to_start += 1;
                }
                self.runner.forget(task, fencing);
                self.reconciler.task_exited(task, fencing, report);
                true
            }
            Event::Proposal { kind, result, proposed_at } => match result {
                Ok(outcome) => {
                    if kind == ProposalKind::LeaderDuty {
                        self.reconciler.duty_settled();
                    }
                    if let (ProposalKind::Claim, Outcome::Claimed { .. }) = (kind, &outcome) {
                        self.metrics.claim_latency.observe(proposed_at.elapsed().as_secs_f64());
                    }
                    false
                }
                Err(e) => {
                    self.metrics.ledger_writes_failed += 1;
                    tracing::debug!(?kind, error = %e, "proposal failed");
                    self.reconciler.proposal_failed(kind);
                    true
                }
            },
            Event::Publish { kind, data } => {
                self.events.publish(now_millis(), kind, data);
                if kind == "capsule_prefetched" {
                    // Tell the mesh at once that this node holds it: warmth and the holders
                    // `capsule show` lists come from gossip.
                    self.sync_prefetch();
                    self.last_gossip = instant();
                    self.publish_gossip();
                }
                false
            }
            Event::Disk(checked) => {
                self.disk_busy = false;
                let low = checked.is_err();
                if low != self.reconciler.claims_paused() {
                    match checked {
                        Err(below) => tracing::warn!(error = %below, "taking no new tasks until there is room"),
                        Ok(()) => tracing::info!("the disk is above its reserve again; taking new tasks"),
                    }
                }
                self.reconciler.pause_claims(low);
                true
            }
            Event::LedgerView(view) => {
                self.view_busy = false;
                self.ledger_view = view;
                false
            }
            Event::Background { what, result } => {
                match what {
                    Background::Admit => {
                        self.admitting = false;
                        self.self_admitted = result.is_ok();
                    }
                    Background::Voters => self.voters_busy = false,
                }
                if let Err(e) = result {
                    tracing::debug!(?what, error = %e, "background work failed; will retry");
                }
                false
            }
        }
    }

    /// React to a committed entry. Its events reach subscribers through the ledger's event
    /// history (`event_feed`), not from here.
    fn handle_committed(&mut self, committed: Result<Committed, broadcast::error::RecvError>) -> bool {
        match committed {
            Ok(Committed::Entry { applied, .. }) => {
                for event in &applied.events {
                    self.note_event(event);
                }
                true
            }
            Ok(Committed::SnapshotInstalled { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {
                self.refresh_admitted();
                true
            }
            Err(broadcast::error::RecvError::Closed) => false,
        }
    }

    fn note_event(&mut self, event: &LedgerEvent) {
        match event {
            LedgerEvent::ElectionWon { node, .. } if *node == self.id => self.metrics.elections_won += 1,
            LedgerEvent::ClaimRejected { node, .. } if *node == self.id => self.metrics.claims_rejected += 1,
            LedgerEvent::ResultRejected { .. } => self.metrics.results_rejected += 1,
            LedgerEvent::NodeAdmitted { node, .. } => {
                self.admitted.write().expect("admitted lock").insert(*node);
                self.learn_peer(*node);
                self.voters_due = true;
            }
            LedgerEvent::NodeOnline { .. } => self.voters_due = true,
            // A new capsule version: its orbit fetches now, not at the next round.
            LedgerEvent::CapsuleApplied { .. } => self.sync_prefetch(),
            LedgerEvent::NodeRevoked { node, name } => {
                if *node == self.id {
                    tracing::error!(
                        "this node was revoked from the mesh: the other nodes refuse it from now on; stop it and empty its data dir"
                    );
                } else {
                    tracing::warn!(node = %node, %name, "node revoked; refusing it and closing its connections");
                }
                self.admitted.write().expect("admitted lock").remove(node);
                self.transport.recheck_admission();
            }
            _ => {}
        }
    }

    /// Record where an admitted node is reachable, for the transport and membership.
    fn learn_peer(&mut self, node: NodeId) {
        let addr = self.ledger.state().node(&node).map(|n| n.record.transport_addr.clone());
        if let Some(addr) = addr.and_then(|a| a.parse().ok()) {
            self.transport.set_peer_addr(node, addr);
        }
    }

    fn refresh_admitted(&mut self) {
        let ids: Vec<(NodeId, String)> = {
            let state = self.ledger.state();
            admit_ledger_nodes(&state, &self.admitted);
            state.nodes().map(|n| (n.record.id, n.record.transport_addr.clone())).collect()
        };
        for (id, addr) in ids {
            if let Ok(addr) = addr.parse() {
                self.transport.set_peer_addr(id, addr);
            }
        }
        self.transport.recheck_admission();
    }

    fn refresh_observed(&mut self) -> bool {
        let (observed, changes) = self.membership.snapshot();
        self.observed = observed;
        self.observe_self();
        let now = now_millis();
        for (node, health) in changes {
            let name = self.ledger.state().node(&node).map_or_else(|| node.short(), |n| n.record.name.clone());
            self.events.publish(
                now,
                "node_health",
                serde_json::json!({ "node": node, "name": name, "state": health.name() }),
            );
        }
        true
    }

    fn on_tick(&mut self) -> bool {
        if !self.self_admitted && !self.admitting {
            self.admit_self();
        }
        if self.last_gossip.elapsed() >= GOSSIP_EVERY {
            self.last_gossip = instant();
            self.publish_gossip();
        }
        if self.last_prefetch.elapsed() >= PREFETCH_EVERY {
            self.sync_prefetch();
        }
        if !self.disk_busy && self.last_disk.elapsed() >= crate::disk::CHECK_EVERY {
            self.check_disk();
        }
        let leading = self.ledger.leader_term();
        if leading.is_some() && leading != self.led_in {
            // Taking office: review membership at once, not a second from now.
            self.voters_due = true;
        }
        self.led_in = leading;
        let periodic = self.last_voters.elapsed() >= VOTERS_EVERY;
        if let Some(term) = leading
            && (periodic || self.voters_due)
            && !self.voters_busy
        {
            self.voters_due = false;
            self.last_voters = instant();
            self.manage_voters(term);
        }
        if periodic {
            self.last_voters = instant();
            if !self.view_busy {
                self.refresh_ledger_view();
            }
        }
        true
    }

    /// Propose this node's record; also how a restarted node updates its addresses.
    fn admit_self(&mut self) {
        self.admitting = true;
        let proposer = self.proposer.clone();
        let tx = self.tx.clone();
        let command = Command::AdmitNode { record: self.record.clone(), now: now_millis() };
        tokio::spawn(async move {
            let result = match proposer.write(command).await {
                Ok(Outcome::NodeAdmitted { .. }) => Ok(()),
                Ok(other) => Err(format!("unexpected outcome {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(Event::Background { what: Background::Admit, result });
        });
    }

    fn publish_gossip(&mut self) {
        self.gossip_version += 1;
        let reserved = self.ledger.state().reserved(&self.id);
        let free = self.config.capacity - reserved;
        let rtt_micros =
            self.transport.rtts().into_iter().map(|(id, d)| (id, d.as_micros().min(u32::MAX as u128) as u32)).collect();
        let state = GossipState {
            format: GOSSIP_FORMAT,
            version: self.gossip_version,
            free_cpu_millis: free.cpu_millis,
            free_memory_bytes: free.memory_bytes,
            running: self.reconciler.running() as u32,
            queued: self.reconciler.starting() as u32,
            rtt_micros,
            api_url: self.record.api_url.clone(),
            functions: self.functions.gossip(),
            held: self.prefetch.held(),
        };
        let mut state = state;
        // Functions are listed busiest first; drop from the end until the update fits a datagram,
        // then held code.
        while !state.functions.is_empty() && !falak_membership::gossip::gossip_fits(self.id, &state) {
            state.functions.pop();
        }
        while !state.held.is_empty() && !falak_membership::gossip::gossip_fits(self.id, &state) {
            state.held.pop();
        }
        self.last_gossip_state = Some(state.clone());
        self.membership.set_local_gossip(state);
        self.observe_self();
    }

    /// Rank the capsules' orbits and start the fetches this node owes (`crate::prefetch`).
    fn sync_prefetch(&mut self) {
        self.last_prefetch = instant();
        let state = self.ledger.state();
        self.prefetch.sync(&state, &self.observed, now_millis());
    }

    /// This node as it sees itself, beside its peers: placement reads its own gossip (the code
    /// it holds, its round-trip times) as it reads theirs.
    fn observe_self(&mut self) {
        let gossip = self.last_gossip_state.clone();
        self.observed
            .insert(self.id, Observed { health: falak_core::placement::Health::Healthy, gossip, answering: true });
    }

    /// Check the disk reserve off the loop (`statvfs` may wait on a slow disk).
    fn check_disk(&mut self) {
        self.disk_busy = true;
        self.last_disk = instant();
        let reserve = self.disk_reserve.clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(Event::Disk(reserve.check()));
        });
    }

    fn refresh_ledger_view(&mut self) {
        self.view_busy = true;
        let ledger = self.ledger.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let metrics = ledger.metrics().await;
            let _ = tx.send(Event::LedgerView(LedgerView { voters: metrics.voters, learners: metrics.learners }));
        });
    }

    /// Plan and make the ledger membership changes of this leader of `term`. The changes carry
    /// the term: if leadership moves meanwhile, the new leader refuses this plan.
    fn manage_voters(&mut self, term: u64) {
        self.voters_busy = true;
        let ledger = self.ledger.clone();
        let tx = self.tx.clone();
        let observed = self.observed.clone();
        let me = self.id;
        tokio::spawn(async move {
            let metrics = ledger.metrics().await;
            let plan = {
                let state = ledger.state();
                let members = crate::voters::Members::from_metrics(&metrics);
                crate::voters::plan(&state, &observed, &members, me, now_millis())
            };
            let mut result = Ok(());
            for (node, addr) in plan.add_learners {
                if let Err(e) = ledger.add_learner(node, PeerInfo::new(addr)).await {
                    result = Err(e.to_string());
                }
            }
            if let Some(voters) = plan.voters {
                tracing::info!(voters = ?voters, term, "changing ledger voters");
                if let Err(e) = ledger.change_voters(voters, Some(term)).await {
                    result = Err(e.to_string());
                }
            }
            if !plan.remove_learners.is_empty() {
                tracing::info!(learners = ?plan.remove_learners, "dropping long-offline learners");
                if let Err(e) = ledger.remove_learners(plan.remove_learners, Some(term)).await {
                    result = Err(e.to_string());
                }
            }
            let _ = tx.send(Event::Background { what: Background::Voters, result });
        });
    }

    fn reconcile(&mut self) {
        let leader_term = self.ledger.leader_term();
        // Only the leader's duties read whether peers answer it.
        if leader_term.is_some() {
            let answering = self.ledger.answering(crate::reconcile::ANSWERING_WITHIN);
            for (id, seen) in self.observed.iter_mut() {
                seen.answering = answering.contains(id);
            }
        }
        let now = now_millis();
        let actions = {
            let state = self.ledger.state();
            self.reconciler.step(&state, &self.observed, leader_term, now)
        };
        for action in actions {
            match action {
                Action::Propose { command, kind } => self.propose(*command, kind),
                Action::Start(launch) => self.runner.start(*launch, self.tx.clone()),
                Action::Stop { task, fencing, reason } => {
                    tracing::info!(%task, reason, "stopping task");
                    self.runner.stop(task, fencing);
                }
            }
        }
    }

    pub(crate) fn propose(&mut self, command: Command, kind: ProposalKind) {
        if kind == ProposalKind::Claim {
            self.metrics.claims_proposed += 1;
        }
        let tx = self.tx.clone();
        let proposed_at = instant();
        self.proposer.propose(
            command,
            Some(Box::new(move |result| {
                let _ = tx.send(Event::Proposal { kind, result, proposed_at });
            })),
        );
    }
}

/// Add the nodes the ledger lists to the transport's admitted set and take out the revoked ones
/// (which bootstrap contacts may still name).
pub(crate) fn admit_ledger_nodes(state: &falak_core::ledger::State, admitted: &RwLock<BTreeSet<NodeId>>) {
    let mut admitted = admitted.write().expect("admitted lock");
    admitted.extend(state.nodes().map(|n| n.record.id));
    for (revoked, _) in state.revoked_nodes() {
        admitted.remove(revoked);
    }
}

/// The SSE event name of a ledger event.
pub fn event_kind(event: &LedgerEvent) -> &'static str {
    match event {
        LedgerEvent::NodeAdmitted { .. } => "node_admitted",
        LedgerEvent::NodeOffline { .. } => "node_offline",
        LedgerEvent::NodeOnline { .. } => "node_online",
        LedgerEvent::CapsuleApplied { .. } => "capsule_applied",
        LedgerEvent::JobSubmitted { .. } => "job_submitted",
        LedgerEvent::JobFinished { .. } => "job_finished",
        LedgerEvent::TaskState { .. } => "task_state",
        LedgerEvent::ElectionWon { .. } => "election_won",
        LedgerEvent::ClaimRejected { .. } => "claim_rejected",
        LedgerEvent::ResultRejected { .. } => "result_rejected",
        LedgerEvent::LeaseExpired { .. } => "lease_expired",
        LedgerEvent::ServiceApplied { .. } => "service_applied",
        LedgerEvent::ServiceRemoved { .. } => "service_removed",
        LedgerEvent::ServiceUpdating { .. } => "service_updating",
        LedgerEvent::ServiceUpdated { .. } => "service_updated",
        LedgerEvent::FunctionDeployed { .. } => "function_deployed",
        LedgerEvent::FunctionRemoved { .. } => "function_removed",
        LedgerEvent::InstanceClaimed { .. } => "instance_claimed",
        LedgerEvent::InstanceReleased { .. } => "instance_released",
        LedgerEvent::InvocationFinished { .. } => "invocation_finished",
        LedgerEvent::TokenCreated { .. } => "token_created",
        LedgerEvent::TokenRevoked { .. } => "token_revoked",
        LedgerEvent::DeployerTrusted { .. } => "deployer_trusted",
        LedgerEvent::DeployerRevoked { .. } => "deployer_revoked",
        LedgerEvent::JoinTicketCreated { .. } => "join_token_created",
        LedgerEvent::JoinTicketRevoked { .. } => "join_token_revoked",
        LedgerEvent::NodeRevoked { .. } => "node_revoked",
    }
}
