//! TLS 1.3 configuration for the mesh: both sides present a certificate from the mesh CA, and
//! a client accepts a server only if its certificate carries the key of the node it dialled.
//!
//! Every config is built with the ring provider passed explicitly, never a process default,
//! so no other provider (aws-lc) can slip in. Session resumption and 0-RTT are off: resumed
//! sessions skip certificate verification, and identity must be checked on every connection.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, SignatureScheme};

use crate::pki::{MeshRoot, NodeCert, NodeIdError, NodeKey, node_id_from_cert};
use crate::{NodeId, Protocol};

/// The node's TLS material and the verifiers built once from the mesh root.
pub(crate) struct TlsContext {
    provider: Arc<CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server_verifier: Arc<WebPkiServerVerifier>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl TlsContext {
    pub(crate) fn new(key: &NodeKey, cert: &NodeCert, root: &MeshRoot) -> Result<TlsContext, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(root.der().clone())?;
        let roots = Arc::new(roots);
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(TlsContext {
            provider,
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
            server_verifier,
            client_verifier: Arc::new(MeshClientVerifier { inner }),
        })
    }

    /// The server side: every protocol's ALPN, client certificates required.
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(self.client_verifier.clone())
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = Protocol::ALL.iter().map(|p| p.alpn().to_vec()).collect();
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// The client side of one connection to `expected` for `protocol`.
    pub(crate) fn client_config(
        &self,
        expected: NodeId,
        protocol: Protocol,
    ) -> Result<rustls::ClientConfig, rustls::Error> {
        let verifier = Arc::new(PeerVerifier { inner: self.server_verifier.clone(), expected });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![protocol.alpn().to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_early_data = false;
        Ok(config)
    }
}

/// The peer presented a valid mesh certificate, but for another node.
#[derive(thiserror::Error)]
#[error("peer certificate is for node {found}, expected node {expected}")]
struct WrongNodeError {
    found: NodeId,
    expected: NodeId,
}

/// rustls shows the cause of a certificate error with `Debug`; make that the readable message.
impl std::fmt::Debug for WrongNodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn identity_error(e: NodeIdError) -> rustls::Error {
    match e {
        NodeIdError::Malformed(_) => rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
        NodeIdError::NotEd25519 => rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e)))),
    }
}

/// Client side: the mesh CA's chain and name check, then the node id check.
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: NodeId,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let found = node_id_from_cert(end_entity).map_err(identity_error)?;
        if found != self.expected {
            let wrong = WrongNodeError { found, expected: self.expected };
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(wrong)))));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server side: the mesh CA's chain check, and the certificate must name a node (Ed25519).
/// Admission is checked after the handshake, where the negotiated protocol is known and the
/// refusal can carry a reason the client can read.
#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        node_id_from_cert(end_entity).map_err(identity_error)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
