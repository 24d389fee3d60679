//! Timing and fan-out of the SWIM protocol, and the presets Falak ships.
//!
//! How long a crash takes to become OFFLINE everywhere, roughly:
//!
//! ```text
//! wait until some peer probes the dead node   0 .. probe_period (usually a fraction: every peer probes)
//! + the rest of that probe period             probe_period       (suspicion is raised when it ends)
//! + suspect_to_offline                        the dead node's chance to refute
//! + dissemination of the OFFLINE verdict      a gossip round or two (gossip_interval)
//! ```
//!
//! A node that merely pauses (GC, SIGSTOP, a VM migration) is indistinguishable from a dead
//! one until it resumes; when it does, it reads the suspicion piggybacked on its queued
//! packets and refutes it by raising its incarnation. It is never declared OFFLINE if it
//! resumes within `probe_period + suspect_to_offline` of its last answer, minus the time its
//! refutation needs to reach the suspecting peer (a gossip round). Detection speed and pause
//! tolerance are the same knob: see `docs/design/membership.md`.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::PeriodicParams;

use crate::seal::MAX_PLAINTEXT;

/// SWIM parameters for one node. All nodes of a mesh should use the same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often this node probes one peer (round-robin over a shuffled list).
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How many peers are asked to probe indirectly; also the fan-out of a refutation.
    pub indirect_probes: usize,
    /// How long a SUSPECT peer has to refute before it is declared OFFLINE.
    pub suspect_to_offline: Duration,
    /// How many times each membership update or gossip state is piggybacked before it is
    /// dropped from the backlog.
    pub max_transmissions: u8,
    /// How often pending updates are pushed to `gossip_fanout` random peers, on top of
    /// piggybacking them on probes.
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    /// How often a connected node asks `announce_fanout` random peers for their member list,
    /// so that it learns about members nobody told it about.
    pub announce_interval: Duration,
    pub announce_fanout: usize,
    /// How often a node announces itself to a couple of OFFLINE peers; this is how the two
    /// sides of a healed partition find each other again.
    pub announce_offline_interval: Duration,
    /// How long an OFFLINE peer stays in the view (and is announced to) before it is forgotten.
    pub forget_offline_after: Duration,
    /// The maintenance tick: how often a node with no live peer re-announces itself to its
    /// seeds, and how often a node with peers re-disseminates its own gossip state.
    pub rejoin_interval: Duration,
}

/// Why a [`MembershipConfig`] cannot drive foca.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateConfigError {
    #[error("{0} must not be zero")]
    Zero(&'static str),
    #[error("probe_rtt ({rtt:?}) must be shorter than probe_period ({period:?})")]
    RttNotBelowPeriod { rtt: Duration, period: Duration },
}

impl MembershipConfig {
    /// A LAN or loopback mesh. In the seeded 5-node simulation a kill -9 becomes OFFLINE on
    /// every peer after 1.30 s at the median and 1.50 s at worst, and pauses up to 1.25 s
    /// are never reported OFFLINE.
    ///
    /// A short probe period keeps detection tight (every peer probes often, so the dead node
    /// is probed soon after it dies) and leaves most of the budget to `suspect_to_offline`,
    /// which is what buys pause tolerance.
    pub fn lan() -> Self {
        MembershipConfig {
            probe_period: Duration::from_millis(100),
            // A LAN round trip is well under a millisecond; 40 ms leaves room for a busy host,
            // and a slow direct ack still counts if it lands before the period ends.
            probe_rtt: Duration::from_millis(40),
            indirect_probes: 3,
            suspect_to_offline: Duration::from_millis(1200),
            // log10(N+1) * 4 by memberlist's rule is 8 at 100 nodes.
            max_transmissions: 8,
            gossip_interval: Duration::from_millis(50),
            gossip_fanout: 3,
            announce_interval: Duration::from_secs(5),
            announce_fanout: 1,
            announce_offline_interval: Duration::from_secs(1),
            forget_offline_after: Duration::from_secs(3600),
            rejoin_interval: Duration::from_secs(1),
        }
    }

    /// Like [`MembershipConfig::lan`] but never reporting pauses up to 1.75 s as OFFLINE
    /// (for example a 1.5 s stop-the-world pause), at the cost of crash detection about
    /// 0.5 s slower (1.8 s median in the simulation).
    pub fn pause_tolerant() -> Self {
        MembershipConfig { suspect_to_offline: Duration::from_millis(1700), ..MembershipConfig::lan() }
    }

    /// The longest pause this configuration never reports as OFFLINE, assuming the refutation
    /// reaches the suspecting peer within one gossip interval.
    pub fn tolerated_pause(&self) -> Duration {
        (self.probe_period + self.suspect_to_offline).saturating_sub(self.gossip_interval)
    }

    pub fn validate(&self) -> Result<(), ValidateConfigError> {
        for (name, value) in [
            ("probe_period", self.probe_period),
            ("probe_rtt", self.probe_rtt),
            ("suspect_to_offline", self.suspect_to_offline),
            ("gossip_interval", self.gossip_interval),
            ("announce_interval", self.announce_interval),
            ("announce_offline_interval", self.announce_offline_interval),
            ("forget_offline_after", self.forget_offline_after),
            ("rejoin_interval", self.rejoin_interval),
        ] {
            if value.is_zero() {
                return Err(ValidateConfigError::Zero(name));
            }
        }
        for (name, value) in [
            ("indirect_probes", self.indirect_probes),
            ("gossip_fanout", self.gossip_fanout),
            ("announce_fanout", self.announce_fanout),
            ("max_transmissions", usize::from(self.max_transmissions)),
        ] {
            if value == 0 {
                return Err(ValidateConfigError::Zero(name));
            }
        }
        if self.probe_rtt >= self.probe_period {
            return Err(ValidateConfigError::RttNotBelowPeriod { rtt: self.probe_rtt, period: self.probe_period });
        }
        Ok(())
    }

    /// The foca configuration these values stand for.
    pub fn to_foca(&self) -> Result<foca::Config, ValidateConfigError> {
        self.validate()?;
        let nonzero = |name, value| NonZeroUsize::new(value).ok_or(ValidateConfigError::Zero(name));
        Ok(foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: nonzero("indirect_probes", self.indirect_probes)?,
            max_transmissions: NonZeroU8::new(self.max_transmissions)
                .ok_or(ValidateConfigError::Zero("max_transmissions"))?,
            suspect_to_down_after: self.suspect_to_offline,
            remove_down_after: self.forget_offline_after,
            max_packet_size: nonzero("max_packet_size", MAX_PLAINTEXT)?,
            // Tell a peer we consider OFFLINE that it is, so it rejoins under a new generation
            // instead of talking into the void (Lifeguard-style recovery from false positives).
            notify_down_members: true,
            periodic_announce: Some(PeriodicParams {
                frequency: self.announce_interval,
                num_members: nonzero("announce_fanout", self.announce_fanout)?,
            }),
            periodic_announce_to_down_members: Some(PeriodicParams {
                frequency: self.announce_offline_interval,
                num_members: NonZeroUsize::MIN.saturating_add(1),
            }),
            periodic_gossip: Some(PeriodicParams {
                frequency: self.gossip_interval,
                num_members: nonzero("gossip_fanout", self.gossip_fanout)?,
            }),
        })
    }
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig::lan()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_state_their_pause_tolerance() {
        assert!(MembershipConfig::lan().to_foca().is_ok());
        assert!(MembershipConfig::pause_tolerant().to_foca().is_ok());
        assert_eq!(MembershipConfig::lan().tolerated_pause(), Duration::from_millis(1250));
        assert_eq!(MembershipConfig::pause_tolerant().tolerated_pause(), Duration::from_millis(1750));
    }

    #[test]
    fn invalid_values_are_named() {
        let mut config = MembershipConfig::lan();
        config.probe_rtt = config.probe_period;
        assert!(matches!(config.validate(), Err(ValidateConfigError::RttNotBelowPeriod { .. })));
        let config = MembershipConfig { gossip_fanout: 0, ..MembershipConfig::lan() };
        assert_eq!(config.validate(), Err(ValidateConfigError::Zero("gossip_fanout")));
    }
}
