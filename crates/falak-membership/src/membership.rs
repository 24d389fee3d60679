//! The sans-IO membership core: foca plus sealing, gossip state and the peer view.
//!
//! [`Membership`] never touches a socket, a clock or ambient randomness. The driver (or a
//! test) feeds it datagrams and fired timers together with `now`, then drains
//! [`Membership::poll_output`] until it returns `None`: datagrams to send, timers to arm and
//! events to publish. `now` is a monotonic [`Duration`] since an origin the driver picks; it
//! only timestamps health changes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use falak_core::NodeId;
use falak_core::gossip::{GOSSIP_FORMAT, GossipState};
use foca::{AccumulatingRuntime, Foca, OwnedNotification};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{MembershipConfig, ValidateConfigError};
use crate::gossip::{
    GOSSIP_UPDATE_FORMAT, GossipHandler, GossipTable, GossipUpdate, MAX_GOSSIP_BYTES, SharedGossipTable,
};
use crate::identity::{FalakCodec, MemberIdentity, PLACEHOLDER_NODE};
use crate::rng::FocaRng;
use crate::seal::{MeshSecret, OpenError, Sealer};
use crate::view::{Health, MembershipEvent, NodeView, PeerTable};

type FocaCore = Foca<MemberIdentity, FalakCodec, FocaRng, GossipHandler>;

/// Something the driver must do on the core's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this sealed datagram to `to`.
    Send { to: SocketAddr, bytes: Bytes },
    /// Hand `timer` back through [`Membership::handle_timer`] once `after` has passed. Timers
    /// due at the same instant must be delivered in the order they were scheduled.
    Schedule { after: Duration, timer: MembershipTimer },
    /// Publish this event to whoever watches membership.
    Event(MembershipEvent),
}

/// An opaque timer the core asked for; only the core interprets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipTimer(TimerKind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimerKind {
    Foca(foca::Timer<MemberIdentity>),
    /// Re-announce to the seeds while no peer is alive.
    Rejoin,
}

/// Counters for what the core received, dropped and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MembershipStats {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    /// Larger than the 1400-byte datagram limit.
    pub dropped_oversized: u64,
    /// Too short to hold a seal.
    pub dropped_truncated: u64,
    /// A seal format this build does not know.
    pub dropped_unknown_format: u64,
    /// Failed authentication: another mesh's secret, tampering or noise.
    pub dropped_bad_seal: u64,
    /// Authentic but refused by the protocol (undecodable, from ourselves, out of place).
    pub dropped_malformed: u64,
    /// Peer gossip states accepted as newer than what was known.
    pub gossip_accepted: u64,
    /// Peer gossip states ignored because a newer one was known.
    pub gossip_stale: u64,
    /// Peer gossip states in a format this build does not know.
    pub gossip_unknown_format: u64,
    /// Times this node was declared OFFLINE by peers and rejoined under a new generation.
    pub rejoins: u64,
    /// Internal protocol errors foca reported on timers or sends (logged, never fatal).
    pub protocol_errors: u64,
}

/// Why a [`Membership`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateMembershipError {
    #[error("invalid membership config: {0}")]
    InvalidConfig(#[from] ValidateConfigError),
    #[error("the all-zero node id is reserved for announcing to unknown seeds")]
    PlaceholderNodeId,
}

/// Why a join request was refused; the core's state is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot join through our own address {0}")]
    OwnAddress(SocketAddr),
    #[error("this node has left the mesh")]
    Left,
    #[error("could not build the announce: {0}")]
    Protocol(#[source] foca::Error),
    #[error("the membership driver has stopped")]
    Stopped,
}

/// Why a local gossip state was refused; the previously published state stays in effect.
#[derive(Debug, thiserror::Error)]
pub enum PublishGossipError {
    #[error("gossip format {given} is not the current format {GOSSIP_FORMAT}")]
    UnknownFormat { given: u8 },
    #[error("gossip version {given} is not above the published version {published}")]
    StaleVersion { given: u64, published: u64 },
    #[error("gossip state encodes to {size} bytes, more than {MAX_GOSSIP_BYTES}")]
    TooLarge { size: usize },
    #[error("gossip state does not encode: {0}")]
    Encode(#[source] postcard::Error),
    #[error("could not queue the gossip state: {0}")]
    Protocol(#[source] foca::Error),
    #[error("the membership driver has stopped")]
    Stopped,
}

/// The SWIM membership state machine of one node.
pub struct Membership {
    foca: FocaCore,
    runtime: AccumulatingRuntime<MemberIdentity>,
    sealer: Sealer,
    /// Nonces come from here; foca draws from its own generator, seeded from this one.
    rng: ChaCha8Rng,
    config: MembershipConfig,
    gossip: SharedGossipTable,
    local_gossip: Option<GossipState>,
    seeds: Vec<SocketAddr>,
    rejoin_armed: bool,
    left: bool,
    peers: PeerTable,
    outputs: VecDeque<Output>,
    stats: MembershipStats,
    now: Duration,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("identity", self.foca.identity()).field("stats", &self.stats).finish()
    }
}

impl Membership {
    /// A core for `local`, sealing with `secret`, drawing all randomness from `rng`.
    pub fn new(
        local: MemberIdentity,
        secret: &MeshSecret,
        config: MembershipConfig,
        mut rng: ChaCha8Rng,
    ) -> Result<Self, CreateMembershipError> {
        if local.node == PLACEHOLDER_NODE {
            return Err(CreateMembershipError::PlaceholderNodeId);
        }
        let foca_config = config.to_foca()?;
        let foca_rng = FocaRng(ChaCha8Rng::from_seed(rng.r#gen()));
        let gossip = GossipTable::shared(local.node);
        let codec = FalakCodec::new(local.node);
        let foca = Foca::with_custom_broadcast(local, foca_config, foca_rng, codec, GossipHandler::new(gossip.clone()));
        // The maintenance tick (re-announce when alone, re-publish gossip) runs from the start.
        let outputs = VecDeque::from([Output::Schedule {
            after: config.rejoin_interval,
            timer: MembershipTimer(TimerKind::Rejoin),
        }]);
        Ok(Membership {
            foca,
            runtime: AccumulatingRuntime::new(),
            sealer: Sealer::new(secret),
            rng,
            config,
            gossip,
            local_gossip: None,
            seeds: Vec::new(),
            rejoin_armed: true,
            left: false,
            peers: PeerTable::default(),
            outputs,
            stats: MembershipStats::default(),
            now: Duration::ZERO,
        })
    }

    /// This node's current identity (its generation grows when it rejoins).
    pub fn identity(&self) -> &MemberIdentity {
        self.foca.identity()
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Announces this node to `seed`, whose node id need not be known, and keeps
    /// re-announcing to every seed given so far whenever no peer is alive.
    pub fn join(&mut self, now: Duration, seed: SocketAddr) -> Result<(), JoinError> {
        self.advance(now);
        if self.left {
            return Err(JoinError::Left);
        }
        if seed == self.identity().addr {
            return Err(JoinError::OwnAddress(seed));
        }
        self.foca.announce(MemberIdentity::placeholder(seed), &mut self.runtime).map_err(JoinError::Protocol)?;
        if !self.seeds.contains(&seed) {
            self.seeds.push(seed);
        }
        if !self.rejoin_armed {
            self.rejoin_armed = true;
            self.outputs.push_back(Output::Schedule {
                after: self.config.rejoin_interval,
                timer: MembershipTimer(TimerKind::Rejoin),
            });
        }
        self.settle();
        Ok(())
    }

    /// Feeds one received datagram. Anything that fails to open or decode is dropped and
    /// counted in [`Membership::stats`]; nothing here can panic on bad input.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        self.advance(now);
        self.stats.datagrams_received += 1;
        let packet = match self.sealer.open(datagram) {
            Ok(packet) => packet,
            Err(error) => {
                let counter = match error {
                    OpenError::Oversized(_) => &mut self.stats.dropped_oversized,
                    OpenError::Truncated(_) => &mut self.stats.dropped_truncated,
                    OpenError::UnknownFormat(_) => &mut self.stats.dropped_unknown_format,
                    OpenError::BadSeal => &mut self.stats.dropped_bad_seal,
                };
                *counter += 1;
                tracing::trace!(%from, %error, "dropped membership datagram");
                return;
            }
        };
        if let Err(error) = self.foca.handle_data(&packet, &mut self.runtime) {
            self.stats.dropped_malformed += 1;
            tracing::debug!(%from, %error, "membership packet refused");
        }
        self.settle();
    }

    /// Feeds a timer that was scheduled through [`Output::Schedule`] and is now due.
    pub fn handle_timer(&mut self, now: Duration, timer: MembershipTimer) {
        self.advance(now);
        match timer.0 {
            TimerKind::Foca(timer) if self.is_refuted_suspicion(&timer) => {
                tracing::trace!(?timer, "suspicion was refuted; timer dropped");
            }
            TimerKind::Foca(timer) => {
                if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                    self.stats.protocol_errors += 1;
                    tracing::debug!(%error, "membership timer failed");
                }
            }
            TimerKind::Rejoin => self.rejoin_tick(),
        }
        self.settle();
    }

    /// Publishes this node's gossip state; it must carry a higher version than the last one.
    pub fn set_local_gossip(&mut self, now: Duration, state: GossipState) -> Result<(), PublishGossipError> {
        self.advance(now);
        if state.format != GOSSIP_FORMAT {
            return Err(PublishGossipError::UnknownFormat { given: state.format });
        }
        if let Some(published) = &self.local_gossip
            && state.version <= published.version
        {
            return Err(PublishGossipError::StaleVersion { given: state.version, published: published.version });
        }
        let update = self.local_update(state.clone());
        let encoded = update.encode().map_err(PublishGossipError::Encode)?;
        if encoded.len() > MAX_GOSSIP_BYTES {
            return Err(PublishGossipError::TooLarge { size: encoded.len() });
        }
        self.foca.add_broadcast(&encoded).map_err(PublishGossipError::Protocol)?;
        self.local_gossip = Some(state);
        // Push it out now rather than waiting for the next probe or gossip round.
        if let Err(error) = self.foca.broadcast(&mut self.runtime) {
            self.stats.protocol_errors += 1;
            tracing::debug!(%error, "gossip broadcast failed");
        }
        self.settle();
        Ok(())
    }

    /// The gossip state this node last published.
    pub fn local_gossip(&self) -> Option<&GossipState> {
        self.local_gossip.as_ref()
    }

    /// Leaves the mesh: peers are told this node is OFFLINE and it stops rejoining.
    pub fn leave(&mut self, now: Duration) {
        self.advance(now);
        if self.left {
            return;
        }
        self.left = true;
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            self.stats.protocol_errors += 1;
            tracing::debug!(%error, "leave failed");
        }
        self.settle();
    }

    /// The next thing to do, or `None` once everything produced so far was drained.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Every peer this node knows, ordered by node id. This node itself is not included.
    pub fn view(&self) -> Vec<NodeView> {
        let table = GossipTable::lock(&self.gossip);
        self.peers.views(|node| table.get(node).map(|stored| stored.state.clone()))
    }

    /// A peer's health, if it is known.
    pub fn health(&self, node: &NodeId) -> Option<Health> {
        self.peers.health(node)
    }

    pub fn stats(&self) -> MembershipStats {
        let counters = GossipTable::lock(&self.gossip).counters();
        MembershipStats {
            gossip_accepted: counters.accepted,
            gossip_stale: counters.stale,
            gossip_unknown_format: counters.unknown_format,
            ..self.stats
        }
    }

    fn advance(&mut self, now: Duration) {
        // Callers promise a monotonic clock; a step back must not reorder health timestamps.
        self.now = self.now.max(now);
    }

    fn local_update(&self, state: GossipState) -> GossipUpdate {
        GossipUpdate {
            format: GOSSIP_UPDATE_FORMAT,
            node: self.identity().node,
            generation: self.identity().generation,
            state,
        }
    }

    /// Whether `timer` would declare down a member that has refuted the suspicion since.
    ///
    /// foca 1.0 skips the state change in that case but still sends the member a
    /// `TurnUndead`, and with `notify_down_members` the refuting member then believes it was
    /// declared down and rejoins under a new generation: every refuted suspicion would turn
    /// into an OFFLINE/HEALTHY pair. Dropping the timer here does exactly what foca's own
    /// check does, minus that message.
    fn is_refuted_suspicion(&self, timer: &foca::Timer<MemberIdentity>) -> bool {
        let foca::Timer::ChangeSuspectToDown { member_id, incarnation, .. } = timer else {
            return false;
        };
        self.foca
            .iter_membership_state()
            .find(|member| member.id() == member_id)
            .is_none_or(|member| member.incarnation() != *incarnation)
    }

    fn rejoin_tick(&mut self) {
        if self.left {
            self.rejoin_armed = false;
            return;
        }
        if self.foca.num_members() == 0 {
            for seed in self.seeds.clone() {
                if let Err(error) = self.foca.announce(MemberIdentity::placeholder(seed), &mut self.runtime) {
                    self.stats.protocol_errors += 1;
                    tracing::debug!(%seed, %error, "re-announce failed");
                }
            }
        } else {
            // Anti-entropy: a peer that joined after our state's last dissemination, or
            // missed it, hears it again within one tick.
            self.republish_local_gossip();
        }
        self.outputs.push_back(Output::Schedule {
            after: self.config.rejoin_interval,
            timer: MembershipTimer(TimerKind::Rejoin),
        });
    }

    /// Re-queues our gossip state, for peers that joined after its last dissemination or
    /// because our generation changed.
    fn republish_local_gossip(&mut self) {
        let Some(state) = self.local_gossip.clone() else { return };
        let queued = self
            .local_update(state)
            .encode()
            .map_err(|e| e.to_string())
            .and_then(|encoded| self.foca.add_broadcast(&encoded).map_err(|e| e.to_string()));
        if let Err(error) = queued {
            self.stats.protocol_errors += 1;
            tracing::debug!(%error, "gossip republish failed");
        }
    }

    /// Turns everything foca produced into outputs and brings the view up to date.
    fn settle(&mut self) {
        let mut republish = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(_) => republish = true,
                OwnedNotification::Rejoin(identity) => {
                    self.stats.rejoins += 1;
                    republish = true;
                    tracing::info!(generation = identity.generation, "declared offline by peers; rejoined");
                }
                OwnedNotification::Defunct => tracing::info!("membership identity is down"),
                OwnedNotification::Idle => tracing::debug!("no live peers"),
                _ => {}
            }
        }
        if republish {
            self.republish_local_gossip();
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.outputs.push_back(Output::Schedule { after, timer: MembershipTimer(TimerKind::Foca(timer)) });
        }
        while let Some((to, packet)) = self.runtime.to_send() {
            let nonce: [u8; 24] = self.rng.r#gen();
            match self.sealer.seal(&packet, nonce) {
                Ok(datagram) => {
                    self.stats.datagrams_sent += 1;
                    self.outputs.push_back(Output::Send { to: to.addr, bytes: Bytes::from(datagram) });
                }
                Err(error) => {
                    // foca caps packets at MAX_PLAINTEXT, so this would be a sizing bug.
                    self.stats.protocol_errors += 1;
                    tracing::warn!(%error, "could not seal membership packet");
                }
            }
        }
        let (now, outputs, gossip) = (self.now, &mut self.outputs, &self.gossip);
        self.peers.reconcile(
            now,
            self.foca.iter_membership_state(),
            |event| outputs.push_back(Output::Event(event)),
            |node| GossipTable::lock(gossip).remove(&node),
        );
        let fresh = GossipTable::lock(&self.gossip).take_fresh();
        self.outputs.extend(fresh.into_iter().map(|node| Output::Event(MembershipEvent::Gossip(node))));
    }
}
