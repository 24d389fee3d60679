//! TLS for the node's HTTPS API: the server side uses the node's own key and certificate (which
//! names the API's hosts, see [`crate::pki::MeshCa::issue_for_hosts`]); clients trust the mesh
//! CA. Built with the ring provider passed explicitly, like the QUIC transport's configs.

use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::pki::{NodeCert, NodeKey};

/// The server configuration for the API: TLS 1.3 and 1.2, HTTP/1.1, no client certificates
/// (callers authenticate with bearer tokens).
pub fn server_config(key: &NodeKey, cert: &NodeCert) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
