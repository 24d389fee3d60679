//! Idempotent writes: a client's key makes a retried write take effect once.
//!
//! A write the ledger did not confirm in time (the API answers 503, or the connection drops)
//! may still commit. A client that retries it with the same `Idempotency-Key`, through any
//! node, gets the first write's outcome instead of a second job. The state machine remembers
//! each key with a fingerprint of what was asked and the outcome, for
//! [`IDEMPOTENCY_RETENTION_MS`] of ledger time and at most [`MAX_IDEMPOTENCY_KEYS`] keys (the
//! oldest go first).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Outcome, RejectCode, State};
use crate::Millis;

/// The HTTP header that carries the key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// How long a key is remembered, in ledger time (24 hours).
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;
/// The most keys remembered at once; beyond it the oldest are forgotten first.
pub const MAX_IDEMPOTENCY_KEYS: usize = 10_000;
/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// A client's idempotency key: 1 to 255 visible ASCII characters (a UUID is typical).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdempotencyKey(String);

/// Why a text is not an [`IdempotencyKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an Idempotency-Key must be 1 to {MAX_KEY_BYTES} visible ASCII characters (a UUID, say); got {0}")]
pub struct InvalidIdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdempotencyKey {
    type Err = InvalidIdempotencyKey;

    fn from_str(text: &str) -> Result<IdempotencyKey, InvalidIdempotencyKey> {
        if text.is_empty() {
            return Err(InvalidIdempotencyKey("an empty key".into()));
        }
        if text.len() > MAX_KEY_BYTES {
            return Err(InvalidIdempotencyKey(format!("{} bytes", text.len())));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(InvalidIdempotencyKey(format!("the character {c:?}")));
        }
        Ok(IdempotencyKey(text.to_owned()))
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for IdempotencyKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What a request asked for: a hash of its kind and its typed content, the same on every node
/// that receives the same request. Callers leave secret values out of what they hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestFingerprint(pub [u8; 32]);

impl RequestFingerprint {
    /// The fingerprint of a request of `kind` (e.g. `submit_job`) asking for `content`.
    pub fn of(kind: &str, content: &impl Serialize) -> RequestFingerprint {
        let mut hasher = blake3::Hasher::new_derive_key("falak idempotent request v1");
        hasher.update(&(kind.len() as u64).to_le_bytes());
        hasher.update(kind.as_bytes());
        // Serializing a typed request to JSON cannot fail (string keys, no non-finite floats
        // reach the API); were it to, every such request would share one fingerprint and a
        // reused key would be answered as a repeat, which is what the key's owner asked for.
        hasher.update(&serde_json::to_vec(content).unwrap_or_default());
        RequestFingerprint(*hasher.finalize().as_bytes())
    }
}

impl fmt::Debug for RequestFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestFingerprint({})", &hex::encode(self.0)[..16])
    }
}

impl Serialize for RequestFingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for RequestFingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&text, &mut bytes).map_err(serde::de::Error::custom)?;
        Ok(RequestFingerprint(bytes))
    }
}

/// What the ledger remembers of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    pub request: RequestFingerprint,
    /// The first write's outcome, answered again to every repeat.
    pub outcome: Outcome,
    /// The ledger clock when it was first applied.
    pub at: Millis,
}

impl State {
    /// The remembered outcome of `key`, if it is still remembered.
    pub fn idempotent_outcome(&self, key: &IdempotencyKey) -> Option<&Remembered> {
        self.data.idempotency.get(key)
    }

    /// How many keys are remembered.
    pub fn remembered_keys(&self) -> usize {
        self.data.idempotency.len()
    }

    /// Whether a command may be wrapped in `Idempotent`: a plain write, not a batch or another
    /// key (one key names one write).
    fn keyable(command: &super::Command) -> bool {
        !matches!(command, super::Command::Batch(_) | super::Command::Idempotent { .. })
    }

    pub(super) fn apply_idempotent(
        &mut self,
        key: &IdempotencyKey,
        request: RequestFingerprint,
        command: &super::Command,
        ev: &mut Vec<super::LedgerEvent>,
    ) -> Outcome {
        if !State::keyable(command) {
            return super::apply::reject(
                RejectCode::Invalid,
                "an idempotency key names one write, not a batch or another keyed write; nothing was applied",
            );
        }
        self.forget_expired_keys();
        if let Some(seen) = self.data.idempotency.get(key) {
            if seen.request == request {
                return seen.outcome.clone();
            }
            return super::apply::reject(
                RejectCode::Conflict,
                format!(
                    "Idempotency-Key {key} was already used for a different request; use a new key for a new request (nothing was applied)"
                ),
            );
        }
        let outcome = self.apply_command(command, ev);
        if outcome.rejection().is_none() {
            let at = self.data.clock;
            self.data.idempotency.insert(key.clone(), Remembered { request, outcome: outcome.clone(), at });
            self.keys_by_age.insert((at, key.clone()));
            self.forget_expired_keys();
        }
        outcome
    }

    /// Forget keys older than the retention, then the oldest while there are too many.
    fn forget_expired_keys(&mut self) {
        let clock = self.data.clock;
        while let Some((at, key)) = self.keys_by_age.first().cloned() {
            let expired = clock.saturating_sub(at) >= IDEMPOTENCY_RETENTION_MS;
            if !expired && self.keys_by_age.len() <= MAX_IDEMPOTENCY_KEYS {
                break;
            }
            self.keys_by_age.pop_first();
            self.data.idempotency.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!("0b6c2f0e-5a1d-4c1e-9f5e-2d7a9b1c3e4f".parse::<IdempotencyKey>().is_ok());
        for bad in ["", "has space", "tab\t", "é", &"k".repeat(256)] {
            let error = bad.parse::<IdempotencyKey>().unwrap_err().to_string();
            assert!(error.contains("visible ASCII"), "{bad:?}: {error}");
        }
        assert!(serde_json::from_str::<IdempotencyKey>("\"a b\"").is_err(), "checked when decoded too");
    }

    #[test]
    fn fingerprints_depend_on_kind_and_content() {
        let a = RequestFingerprint::of("submit_job", &serde_json::json!({ "tasks": 1 }));
        assert_eq!(a, RequestFingerprint::of("submit_job", &serde_json::json!({ "tasks": 1 })));
        assert_ne!(a, RequestFingerprint::of("submit_job", &serde_json::json!({ "tasks": 2 })));
        assert_ne!(a, RequestFingerprint::of("apply_service", &serde_json::json!({ "tasks": 1 })));
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<RequestFingerprint>(&text).unwrap(), a);
    }
}
