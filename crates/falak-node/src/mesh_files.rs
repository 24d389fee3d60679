//! The files that make a node a member of a mesh, kept in its data dir.
//!
//! ```text
//! DATA_DIR/         0700 (0711 on a root node without namespaces: see `data_dir_mode`)
//!   node.key        Ed25519 private key (PKCS#8 PEM, 0600); its public key is the node id
//!   node.crt        the node's certificate, issued by the mesh CA
//!   ca.crt          the mesh CA certificate (trust root)
//!   ca.key          the mesh CA key (0600), present on nodes that may admit joiners
//!   mesh.secret     32-byte mesh secret, hex (0600): seals membership packets
//!   bootstrap.json  the first voters, written by `falak up` (absent on joiners)
//!   ledger/         the ledger (0700): ledger.redb and events.redb (0600)
//!   tasks/          one working directory per task attempt
//! ```
//!
//! A node key is created on first start and reused on restart; certificates and the secret
//! come from `falak up` (or, later, a join).
//!
//! Modes: the data dir is [`data_dir_mode`], the keys and the secret 0600 (the ledger keeps its
//! own directory 0700 and its files 0600). They are set whenever the node opens the data dir
//! or reads a key, not only when it makes them, so a data dir made by an older version, copied,
//! or made under a loose umask is tightened at start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use falak_core::NodeId;
use falak_core::access::{Role, Token, TokenRecord};
use falak_core::signing::{DeployerKey, DeployerRecord};
use falak_transport::pki::{MeshCa, NodeCert, NodeKey};
use serde::{Deserialize, Serialize};

/// One bootstrap voter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapMember {
    pub id: NodeId,
    pub name: String,
    pub transport_addr: String,
    pub gossip_addr: String,
}

/// Who forms a new mesh and whom a node contacts first.
///
/// `voters` are the first ledger voters: the first of them initializes the ledger. `members`
/// are the nodes provisioned together (or, for a joiner, the admitted nodes at join time):
/// the transport admits them before the ledger does, and a node that is not yet a ledger member
/// forwards its first write through them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    pub mesh: String,
    pub voters: Vec<BootstrapMember>,
    #[serde(default)]
    pub members: Vec<BootstrapMember>,
    /// API tokens made with the mesh (the first admin token), hashes only: accepted by these
    /// nodes at once and committed to the ledger by the node that forms it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenRecord>,
    /// Deployer keys trusted from the start (the one `falak up` makes): committed like tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployers: Vec<DeployerRecord>,
}

impl Bootstrap {
    /// Voters and members, each once.
    pub fn contacts(&self) -> Vec<BootstrapMember> {
        let mut all = self.voters.clone();
        for m in &self.members {
            if !all.iter().any(|v| v.id == m.id) {
                all.push(m.clone());
            }
        }
        all
    }
}

/// Why the mesh files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MeshFilesError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} is missing: this data dir does not belong to a mesh yet; start the mesh with `falak up` or join one with `falak node --join TOKEN`"
    )]
    Missing { path: PathBuf },
}

/// A node's loaded identity and trust material.
pub struct MeshFiles {
    pub dir: PathBuf,
    pub key: NodeKey,
    pub cert: NodeCert,
    pub ca_cert_pem: String,
    pub secret: [u8; 32],
    pub bootstrap: Option<Bootstrap>,
}

impl MeshFiles {
    pub fn id(&self) -> NodeId {
        self.key.id()
    }

    /// Load the files, creating the node key if this is the node's first start, and give the
    /// data dir and the secrets their modes.
    pub fn load(dir: &Path) -> Result<MeshFiles, MeshFilesError> {
        make_data_dir(dir)?;
        let key = load_or_create_key(dir)?;
        let cert_text = read(&dir.join("node.crt"))?;
        let cert = NodeCert::from_pem(&cert_text).map_err(|e| invalid(&dir.join("node.crt"), e))?;
        let ca_cert_pem = read(&dir.join("ca.crt"))?;
        let secret = parse_secret(&dir.join("mesh.secret"), &read_private(&dir.join("mesh.secret"))?)?;
        let bootstrap_path = dir.join("bootstrap.json");
        let bootstrap = if bootstrap_path.exists() {
            let text = read(&bootstrap_path)?;
            Some(serde_json::from_str(&text).map_err(|e| invalid(&bootstrap_path, e))?)
        } else {
            None
        };
        Ok(MeshFiles { dir: dir.to_owned(), key, cert, ca_cert_pem, secret, bootstrap })
    }
}

/// The node key in `dir`, created (0600) on first start.
pub fn load_or_create_key(dir: &Path) -> Result<NodeKey, MeshFilesError> {
    let path = dir.join("node.key");
    if path.exists() {
        let text = read_private(&path)?;
        return NodeKey::from_pem(&text).map_err(|e| invalid(&path, e));
    }
    make_data_dir(dir)?;
    let key = NodeKey::generate().map_err(|e| invalid(&path, e))?;
    write_private(&path, key.to_pem().as_bytes())?;
    Ok(key)
}

/// One node `falak up` provisions.
pub struct LocalNode {
    pub name: String,
    pub dir: PathBuf,
    pub transport_addr: String,
    pub gossip_addr: String,
}

/// What provisioning a mesh made.
#[derive(Debug)]
pub struct Provisioned {
    pub ids: Vec<NodeId>,
    /// The mesh's first admin token; only its hash is in the nodes' files.
    pub admin_token: Token,
    /// The mesh's first deployer key; only its public half is in the nodes' files.
    pub deployer: DeployerKey,
    pub ca_cert_pem: String,
}

/// Create the trust root of a new local mesh and give every node its identity: a key, a
/// certificate from a fresh mesh CA, the mesh secret, the CA (key included, so any node can
/// admit joiners; see ADR 0003), the bootstrap voters (the first three nodes) and the first
/// admin token (its hash; the token itself is returned for the caller to hand to the user).
pub fn provision_local_mesh(
    mesh: &str,
    nodes: &[LocalNode],
    secret: [u8; 32],
    now: SystemTime,
) -> Result<Provisioned, MeshFilesError> {
    let ca = MeshCa::generate(mesh, now).map_err(|e| invalid(Path::new("mesh CA"), e))?;
    let (ca_cert, ca_key) = (ca.cert_pem(), ca.key_pem());
    let mut ids = Vec::new();
    let mut members = Vec::new();
    for node in nodes {
        let key = load_or_create_key(&node.dir)?;
        let cert = ca.issue(key.id(), &node.name, now).map_err(|e| invalid(&node.dir.join("node.crt"), e))?;
        write_public(&node.dir.join("node.crt"), cert.to_pem().as_bytes())?;
        write_public(&node.dir.join("ca.crt"), ca_cert.as_bytes())?;
        write_private(&node.dir.join("ca.key"), ca_key.as_bytes())?;
        write_private(&node.dir.join("mesh.secret"), hex::encode(secret).as_bytes())?;
        ids.push(key.id());
        members.push(BootstrapMember {
            id: key.id(),
            name: node.name.clone(),
            transport_addr: node.transport_addr.clone(),
            gossip_addr: node.gossip_addr.clone(),
        });
    }
    let voters = members.iter().take(3).cloned().collect();
    let admin_token = crate::access::random_token();
    let created_at = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let admin = TokenRecord::new(&admin_token, "admin", Role::Admin, created_at, None, Some(0));
    let deployer = DeployerKey::from_seed(rand::random());
    let trusted = DeployerRecord { id: deployer.id(), name: "admin".into(), added_at: created_at, revoked_at: None };
    let bootstrap = Bootstrap { mesh: mesh.to_owned(), voters, members, tokens: vec![admin], deployers: vec![trusted] };
    let text = serde_json::to_string_pretty(&bootstrap).expect("bootstrap serializes");
    for node in nodes {
        write_public(&node.dir.join("bootstrap.json"), text.as_bytes())?;
    }
    Ok(Provisioned { ids, admin_token, deployer, ca_cert_pem: ca_cert })
}

/// Where `falak up` writes what a user needs to reach its mesh, under the mesh's data dir:
/// `admin.token` and `deployer.key` (0600) and `ca.crt`.
pub const CREDENTIALS_DIR: &str = "credentials";

/// Write the admin token and deployer key (owner-only) and the CA certificate to
/// `dir/credentials/`.
pub fn write_credentials(
    dir: &Path,
    token: &Token,
    deployer: &DeployerKey,
    ca_cert_pem: &str,
) -> Result<PathBuf, MeshFilesError> {
    let creds = dir.join(CREDENTIALS_DIR);
    make_dir(&creds, PRIVATE_DIR_MODE)?;
    write_private(&creds.join("admin.token"), format!("{}\n", token.encode()).as_bytes())?;
    write_private(&creds.join("deployer.key"), deployer.to_pem().as_bytes())?;
    write_public(&creds.join("ca.crt"), ca_cert_pem.as_bytes())?;
    Ok(creds)
}

/// Give the credentials under `dir` (a mesh dir `falak up` made) their owner-only modes
/// again, as they are adopted by another run: the directory 0700, the admin token and the
/// deployer key 0600. Nothing to do when there are none.
pub fn secure_credentials(dir: &Path) -> Result<(), MeshFilesError> {
    let creds = dir.join(CREDENTIALS_DIR);
    if !creds.is_dir() {
        return Ok(());
    }
    set_mode(&creds, PRIVATE_DIR_MODE)?;
    for name in ["admin.token", "deployer.key"] {
        let path = creds.join(name);
        if path.exists() {
            set_mode(&path, PRIVATE_FILE_MODE)?;
        }
    }
    Ok(())
}

/// The mode of the keys, the mesh secret and the credentials: the owner only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// The mode of the credentials dir.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// The mode of a node's data dir and of the mesh dir `falak up` keeps the nodes' data dirs in.
///
/// The owner only (0700). Workloads never pass through it: each runs in a mount namespace that
/// covers the data dir and binds only its own directories back (ADR 0015), or, on a node that
/// is not root, as the node's own user. The one exception is a root node on a host that gives
/// it no namespaces (a container with neither `CAP_SYS_ADMIN` nor user namespaces): its
/// workloads run as uids of their own in the node's view of the files and reach their function
/// dirs by absolute paths, so other users may pass through the data dir, never list it (0711);
/// nothing in it that is not theirs is open to them (the keys 0600, the ledger dir 0700).
/// Probed once per process (a short-lived child, only when root).
pub fn data_dir_mode() -> u32 {
    static MODE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let passed_through = root && falak_sandbox::Namespaces::probe().0 == falak_sandbox::Namespaces::Unavailable;
        if passed_through { 0o711 } else { 0o700 }
    })
}

/// Make a node's data dir (or `falak up`'s mesh dir), parents included, if it is missing, and
/// give it [`data_dir_mode`] however it was made.
pub fn make_data_dir(dir: &Path) -> Result<(), MeshFilesError> {
    make_dir(dir, data_dir_mode())
}

/// Make `dir` (parents included, with `mode` too) if it is missing, and give it exactly `mode`
/// whatever the umask and however it was made before.
fn make_dir(dir: &Path, mode: u32) -> Result<(), MeshFilesError> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(|source| MeshFilesError::Io {
        action: "create",
        path: dir.to_owned(),
        source,
    })?;
    set_mode(dir, mode)
}

/// Give `path` exactly `mode` unless it has it.
fn set_mode(path: &Path, mode: u32) -> Result<(), MeshFilesError> {
    let io = |source| MeshFilesError::Io { action: "set the mode of", path: path.to_owned(), source };
    let current = fs::metadata(path).map_err(io)?.permissions().mode() & 0o7777;
    if current != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
}

/// Read a key or secret, and make it owner-only (0600) if it was not: through the open file,
/// so the mode goes to the file that is read.
pub(crate) fn read_private(path: &Path) -> Result<String, MeshFilesError> {
    use std::io::Read;
    let io = |action, source| MeshFilesError::Io { action, path: path.to_owned(), source };
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MeshFilesError::Missing { path: path.to_owned() });
        }
        Err(source) => return Err(io("read", source)),
    };
    let mode = file.metadata().map_err(|e| io("read", e))?.permissions().mode() & 0o7777;
    if mode != PRIVATE_FILE_MODE {
        file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE_MODE)).map_err(|e| io("set the mode of", e))?;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| io("read", e))?;
    Ok(text)
}

/// Replace the node's certificate (reissued for new API hosts).
pub fn write_node_cert(dir: &Path, cert: &NodeCert) -> Result<(), MeshFilesError> {
    write_public(&dir.join("node.crt"), cert.to_pem().as_bytes())
}

fn parse_secret(path: &Path, text: &str) -> Result<[u8; 32], MeshFilesError> {
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).map_err(|_| invalid(path, "expected 64 hex characters"))?;
    Ok(secret)
}

fn read(path: &Path) -> Result<String, MeshFilesError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(MeshFilesError::Missing { path: path.to_owned() }),
        Err(source) => Err(MeshFilesError::Io { action: "read", path: path.to_owned(), source }),
    }
}

fn invalid(path: &Path, reason: impl ToString) -> MeshFilesError {
    MeshFilesError::Invalid { path: path.to_owned(), reason: reason.to_string() }
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), MeshFilesError> {
    let io = |source| MeshFilesError::Io { action: "write", path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    // Write then rename, so a crash never leaves a half-written key or certificate. Each file
    // has a temporary name of its own (`node.key` and `node.crt` must not share `node.tmp`),
    // made new so that it gets `mode` and not that of a file a crash left there.
    let tmp = temporary_path(path);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io(source)),
    }
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io)?;
    // Exactly `mode`, whatever the umask took away from it.
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// `DIR/.NAME.tmp` for `DIR/NAME`.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), MeshFilesError> {
    write_with_mode(path, bytes, PRIVATE_FILE_MODE)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), MeshFilesError> {
    write_with_mode(path, bytes, 0o644)
}

/// What a new node needs to join a mesh: where to reach a node that admits joiners, the mesh
/// CA to trust it by, and a join ticket (`falak node admit` makes one; it admits a limited
/// number of nodes until it expires). It carries no mesh secret: the joiner receives that over
/// HTTPS once its ticket is accepted. Treat it like a password until it is used up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    pub mesh: String,
    /// API URL of a node that admits joiners (it holds the mesh CA key).
    pub api_url: String,
    /// Membership address of a node to join through.
    pub gossip_seed: String,
    /// The join ticket, `<16 hex id>.<64 hex secret>`.
    pub ticket: String,
    /// The mesh CA certificate (PEM), which the joiner trusts for the node's HTTPS API.
    pub ca_cert: String,
}

/// The longest join token accepted.
pub const MAX_JOIN_TOKEN_BYTES: usize = 64 << 10;

/// The prefix of an encoded join token.
pub const JOIN_TOKEN_PREFIX: &str = "falak-join-v2.";

/// Why a join token does not decode.
#[derive(Debug, thiserror::Error)]
#[error("not a Falak join token ({0}); copy the whole token `falak node admit` printed")]
pub struct JoinTokenError(String);

impl JoinTokenError {
    pub fn new(reason: impl Into<String>) -> Self {
        JoinTokenError(reason.into())
    }
}

/// Write what a join returned. `bootstrap.json` lists the admitted nodes to contact first (for
/// transport admission and membership seeds); the joiner is never the first of them, so it
/// never initializes a ledger of its own. The joiner gets no CA key (ADR 0003 gives it only to
/// the nodes `falak up` provisions).
pub fn write_joined(
    dir: &Path,
    cert_pem: &str,
    ca_cert_pem: &str,
    secret: &[u8; 32],
    contacts: &Bootstrap,
) -> Result<(), MeshFilesError> {
    NodeCert::from_pem(cert_pem).map_err(|e| invalid(&dir.join("node.crt"), e))?;
    write_public(&dir.join("ca.crt"), ca_cert_pem.as_bytes())?;
    write_private(&dir.join("mesh.secret"), hex::encode(secret).as_bytes())?;
    let text = serde_json::to_string_pretty(contacts).expect("bootstrap serializes");
    write_public(&dir.join("bootstrap.json"), text.as_bytes())?;
    // Last: node.crt marks the data dir as belonging to a mesh.
    write_public(&dir.join("node.crt"), cert_pem.as_bytes())
}

impl JoinToken {
    pub fn encode(&self) -> String {
        format!("{JOIN_TOKEN_PREFIX}{}", hex::encode(serde_json::to_vec(self).expect("token serializes")))
    }

    pub fn decode(text: &str) -> Result<JoinToken, JoinTokenError> {
        // A real token is a few kilobytes (most of it the CA certificate).
        if text.len() > MAX_JOIN_TOKEN_BYTES {
            return Err(JoinTokenError(format!("longer than {MAX_JOIN_TOKEN_BYTES} bytes")));
        }
        let text = text.trim();
        if text.starts_with("falak-join-v1.") {
            return Err(JoinTokenError(
                "an old token that carried the mesh secret; make a new one with `falak node admit`".into(),
            ));
        }
        let body = text.strip_prefix(JOIN_TOKEN_PREFIX).ok_or_else(|| JoinTokenError("wrong prefix".into()))?;
        let bytes = hex::decode(body).map_err(|e| JoinTokenError(e.to_string()))?;
        let token: JoinToken = serde_json::from_slice(&bytes).map_err(|e| JoinTokenError(e.to_string()))?;
        if token.ca_cert.trim().is_empty() {
            return Err(JoinTokenError("it carries no mesh CA certificate".into()));
        }
        Ok(token)
    }
}

/// Provision `n` nodes `node-1..n` under `dir` on loopback, each on free ports, from
/// `template` (its other fields: capacity, lease, labels...): creates the mesh's trust material
/// and returns each node's config. For tests and benchmarks; `falak up` plans its own ports.
pub fn provision_loopback(
    mesh: &str,
    dir: &Path,
    n: usize,
    template: &crate::config::NodeConfigDocument,
    now: SystemTime,
) -> Result<LoopbackMesh, MeshFilesError> {
    let io = |source| MeshFilesError::Io { action: "bind a free port on", path: PathBuf::from("127.0.0.1"), source };
    // Hold every socket until all ports are chosen, so no two nodes get the same one.
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    let mut docs = Vec::new();
    let mut locals = Vec::new();
    for i in 0..n {
        let api = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
        let transport = std::net::UdpSocket::bind("127.0.0.1:0").map_err(io)?;
        let gossip = std::net::UdpSocket::bind("127.0.0.1:0").map_err(io)?;
        let name = format!("node-{}", i + 1);
        let data_dir = dir.join(&name);
        let (api_addr, transport_addr, gossip_addr) =
            (api.local_addr().map_err(io)?, transport.local_addr().map_err(io)?, gossip.local_addr().map_err(io)?);
        held_tcp.push(api);
        held_udp.extend([transport, gossip]);
        locals.push(LocalNode {
            name: name.clone(),
            dir: data_dir.clone(),
            transport_addr: transport_addr.to_string(),
            gossip_addr: gossip_addr.to_string(),
        });
        docs.push(crate::config::NodeConfigDocument {
            name: Some(name),
            data_dir: Some(data_dir),
            api_addr: Some(api_addr),
            transport_addr: Some(transport_addr),
            gossip_addr: Some(gossip_addr),
            ..template.clone()
        });
    }
    drop((held_tcp, held_udp));
    let provisioned = provision_local_mesh(mesh, &locals, rand::random(), now)?;
    Ok(LoopbackMesh {
        nodes: docs,
        admin_token: provisioned.admin_token,
        deployer: provisioned.deployer,
        ca_cert_pem: provisioned.ca_cert_pem,
    })
}

/// A mesh [`provision_loopback`] made: each node's config and the admin token.
#[derive(Debug)]
pub struct LoopbackMesh {
    pub nodes: Vec<crate::config::NodeConfigDocument>,
    pub admin_token: Token,
    pub deployer: DeployerKey,
    /// The mesh CA certificate (PEM) clients of the nodes' HTTPS API trust.
    pub ca_cert_pem: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn each_file_is_written_through_a_temporary_name_of_its_own() {
        assert_eq!(temporary_path(Path::new("/d/node.key")), Path::new("/d/.node.key.tmp"));
        assert_ne!(temporary_path(Path::new("/d/node.key")), temporary_path(Path::new("/d/node.crt")));
        assert_ne!(temporary_path(Path::new("/d/ca.key")), temporary_path(Path::new("/d/ca.crt")));
    }

    #[test]
    fn a_key_gets_its_mode_whatever_a_crash_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca.key");
        // A crash left a world-readable temporary file under the key's temporary name.
        fs::write(temporary_path(&key), "old").unwrap();
        fs::set_permissions(temporary_path(&key), fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&key, b"secret").unwrap();
        assert_eq!((fs::read_to_string(&key).unwrap().as_str(), mode(&key)), ("secret", 0o600));
        assert!(!temporary_path(&key).exists());
        write_public(&dir.path().join("ca.crt"), b"public").unwrap();
        assert_eq!(fs::read_to_string(&key).unwrap(), "secret", "the certificate does not replace the key");
    }

    #[test]
    fn reading_a_key_makes_it_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("mesh.secret");
        fs::write(&secret, "abc").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_private(&secret).unwrap(), "abc");
        assert_eq!(mode(&secret), 0o600);
        let missing = read_private(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, MeshFilesError::Missing { .. }), "{missing}");
    }

    #[test]
    fn credentials_are_made_and_kept_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let deployer = DeployerKey::from_seed([7; 32]);
        let creds = write_credentials(dir.path(), &crate::access::random_token(), &deployer, "ca").unwrap();
        let files = [creds.join("admin.token"), creds.join("deployer.key")];
        assert_eq!(mode(&creds), 0o700);
        for file in &files {
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }
        fs::set_permissions(&creds, fs::Permissions::from_mode(0o755)).unwrap();
        for file in &files {
            fs::set_permissions(file, fs::Permissions::from_mode(0o644)).unwrap();
        }
        secure_credentials(dir.path()).unwrap();
        assert_eq!(mode(&creds), 0o700);
        for file in &files {
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }
        secure_credentials(&dir.path().join("elsewhere")).unwrap();
    }
}
