//! The tokio UDP driver: owns the socket and the timers, feeds a [`Membership`] core and
//! carries out what it asks.
//!
//! This is the only module of the crate that reads a clock, and only through
//! `tokio::time::Instant` (so tests can pause time); the core sees the elapsed time since
//! [`MembershipHandle::started_at`].
//!
//! Each turn of the loop first drains the socket, then fires due timers, then waits. Reading
//! the socket first matters after a pause: the acks and refutations that queued up while the
//! process was stopped are applied before our own overdue probe timers could suspect peers
//! that did answer. The drain is bounded so that a flood of datagrams cannot starve timers.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use falak_core::gossip::GossipState;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::identity::MemberIdentity;
use crate::membership::{JoinError, Membership, MembershipStats, MembershipTimer, Output, PublishGossipError};
use crate::seal::MAX_DATAGRAM;
use crate::view::{MembershipEvent, NodeView};

/// How many events a slow subscriber may fall behind before it sees `Lagged`.
const EVENT_CAPACITY: usize = 1024;
/// Datagrams read per turn before timers get their chance.
const DRAIN_BATCH: usize = 64;
/// How stale the published snapshot's counters may get when no peer changes.
const SNAPSHOT_REFRESH: Duration = Duration::from_secs(1);

/// What the driver last published: this node, its peers and its counters.
#[derive(Debug, Clone)]
pub struct MembershipSnapshot {
    pub identity: MemberIdentity,
    pub peers: Vec<NodeView>,
    pub stats: MembershipStats,
}

/// The running driver. Dropping the handle stops the driver without telling peers, exactly
/// like a crash; call [`MembershipHandle::shutdown`] to leave the mesh cleanly.
#[derive(Debug)]
pub struct MembershipHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<MembershipEvent>,
    snapshot: watch::Receiver<Arc<MembershipSnapshot>>,
    started_at: Instant,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

#[derive(Debug)]
enum Command {
    Join(SocketAddr, oneshot::Sender<Result<(), JoinError>>),
    SetGossip(Box<GossipState>, oneshot::Sender<Result<(), PublishGossipError>>),
    Leave(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Starts driving `membership` over `socket` on the current tokio runtime.
///
/// Events are published from the first datagram on; a subscriber that joins later should
/// read [`MembershipHandle::view`] first and then apply events.
pub fn spawn(socket: UdpSocket, membership: Membership) -> MembershipHandle {
    let started_at = Instant::now();
    let local_addr = socket.local_addr().unwrap_or_else(|_| membership.identity().addr);
    let (commands, command_rx) = mpsc::channel(64);
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let (snapshot_tx, snapshot) = watch::channel(Arc::new(snapshot_of(&membership)));
    let driver = Driver {
        socket,
        core: membership,
        timers: BTreeMap::new(),
        next_seq: 0,
        events: events.clone(),
        snapshot: snapshot_tx,
        published_at: started_at,
        started_at,
    };
    let task = tokio::spawn(driver.run(command_rx));
    MembershipHandle { commands, events, snapshot, started_at, local_addr, task }
}

impl MembershipHandle {
    /// Announces this node to `seed` and keeps retrying whenever no peer is alive.
    pub async fn join(&self, seed: SocketAddr) -> Result<(), JoinError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Join(seed, reply)).await.map_err(|_| JoinError::Stopped)?;
        answer.await.map_err(|_| JoinError::Stopped)?
    }

    /// Publishes this node's gossip state; its version must exceed the previous one.
    pub async fn set_local_gossip(&self, state: GossipState) -> Result<(), PublishGossipError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::SetGossip(Box::new(state), reply);
        self.commands.send(command).await.map_err(|_| PublishGossipError::Stopped)?;
        answer.await.map_err(|_| PublishGossipError::Stopped)?
    }

    /// Tells peers this node is leaving; the driver keeps running until shut down.
    pub async fn leave(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Leave(reply)).await.is_ok() {
            // An error means the driver already stopped, which is what leaving wants anyway.
            let _ = answer.await;
        }
    }

    /// Leaves the mesh, sends the goodbye datagrams and stops the driver.
    pub async fn shutdown(self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_ok() {
            let _ = answer.await;
        }
        let _ = self.task.await;
    }

    /// A stream of health and gossip changes, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// The peers as of the last change, ordered by node id.
    pub fn view(&self) -> Vec<NodeView> {
        self.snapshot.borrow().peers.clone()
    }

    /// The whole published snapshot, to watch for changes with `changed()`.
    pub fn watch(&self) -> watch::Receiver<Arc<MembershipSnapshot>> {
        self.snapshot.clone()
    }

    pub fn stats(&self) -> MembershipStats {
        self.snapshot.borrow().stats
    }

    /// The origin of the core's clock: `NodeView::last_change` is measured from here.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

struct Driver {
    socket: UdpSocket,
    core: Membership,
    /// Due time and scheduling order: timers due together fire in the order asked for.
    timers: BTreeMap<(Instant, u64), MembershipTimer>,
    next_seq: u64,
    events: broadcast::Sender<MembershipEvent>,
    snapshot: watch::Sender<Arc<MembershipSnapshot>>,
    published_at: Instant,
    started_at: Instant,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        // One byte more than the limit lets an oversized datagram be seen as such.
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            self.drain_socket(&mut buf);
            self.fire_due_timers();
            self.flush().await;
            let deadline = self.timers.first_key_value().map(|((due, _), _)| *due);
            tokio::select! {
                readable = self.socket.readable() => {
                    if let Err(error) = readable {
                        tracing::warn!(%error, "membership socket failed; stopping");
                        return;
                    }
                }
                command = commands.recv() => {
                    // Every handle is gone: stop as abruptly as a crash would.
                    let Some(command) = command else { return };
                    if let Some(reply) = self.command(command) {
                        self.flush().await;
                        let _ = reply.send(());
                        return;
                    }
                }
                () = sleep_until(deadline) => {}
            }
        }
    }

    /// Carries out one command; returns the reply channel of a shutdown, which ends the loop.
    fn command(&mut self, command: Command) -> Option<oneshot::Sender<()>> {
        let now = self.now();
        match command {
            Command::Join(seed, reply) => {
                let _ = reply.send(self.core.join(now, seed));
            }
            Command::SetGossip(state, reply) => {
                let _ = reply.send(self.core.set_local_gossip(now, *state));
            }
            Command::Leave(reply) => {
                self.core.leave(now);
                let _ = reply.send(());
            }
            Command::Shutdown(reply) => {
                self.core.leave(now);
                return Some(reply);
            }
        }
        None
    }

    fn drain_socket(&mut self, buf: &mut [u8]) {
        for _ in 0..DRAIN_BATCH {
            match self.socket.try_recv_from(buf) {
                Ok((len, from)) => {
                    let now = self.now();
                    self.core.handle_datagram(now, from, &buf[..len]);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) => {
                    // e.g. an ICMP error surfaced by the OS; the next datagram is unaffected.
                    tracing::debug!(%error, "membership socket receive failed");
                    return;
                }
            }
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            let elapsed = self.now();
            self.core.handle_timer(elapsed, timer);
        }
    }

    async fn flush(&mut self) {
        let mut changed = false;
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { to, bytes } => {
                    if let Err(error) = self.socket.send_to(&bytes, to).await {
                        // UDP is lossy anyway; SWIM tolerates a lost datagram.
                        tracing::debug!(%to, %error, "membership send failed");
                    }
                }
                Output::Schedule { after, timer } => {
                    self.timers.insert((Instant::now() + after, self.next_seq), timer);
                    self.next_seq += 1;
                }
                Output::Event(event) => {
                    changed = true;
                    // No subscriber is fine: the snapshot still carries the state.
                    let _ = self.events.send(event);
                }
            }
        }
        if changed || self.published_at.elapsed() >= SNAPSHOT_REFRESH {
            self.published_at = Instant::now();
            self.snapshot.send_replace(Arc::new(snapshot_of(&self.core)));
        }
    }

    /// The core's clock: time since the driver started.
    fn now(&self) -> Duration {
        self.started_at.elapsed()
    }
}

fn snapshot_of(core: &Membership) -> MembershipSnapshot {
    MembershipSnapshot { identity: core.identity().clone(), peers: core.view(), stats: core.stats() }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
