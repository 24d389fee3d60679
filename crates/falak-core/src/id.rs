//! Identifiers shared by every layer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Display as 64 lowercase hex characters; serialize as that text in human-readable formats
/// and as the 32 bytes otherwise; deserialize through the type's `FromStr`.
macro_rules! hex_id {
    ($id:ident) => {
        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl Serialize for $id {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() { s.serialize_str(&self.to_string()) } else { self.0.serialize(s) }
            }
        }

        impl<'de> Deserialize<'de> for $id {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    Ok($id(<[u8; 32]>::deserialize(d)?))
                }
            }
        }
    };
}

hex_id!(NodeId);
hex_id!(ArtifactId);

/// A node's identity: its Ed25519 public key (32 bytes).
///
/// Displayed and serialized as 64 lowercase hex characters; [`NodeId::short`] gives the first
/// 8 for tables and logs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The first 8 hex characters, for humans.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// Why a string is not a node id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("node id must be 64 hex characters (an Ed25519 public key), got {0:?}")]
pub struct ParseNodeIdError(pub String);

impl FromStr for NodeId {
    type Err = ParseNodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseNodeIdError(s.to_owned()))?;
        Ok(NodeId(out))
    }
}

/// A content id: the BLAKE3 hash of an artifact's bytes (a code bundle, a rootfs, ...).
///
/// Displayed and serialized as 64 lowercase hex characters, like [`NodeId`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ArtifactId(pub [u8; 32]);

impl ArtifactId {
    /// The first 12 hex characters, for humans.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactId({})", self.short())
    }
}

/// Why a string is not an artifact id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("artifact id must be 64 hex characters (a BLAKE3 hash), got {0:?}")]
pub struct ParseArtifactIdError(pub String);

impl FromStr for ArtifactId {
    type Err = ParseArtifactIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ParseArtifactIdError(s.chars().take(80).collect()));
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseArtifactIdError(s.chars().take(80).collect()))?;
        Ok(ArtifactId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_through_hex_and_json() {
        let id = NodeId([7; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
        assert_eq!(id.short(), "07070707");
    }

    #[test]
    fn artifact_id_round_trips_and_rejects_bad_text() {
        let id = ArtifactId([0xab; 32]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ArtifactId>(&json).unwrap(), id);
        assert!("ab".parse::<ArtifactId>().is_err());
        assert!(id.to_string().to_uppercase().parse::<ArtifactId>().is_err());
        assert!("../etc/passwd".parse::<ArtifactId>().is_err());
    }

    #[test]
    fn node_id_rejects_bad_hex() {
        assert!("zz".parse::<NodeId>().is_err());
        assert!("00".parse::<NodeId>().is_err());
    }
}
