//! An in-memory network for tests and the seeded simulation.
//!
//! Each node gets a [`MemoryTransport`] from one [`MemoryNetwork`]. Links can be cut and healed
//! per pair, a node can be crashed (its handlers are forgotten, its in-flight handler tasks
//! aborted, requests to it fail [`TransportError::Unreachable`], its old transports are dead for
//! good) and restarted (a fresh [`MemoryNetwork::transport`] serves again). Handlers run in
//! their own tokio tasks and delays are `tokio::time` sleeps, so everything works under a
//! paused clock; with a delay configured, the delays come from a seeded generator.
//!
//! It is compiled always, not only for this crate's tests, because other crates' simulation
//! tests use it; it needs no dependency the crate does not already have.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::AbortHandle;

use crate::{Admission, AdmitAll, Handler, NodeId, Protocol, Transport, TransportError};

/// Behaviour of a [`MemoryNetwork`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Bound on one request, as on the real transport.
    pub request_timeout: Duration,
    /// Largest request or reply body.
    pub max_message_bytes: usize,
    /// Each message (request and reply alike) is delayed by a duration drawn uniformly from
    /// this inclusive range. Zero by default.
    pub delay: (Duration, Duration),
    /// Seed of the delay generator.
    pub seed: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            request_timeout: Duration::from_secs(5),
            max_message_bytes: 16 << 20,
            delay: (Duration::ZERO, Duration::ZERO),
            seed: 0,
        }
    }
}

/// The wires between in-memory transports. Cheap to clone; clones are the same network.
#[derive(Clone)]
pub struct MemoryNetwork {
    state: Arc<Mutex<NetState>>,
    config: Arc<MemoryConfig>,
}

struct NetState {
    nodes: HashMap<NodeId, NodeSlot>,
    /// Directed pairs (from, to) whose link is down.
    cut: HashSet<(NodeId, NodeId)>,
    rng: StdRng,
}

struct NodeSlot {
    /// Bumped by every crash; transports of an older generation are dead.
    generation: u64,
    crashed: bool,
    handlers: HashMap<Protocol, Arc<dyn Handler>>,
    admission: Arc<dyn Admission>,
    /// Handler tasks running for this node, aborted when it crashes.
    running: Vec<AbortHandle>,
}

impl Default for NodeSlot {
    fn default() -> Self {
        NodeSlot {
            generation: 0,
            crashed: false,
            handlers: HashMap::new(),
            admission: Arc::new(AdmitAll),
            running: Vec::new(),
        }
    }
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        MemoryNetwork::with_config(MemoryConfig::default())
    }
}

impl MemoryNetwork {
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    pub fn with_config(config: MemoryConfig) -> MemoryNetwork {
        let state = NetState { nodes: HashMap::new(), cut: HashSet::new(), rng: StdRng::seed_from_u64(config.seed) };
        MemoryNetwork { state: Arc::new(Mutex::new(state)), config: Arc::new(config) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut NetState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The transport of node `id`, joining it to the network if it is new. After a crash and a
    /// restart, call this again: transports from before the crash stay dead.
    pub fn transport(&self, id: NodeId) -> Arc<MemoryTransport> {
        let generation = self.with(|s| s.nodes.entry(id).or_default().generation);
        Arc::new(MemoryTransport { id, generation, network: self.clone() })
    }

    /// Cut the link between `a` and `b`, both directions.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        self.with(|s| {
            s.cut.insert((a, b));
            s.cut.insert((b, a));
        });
    }

    /// Cut only `from` → `to`: requests from `from` to `to`, and replies travelling that way,
    /// are lost.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.with(|s| s.cut.insert((from, to)));
    }

    /// Restore the link between `a` and `b`, both directions.
    pub fn heal(&self, a: NodeId, b: NodeId) {
        self.with(|s| {
            s.cut.remove(&(a, b));
            s.cut.remove(&(b, a));
        });
    }

    /// Cut `a` from every node the network knows now.
    pub fn isolate(&self, a: NodeId) {
        self.with(|s| {
            let others: Vec<_> = s.nodes.keys().copied().filter(|n| *n != a).collect();
            for b in others {
                s.cut.insert((a, b));
                s.cut.insert((b, a));
            }
        });
    }

    pub fn heal_all(&self) {
        self.with(|s| s.cut.clear());
    }

    /// Kill node `id` as `kill -9` would: it forgets its handlers, its running handlers stop
    /// without answering, it can neither send nor receive until [`MemoryNetwork::restart`].
    pub fn crash(&self, id: NodeId) {
        let running = self.with(|s| {
            let node = s.nodes.entry(id).or_default();
            node.generation += 1;
            node.crashed = true;
            node.handlers.clear();
            std::mem::take(&mut node.running)
        });
        for task in running {
            task.abort();
        }
    }

    /// Bring node `id` back with no handlers; get its new transport from
    /// [`MemoryNetwork::transport`] and register them again.
    pub fn restart(&self, id: NodeId) {
        self.with(|s| s.nodes.entry(id).or_default().crashed = false);
    }

    pub fn is_crashed(&self, id: NodeId) -> bool {
        self.with(|s| s.nodes.get(&id).is_some_and(|n| n.crashed))
    }

    /// Whether a message from `from` can reach `to` right now.
    pub fn is_linked(&self, from: NodeId, to: NodeId) -> bool {
        self.with(|s| !s.cut.contains(&(from, to)))
    }

    fn delay(&self) -> Duration {
        let (low, high) = self.config.delay;
        if high <= low {
            return low;
        }
        self.with(|s| s.rng.gen_range(low..=high))
    }

    /// Check that `from` (of `generation`) is alive and may reach `to`, and find the handler.
    fn route(
        &self,
        from: NodeId,
        generation: u64,
        to: NodeId,
        protocol: Protocol,
    ) -> Result<Arc<dyn Handler>, TransportError> {
        let (admission, handler) = self.with(|s| {
            sender_alive(s, from, generation)?;
            if s.cut.contains(&(from, to)) {
                return Err(unreachable(to, "link is cut"));
            }
            let node = s.nodes.get(&to).ok_or_else(|| unreachable(to, "no such node on the network"))?;
            if node.crashed {
                return Err(unreachable(to, "node is down"));
            }
            Ok((node.admission.clone(), node.handlers.get(&protocol).cloned()))
        })?;
        // The policy is asked outside the network's lock, so it may take locks of its own.
        if from != to && !admission.admits(&from, protocol) {
            return Err(TransportError::Refused {
                node: to.short(),
                reason: format!("node {} is not admitted for {protocol}", from.short()),
            });
        }
        handler.ok_or_else(|| TransportError::Refused {
            node: to.short(),
            reason: format!("no handler serves {protocol} on this node"),
        })
    }

    /// Run `handler` as a task of node `to`, so a crash of `to` aborts it.
    fn spawn_handler(
        &self,
        to: NodeId,
        handler: Arc<dyn Handler>,
        from: NodeId,
        body: Bytes,
    ) -> tokio::sync::oneshot::Receiver<Result<Bytes, String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = tx.send(handler.handle(from, body).await);
        });
        self.with(|s| match s.nodes.get_mut(&to) {
            Some(node) if !node.crashed => {
                node.running.retain(|t| !t.is_finished());
                node.running.push(task.abort_handle());
            }
            // It crashed between routing and now: the request dies with it.
            _ => task.abort(),
        });
        rx
    }

    async fn request(
        self,
        from: NodeId,
        generation: u64,
        to: NodeId,
        protocol: Protocol,
        body: Bytes,
    ) -> Result<Bytes, TransportError> {
        let limit = self.config.max_message_bytes;
        if body.len() > limit {
            return Err(TransportError::TooLarge { size: body.len(), limit });
        }
        self.with(|s| sender_alive(s, from, generation))?;
        sleep(self.delay()).await;
        let handler = self.route(from, generation, to, protocol)?;
        let reply = self.spawn_handler(to, handler, from, body).await.map_err(|_| unreachable(to, "node went down"))?;
        sleep(self.delay()).await;
        self.with(|s| {
            sender_alive(s, from, generation)?;
            if s.cut.contains(&(to, from)) {
                return Err(unreachable(to, "link was cut before the reply arrived"));
            }
            Ok(())
        })?;
        let reply = reply.map_err(TransportError::Handler)?;
        if reply.len() > limit {
            return Err(TransportError::TooLarge { size: reply.len(), limit });
        }
        Ok(reply)
    }
}

fn sender_alive(s: &NetState, from: NodeId, generation: u64) -> Result<(), TransportError> {
    match s.nodes.get(&from) {
        Some(node) if !node.crashed && node.generation == generation => Ok(()),
        _ => Err(TransportError::Closed),
    }
}

fn unreachable(node: NodeId, reason: &str) -> TransportError {
    TransportError::Unreachable { node: node.short(), reason: reason.to_owned() }
}

async fn sleep(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// One node's end of a [`MemoryNetwork`].
pub struct MemoryTransport {
    id: NodeId,
    generation: u64,
    network: MemoryNetwork,
}

impl MemoryTransport {
    /// Replace who may send requests to this node (everyone by default).
    pub fn set_admission(&self, admission: Arc<dyn Admission>) {
        let (id, generation) = (self.id, self.generation);
        self.network.with(|s| {
            if let Some(node) = s.nodes.get_mut(&id).filter(|n| n.generation == generation) {
                node.admission = admission;
            }
        });
    }

    /// Whether this transport still belongs to a live node (it is dead after a crash).
    pub fn is_alive(&self) -> bool {
        self.network.with(|s| sender_alive(s, self.id, self.generation).is_ok())
    }
}

impl Transport for MemoryTransport {
    fn local_id(&self) -> NodeId {
        self.id
    }

    /// Addresses mean nothing in memory: nodes are found by id.
    fn set_peer_addr(&self, _node: NodeId, _addr: SocketAddr) {}

    fn request(
        &self,
        to: NodeId,
        protocol: Protocol,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let network = self.network.clone();
        let (from, generation) = (self.id, self.generation);
        let timeout = network.config.request_timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, network.request(from, generation, to, protocol, body)).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Timeout(to.short())),
            }
        })
    }

    /// Registers the handler unless this transport's node has crashed since it was made.
    fn serve(&self, protocol: Protocol, handler: Arc<dyn Handler>) {
        let (id, generation) = (self.id, self.generation);
        self.network.with(|s| {
            if let Some(node) = s.nodes.get_mut(&id).filter(|n| n.generation == generation) {
                node.handlers.insert(protocol, handler);
            }
        });
    }
}
