//! Signed specs: capsules and functions carry an Ed25519 signature by a deployer key the mesh
//! trusts.
//!
//! What is signed is the spec as the ledger stores it, in its canonical form (the JSON of the
//! validated spec, whose maps are ordered), prefixed with a domain tag naming the kind:
//! `falak-spec-v1\0capsule\0{json}`. The CLI validates the document it is about to send with the
//! same code the node uses, signs the result and sends the signature beside the document; the
//! node validates the document, and the signature must match what it produced. A spec changed
//! anywhere after signing — in flight, in the ledger, on a disk — no longer verifies.
//!
//! **Invariant:** a capsule or function is committed, prepared and run only if its signature
//! verifies against a deployer key the ledger trusts and has not revoked
//! ([`check`], used by the state machine and again by each node before it runs the spec).

use std::fmt;
use std::str::FromStr;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::Millis;

/// What kind of spec a signature covers; part of the signed bytes, so a signature for one kind
/// is never valid for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecKind {
    Capsule,
    Function,
}

impl SpecKind {
    fn tag(self) -> &'static str {
        match self {
            SpecKind::Capsule => "capsule",
            SpecKind::Function => "function",
        }
    }
}

/// A deployer key's public half, which names it: 32 bytes, 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DeployerId(pub [u8; 32]);

impl DeployerId {
    /// The first 16 hex characters, for humans.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for DeployerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DeployerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeployerId({})", self.short())
    }
}

impl FromStr for DeployerId {
    type Err = String;

    fn from_str(s: &str) -> Result<DeployerId, String> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut id)
            .map_err(|_| format!("{s:?} is not a deployer key (64 hex characters of Ed25519 public key)"))?;
        Ok(DeployerId(id))
    }
}

impl Serialize for DeployerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DeployerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A signature over a spec, and the key that made it.
#[derive(Clone, PartialEq, Eq)]
pub struct SpecSignature {
    pub key: DeployerId,
    pub sig: [u8; 64],
}

impl fmt::Debug for SpecSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpecSignature({}, {}…)", self.key.short(), hex::encode(&self.sig[..4]))
    }
}

/// The header the CLI sends a signature in: `falak-signature: <key hex>.<signature hex>`.
pub const SIGNATURE_HEADER: &str = "falak-signature";

impl SpecSignature {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.key, hex::encode(self.sig))
    }
}

impl FromStr for SpecSignature {
    type Err = String;

    fn from_str(s: &str) -> Result<SpecSignature, String> {
        let bad = || format!("{SIGNATURE_HEADER} must be <64 hex key>.<128 hex signature>");
        let (key, sig) = s.trim().split_once('.').ok_or_else(bad)?;
        let key: DeployerId = key.parse().map_err(|_| bad())?;
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(sig, &mut bytes).map_err(|_| bad())?;
        Ok(SpecSignature { key, sig: bytes })
    }
}

impl Serialize for SpecSignature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for SpecSignature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The bytes a signature covers: the domain tag, the kind, the spec's canonical JSON.
pub fn signed_bytes<T: Serialize>(kind: SpecKind, spec: &T) -> Vec<u8> {
    let mut bytes = format!("falak-spec-v1\0{}\0", kind.tag()).into_bytes();
    serde_json::to_writer(&mut bytes, spec).expect("a spec serializes");
    bytes
}

/// A deployer's private key (Ed25519, PKCS#8). `Debug` never prints it.
pub struct DeployerKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

/// Why a deployer key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Ed25519 deployer key ({0}); use the PEM `falak up` wrote to credentials/deployer.key")]
pub struct BadDeployerKey(String);

impl DeployerKey {
    /// A key from its PKCS#8 document (DER).
    pub fn from_pkcs8(der: &[u8]) -> Result<DeployerKey, BadDeployerKey> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| BadDeployerKey(e.to_string()))?;
        Ok(DeployerKey { pair, pkcs8: der.to_vec() })
    }

    /// A key from a `PRIVATE KEY` PEM.
    pub fn from_pem(text: &str) -> Result<DeployerKey, BadDeployerKey> {
        let block = pem::parse(text.trim()).map_err(|e| BadDeployerKey(e.to_string()))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(BadDeployerKey(format!("a {} PEM, not a PRIVATE KEY", block.tag())));
        }
        DeployerKey::from_pkcs8(block.contents())
    }

    /// A new key from 32 random bytes (the caller draws them: this crate has no randomness).
    pub fn from_seed(seed: [u8; 32]) -> DeployerKey {
        // PKCS#8 v1 for Ed25519 (RFC 8410): a fixed 16-byte prefix, then the seed.
        let mut der =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        der.extend_from_slice(&seed);
        DeployerKey::from_pkcs8(&der).expect("a 32-byte seed is an Ed25519 key")
    }

    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.pkcs8.clone()))
    }

    pub fn id(&self) -> DeployerId {
        let mut id = [0u8; 32];
        id.copy_from_slice(self.pair.public_key().as_ref());
        DeployerId(id)
    }

    pub fn sign<T: Serialize>(&self, kind: SpecKind, spec: &T) -> SpecSignature {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(&signed_bytes(kind, spec)).as_ref());
        SpecSignature { key: self.id(), sig }
    }
}

impl fmt::Debug for DeployerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeployerKey({}, private half hidden)", self.id().short())
    }
}

/// A deployer key the mesh trusts, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployerRecord {
    pub id: DeployerId,
    /// Whose key it is, e.g. `ci` or `alice`.
    pub name: String,
    pub added_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// Why a signed spec is refused. Each says which, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureRefused {
    #[error(
        "the {kind} is not signed; sign it with a deployer key (the CLI does, with credentials/deployer.key from `falak up` or --deployer-key)"
    )]
    Unsigned { kind: &'static str },
    #[error(
        "the {kind} is signed by key {key}, which this mesh does not trust; an admin can add it with `falak deployer add`"
    )]
    UnknownKey { kind: &'static str, key: String },
    #[error("the {kind} is signed by key {key}, which was revoked; sign it with a trusted key")]
    RevokedKey { kind: &'static str, key: String },
    #[error("the {kind}'s signature by key {key} does not match it: the spec was changed after it was signed")]
    Tampered { kind: &'static str, key: String },
}

/// Whether `signature` is a valid signature of `spec` by a key in `trusted` that is not
/// revoked.
pub fn check<'a, T: Serialize>(
    kind: SpecKind,
    spec: &T,
    signature: Option<&SpecSignature>,
    mut trusted: impl FnMut(&DeployerId) -> Option<&'a DeployerRecord>,
) -> Result<(), SignatureRefused> {
    let what = kind.tag();
    let Some(signature) = signature else { return Err(SignatureRefused::Unsigned { kind: what }) };
    let key = signature.key.short();
    let Some(record) = trusted(&signature.key) else { return Err(SignatureRefused::UnknownKey { kind: what, key }) };
    if record.revoked_at.is_some() {
        return Err(SignatureRefused::RevokedKey { kind: what, key });
    }
    let public = UnparsedPublicKey::new(&ED25519, signature.key.0);
    public.verify(&signed_bytes(kind, spec), &signature.sig).map_err(|_| SignatureRefused::Tampered { kind: what, key })
}

/// A fixed deployer key, and the command that trusts it: for tests only.
pub fn deployer_for_tests() -> (DeployerKey, crate::ledger::Command) {
    let key = DeployerKey::from_seed([0x42; 32]);
    let record = DeployerRecord { id: key.id(), name: "test".into(), added_at: 0, revoked_at: None };
    (key, crate::ledger::Command::TrustDeployer { record, now: 0 })
}

/// The longest deployer name.
pub const MAX_DEPLOYER_NAME: usize = 64;
/// The most deployer keys a mesh keeps.
pub const MAX_DEPLOYERS: usize = 1_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capsule::CapsuleDocument;

    const DOC: &str =
        "name: hello\nkind: process\ncommand: [\"/bin/echo\", \"hi\"]\nresources: { cpu: 100m, memory: 32Mi }\n";

    fn trusted(key: &DeployerKey) -> DeployerRecord {
        DeployerRecord { id: key.id(), name: "ci".into(), added_at: 1, revoked_at: None }
    }

    #[test]
    fn a_signed_spec_verifies_and_every_change_is_caught() {
        let key = DeployerKey::from_seed([3; 32]);
        let record = trusted(&key);
        let spec = CapsuleDocument::parse(DOC).unwrap();
        let sig = key.sign(SpecKind::Capsule, &spec);
        let lookup = |id: &DeployerId| (*id == record.id).then_some(&record);
        assert_eq!(check(SpecKind::Capsule, &spec, Some(&sig), lookup), Ok(()));
        // The same signature does not cover a function with the same bytes, or another spec.
        assert!(matches!(check(SpecKind::Function, &spec, Some(&sig), lookup), Err(SignatureRefused::Tampered { .. })));
        let mut changed = spec.clone();
        changed.command[1] = "ho".into();
        assert!(matches!(
            check(SpecKind::Capsule, &changed, Some(&sig), lookup),
            Err(SignatureRefused::Tampered { .. })
        ));
        assert!(matches!(check(SpecKind::Capsule, &spec, None, lookup), Err(SignatureRefused::Unsigned { .. })));
        let stranger = DeployerKey::from_seed([4; 32]).sign(SpecKind::Capsule, &spec);
        assert!(matches!(
            check(SpecKind::Capsule, &spec, Some(&stranger), lookup),
            Err(SignatureRefused::UnknownKey { .. })
        ));
        let revoked = DeployerRecord { revoked_at: Some(2), ..record.clone() };
        let lookup_revoked = |id: &DeployerId| (*id == revoked.id).then_some(&revoked);
        let error = check(SpecKind::Capsule, &spec, Some(&sig), lookup_revoked).unwrap_err();
        assert!(error.to_string().contains("was revoked"), "{error}");
    }

    #[test]
    fn a_thousand_mutated_signed_capsules_are_all_rejected() {
        use rand::{Rng, SeedableRng};
        let key = DeployerKey::from_seed([5; 32]);
        let record = trusted(&key);
        let spec = CapsuleDocument::parse(DOC).unwrap();
        let sig = key.sign(SpecKind::Capsule, &spec);
        let json = serde_json::to_vec(&spec).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut unparsable, mut refused, mut same) = (0, 0, 0);
        let value = serde_json::to_value(&spec).unwrap();
        for i in 0..1_000 {
            let mut bytes = json.clone();
            let mut signature = sig.clone();
            match i % 3 {
                // Bits flipped in the spec's JSON as it travels.
                0 => {
                    for _ in 0..rng.gen_range(1..=4) {
                        let at = rng.gen_range(0..bytes.len());
                        bytes[at] ^= 1 << rng.gen_range(0..8);
                    }
                }
                // A value changed so the spec still parses: a string or number edited.
                1 => {
                    let mut v = value.clone();
                    mutate_leaf(&mut v, &mut rng);
                    bytes = serde_json::to_vec(&v).unwrap();
                }
                // The signature's bits flipped.
                _ => {
                    for _ in 0..rng.gen_range(1..=4) {
                        signature.sig[rng.gen_range(0..64)] ^= 1 << rng.gen_range(0..8);
                    }
                }
            }
            let Ok(mutated) = serde_json::from_slice::<crate::capsule::CapsuleSpec>(&bytes) else {
                unparsable += 1;
                continue;
            };
            if mutated == spec && signature == sig {
                // The flip hit something the spec does not keep (an optional field's name):
                // what is checked is exactly what was signed.
                same += 1;
                continue;
            }
            let lookup = |id: &DeployerId| (*id == record.id).then_some(&record);
            assert!(check(SpecKind::Capsule, &mutated, Some(&signature), lookup).is_err(), "{mutated:?} accepted");
            refused += 1;
        }
        assert_eq!(unparsable + refused + same, 1_000);
        assert!(refused > 400, "too few mutations parsed to test the signature: {refused}");
    }

    /// Change one string (append a character) or number (add one) somewhere in `v`.
    fn mutate_leaf(v: &mut serde_json::Value, rng: &mut impl rand::Rng) {
        use serde_json::Value;
        match v {
            Value::Object(map) if !map.is_empty() => {
                let n = rng.gen_range(0..map.len());
                let key = map.keys().nth(n).unwrap().clone();
                mutate_leaf(map.get_mut(&key).unwrap(), rng);
            }
            Value::Array(items) if !items.is_empty() => {
                let n = rng.gen_range(0..items.len());
                mutate_leaf(&mut items[n], rng);
            }
            Value::String(s) => s.push('x'),
            Value::Number(n) => *v = Value::from(n.as_u64().unwrap_or(0) + 1),
            Value::Bool(b) => *b = !*b,
            // An empty map or list, or null: give it something.
            other => *other = Value::from("x"),
        }
    }

    #[test]
    fn keys_round_trip_through_pem_and_hide_their_private_half() {
        let key = DeployerKey::from_seed([6; 32]);
        let again = DeployerKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(again.id(), key.id());
        assert!(!format!("{key:?}").contains(&hex::encode([6u8; 32])));
        assert!(DeployerKey::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        let sig = key.sign(SpecKind::Function, &"x");
        assert_eq!(sig.encode().parse::<SpecSignature>().unwrap(), sig);
    }
}
