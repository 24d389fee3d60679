//! The mesh's public-key infrastructure: node keys, the mesh CA, node certificates and the mesh
//! secret.
//!
//! A node's identity is an Ed25519 key pair and its [`NodeId`] is the raw 32-byte public key, so
//! a certificate names a node by the key it carries, not by anything the CA wrote beside it.
//! The mesh CA is a self-signed Ed25519 certificate; it issues each node a leaf certificate
//! whose subject common name is the node id in hex and whose only name is [`MESH_SERVER_NAME`].
//!
//! Everything here (de)serializes to PEM strings; callers own the files. Validity periods need
//! the current time, which callers pass in (the node's one clock), so this module reads none.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::NodeId;

/// The one DNS name in every node certificate, and the server name every client asks for.
/// Peers are told apart by key, so a shared name is enough for TLS's name check.
pub const MESH_SERVER_NAME: &str = "falak.mesh";

/// How long an issued node certificate is valid. Long, because there is no rotation yet.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long the mesh CA is valid; longer than any certificate it issues early in its life.
pub const MESH_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Certificates start this long before `now`, so a peer whose clock lags a little accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);
/// `now` past this many years after 1970 is a broken clock, not a date to write into X.509.
const LATEST_SANE_NOW: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);
/// X.520's upper bound for a name attribute, which node names must fit.
const MAX_NAME_CHARS: usize = 64;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (33 bytes: no unused bits, then the 32-byte key) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why a key or CA could not be generated.
#[derive(Debug, thiserror::Error)]
#[error("generating {what} failed: {reason}")]
pub struct GenerateError {
    pub what: &'static str,
    pub reason: String,
}

/// Why PEM text is not the expected key or certificate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParsePemError {
    #[error("{what} is not valid PEM: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what} PEM has label {found:?}, expected {expected:?}")]
    WrongLabel { what: &'static str, found: String, expected: &'static str },
    #[error("{what} is not an Ed25519 key: {reason}")]
    NotEd25519 { what: &'static str, reason: String },
    #[error("{what} is not a usable certificate: {reason}")]
    BadCertificate { what: &'static str, reason: String },
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
}

/// Why the mesh CA did not issue a certificate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IssueError {
    #[error("node name must be 1 to {MAX_NAME_CHARS} printable characters, got {0:?}")]
    InvalidName(String),
    #[error("the current time is outside what a certificate can carry")]
    InvalidTime,
    #[error("signing the certificate failed: {0}")]
    Signing(String),
}

/// Why a certificate does not name a node.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum NodeIdError {
    #[error("certificate is malformed: {0}")]
    Malformed(String),
    #[error("certificate key is not Ed25519, so it names no node")]
    NotEd25519,
}

/// The node id a DER certificate names: its Ed25519 subject public key.
///
/// This reads the key the certificate carries; it does not check who signed it. The TLS
/// verifiers check the chain first and then call this.
pub fn node_id_from_cert(der: &[u8]) -> Result<NodeId, NodeIdError> {
    let der = CertificateDer::from(der);
    let parsed =
        rustls::server::ParsedCertificate::try_from(&der).map_err(|e| NodeIdError::Malformed(e.to_string()))?;
    let spki = parsed.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(ED25519_SPKI_PREFIX.as_slice()).ok_or(NodeIdError::NotEd25519)?;
    <[u8; 32]>::try_from(key).map(NodeId).map_err(|_| NodeIdError::NotEd25519)
}

/// A node's Ed25519 key pair. `Debug` shows only the public id.
pub struct NodeKey {
    pair: KeyPair,
    id: NodeId,
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, GenerateError> {
        let pair = KeyPair::generate_for(&PKCS_ED25519)
            .map_err(|e| GenerateError { what: "node key", reason: e.to_string() })?;
        NodeKey::from_pair(pair).map_err(|e| GenerateError { what: "node key", reason: e.to_string() })
    }

    /// Read a PKCS#8 `PRIVATE KEY` PEM holding an Ed25519 key.
    pub fn from_pem(pem: &str) -> Result<NodeKey, ParsePemError> {
        NodeKey::from_pair(parse_ed25519_key("node key", pem)?)
    }

    /// The PKCS#8 PEM of the key. It is secret: write it with owner-only permissions.
    pub fn to_pem(&self) -> String {
        self.pair.serialize_pem()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's Ed25519 signature of `message` (join requests, hop credentials); anyone
    /// checks it against the node id, which is the public key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(self.pkcs8_der())
            .expect("a node key is an Ed25519 PKCS#8 key (checked when it was loaded)");
        pair.sign(message).as_ref().try_into().expect("an Ed25519 signature is 64 bytes")
    }

    /// The PKCS#8 DER of the key, for rustls and for deriving per-node secrets.
    pub(crate) fn pkcs8_der(&self) -> &[u8] {
        self.pair.serialized_der()
    }

    fn from_pair(pair: KeyPair) -> Result<NodeKey, ParsePemError> {
        let raw = pair.public_key_raw();
        let id = <[u8; 32]>::try_from(raw).map(NodeId).map_err(|_| ParsePemError::NotEd25519 {
            what: "node key",
            reason: format!("public key has {} bytes, expected 32", raw.len()),
        })?;
        Ok(NodeKey { pair, id })
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The mesh's trust root: the CA certificate alone, which every node holds.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshRoot {
    der: CertificateDer<'static>,
}

impl MeshRoot {
    pub fn from_pem(pem: &str) -> Result<MeshRoot, ParsePemError> {
        let der = parse_pem("mesh CA certificate", pem, "CERTIFICATE")?;
        let der = CertificateDer::from(der);
        rustls::server::ParsedCertificate::try_from(&der)
            .map_err(|e| ParsePemError::BadCertificate { what: "mesh CA certificate", reason: e.to_string() })?;
        Ok(MeshRoot { der })
    }

    pub fn to_pem(&self) -> String {
        encode_pem("CERTIFICATE", self.der.as_ref())
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// BLAKE3 of the CA certificate in hex: a short way to pin the root in a join token.
    pub fn fingerprint(&self) -> String {
        blake3::hash(self.der.as_ref()).to_hex().to_string()
    }
}

impl fmt::Debug for MeshRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshRoot({})", &self.fingerprint()[..16])
    }
}

/// The mesh CA: its certificate and signing key. Only nodes that admit others need it.
pub struct MeshCa {
    root: MeshRoot,
    issuer: Issuer<'static, KeyPair>,
}

impl MeshCa {
    /// A new self-signed Ed25519 CA for the mesh `mesh_name`, valid from `now` for
    /// [`MESH_CA_VALIDITY`].
    pub fn generate(mesh_name: &str, now: SystemTime) -> Result<MeshCa, GenerateError> {
        let fail = |reason: String| GenerateError { what: "mesh CA", reason };
        check_name(mesh_name).map_err(|e| fail(e.to_string()))?;
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| fail(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "falak");
        dn.push(DnType::CommonName, format!("{mesh_name} mesh CA"));
        params.distinguished_name = dn;
        // Path length 0: the CA signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, now, MESH_CA_VALIDITY).map_err(|e| fail(e.to_string()))?;
        let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
        Ok(MeshCa { root: MeshRoot { der: cert.der().clone() }, issuer: Issuer::new(params, key) })
    }

    /// Load a CA from its certificate and PKCS#8 key PEMs, checking that they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<MeshCa, ParsePemError> {
        let root = MeshRoot::from_pem(cert_pem)?;
        let key = parse_ed25519_key("mesh CA key", key_pem)?;
        let parsed = rustls::server::ParsedCertificate::try_from(root.der())
            .map_err(|e| ParsePemError::BadCertificate { what: "mesh CA certificate", reason: e.to_string() })?;
        if parsed.subject_public_key_info().as_ref() != key.subject_public_key_info().as_slice() {
            return Err(ParsePemError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(root.der(), key)
            .map_err(|e| ParsePemError::BadCertificate { what: "mesh CA certificate", reason: e.to_string() })?;
        Ok(MeshCa { root, issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.root.to_pem()
    }

    /// The CA's PKCS#8 key PEM. It is the mesh's master secret: whoever holds it can mint nodes.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn root(&self) -> MeshRoot {
        self.root.clone()
    }

    /// Issue the certificate of node `node` (its public key), called `node_name`, valid from
    /// `now` for [`NODE_CERT_VALIDITY`]. The node proves it holds the private key in every TLS
    /// handshake, so the CA needs only the public key.
    pub fn issue(&self, node: NodeId, node_name: &str, now: SystemTime) -> Result<NodeCert, IssueError> {
        self.issue_for_hosts(node, node_name, &[], now)
    }

    /// [`MeshCa::issue`], also naming `hosts` (IP addresses or DNS names): the names clients use
    /// to reach the node's HTTPS API, which serves the same certificate.
    pub fn issue_for_hosts(
        &self,
        node: NodeId,
        node_name: &str,
        hosts: &[String],
        now: SystemTime,
    ) -> Result<NodeCert, IssueError> {
        check_name(node_name)?;
        let signing = |e: rcgen::Error| IssueError::Signing(e.to_string());
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName(MESH_SERVER_NAME.try_into().map_err(signing)?)];
        for host in hosts {
            let san = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.as_str().try_into().map_err(signing)?),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node.to_string());
        dn.push(DnType::OrganizationalUnitName, node_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node is both a server and a client of its peers.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, now, NODE_CERT_VALIDITY)?;
        let cert =
            params.signed_by(&Ed25519PublicKey(node), &self.issuer).map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(NodeCert { der: cert.der().clone(), id: node })
    }
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCa").field("root", &self.root).finish_non_exhaustive()
    }
}

/// A node's certificate, issued by the mesh CA, with the node id it names.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCert {
    der: CertificateDer<'static>,
    id: NodeId,
}

impl NodeCert {
    pub fn from_pem(pem: &str) -> Result<NodeCert, ParsePemError> {
        NodeCert::from_der(parse_pem("node certificate", pem, "CERTIFICATE")?)
    }

    pub fn from_der(der: Vec<u8>) -> Result<NodeCert, ParsePemError> {
        let id = node_id_from_cert(&der)
            .map_err(|e| ParsePemError::BadCertificate { what: "node certificate", reason: e.to_string() })?;
        Ok(NodeCert { der: CertificateDer::from(der), id })
    }

    pub fn to_pem(&self) -> String {
        encode_pem("CERTIFICATE", self.der.as_ref())
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The node the certificate names (its public key).
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// Whether the certificate names `host` (an IP address or DNS name) for TLS clients.
    pub fn names_host(&self, host: &str) -> bool {
        let Ok(cert) = webpki::EndEntityCert::try_from(&self.der) else { return false };
        let Ok(name) = rustls::pki_types::ServerName::try_from(host) else { return false };
        cert.verify_is_valid_for_subject_name(&name).is_ok()
    }
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeCert({:?})", self.id)
    }
}

/// The mesh's shared 32-byte secret (membership derives its packet key from it). Written as 64
/// hex characters; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshSecret(pub [u8; 32]);

/// Why a string is not a mesh secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("mesh secret must be 64 hex characters")]
pub struct ParseMeshSecretError;

impl MeshSecret {
    pub fn generate() -> MeshSecret {
        MeshSecret(rand::random())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for MeshSecret {
    type Err = ParseMeshSecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| ParseMeshSecretError)?;
        Ok(MeshSecret(out))
    }
}

impl fmt::Debug for MeshSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeshSecret(..)")
    }
}

impl Serialize for MeshSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for MeshSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's public key as rcgen wants it for the subject of a certificate.
struct Ed25519PublicKey(NodeId);

impl PublicKeyData for Ed25519PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

fn check_name(name: &str) -> Result<(), IssueError> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(IssueError::InvalidName(name.to_owned()));
    }
    Ok(())
}

fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) -> Result<(), IssueError> {
    let since_epoch = now.duration_since(UNIX_EPOCH).map_err(|_| IssueError::InvalidTime)?;
    if since_epoch > LATEST_SANE_NOW {
        return Err(IssueError::InvalidTime);
    }
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    params.not_after = epoch + since_epoch + validity;
    Ok(())
}

/// A random positive 128-bit serial: unique enough that two issued certificates never collide.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn parse_pem(what: &'static str, text: &str, expected: &'static str) -> Result<Vec<u8>, ParsePemError> {
    let block = pem::parse(text).map_err(|e| ParsePemError::Malformed { what, reason: e.to_string() })?;
    if block.tag() != expected {
        return Err(ParsePemError::WrongLabel { what, found: block.tag().to_owned(), expected });
    }
    Ok(block.into_contents())
}

fn parse_ed25519_key(what: &'static str, text: &str) -> Result<KeyPair, ParsePemError> {
    let der = parse_pem(what, text, "PRIVATE KEY")?;
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der);
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ED25519)
        .map_err(|e| ParsePemError::NotEd25519 { what, reason: e.to_string() })
}

fn encode_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(label, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    #[test]
    fn node_key_round_trips_through_pem_and_keeps_its_id() {
        let key = NodeKey::generate().unwrap();
        let again = NodeKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(again.id(), key.id());
        assert!(format!("{key:?}").contains(&key.id().short()));
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn issued_certificate_names_the_node_key() {
        let ca = MeshCa::generate("test", now()).unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = ca.issue(key.id(), "n1", now()).unwrap();
        assert_eq!(cert.node_id(), key.id());
        assert_eq!(node_id_from_cert(cert.der()).unwrap(), key.id());
        let again = NodeCert::from_pem(&cert.to_pem()).unwrap();
        assert_eq!(again, cert);
    }

    #[test]
    fn ca_round_trips_through_pem_and_still_issues() {
        let ca = MeshCa::generate("test", now()).unwrap();
        let loaded = MeshCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.root(), ca.root());
        let key = NodeKey::generate().unwrap();
        assert_eq!(loaded.issue(key.id(), "n2", now()).unwrap().node_id(), key.id());
    }

    #[test]
    fn ca_with_a_foreign_key_is_refused() {
        let ca = MeshCa::generate("test", now()).unwrap();
        let other = MeshCa::generate("other", now()).unwrap();
        assert_eq!(MeshCa::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err(), ParsePemError::KeyMismatch);
    }

    #[test]
    fn a_ca_certificate_is_not_a_node_key() {
        let ca = MeshCa::generate("test", now()).unwrap();
        let err = NodeKey::from_pem(&ca.cert_pem()).unwrap_err();
        assert!(matches!(err, ParsePemError::WrongLabel { .. }), "{err}");
        assert!(matches!(NodeKey::from_pem("garbage").unwrap_err(), ParsePemError::Malformed { .. }));
    }

    #[test]
    fn non_ed25519_certificates_name_no_node() {
        let ecdsa = rcgen::generate_simple_self_signed(vec!["x.test".to_owned()]).unwrap();
        assert_eq!(node_id_from_cert(ecdsa.cert.der()), Err(NodeIdError::NotEd25519));
        assert!(matches!(node_id_from_cert(b"\x30\x03\x02\x01\x00"), Err(NodeIdError::Malformed(_))));
        assert!(matches!(node_id_from_cert(&[]), Err(NodeIdError::Malformed(_))));
    }

    #[test]
    fn names_and_times_are_checked() {
        let ca = MeshCa::generate("test", now()).unwrap();
        let id = NodeKey::generate().unwrap().id();
        assert!(matches!(ca.issue(id, "", now()), Err(IssueError::InvalidName(_))));
        assert!(matches!(ca.issue(id, &"x".repeat(65), now()), Err(IssueError::InvalidName(_))));
        assert!(matches!(ca.issue(id, "a\nb", now()), Err(IssueError::InvalidName(_))));
        let early = UNIX_EPOCH.checked_sub(Duration::from_secs(1)).unwrap();
        assert_eq!(ca.issue(id, "n", early).unwrap_err(), IssueError::InvalidTime);
    }

    #[test]
    fn mesh_secret_round_trips_through_hex_and_hides_in_debug() {
        let secret = MeshSecret::generate();
        assert_eq!(secret.to_hex().parse::<MeshSecret>().unwrap(), secret);
        assert_eq!(format!("{secret:?}"), "MeshSecret(..)");
        assert_eq!("zz".parse::<MeshSecret>(), Err(ParseMeshSecretError));
    }
}
