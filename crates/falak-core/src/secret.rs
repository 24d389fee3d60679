//! Secret environment values: written in plain by the user, sealed by the node that receives
//! them before anything is committed, opened only by the node that runs the workload.
//!
//! A capsule's or function's `secrets: { NAME: value }` become environment variables of its
//! tasks or instances like `env`,
//! but the ledger holds them sealed (XChaCha20-Poly1305 under a key derived from the mesh secret,
//! bound to the capsule and variable name), API answers show `"***"`, and a spec's signature
//! covers their names, not their values ([`SecretValue::Redacted`] in the signed form), so the
//! CLI signs what it cannot seal and the node seals what it did not sign.
//!
//! **Invariant:** the state machine refuses a spec carrying a plain secret, so no plaintext
//! secret is ever in a log entry, a snapshot or a replica's disk.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

/// The largest secret value.
pub const MAX_SECRET_BYTES: usize = 64 << 10;

/// A secret as a spec carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretValue {
    /// As the user wrote it: only between the CLI and the node that seals it.
    Plain(String),
    /// As the ledger keeps it.
    Sealed(SealedSecret),
    /// Shown in API answers and signed: the value is not there.
    Redacted,
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretValue::Plain(_) => "Plain(***)",
            SecretValue::Sealed(_) => "Sealed(***)",
            SecretValue::Redacted => "Redacted",
        })
    }
}

/// A secret's value as a spec document carries it, before the receiving node seals it. `Debug`
/// hides it, so a document printed with `{:?}` shows the secrets' names only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlainText(pub String);

impl fmt::Debug for PlainText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The `secrets:` of a spec document: names and plain values.
pub type DocumentSecrets = BTreeMap<String, PlainText>;

/// A sealed secret: nonce and ciphertext (with its tag), hex in JSON.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    #[serde(with = "hex_bytes")]
    pub nonce: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub ciphertext: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The key secrets are sealed with, derived from the mesh secret. `Debug` hides it.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// Why a sealed secret could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name} of {owner} cannot be opened: it was sealed with another mesh's key or altered")]
pub struct OpenError {
    pub owner: String,
    pub name: String,
}

impl SecretKey {
    pub fn from_mesh_secret(mesh_secret: &[u8; 32]) -> SecretKey {
        SecretKey(blake3::derive_key("falak secrets v1", mesh_secret))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    /// Seal `value` of variable `name` of `owner` (a capsule or function name) with a 24-byte
    /// random `nonce` the caller draws.
    pub fn seal(&self, owner: &str, name: &str, value: &str, nonce: [u8; 24]) -> SealedSecret {
        let aad = associated(owner, name);
        let ciphertext = self
            .cipher()
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value.as_bytes(), aad: &aad })
            .expect("XChaCha20-Poly1305 seals any message");
        SealedSecret { nonce: nonce.to_vec(), ciphertext }
    }

    pub fn open(&self, owner: &str, name: &str, sealed: &SealedSecret) -> Result<String, OpenError> {
        let error = || OpenError { owner: owner.to_owned(), name: name.to_owned() };
        if sealed.nonce.len() != 24 {
            return Err(error());
        }
        let aad = associated(owner, name);
        let plain = self
            .cipher()
            .decrypt(XNonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: &aad })
            .map_err(|_| error())?;
        String::from_utf8(plain).map_err(|_| error())
    }
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecret({} bytes)", self.ciphertext.len())
    }
}

/// A spec's secrets by variable name.
pub type Secrets = BTreeMap<String, SecretValue>;

/// Check a document's `secrets` against its `env`: valid names, none also in `env`, values of
/// at most [`MAX_SECRET_BYTES`] without NUL.
pub fn validate_document(
    env: &BTreeMap<String, String>,
    secrets: &DocumentSecrets,
) -> Result<(), crate::spec::SpecError> {
    use crate::spec::SpecError;
    crate::spec::validate_env_names(secrets.keys())?;
    for (name, PlainText(value)) in secrets {
        if env.contains_key(name) {
            return Err(SpecError::new(format!("secrets.{name}"), "is also in env; name each variable once"));
        }
        if value.len() > MAX_SECRET_BYTES || value.contains('\0') {
            return Err(SpecError::new(format!("secrets.{name}"), format!("at most {MAX_SECRET_BYTES} bytes, no NUL")));
        }
    }
    Ok(())
}

/// A document's secrets as a spec carries them before the node seals them.
pub fn plain(secrets: DocumentSecrets) -> Secrets {
    secrets.into_iter().map(|(k, PlainText(v))| (k, SecretValue::Plain(v))).collect()
}

/// The names with no values: what signatures cover and API answers show.
pub fn redacted(secrets: &Secrets) -> Secrets {
    secrets.keys().map(|k| (k.clone(), SecretValue::Redacted)).collect()
}

/// Whether every value is sealed (what the ledger accepts).
pub fn all_sealed(secrets: &Secrets) -> bool {
    secrets.values().all(|v| matches!(v, SecretValue::Sealed(_)))
}

impl SecretKey {
    /// Seal every plain value of `owner`'s secrets in place, each with a nonce from `nonce`.
    pub fn seal_all(&self, owner: &str, secrets: &mut Secrets, mut nonce: impl FnMut() -> [u8; 24]) {
        for (name, value) in secrets.iter_mut() {
            if let SecretValue::Plain(plain) = value {
                *value = SecretValue::Sealed(self.seal(owner, name, plain, nonce()));
            }
        }
    }

    /// Every value of `owner`'s secrets, opened; an error names the first that does not open
    /// (or is not sealed).
    pub fn open_all(&self, owner: &str, secrets: &Secrets) -> Result<BTreeMap<String, String>, OpenError> {
        secrets
            .iter()
            .map(|(name, value)| match value {
                SecretValue::Sealed(sealed) => self.open(owner, name, sealed).map(|v| (name.clone(), v)),
                _ => Err(OpenError { owner: owner.to_owned(), name: name.clone() }),
            })
            .collect()
    }
}

fn associated(owner: &str, name: &str) -> Vec<u8> {
    format!("falak-secret-v1\0{owner}\0{name}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_owner_and_name() {
        let key = SecretKey::from_mesh_secret(&[1; 32]);
        let sealed = key.seal("app", "TOKEN", "hunter2", [9; 24]);
        assert!(!hex::encode(&sealed.ciphertext).contains(&hex::encode("hunter2")));
        assert_eq!(key.open("app", "TOKEN", &sealed).unwrap(), "hunter2");
        assert!(key.open("app", "OTHER", &sealed).is_err(), "bound to the name");
        assert!(key.open("other", "TOKEN", &sealed).is_err(), "bound to the owner");
        assert!(SecretKey::from_mesh_secret(&[2; 32]).open("app", "TOKEN", &sealed).is_err());
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(key.open("app", "TOKEN", &altered).is_err());
        assert_eq!(format!("{:?}", SecretValue::Plain("hunter2".into())), "Plain(***)");
    }

    #[test]
    fn documents_printed_for_debugging_show_secret_names_not_values() {
        let capsule: crate::capsule::CapsuleDocument =
            crate::spec::from_yaml("name: app\nkind: process\ncommand: [/bin/true]\nsecrets: { TOKEN: hunter2 }\n")
                .unwrap();
        let function = crate::function::FunctionDocument::parse(
            "name: f\nkind: function\nruntime: exec\ncommand: [/bin/cat]\nsecrets: { TOKEN: hunter2 }\n",
        )
        .unwrap();
        for printed in [format!("{capsule:?}"), format!("{function:?}")] {
            assert!(printed.contains("TOKEN"), "{printed}");
            assert!(!printed.contains("hunter2"), "{printed}");
        }
        assert_eq!(plain(capsule.secrets)["TOKEN"], SecretValue::Plain("hunter2".into()), "the value is kept");
    }
}
