//! Placement: fit, gravity and candidacy. Pure functions over an abstract view of the mesh.
//!
//! Every candidate node runs the same [`solve`] over the same committed state and a similar
//! gossip view, so most nodes agree on who should claim each task; the ledger's state machine
//! settles any disagreement by accepting only the first valid claim. See `placement.md` beside
//! this file for the properties wanted and how they are tested.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::capsule::NetworkMode;
use crate::job::TaskId;
use crate::node::Namespaces;
use crate::resources::Resources;
use crate::{Millis, NodeId};

/// How gravity weighs its terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Free capacity and low load first: work spreads evenly by size.
    #[default]
    Balanced,
    /// Fill nodes up before using empty ones.
    Binpack,
    /// Fewest tasks per node first.
    Spread,
    /// Lowest cost per hour first.
    Cheapest,
    /// Lowest latency and warm nodes first.
    Fastest,
    /// Best success history first.
    Reliable,
}

/// The terms of gravity, each normalized to `0.0..=1.0` where 1 is better (except `capacity`,
/// which binpack weighs negatively).
pub const TERMS: [&str; 7] = ["capacity", "load", "reliability", "proximity", "affinity", "cost", "warmth"];

impl Strategy {
    /// Weights in the order of [`TERMS`].
    pub fn weights(self) -> [f64; 7] {
        match self {
            //                       capacity load reliab prox affin cost warmth
            Strategy::Balanced => [1.0, 1.0, 0.5, 0.5, 1.0, 0.25, 1.0],
            Strategy::Binpack => [-1.0, 0.1, 0.5, 0.25, 1.0, 0.25, 1.0],
            Strategy::Spread => [0.25, 2.0, 0.5, 0.25, 1.0, 0.1, 0.5],
            Strategy::Cheapest => [0.25, 0.25, 0.25, 0.1, 1.0, 3.0, 0.5],
            Strategy::Fastest => [0.5, 1.0, 0.5, 2.0, 1.0, 0.1, 2.0],
            Strategy::Reliable => [0.5, 0.5, 3.0, 0.25, 1.0, 0.1, 0.5],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Balanced => "balanced",
            Strategy::Binpack => "binpack",
            Strategy::Spread => "spread",
            Strategy::Cheapest => "cheapest",
            Strategy::Fastest => "fastest",
            Strategy::Reliable => "reliable",
        }
    }
}

/// A node's health as membership sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    Healthy,
    Suspect,
    Offline,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Healthy => "HEALTHY",
            Health::Suspect => "SUSPECT",
            Health::Offline => "OFFLINE",
        }
    }
}

/// What placement knows about one node: committed facts from the ledger plus gossip.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// Reserved by committed claims.
    pub reserved: Resources,
    pub health: Health,
    /// Tasks on the node (committed claims), the load term's input.
    pub tasks: u32,
    /// Round-trip time from the job's origin node, when measured.
    pub rtt_micros: Option<u32>,
    pub completed: u64,
    pub failed: u64,
    pub cost_per_hour: f64,
    /// The capsule code the node holds (short ids of bundles and images,
    /// [`CapsuleSpec::code_id`](crate::capsule::CapsuleSpec::code_id)), as it gossips them: a
    /// task whose code is among them starts without a fetch (the warmth term).
    pub holds: std::collections::BTreeSet<String>,
    /// How the node gives workloads namespaces, as its record declares; `None` when it did not
    /// say, which counts as able.
    pub namespaces: Option<Namespaces>,
}

impl NodeView {
    /// Whether the node can give a workload a network of its own: it declared namespaces, or
    /// declared nothing.
    pub fn private_network(&self) -> bool {
        self.namespaces.is_none_or(Namespaces::private_network)
    }
}

/// What one task asks of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub prefer: BTreeMap<String, String>,
    pub strategy: Strategy,
    /// The network the capsule asks for: `None` needs a node that can create namespaces.
    pub network: NetworkMode,
    /// The short id of the capsule's code (bundle or image), when it has any: a node that holds
    /// it is warm.
    pub code: Option<String>,
}

/// Why a node cannot take a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NoFit {
    #[error("node is {health}")]
    NotHealthy { health: String },
    #[error("label {key}={want} required, node has {}", have.as_deref().unwrap_or("none"))]
    MissingLabel { key: String, want: String, have: Option<String> },
    #[error("needs a network of its own (network: none), node cannot create namespaces")]
    NoNetworkNamespace,
    #[error("needs {need} {what}, node capacity is only {capacity}")]
    NeverFits { what: String, need: u64, capacity: u64 },
    #[error("needs {need} {what}, only {free} free")]
    Insufficient { what: String, need: u64, free: u64 },
}

/// One term of a gravity score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Term {
    pub name: String,
    /// The normalized value, `0.0..=1.0`.
    pub value: f64,
    pub weight: f64,
}

/// One candidate's standing in an election.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    pub node: NodeId,
    pub name: String,
    /// `None` when the node fits.
    pub no_fit: Option<NoFit>,
    pub gravity: f64,
    pub terms: Vec<Term>,
}

/// The decision record of a won election: every candidate with its terms and the winner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub task: TaskId,
    pub attempt: u32,
    pub strategy: Strategy,
    pub winner: NodeId,
    /// The winner's rank among fitting candidates in its own view (0 = best).
    pub winner_rank: u32,
    pub candidates: Vec<CandidateScore>,
    pub decided_at: Millis,
}

/// Check whether `node` can take `demand` on top of what it already has plus `pending`.
pub fn fit(node: &NodeView, demand: &Demand, pending: Resources) -> Result<(), NoFit> {
    if node.health != Health::Healthy {
        return Err(NoFit::NotHealthy { health: node.health.name().to_owned() });
    }
    for (key, want) in &demand.labels {
        let have = node.labels.get(key);
        if have != Some(want) {
            return Err(NoFit::MissingLabel { key: key.clone(), want: want.clone(), have: have.cloned() });
        }
    }
    if demand.network == NetworkMode::None && !node.private_network() {
        return Err(NoFit::NoNetworkNamespace);
    }
    let need = demand.resources;
    let free = node.capacity - node.reserved - pending;
    let dims = [
        ("millicores", need.cpu_millis, node.capacity.cpu_millis, free.cpu_millis),
        ("bytes of memory", need.memory_bytes, node.capacity.memory_bytes, free.memory_bytes),
        ("gpus", u64::from(need.gpus), u64::from(node.capacity.gpus), u64::from(free.gpus)),
    ];
    for (what, need, capacity, free) in dims {
        if need > capacity {
            return Err(NoFit::NeverFits { what: what.to_owned(), need, capacity });
        }
        if need > free {
            return Err(NoFit::Insufficient { what: what.to_owned(), need, free });
        }
    }
    Ok(())
}

/// Why a job or service is refused before anything is written: its capsule asks for a network
/// of its own and no node that could run it can create namespaces, so its tasks would only
/// wait (or, before nodes declared it, fail one by one at start). Says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "capsule {capsule} v{version} asks for a network of its own (network: none, the default), but none of the \
     nodes that are up and could run it can create network namespaces ({}: namespaces unavailable; each node's \
     log says why){}; nothing was written. To run it, let the nodes create namespaces and restart them (allow \
     unprivileged user namespaces: sysctl user.max_user_namespaces above 0, e.g. \
     `sysctl -w user.max_user_namespaces=15000`, and where they exist kernel.unprivileged_userns_clone=1 and \
     kernel.apparmor_restrict_unprivileged_userns=0; or run the nodes as root), or add a node that can; or, if \
     the workload may share its node's network, set `network: host` in the capsule and apply it again",
    unable.join(", "),
    offline_note(offline)
)]
pub struct NoPrivateNetwork {
    pub capsule: String,
    pub version: u32,
    /// The nodes that are up and carry the capsule's labels, by name; none can create namespaces.
    pub unable: Vec<String>,
    /// Nodes that carry its labels and could, but are OFFLINE.
    pub offline: Vec<String>,
}

fn offline_note(offline: &[String]) -> String {
    match offline {
        [] => String::new(),
        [one] => format!("; {one} could, but it is OFFLINE"),
        many => format!("; {} could, but they are OFFLINE", many.join(", ")),
    }
}

/// Check, before a job or service of capsule `capsule` v`version` is written, that some node
/// can give it the namespaces it asks for. Counts the nodes that are not OFFLINE and carry the
/// demand's labels (a SUSPECT node counts: it may well be up). When no such node exists at all,
/// the answer is left to placement: the work waits as any work that no node fits now.
pub fn check_isolation(
    capsule: &str,
    version: u32,
    demand: &Demand,
    nodes: &[NodeView],
) -> Result<(), NoPrivateNetwork> {
    if demand.network != NetworkMode::None {
        return Ok(());
    }
    let labelled = |node: &&NodeView| demand.labels.iter().all(|(key, want)| node.labels.get(key) == Some(want));
    let (up, offline): (Vec<&NodeView>, Vec<&NodeView>) =
        nodes.iter().filter(labelled).partition(|node| node.health != Health::Offline);
    if up.is_empty() || up.iter().any(|node| node.private_network()) {
        return Ok(());
    }
    let names = |nodes: Vec<&NodeView>| {
        let mut names: Vec<String> = nodes.into_iter().map(|node| node.name.clone()).collect();
        names.sort();
        names
    };
    Err(NoPrivateNetwork {
        capsule: capsule.to_owned(),
        version,
        unable: names(up),
        offline: names(offline.into_iter().filter(|node| node.private_network()).collect()),
    })
}

/// Gravity of `node` for `demand`: a weighted sum of normalized terms. `pending` is work this
/// solve already planned for the node; `pending_tasks` its count; `max_cost` normalizes cost
/// across the candidate set.
pub fn gravity(
    node: &NodeView,
    demand: &Demand,
    pending: Resources,
    pending_tasks: u32,
    max_cost: f64,
) -> (f64, Vec<Term>) {
    let after = node.capacity - node.reserved - pending - demand.resources;
    let fraction = |free: u64, cap: u64| if cap == 0 { 0.0 } else { free as f64 / cap as f64 };
    let capacity = fraction(after.cpu_millis, node.capacity.cpu_millis)
        .min(fraction(after.memory_bytes, node.capacity.memory_bytes));
    let cores = (node.capacity.cpu_millis as f64 / 1000.0).max(1.0);
    let load = 1.0 / (1.0 + f64::from(node.tasks + pending_tasks) / cores);
    let reliability = (node.completed as f64 + 1.0) / ((node.completed + node.failed) as f64 + 2.0);
    let proximity = match node.rtt_micros {
        Some(us) => 1.0 / (1.0 + f64::from(us) / 5_000.0),
        None => 0.5,
    };
    let affinity = if demand.prefer.is_empty() {
        1.0
    } else {
        let matched = demand.prefer.iter().filter(|(k, v)| node.labels.get(*k) == Some(*v)).count();
        matched as f64 / demand.prefer.len() as f64
    };
    let cost = if max_cost > 0.0 { 1.0 - (node.cost_per_hour / max_cost).clamp(0.0, 1.0) } else { 1.0 };
    let warmth = if demand.code.as_ref().is_some_and(|code| node.holds.contains(code)) { 1.0 } else { 0.0 };
    let values = [capacity, load, reliability, proximity, affinity, cost, warmth];
    let weights = demand.strategy.weights();
    let terms: Vec<Term> = TERMS
        .iter()
        .zip(values)
        .zip(weights)
        .map(|((name, value), weight)| Term { name: (*name).to_owned(), value: round6(value), weight })
        .collect();
    let total = round6(terms.iter().map(|t| t.value * t.weight).sum());
    (total, terms)
}

/// Round so that scores print and compare stably.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// A deterministic tie-breaker that differs per (task, node), so equal nodes share equal work.
pub fn tiebreak(task: TaskId, node: &NodeId) -> u64 {
    // FNV-1a over the task id and node id bytes.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = task.job.0.to_le_bytes().into_iter().chain(task.index.to_le_bytes()).chain(node.0);
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The ranked candidates for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    pub task: TaskId,
    /// Fitting candidates first, best first; then the ones that do not fit.
    pub candidates: Vec<CandidateScore>,
    /// How many leading candidates fit.
    pub fitting: usize,
}

impl Ranking {
    /// The rank of `node` among fitting candidates.
    pub fn rank_of(&self, node: &NodeId) -> Option<usize> {
        self.candidates[..self.fitting].iter().position(|c| &c.node == node)
    }
}

/// Rank candidates for each task in order, planning each winner's reservation before the next
/// task so a batch spreads by gravity instead of piling onto one node.
pub fn solve(tasks: &[(TaskId, Demand)], nodes: &[NodeView]) -> Vec<Ranking> {
    let max_cost = nodes.iter().map(|n| n.cost_per_hour).fold(0.0, f64::max);
    let mut pending: BTreeMap<NodeId, (Resources, u32)> = BTreeMap::new();
    let mut out = Vec::with_capacity(tasks.len());
    for (task, demand) in tasks {
        let mut scored: Vec<(CandidateScore, u64)> = nodes
            .iter()
            .map(|node| {
                let (planned, planned_tasks) = pending.get(&node.id).copied().unwrap_or_default();
                let no_fit = fit(node, demand, planned).err();
                let (gravity, terms) = gravity(node, demand, planned, planned_tasks, max_cost);
                let score = CandidateScore { node: node.id, name: node.name.clone(), no_fit, gravity, terms };
                (score, tiebreak(*task, &node.id))
            })
            .collect();
        scored.sort_by(|(a, ta), (b, tb)| {
            a.no_fit.is_some().cmp(&b.no_fit.is_some()).then(b.gravity.total_cmp(&a.gravity)).then(ta.cmp(tb))
        });
        let fitting = scored.iter().take_while(|(c, _)| c.no_fit.is_none()).count();
        if let Some((winner, _)) = scored.first().filter(|(c, _)| c.no_fit.is_none()) {
            let entry = pending.entry(winner.node).or_default();
            entry.0 = entry.0 + demand.resources;
            entry.1 += 1;
        }
        out.push(Ranking { task: *task, candidates: scored.into_iter().map(|(c, _)| c).collect(), fitting });
    }
    out
}
