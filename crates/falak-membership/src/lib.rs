//! SWIM membership, failure detection and gossip state for Falak, over sealed UDP.
//!
//! Two layers:
//!
//! - [`Membership`], a sans-IO state machine wrapping [`foca`]: inputs are received
//!   datagrams, fired timers and commands, each with the caller's `now`; outputs, drained with
//!   [`Membership::poll_output`], are sealed datagrams to send, timers to arm and
//!   [`MembershipEvent`]s. It reads no clock and draws randomness only from the seeded
//!   generator it was built with, so a simulation replays exactly per seed.
//! - [`driver::spawn`], a tokio task that owns a UDP socket and the timers and exposes a
//!   [`driver::MembershipHandle`] to the node daemon.
//!
//! Peers are HEALTHY, SUSPECT or OFFLINE (SWIM's alive, suspect, down). Every datagram is
//! sealed with XChaCha20-Poly1305 under a key derived from the mesh secret ([`seal`]). Each
//! node's [`falak_core::gossip::GossipState`] rides on membership traffic as a foca custom
//! broadcast ([`gossip`]). Timing presets and their trade-offs are in [`MembershipConfig`] and
//! `docs/design/membership.md`.
//!
//! **Boundary:** depends on no workspace crate but `falak-core`; only [`driver`] does IO or
//! reads a clock.

pub mod config;
pub mod driver;
pub mod gossip;
pub mod identity;
pub mod membership;
pub mod rng;
pub mod seal;
pub mod view;

pub use config::{MembershipConfig, ValidateConfigError};
pub use driver::{MembershipHandle, MembershipSnapshot, spawn};
pub use identity::MemberIdentity;
pub use membership::{
    CreateMembershipError, JoinError, Membership, MembershipStats, MembershipTimer, Output, PublishGossipError,
};
pub use seal::{MAX_DATAGRAM, MeshSecret, OpenError};
pub use view::{Health, MembershipEvent, NodeView};
