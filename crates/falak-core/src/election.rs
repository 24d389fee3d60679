//! Candidacy: how one node decides which open tasks to claim, and when.
//!
//! Every node runs [`Candidacy::step`] over committed state and its view of the mesh. For each
//! open task it ranks the fitting candidates by gravity ([`crate::placement::solve`]); the
//! best-ranked node claims at once, the node ranked `k` waits `k × stagger` and claims only if
//! the task is still open then. The state machine accepts the first valid claim, so a
//! disagreement between views costs a rejected claim, never a double assignment.
//!
//! Pure: `now` is passed in; the only state is which tasks this node has seen and claimed.

use std::collections::{BTreeMap, BTreeSet};

use crate::capsule::CapsuleSpec;
use crate::gossip::GossipState;
use crate::job::TaskId;
use crate::ledger::{Command, State};
use crate::placement::{
    Decision, Demand, Health, NoPrivateNetwork, NodeView, Ranking, Strategy, check_isolation, solve,
};
use crate::{Millis, NodeId};

/// Timing of elections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionConfig {
    /// How long a won claim lasts without renewal.
    pub lease_ms: u64,
    /// The wait per rank below the best before a lower-ranked node claims.
    pub stagger_ms: u64,
    /// How long a proposed claim may stay unanswered before this node may propose it again.
    pub claim_retry_ms: u64,
    /// At most this many open tasks are considered per step (oldest first).
    pub max_tasks_per_step: usize,
    /// At most this many claims are proposed per step.
    pub max_claims_per_step: usize,
    /// At most this many of this node's claims may be proposed and not yet settled (committed,
    /// rejected or given up). Backpressure: a large job is claimed at the pace the ledger
    /// commits, instead of flooding the log with claims that will time out and be retried.
    pub max_claims_in_flight: usize,
    /// At most this many tasks may be claimed by this node and not yet started (committed
    /// claims still ASSIGNED, plus claims in flight). Admission control: a node claims no
    /// faster than it starts, so a job larger than the node can start at once is not taken
    /// whole by the first node to see it, leases are not lost while attempts queue for a
    /// start, and other nodes get the rest after their stagger.
    pub max_unstarted: usize,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            lease_ms: 5_000,
            stagger_ms: 150,
            claim_retry_ms: 2_000,
            max_tasks_per_step: 256,
            max_claims_per_step: 256,
            max_claims_in_flight: 256,
            max_unstarted: 64,
        }
    }
}

/// What this node observes of another node: its health through membership, and whether it is
/// answering this node's ledger RPCs.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub health: Health,
    pub gossip: Option<GossipState>,
    /// The node answered this node's raft RPCs (heartbeats, appends) lately: it is connected
    /// and answering, whatever membership's gossip says. On the ledger leader, which sends every
    /// member a heartbeat every 50 ms, that is every live member. Membership can briefly report
    /// a live node OFFLINE: when a partition heals, the side that was cut off gossips the
    /// OFFLINE verdicts it reached about everyone else, until each of them rejoins under a new
    /// generation.
    pub answering: bool,
}

/// Build placement's view of every admitted node from committed state and observations.
///
/// A node the ledger marked offline is OFFLINE whatever membership says; a node membership has
/// not reported on yet counts as HEALTHY (the ledger admitted it and nobody saw it fail).
pub fn node_views(state: &State, observed: &BTreeMap<NodeId, Observed>, me: NodeId) -> Vec<NodeView> {
    state
        .nodes()
        .map(|entry| {
            let id = entry.record.id;
            let health = if entry.offline {
                Health::Offline
            } else if id == me {
                Health::Healthy
            } else {
                observed.get(&id).map_or(Health::Healthy, |o| o.health)
            };
            NodeView {
                id,
                name: entry.record.name.clone(),
                labels: entry.record.labels.clone(),
                capacity: entry.record.capacity,
                reserved: state.reserved(&id),
                health,
                tasks: state.claim_count(&id) as u32,
                rtt_micros: None,
                completed: entry.completed,
                failed: entry.failed,
                cost_per_hour: entry.record.cost_per_hour,
                holds: observed
                    .get(&id)
                    .and_then(|o| o.gossip.as_ref())
                    .map(|g| g.held.iter().cloned().collect())
                    .unwrap_or_default(),
                namespaces: entry.record.namespaces,
            }
        })
        .collect()
}

/// Round-trip time from `origin` to `node` as `origin` last gossiped it (0 to itself).
/// What a task asks of placement: its job's resources and its capsule's placement policy.
pub fn demand_of(state: &State, task: TaskId) -> Option<Demand> {
    let job = state.job(task.job)?;
    let capsule = state.capsule(&job.capsule, Some(job.version))?;
    Some(capsule_demand(&capsule.spec, job.resources))
}

/// What a task of `spec` asks of placement, with `resources` (its job's).
pub fn capsule_demand(spec: &CapsuleSpec, resources: crate::resources::Resources) -> Demand {
    let policy = &spec.placement;
    Demand {
        resources,
        labels: policy.labels.clone(),
        prefer: policy.prefer.clone(),
        strategy: policy.strategy,
        network: spec.network,
        code: spec.code_id(),
    }
}

/// Check, before a job or service of capsule `name` (version `version`, else the latest) is
/// written, that a node of the mesh can give its tasks the namespaces they ask for
/// ([`check_isolation`]), from committed records and this node's observations. A capsule that
/// does not exist passes: the ledger refuses it with its own error.
pub fn check_submission(
    state: &State,
    observed: &BTreeMap<NodeId, Observed>,
    me: NodeId,
    name: &str,
    version: Option<u32>,
) -> Result<(), NoPrivateNetwork> {
    let Some(capsule) = state.capsule(name, version) else { return Ok(()) };
    let demand = capsule_demand(&capsule.spec, capsule.spec.resources);
    check_isolation(name, capsule.version, &demand, &node_views(state, observed, me))
}

/// How placement ranks the nodes for one task now, exactly as candidacy computes it (proximity
/// measured from the job's origin). What `falak explain` shows for a task not yet elected.
pub fn rank_task(
    state: &State,
    observed: &BTreeMap<NodeId, Observed>,
    me: NodeId,
    task: TaskId,
) -> Option<(Strategy, Ranking)> {
    let demand = demand_of(state, task)?;
    let origin = state.job(task.job)?.origin;
    let mut views = node_views(state, observed, me);
    for v in &mut views {
        v.rtt_micros = rtt_from(&origin, &v.id, observed);
    }
    let strategy = demand.strategy;
    solve(&[(task, demand)], &views).pop().map(|ranking| (strategy, ranking))
}

fn rtt_from(origin: &NodeId, node: &NodeId, observed: &BTreeMap<NodeId, Observed>) -> Option<u32> {
    if origin == node {
        return Some(0);
    }
    observed.get(origin)?.gossip.as_ref()?.rtt_micros.get(node).copied()
}

/// One node's candidacy across elections.
#[derive(Debug, Default)]
pub struct Candidacy {
    /// When this node first saw each open (task, attempt).
    seen: BTreeMap<(TaskId, u32), Millis>,
    /// Claims proposed and not yet settled, with when they were proposed.
    proposed: BTreeMap<(TaskId, u32), Millis>,
}

impl Candidacy {
    /// Claims to propose now.
    pub fn step(
        &mut self,
        state: &State,
        observed: &BTreeMap<NodeId, Observed>,
        me: NodeId,
        now: Millis,
        config: &ElectionConfig,
    ) -> Vec<Command> {
        // A task waiting out a restart backoff is not up for election yet.
        let open: Vec<&crate::job::Task> = state
            .open_tasks()
            .filter(|t| t.not_before.is_none_or(|at| at <= now))
            .take(config.max_tasks_per_step)
            .collect();
        let live: BTreeSet<(TaskId, u32)> = open.iter().map(|t| (t.id, t.attempt)).collect();
        self.seen.retain(|k, _| live.contains(k));
        self.proposed.retain(|k, at| live.contains(k) && now.saturating_sub(*at) < config.claim_retry_ms);
        if open.is_empty() || state.node(&me).is_none() {
            return Vec::new();
        }
        let unstarted = state.claims_of(&me).filter(|t| t.state == crate::job::TaskState::Assigned).count();
        let room = config.max_unstarted.saturating_sub(unstarted + self.proposed.len());
        if room == 0 {
            return Vec::new();
        }
        let views = node_views(state, observed, me);
        let mut demands = Vec::with_capacity(open.len());
        for task in &open {
            if let Some(demand) = demand_of(state, task.id) {
                demands.push((task.id, demand));
            }
        }
        // Proximity is measured from each job's origin; group by origin so views are built once.
        let mut by_origin: BTreeMap<NodeId, Vec<(TaskId, Demand)>> = BTreeMap::new();
        for (id, demand) in demands {
            let origin = state.job(id.job).map(|j| j.origin).unwrap_or(me);
            by_origin.entry(origin).or_default().push((id, demand));
        }
        // The tasks this node may claim now: its stagger for them has passed.
        let mut due: Vec<(usize, (TaskId, u32), Ranking, Strategy)> = Vec::new();
        for (origin, tasks) in by_origin {
            let mut views = views.clone();
            for v in &mut views {
                v.rtt_micros = rtt_from(&origin, &v.id, observed);
            }
            for (ranking, (_, demand)) in solve(&tasks, &views).into_iter().zip(&tasks) {
                let Some(rank) = ranking.rank_of(&me) else { continue };
                let Some(task) = state.task(ranking.task) else { continue };
                let key = (task.id, task.attempt);
                let first = *self.seen.entry(key).or_insert(now);
                if !self.proposed.contains_key(&key) && now >= first + rank as u64 * config.stagger_ms {
                    due.push((rank, key, ranking, demand.strategy));
                }
            }
        }
        // Best rank first (a stable sort, so within a rank the order above): when every node has
        // waited out its stagger (all were busy), each takes the tasks it ranks best at before
        // the ones other nodes rank best at, instead of all racing for the same oldest tasks.
        due.sort_by_key(|(rank, ..)| *rank);
        let limit =
            config.max_claims_per_step.min(room).min(config.max_claims_in_flight.saturating_sub(self.proposed.len()));
        let mut claims = Vec::new();
        for (rank, (task, attempt), ranking, strategy) in due.into_iter().take(limit) {
            self.proposed.insert((task, attempt), now);
            let decision = Decision {
                task,
                attempt,
                strategy,
                winner: me,
                winner_rank: rank as u32,
                candidates: ranking.candidates,
                decided_at: now,
            };
            claims.push(Command::Claim { task, attempt, node: me, lease_ms: config.lease_ms, decision, now });
        }
        claims
    }

    /// The earliest time a waiting candidacy becomes due, so the driver can sleep until then.
    pub fn next_due(&self, config: &ElectionConfig) -> Option<Millis> {
        // Ranks are not kept; waking every stagger while anything is waiting is enough.
        self.seen.values().min().map(|first| first + config.stagger_ms)
    }
}

/// What the ledger leader of `term` proposes on its own: node health changes, lease expiry
/// and the steps of services' rollouts.
///
/// The leader reconciles every node's recorded state with its own live view, itself included:
/// a node it sees HEALTHY or answering (and the leader itself, which is evidently up) is marked
/// back online, a node membership reports OFFLINE and that no longer answers is marked OFFLINE.
/// A node it has no view of yet keeps its record. Each command carries `term`, so the state
/// machine refuses it once another leader took over.
pub fn leader_duties(
    state: &State,
    observed: &BTreeMap<NodeId, Observed>,
    me: NodeId,
    term: u64,
    now: Millis,
) -> Vec<Command> {
    let mut out = Vec::new();
    for entry in state.nodes() {
        let id = entry.record.id;
        let (seen, answering) = if id == me {
            (Some(Health::Healthy), true)
        } else {
            (observed.get(&id).map(|o| o.health), observed.get(&id).is_some_and(|o| o.answering))
        };
        match seen {
            Some(Health::Offline) if !entry.offline && !answering => {
                out.push(Command::SetNodeOffline { node: id, offline: true, term, now })
            }
            Some(_) if entry.offline && (seen == Some(Health::Healthy) || answering) => {
                out.push(Command::SetNodeOffline { node: id, offline: false, term, now })
            }
            _ => {}
        }
    }
    let expired = state
        .nodes()
        .any(|n| state.claims_of(&n.record.id).any(|t| t.claim.as_ref().is_some_and(|c| c.lease_until < now)));
    if expired {
        out.push(Command::ExpireLeases { term, now });
    }
    out.extend(crate::ledger::rollout_duties(state, term, now));
    out
}
