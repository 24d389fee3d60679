//! Orbit prefetch for capsules: the nodes gravity ranks most likely to run a capsule fetch its
//! code (bundle or image) before any task of it is placed, so its tasks start without a fetch.
//!
//! Every half second each node ranks, for the latest version of every capsule that carries
//! code, the nodes that could run one of its tasks, as an election would
//! (`falak_core::election::capsule_demand`, `placement::solve` over `node_views`). The first
//! [`PREFETCH_NODES`] that fit are the capsule's orbit. A node in the orbit that lacks the code
//! fetches it in the background (from peers first; images from the registry when no peer has
//! them). Each node gossips the short ids of the code it holds (`GossipState::held`), which is
//! what the warmth term of every election reads, and what `falak capsule show` lists.
//!
//! Warmth raises a holder's rank, so an orbit stays where the code is. When a holder leaves
//! (OFFLINE, or it no longer fits), the next-ranked node enters the orbit and fetches: it
//! publishes `capsule_at_risk` (as a function's recruited observer does), then
//! `capsule_prefetched` with how long the fetch took.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use falak_core::capsule::CapsuleSpec;
use falak_core::election::{Observed, capsule_demand, node_views};
use falak_core::job::{JobId, TaskId};
use falak_core::ledger::State;
use falak_core::placement::{NodeView, solve};
use falak_core::{Millis, NodeId};

use crate::artifacts::NodeArtifacts;
use crate::images::NodeImages;
use crate::main_loop::{Event, EventSender};

/// How many nodes hold each capsule's code ahead of placement.
pub const PREFETCH_NODES: usize = 3;

/// How long a node waits before it tries a failed prefetch again.
const RETRY_AFTER_MS: u64 = 10_000;

/// A capsule applied longer ago than this whose orbit gains this node lost a holder: the
/// prefetch is a recruitment, not the first fetch after an apply.
const AT_RISK_AFTER_MS: u64 = 5_000;

pub struct Prefetch {
    me: NodeId,
    artifacts: Arc<NodeArtifacts>,
    images: Arc<NodeImages>,
    tx: EventSender,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Code being fetched now.
    in_flight: BTreeSet<String>,
    /// Capsules whose orbit this node is in.
    orbiting: BTreeSet<String>,
    /// Code of the capsules' latest versions that this node holds, for gossip.
    held: Vec<String>,
    /// Code whose fetch failed, and when to try again.
    failed: BTreeMap<String, Millis>,
}

impl Prefetch {
    pub fn new(me: NodeId, artifacts: Arc<NodeArtifacts>, images: Arc<NodeImages>, tx: EventSender) -> Arc<Prefetch> {
        Arc::new(Prefetch { me, artifacts, images, tx, inner: Mutex::new(Inner::default()) })
    }

    /// The code this node holds, as it gossips it.
    pub fn held(&self) -> Vec<String> {
        self.lock().held.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The orbit of `spec` among `views` (`node_views`): the first [`PREFETCH_NODES`] nodes
    /// that could run one of its tasks, best ranked first.
    pub fn orbit(views: &[NodeView], spec: &CapsuleSpec) -> Vec<NodeId> {
        let demand = capsule_demand(spec, spec.resources);
        let ranking = solve(&[(TaskId { job: JobId(0), index: 0 }, demand)], views);
        ranking
            .first()
            .map(|r| r.candidates[..r.fitting].iter().take(PREFETCH_NODES).map(|c| c.node).collect())
            .unwrap_or_default()
    }

    /// Rank, start the fetches this node owes, and refresh what it holds. Cheap enough for the
    /// main loop: file checks and one ranking per capsule.
    pub fn sync(self: &Arc<Self>, state: &State, observed: &BTreeMap<NodeId, Observed>, now: Millis) {
        let mut held = Vec::new();
        let mut fetch = Vec::new();
        let mut inner = self.lock();
        let mut orbiting = BTreeSet::new();
        let views = node_views(state, observed, self.me);
        for (name, versions) in state.capsules() {
            let Some(latest) = versions.last() else { continue };
            let spec = &latest.spec;
            let Some(code) = spec.code_id() else { continue };
            let holds = self.holds(spec);
            if holds {
                held.push(code.clone());
            }
            if !Prefetch::orbit(&views, spec).contains(&self.me) {
                continue;
            }
            orbiting.insert(name.clone());
            let recruited = !inner.orbiting.contains(name) && now.saturating_sub(latest.created_at) > AT_RISK_AFTER_MS;
            if recruited && !holds {
                let _ = self.tx.send(Event::Publish {
                    kind: "capsule_at_risk",
                    data: serde_json::json!({ "capsule": name, "version": latest.version, "recruited": self.me }),
                });
            }
            let backing_off = inner.failed.get(&code).is_some_and(|retry_at| now < *retry_at);
            if !holds && !backing_off && inner.in_flight.insert(code.clone()) {
                fetch.push((name.clone(), latest.version, code, spec.clone()));
            }
        }
        held.sort();
        held.dedup();
        inner.held = held;
        inner.orbiting = orbiting;
        drop(inner);
        for (name, version, code, spec) in fetch {
            let this = self.clone();
            tokio::spawn(async move { this.fetch(name, version, code, spec).await });
        }
    }

    /// Whether this node holds the code of `spec` ready to start a task.
    fn holds(&self, spec: &CapsuleSpec) -> bool {
        match (&spec.artifact, &spec.container) {
            (Some(artifact), _) => self.artifacts.store().contains(*artifact),
            (None, Some(container)) => self.images.is_ready(&container.image),
            (None, None) => true,
        }
    }

    async fn fetch(self: Arc<Self>, name: String, version: u32, code: String, spec: CapsuleSpec) {
        let started = crate::clock::instant();
        let fetched = match (&spec.artifact, &spec.container) {
            (Some(artifact), _) => self.artifacts.bundle_dir(*artifact).await.map(|_| ()),
            (None, Some(container)) => {
                self.images.for_container(&container.image).await.map(|_| ()).map_err(|e| e.to_string())
            }
            (None, None) => Ok(()),
        };
        let took_ms = started.elapsed().as_millis() as u64;
        {
            let mut inner = self.lock();
            inner.in_flight.remove(&code);
            match &fetched {
                Ok(()) => inner.failed.remove(&code),
                Err(_) => inner.failed.insert(code.clone(), crate::clock::now_millis() + RETRY_AFTER_MS),
            };
        }
        let (kind, data) = match fetched {
            Ok(()) => {
                tracing::info!(capsule = %name, version, %code, took_ms, "capsule code prefetched");
                (
                    "capsule_prefetched",
                    serde_json::json!({ "capsule": name, "version": version, "code": code, "took_ms": took_ms }),
                )
            }
            Err(error) => {
                tracing::warn!(capsule = %name, version, %code, %error, "cannot prefetch the capsule's code");
                ("capsule_prefetch_failed", serde_json::json!({ "capsule": name, "version": version, "error": error }))
            }
        };
        let _ = self.tx.send(Event::Publish { kind, data });
    }
}
