//! Sealed datagrams: every membership packet is encrypted and authenticated under a key derived
//! from the mesh secret, so outsiders can neither read nor inject membership traffic.
//!
//! Layout of one datagram (at most [`MAX_DATAGRAM`] bytes):
//!
//! ```text
//! [ format: u8 = 1 ][ nonce: 24 bytes ][ XChaCha20-Poly1305 ciphertext of the foca packet + 16-byte tag ]
//! ```
//!
//! The key is `blake3::derive_key("falak gossip v1", mesh_secret)`. The format byte is bound
//! into the AEAD as associated data, so it cannot be flipped without failing the tag. Nonces
//! are 24 random bytes from the core's seeded generator; at 192 bits, random nonces do not
//! collide in any realistic lifetime of a key.
//!
//! There is no replay protection: a replayed packet carries the incarnations, generations and
//! gossip versions of its time, which receivers already know or have superseded, so it
//! changes nothing, with one exception: a member foca has already forgotten (OFFLINE for longer
//! than `forget_offline_after`) looks alive again until suspicion runs out (see
//! `docs/design/membership.md`).

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};

/// The first byte of every sealed datagram.
pub const SEAL_FORMAT: u8 = 1;
/// The context string of the key derivation; changing it changes every key.
pub const KEY_CONTEXT: &str = "falak gossip v1";
/// Largest datagram sent or accepted, chosen to stay under a 1500-byte Ethernet MTU.
pub const MAX_DATAGRAM: usize = 1400;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a seal adds around the foca packet.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Largest foca packet that still fits a sealed datagram.
pub const MAX_PLAINTEXT: usize = MAX_DATAGRAM - SEAL_OVERHEAD;

/// The 32-byte secret every node of one mesh shares.
#[derive(Clone)]
pub struct MeshSecret(pub [u8; 32]);

impl std::fmt::Debug for MeshSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches logs.
        f.write_str("MeshSecret(..)")
    }
}

/// Why a datagram was dropped before reaching foca.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("datagram of {0} bytes is larger than {MAX_DATAGRAM}")]
    Oversized(usize),
    #[error("datagram of {0} bytes is too short to hold a seal")]
    Truncated(usize),
    #[error("datagram has unknown seal format {0}")]
    UnknownFormat(u8),
    #[error("datagram failed authentication (wrong mesh secret or tampered)")]
    BadSeal,
}

/// Why a packet could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("packet of {0} bytes does not fit a sealed datagram")]
    TooLarge(usize),
    #[error("encryption failed")]
    Encrypt,
}

/// Seals and opens datagrams under one mesh key.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(secret: &MeshSecret) -> Self {
        let key = blake3::derive_key(KEY_CONTEXT, &secret.0);
        Sealer { cipher: XChaCha20Poly1305::new(Key::from_slice(&key)) }
    }

    /// Seals `packet` with the given nonce; the caller draws the nonce from its seeded RNG.
    pub fn seal(&self, packet: &[u8], nonce: [u8; NONCE_LEN]) -> Result<Vec<u8>, SealError> {
        if packet.len() > MAX_PLAINTEXT {
            return Err(SealError::TooLarge(packet.len()));
        }
        let mut out = Vec::with_capacity(packet.len() + SEAL_OVERHEAD);
        out.push(SEAL_FORMAT);
        out.extend_from_slice(&nonce);
        let mut body = packet.to_vec();
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &[SEAL_FORMAT], &mut body)
            .map_err(|_| SealError::Encrypt)?;
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a datagram, returning the foca packet inside it.
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, OpenError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(OpenError::Oversized(datagram.len()));
        }
        let Some((&format, rest)) = datagram.split_first() else {
            return Err(OpenError::Truncated(0));
        };
        if format != SEAL_FORMAT {
            return Err(OpenError::UnknownFormat(format));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Truncated(datagram.len()));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut plain = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), &[format], &mut plain, Tag::from_slice(tag))
            .map_err(|_| OpenError::BadSeal)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&MeshSecret([byte; 32]))
    }

    #[test]
    fn sealed_packet_opens_under_the_same_secret_only() {
        let datagram = sealer(1).seal(b"hello mesh", [7; 24]).expect("fits");
        assert_eq!(datagram.len(), 10 + SEAL_OVERHEAD);
        assert_eq!(datagram[0], SEAL_FORMAT);
        assert_eq!(sealer(1).open(&datagram).expect("opens"), b"hello mesh");
        assert_eq!(sealer(2).open(&datagram), Err(OpenError::BadSeal));
    }

    #[test]
    fn every_malformation_is_named() {
        let good = sealer(1).seal(b"x", [0; 24]).expect("fits");
        assert_eq!(sealer(1).open(&[]), Err(OpenError::Truncated(0)));
        assert_eq!(sealer(1).open(&good[..good.len() - 1]), Err(OpenError::BadSeal));
        assert_eq!(sealer(1).open(&good[..20]), Err(OpenError::Truncated(20)));
        let mut other_format = good.clone();
        other_format[0] = 2;
        assert_eq!(sealer(1).open(&other_format), Err(OpenError::UnknownFormat(2)));
        assert_eq!(sealer(1).open(&vec![SEAL_FORMAT; MAX_DATAGRAM + 1]), Err(OpenError::Oversized(MAX_DATAGRAM + 1)));
    }

    #[test]
    fn largest_packet_fills_the_datagram_exactly() {
        let datagram = sealer(1).seal(&[0; MAX_PLAINTEXT], [1; 24]).expect("fits");
        assert_eq!(datagram.len(), MAX_DATAGRAM);
        assert_eq!(sealer(1).seal(&[0; MAX_PLAINTEXT + 1], [1; 24]), Err(SealError::TooLarge(MAX_PLAINTEXT + 1)));
    }
}
