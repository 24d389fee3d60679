//! Three real daemons in one process on loopback: real QUIC, UDP membership, HTTP API, redb
//! and processes. The multi-process tests (kill -9) live in the `falak` crate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use falak_api::Client;
use falak_api::job::JobSubmission;
use falak_core::job::JobState;
use falak_node::config::NodeConfigDocument;
use falak_node::mesh_files::provision_loopback;
use tokio::sync::oneshot;

pub const CAPSULE: &str = r#"name: hello
kind: process
command: ["/bin/sh", "-c", "echo task $FALAK_TASK_INDEX of $FALAK_TASK_COUNT"]
resources: { cpu: 100m, memory: 32Mi }
placement: { strategy: balanced, labels: {}, max_attempts: 3 }
"#;

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

pub struct InProcessMesh {
    pub clients: Vec<Client>,
    /// The admin token every client sends.
    pub token: String,
    /// The mesh CA certificate every client trusts.
    pub ca: String,
    /// The deployer key every client signs with.
    pub deployer: std::sync::Arc<falak_core::signing::DeployerKey>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InProcessMesh {
    pub async fn start(dir: &Path, n: usize) -> InProcessMesh {
        InProcessMesh::start_with(dir, n, |_, _| {}).await
    }

    /// [`InProcessMesh::start`], with `adjust(i, config)` changing node `i`'s config first.
    pub async fn start_with(dir: &Path, n: usize, adjust: impl Fn(usize, &mut NodeConfigDocument)) -> InProcessMesh {
        let template = NodeConfigDocument { lease: Some("2s".into()), ..NodeConfigDocument::default() };
        let provisioned = provision_loopback("test", dir, n, &template, falak_node::clock::system_now()).unwrap();
        let token = provisioned.admin_token.encode();
        let ca = provisioned.ca_cert_pem.clone();
        let deployer = std::sync::Arc::new(provisioned.deployer);
        let mut mesh = InProcessMesh {
            clients: vec![],
            token: token.clone(),
            ca: ca.clone(),
            deployer: deployer.clone(),
            stops: vec![],
            tasks: vec![],
        };
        for (i, mut doc) in provisioned.nodes.into_iter().enumerate() {
            adjust(i, &mut doc);
            let config = doc.resolve(falak_core::resources::Resources::new(4000, 8 << 30)).unwrap();
            let client = Client::new(&format!("https://{}", config.api_addr)).unwrap().with_ca(&ca).unwrap();
            mesh.clients.push(client.with_token(Some(token.clone())).with_deployer(Some(deployer.clone())));
            let (tx, rx) = oneshot::channel();
            mesh.stops.push(tx);
            mesh.tasks.push(tokio::spawn(async move {
                falak_node::daemon::run(config, async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            }));
        }
        for client in &mesh.clients {
            wait_ready(client).await;
        }
        mesh
    }

    /// Stop node `i` (a clean shutdown: it says goodbye to its peers).
    pub async fn stop_node(&mut self, i: usize) {
        let (tx, _) = oneshot::channel();
        let stop = std::mem::replace(&mut self.stops[i], tx);
        let _ = stop.send(());
        let task = std::mem::replace(&mut self.tasks[i], tokio::spawn(async {}));
        tokio::time::timeout(Duration::from_secs(20), task).await.expect("node stops").unwrap();
    }

    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(20), task).await.expect("node stops").unwrap();
        }
    }
}

/// A plain HTTP client that trusts the mesh CA `ca` and sends `token` with every request.
pub fn http_with_token(ca: &str, token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// A TLS connection to a node's API at `addr` (`127.0.0.1:PORT`), trusting the mesh CA `ca`:
/// for tests that write HTTP by hand.
pub async fn tls_connect(addr: &str, ca: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let host = addr.rsplit_once(':').unwrap().0.to_owned();
    let name = rustls::pki_types::ServerName::try_from(host).unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap()
}

/// The job once it is no longer running, or as it is after 30 s.
pub async fn job_end(client: &Client, job: falak_core::job::JobId) -> falak_api::job::JobInfo {
    let mut info = client.job(job).await.unwrap();
    for _ in 0..300 {
        if info.state != JobState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        info = client.job(job).await.unwrap();
    }
    info
}

pub async fn wait_ready(client: &Client) {
    for _ in 0..300 {
        if client.ready().await.is_ok_and(|r| r.ready) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} not ready in 30 s: {:?}", client.base_url(), client.ready().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_run_a_job_through_any_node() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 3).await;
    let c = &mesh.clients;
    c[1].apply_capsule_text(CAPSULE).await.unwrap();
    let job = c[2]
        .submit_job(&JobSubmission { capsule: "hello".into(), tasks: Some(30), ..JobSubmission::default() })
        .await
        .unwrap();
    let info = job_end(&c[0], job.id).await;
    assert_eq!(info.state, JobState::Completed, "{info:?}");
    let text = c[1].job_result_text(job.id).await.unwrap();
    assert!(text.starts_with("task 0 of 30\ntask 1 of 30\n"), "{text}");
    let tasks = c[0].job_tasks(job.id).await.unwrap();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tasks {
        *per_node.entry(t.node.as_ref().map(|n| n.name.clone()).unwrap_or_default()).or_default() += 1;
    }
    assert!(per_node.len() >= 2, "balanced placement spreads 30 tasks: {per_node:?}");
    // Logs of a task that ran on another node come through the node RPC.
    let remote = tasks.iter().find(|t| t.node.as_ref().is_some_and(|n| n.name != "node-1")).unwrap();
    let log = c[0].task_logs(remote.id, falak_api::task::LogStream::Stdout, None).await.unwrap();
    assert_eq!(log, format!("task {} of 30\n", remote.id.index));
    // Every node lists all three, each HEALTHY.
    let nodes = c[2].nodes().await.unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_its_disk_reserve_takes_no_tasks_and_the_others_run_them() {
    let dir = tempfile::tempdir().unwrap();
    // Node 1 keeps more free space than any disk has: it is under its reserve from the start.
    let mesh = InProcessMesh::start_with(dir.path(), 2, |i, doc| {
        if i == 0 {
            doc.disk_reserve = Some(falak_core::resources::Quantity::Text("1000Ti".into()));
        }
    })
    .await;
    let c = &mesh.clients;
    c[0].apply_capsule_text(CAPSULE).await.unwrap();
    // Submitted through the full node: its API and its ledger replica still work.
    let job = c[0]
        .submit_job(&JobSubmission { capsule: "hello".into(), tasks: Some(20), ..JobSubmission::default() })
        .await
        .unwrap();
    let info = job_end(&c[0], job.id).await;
    assert_eq!(info.state, JobState::Completed, "{info:?}");
    let tasks = c[0].job_tasks(job.id).await.unwrap();
    let nodes: std::collections::BTreeSet<String> =
        tasks.iter().filter_map(|t| t.node.as_ref().map(|n| n.name.clone())).collect();
    assert_eq!(nodes, ["node-2".to_owned()].into(), "only the node with room ran tasks: {tasks:?}");
    assert!(tasks.iter().all(|t| t.attempt == 1), "no attempt failed on the full node: {tasks:?}");
    mesh.stop().await;
}

/// A join token made through `api` (an admin client) for `uses` nodes, valid `ttl_seconds`.
async fn join_token(api: &Client, uses: u32, ttl_seconds: u64) -> String {
    let request = falak_api::join::CreateJoinToken { ttl_seconds: Some(ttl_seconds), uses: Some(uses) };
    api.create_join_token(&request).await.unwrap().join_token
}

fn joiner_config(dir: &Path, name: &str) -> falak_node::config::NodeConfig {
    NodeConfigDocument {
        name: Some(name.into()),
        data_dir: Some(dir.join(name)),
        api_addr: Some(free_tcp()),
        transport_addr: Some(free_udp()),
        gossip_addr: Some(free_udp()),
        labels: [("role".to_owned(), "joiner".to_owned())].into(),
        lease: Some("2s".into()),
        ..NodeConfigDocument::default()
    }
    .resolve(falak_core::resources::Resources::new(4000, 8 << 30))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_a_token_and_runs_work() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 3).await;
    let good = join_token(&mesh.clients[0], 1, 600).await;
    let decoded = falak_node::mesh_files::JoinToken::decode(&good).unwrap();
    let secret = std::fs::read_to_string(dir.path().join("node-1/mesh.secret")).unwrap();
    let inside = serde_json::to_string(&decoded).unwrap();
    assert!(!inside.contains(secret.trim()), "the token holds no mesh secret: {inside}");

    // A node without a valid join token cannot join: a forged ticket, an expired token, a token
    // of another mesh's format. Each is refused and nothing is written.
    let refused = async |token: &str, says: &str| {
        let stranger = joiner_config(dir.path(), "stranger");
        let error = falak_node::join::join(&stranger, token).await.unwrap_err().to_string();
        assert!(error.contains(says), "{error}");
        assert!(!stranger.data_dir.join("node.crt").exists() && !stranger.data_dir.join("mesh.secret").exists());
    };
    let mut forged = decoded.clone();
    forged.ticket = format!("{}.{}", decoded.ticket.split('.').next().unwrap(), "11".repeat(32));
    refused(&forged.encode(), "not known to this mesh").await;
    let short = join_token(&mesh.clients[1], 1, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refused(&short, "expired").await;
    refused("falak-join-v1.7b7d", "old token").await;
    // A request naming another node's key (here node-1's, a member) with a valid ticket is
    // refused: only the key's holder can sign it.
    let node1 = mesh.clients[0].nodes().await.unwrap().into_iter().find(|n| n.name == "node-1").unwrap();
    let record = joiner_config(dir.path(), "impostor").record(node1.id, "https://127.0.0.1:1".into());
    let mut request = falak_api::join::JoinRequest { record, ticket: decoded.ticket.clone(), signature: String::new() };
    let ticket_id = request.ticket().unwrap().id;
    let other = falak_transport::NodeKey::generate().unwrap();
    let signature = other.sign(&falak_api::join::join_message(&ticket_id, &request.record));
    request.signature = signature.iter().map(|b| format!("{b:02x}")).collect();
    let error = mesh.clients[0].join(&request).await.unwrap_err().to_string();
    assert!(error.contains("not signed by the key of the node it names"), "{error}");

    assert_eq!(mesh.clients[1].nodes().await.unwrap().len(), 3, "no stranger was admitted");

    let config = joiner_config(dir.path(), "node-4");
    falak_node::join::join(&config, &good).await.unwrap();
    let client = Client::new(&format!("https://{}", config.api_addr))
        .unwrap()
        .with_ca(&mesh.ca)
        .unwrap()
        .with_token(Some(mesh.token.clone()))
        .with_deployer(Some(mesh.deployer.clone()));
    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(falak_node::daemon::run(config, async move {
        let _ = stopped.await;
    }));
    wait_ready(&client).await;
    assert_eq!(mesh.clients[1].nodes().await.unwrap().len(), 4);
    // The token admitted one node, all it allows.
    refused(&good, "already used by 1 node(s)").await;
    // A revoked token admits no one; the list shows each token's state and who joined.
    let revoked = join_token(&mesh.clients[0], 5, 600).await;
    let revoked_id = falak_node::mesh_files::JoinToken::decode(&revoked).unwrap().ticket[..16].parse().unwrap();
    mesh.clients[1].revoke_join_token(revoked_id).await.unwrap();
    refused(&revoked, "was revoked").await;
    let listed = mesh.clients[2].join_tokens().await.unwrap();
    let state_of = |ticket: &str| {
        let id = &ticket[..16];
        let t = listed.iter().find(|t| t.id.to_string() == id).unwrap();
        (t.state.clone(), t.joined.iter().map(|n| n.name.clone()).collect::<Vec<_>>())
    };
    assert_eq!(state_of(&decoded.ticket), ("used".to_owned(), vec!["node-4".to_owned()]));
    assert_eq!(state_of(&falak_node::mesh_files::JoinToken::decode(&revoked).unwrap().ticket).0, "revoked");
    let short_id = falak_node::mesh_files::JoinToken::decode(&short).unwrap().ticket[..16].to_owned();
    assert!(listed.iter().all(|t| t.id.to_string() != short_id), "expired tokens are forgotten as new ones come");
    // The joiner holds no CA key (nodes run without it), so it cannot admit others.
    assert!(!dir.path().join("node-4/ca.key").exists());
    let request = falak_api::join::CreateJoinToken::default();
    let error = client.create_join_token(&request).await.unwrap_err().to_string();
    assert!(error.contains("does not hold the mesh CA key"), "{error}");

    // Work that only the joiner fits runs there.
    let pinned = CAPSULE.replace("name: hello", "name: pinned").replace("labels: {}", "labels: { role: joiner }");
    client.apply_capsule_text(&pinned).await.unwrap();
    let job = mesh.clients[2]
        .submit_job(&JobSubmission { capsule: "pinned".into(), tasks: Some(4), ..JobSubmission::default() })
        .await
        .unwrap();
    let info = job_end(&mesh.clients[0], job.id).await;
    assert_eq!(info.state, JobState::Completed, "{info:?}");
    let tasks = mesh.clients[0].job_tasks(job.id).await.unwrap();
    assert!(tasks.iter().all(|t| t.node.as_ref().is_some_and(|n| n.name == "node-4")), "{tasks:?}");
    let _ = stop.send(());
    node.await.unwrap().unwrap();
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_the_mesh_ca_is_not_enough_without_admission() {
    use falak_transport::{
        AdmitAll, MeshCa, MeshRoot, NodeCert, NodeKey, Protocol, QuicConfig, QuicTransport, Transport,
    };
    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 2).await;
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
    let ca = MeshCa::from_pem(&read("node-1/ca.crt"), &read("node-1/ca.key")).unwrap();
    let root = MeshRoot::from_pem(&read("node-1/ca.crt")).unwrap();
    let node1 = NodeKey::from_pem(&read("node-1/node.key")).unwrap().id();
    let node1_addr: SocketAddr = {
        let doc: serde_json::Value = serde_json::from_str(&read("node-1/bootstrap.json")).unwrap();
        let me = doc["members"].as_array().unwrap().iter().find(|m| m["name"] == "node-1").unwrap().clone();
        me["transport_addr"].as_str().unwrap().parse().unwrap()
    };
    let ask = |key: NodeKey, cert: NodeCert| {
        let root = root.clone();
        async move {
            let transport =
                QuicTransport::bind(&key, &cert, &root, QuicConfig::new(free_udp()), std::sync::Arc::new(AdmitAll))
                    .unwrap();
            transport.set_peer_addr(node1, node1_addr);
            let answer = transport.request(node1, Protocol::Rpc, bytes::Bytes::from_static(b"{}")).await;
            transport.shutdown().await;
            answer
        }
    };
    // A stranger with a genuine certificate from the mesh CA, never admitted: refused.
    let stranger = NodeKey::generate().unwrap();
    let cert = ca.issue(stranger.id(), "stranger", falak_node::clock::system_now()).unwrap();
    let refused = ask(stranger, cert).await.unwrap_err();
    assert!(
        matches!(
            refused,
            falak_transport::TransportError::Refused { .. } | falak_transport::TransportError::Unreachable { .. }
        ),
        "{refused:?}"
    );
    // An admitted node's identity is served (the handler answers, here refusing the bad body).
    let key2 = NodeKey::from_pem(&read("node-2/node.key")).unwrap();
    let cert2 = NodeCert::from_pem(&read("node-2/node.crt")).unwrap();
    let served = ask(key2, cert2).await.unwrap_err();
    assert!(matches!(served, falak_transport::TransportError::Handler(_)), "{served:?}");
    mesh.stop().await;
}

/// Ask node `to` (at `addr`) for an RPC as the node whose key and certificate are given, over a
/// fresh QUIC transport: `Refused` when `to` does not admit that node.
async fn ask_as(
    key: falak_transport::NodeKey,
    cert: falak_transport::NodeCert,
    root: &falak_transport::MeshRoot,
    to: falak_core::NodeId,
    addr: SocketAddr,
) -> Result<bytes::Bytes, falak_transport::TransportError> {
    use falak_transport::{AdmitAll, Protocol, QuicConfig, QuicTransport, Transport};
    let transport =
        QuicTransport::bind(&key, &cert, root, QuicConfig::new(free_udp()), std::sync::Arc::new(AdmitAll)).unwrap();
    transport.set_peer_addr(to, addr);
    let answer = transport.request(to, Protocol::Rpc, bytes::Bytes::from_static(b"{}")).await;
    transport.shutdown().await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_cut_off_and_its_tasks_fail_over() {
    use falak_transport::{MeshRoot, NodeCert, NodeKey, TransportError};
    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 3).await;
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
    let root = MeshRoot::from_pem(&read("node-1/ca.crt")).unwrap();
    let node1 = NodeKey::from_pem(&read("node-1/node.key")).unwrap().id();
    let node1_addr: SocketAddr = {
        let doc: serde_json::Value = serde_json::from_str(&read("node-1/bootstrap.json")).unwrap();
        let me = doc["members"].as_array().unwrap().iter().find(|m| m["name"] == "node-1").unwrap().clone();
        me["transport_addr"].as_str().unwrap().parse().unwrap()
    };
    let node3 = || {
        (NodeKey::from_pem(&read("node-3/node.key")).unwrap(), NodeCert::from_pem(&read("node-3/node.crt")).unwrap())
    };
    // Before: node-3's identity is served (the handler answers, refusing the bad body).
    let (key, cert) = node3();
    let served = ask_as(key, cert, &root, node1, node1_addr).await.unwrap_err();
    assert!(matches!(served, TransportError::Handler(_)), "{served:?}");

    // Long tasks spread over the three nodes, at least one on node-3.
    let sleeper = CAPSULE.replace("name: hello", "name: sleeper").replace(
        r#"["/bin/sh", "-c", "echo task $FALAK_TASK_INDEX of $FALAK_TASK_COUNT"]"#,
        r#"["/bin/sleep", "120"]"#,
    );
    mesh.clients[0].apply_capsule_text(&sleeper).await.unwrap();
    let job = mesh.clients[0]
        .submit_job(&JobSubmission { capsule: "sleeper".into(), tasks: Some(6), ..JobSubmission::default() })
        .await
        .unwrap();
    let on = |tasks: &[falak_api::task::TaskInfo], name: &str| {
        tasks
            .iter()
            .filter(|t| t.state == falak_core::job::TaskState::Running)
            .filter(|t| t.node.as_ref().is_some_and(|n| n.name == name))
            .count()
    };
    let mut tasks = Vec::new();
    for _ in 0..300 {
        tasks = mesh.clients[0].job_tasks(job.id).await.unwrap();
        if tasks.iter().all(|t| t.state == falak_core::job::TaskState::Running) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(on(&tasks, "node-3") > 0, "balanced placement puts some on node-3: {tasks:?}");

    let revoked = mesh.clients[0].revoke_node("node-3").await.unwrap();
    assert_eq!(revoked.name, "node-3");
    let revoked_at = std::time::Instant::now();
    // Its tasks fail over to the other nodes.
    loop {
        tasks = mesh.clients[0].job_tasks(job.id).await.unwrap();
        if on(&tasks, "node-1") + on(&tasks, "node-2") == 6 {
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(30), "tasks did not fail over: {tasks:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every node's transport refuses it, and the ledger no longer lists it.
    let (key, cert) = node3();
    let refused = ask_as(key, cert, &root, node1, node1_addr).await.unwrap_err();
    assert!(matches!(refused, TransportError::Refused { .. }), "{refused:?}");
    let nodes = mesh.clients[1].nodes().await.unwrap();
    assert!(nodes.iter().all(|n| n.name != "node-3") && nodes.len() == 2, "{nodes:?}");
    // Revoking again answers the same; the mesh goes on committing without it.
    assert_eq!(mesh.clients[1].revoke_node(&revoked.id.to_string()).await.unwrap(), revoked);
    mesh.clients[1].cancel_job(job.id).await.unwrap();
    mesh.clients[1].apply_capsule_text(CAPSULE).await.unwrap();
    let quick = mesh.clients[1]
        .submit_job(&JobSubmission { capsule: "hello".into(), tasks: Some(4), ..JobSubmission::default() })
        .await
        .unwrap();
    let info = job_end(&mesh.clients[0], quick.id).await;
    assert_eq!(info.state, JobState::Completed, "{info:?}");
    let ran = mesh.clients[0].job_tasks(quick.id).await.unwrap();
    assert!(ran.iter().all(|t| t.node.as_ref().is_some_and(|n| n.name != "node-3")), "{ran:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_one_of_two_nodes_leaves_a_working_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 2).await;
    let node2 = mesh.clients[0].nodes().await.unwrap().into_iter().find(|n| n.name == "node-2").unwrap();
    // Named by the short id `falak nodes` shows.
    let revoked = mesh.clients[0].revoke_node(&node2.id.short()).await.unwrap();
    assert_eq!(revoked.name, "node-2");
    // The last node cannot be revoked.
    let error = mesh.clients[0].revoke_node("node-1").await.unwrap_err().to_string();
    assert!(error.contains("last node"), "{error}");
    // node-1 alone still commits: the voter change that removed node-2 went through.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let applied = mesh.clients[0].apply_capsule_text(CAPSULE).await;
        if applied.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node-1 cannot commit alone: {applied:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let job = mesh.clients[0]
        .submit_job(&JobSubmission { capsule: "hello".into(), tasks: Some(2), ..JobSubmission::default() })
        .await
        .unwrap();
    let info = job_end(&mesh.clients[0], job.id).await;
    assert_eq!(info.state, JobState::Completed, "{info:?}");
    mesh.stop().await;
}

/// A node keeps its data dir to itself: the dir 0700 (0711 only on a root node without
/// namespaces, whose function instances pass through it to their bundles), the keys and the
/// mesh secret 0600, the ledger dir 0700 and its files 0600. The modes are set at start, also
/// on a data dir an older version or a loose umask left wider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_keys_and_ledger_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    let set = |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let template = NodeConfigDocument { lease: Some("2s".into()), ..NodeConfigDocument::default() };
    let provisioned = provision_loopback("test", dir.path(), 1, &template, falak_node::clock::system_now()).unwrap();
    let doc = provisioned.nodes[0].clone();
    let data = doc.data_dir.clone().unwrap();
    let keys = ["node.key", "ca.key", "mesh.secret"].map(|name| data.join(name));
    let ledger = data.join("ledger");
    let ledger_files = [ledger.join("ledger.redb"), ledger.join("events.redb")];
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let no_namespaces = falak_sandbox::Namespaces::probe().0 == falak_sandbox::Namespaces::Unavailable;
    let expected_data_dir = if root && no_namespaces { 0o711 } else { 0o700 };
    assert_eq!(mode(&data), expected_data_dir, "made so");
    for key in &keys {
        assert_eq!(mode(key), 0o600, "{} is made owner-only", key.display());
    }
    let no_temporary_left =
        std::fs::read_dir(&data).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp"));
    assert!(no_temporary_left);

    // As an older version left them: all readable by everyone, the ledger file already there.
    set(&data, 0o755);
    for key in &keys {
        set(key, 0o644);
    }
    std::fs::create_dir(&ledger).unwrap();
    set(&ledger, 0o755);
    std::fs::write(&ledger_files[0], b"").unwrap();
    set(&ledger_files[0], 0o644);

    let config = doc.resolve(falak_core::resources::Resources::new(4000, 8 << 30)).unwrap();
    let client = Client::new(&format!("https://{}", config.api_addr))
        .unwrap()
        .with_ca(&provisioned.ca_cert_pem)
        .unwrap()
        .with_token(Some(provisioned.admin_token.encode()));
    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(falak_node::daemon::run(config, async move {
        let _ = stopped.await;
    }));
    wait_ready(&client).await;
    assert_eq!(mode(&data), expected_data_dir, "the data dir");
    for key in &keys {
        assert_eq!(mode(key), 0o600, "{}", key.display());
    }
    assert_eq!(mode(&ledger), 0o700, "the ledger dir");
    for file in &ledger_files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), node).await.expect("node stops").unwrap().unwrap();
}
