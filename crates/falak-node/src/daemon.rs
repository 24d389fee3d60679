//! Starting and stopping a node: the order in which its parts come up and go down.
//!
//! Up: mesh files (key, certificate, secret) → QUIC transport (admitting the ledger's nodes
//! and every node in `bootstrap.json`) → kill task processes a killed previous run left → ledger (initialized by the first bootstrap voter on a new mesh)
//! → membership over UDP → executor and runner → HTTP API → main loop.
//! Down (SIGTERM or Ctrl-C): the API stops taking requests, the main loop stops every running
//! task (SIGTERM to its process group, SIGKILL after a grace), membership says goodbye, the
//! ledger and the transport shut down.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use falak_core::NodeId;
use falak_exec::{ProcessConfig, ProcessExecutor, RunAs};
use falak_ledger::{Ledger, LedgerConfig, PeerInfo};
use falak_membership::{MemberIdentity, Membership, MembershipConfig};
use falak_transport::{MeshRoot, Protocol, QuicConfig, QuicTransport};
use rand::SeedableRng;
use tokio::sync::{broadcast, mpsc, watch};

use crate::clock::now_millis;
use crate::config::NodeConfig;
use crate::functions::gateway::{GatewayHandle, NodeGateway};
use crate::functions::{FunctionHost, FunctionHostParts};
use crate::main_loop::{MainLoop, MainLoopParts};
use crate::membership::MembershipLink;
use crate::mesh_files::{MeshFiles, MeshFilesError};
use crate::runner::{Runner, TaskUsers};
use crate::transport::NodeTransport;

/// API actions waiting for the main loop; more get `429` after the API's queue wait.
const ACTION_QUEUE: usize = 1024;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    MeshFiles(#[from] MeshFilesError),
    #[error("{path}: {reason}")]
    Trust { path: PathBuf, reason: String },
    #[error("cannot bind the node transport on {addr}: {reason}; is another node using the port?")]
    Transport { addr: SocketAddr, reason: String },
    #[error("cannot bind membership on udp {addr}: {source}; is another node using the port?")]
    Gossip { addr: SocketAddr, source: std::io::Error },
    #[error("cannot bind the API on {addr}: {source}; is another node using the port?")]
    Api { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the ledger in {dir}: {reason}")]
    Ledger { dir: PathBuf, reason: String },
    #[error("membership: {0}")]
    Membership(String),
    #[error(transparent)]
    Artifacts(#[from] crate::artifacts::ArtifactsError),
    #[error("probing the workload sandbox failed: {0}")]
    Sandbox(String),
}

/// Run a node until `shutdown` resolves, then stop it cleanly.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let mut files = MeshFiles::load(&config.data_dir)?;
    ensure_api_names(&config, &mut files)?;
    let id = files.id();
    let ca_path = config.data_dir.join("ca.crt");
    let root = MeshRoot::from_pem(&files.ca_cert_pem)
        .map_err(|e| DaemonError::Trust { path: ca_path.clone(), reason: e.to_string() })?;
    if files.cert.node_id() != id {
        return Err(DaemonError::Trust {
            path: config.data_dir.join("node.crt"),
            reason: format!("the certificate names node {} but node.key is node {id}", files.cert.node_id()),
        });
    }
    tracing::info!(node = %id, name = %config.name, "starting");

    // Who may talk to us before the ledger says: ourselves and the nodes in bootstrap.json.
    let bootstrap_voters: Vec<_> = files.bootstrap.iter().flat_map(|b| b.voters.iter().cloned()).collect();
    let bootstrap_tokens: Vec<_> = files.bootstrap.iter().flat_map(|b| b.tokens.iter().cloned()).collect();
    let contacts: Vec<_> = files.bootstrap.as_ref().map(|b| b.contacts()).unwrap_or_default();
    let admitted: Arc<RwLock<BTreeSet<NodeId>>> =
        Arc::new(RwLock::new(contacts.iter().map(|v| v.id).chain([id]).collect()));

    let quic =
        QuicTransport::bind(&files.key, &files.cert, &root, QuicConfig::new(config.transport_addr), admitted.clone())
            .map_err(|e| DaemonError::Transport { addr: config.transport_addr, reason: e.to_string() })?;
    let transport = NodeTransport::quic(quic);
    for contact in &contacts {
        if let Ok(addr) = contact.transport_addr.parse() {
            transport.set_peer_addr(contact.id, addr);
        }
    }

    let ledger_dir = config.data_dir.join("ledger");
    let mesh_name = files.bootstrap.as_ref().map_or_else(|| "falak".to_owned(), |b| b.mesh.clone());
    let authority = crate::join::JoinAuthority::load(&config.data_dir, &mesh_name, files.secret)?.map(Arc::new);
    let ledger_config = LedgerConfig { cluster_name: mesh_name, ..LedgerConfig::default() };
    let ledger = Ledger::open(&ledger_dir, id, transport.dyn_transport(), ledger_config)
        .await
        .map_err(|e| DaemonError::Ledger { dir: ledger_dir.clone(), reason: e.to_string() })?;
    // The nodes the ledger lists are admitted, and those revoked since bootstrap.json was
    // written are neither admitted nor contacted, from before the ledger serves anyone.
    let contacts: Vec<_> = {
        let state = ledger.state();
        crate::main_loop::admit_ledger_nodes(&state, &admitted);
        if state.revoked_node(&id).is_some() {
            tracing::error!(
                "this node was revoked from the mesh; the other nodes refuse it: empty its data dir and join with a new join token"
            );
        }
        contacts.into_iter().filter(|c| state.revoked_node(&c.id).is_none()).collect()
    };
    ledger.set_contacts(contacts.iter().map(|c| c.id).collect());
    let dyn_transport = transport.dyn_transport();
    dyn_transport.serve(Protocol::Ledger, ledger.handler());
    let tasks_dir = config.data_dir.join("tasks");
    // The first bootstrap voter forms a new mesh; on a restart this does nothing.
    if bootstrap_voters.first().is_some_and(|v| v.id == id) {
        let voters: BTreeMap<NodeId, PeerInfo> =
            bootstrap_voters.iter().map(|v| (v.id, PeerInfo::new(v.transport_addr.clone()))).collect();
        ledger
            .initialize(voters)
            .await
            .map_err(|e| DaemonError::Ledger { dir: ledger_dir.clone(), reason: e.to_string() })?;
    }
    // Every provisioned node commits the mesh's first credentials (idempotent), so they land
    // even if the node that formed the ledger died right after.
    let deployers = files.bootstrap.iter().flat_map(|b| b.deployers.iter().cloned()).collect();
    crate::access::commit_bootstrap(ledger.clone(), bootstrap_tokens.clone(), deployers);

    let membership = start_membership(&config, id, files.secret, &contacts)?;

    // What the host allows workloads to be confined with; each node its own cgroup scope (local
    // meshes run several nodes on one host), emptied of what a killed run of this node left.
    let scope = format!("node-{}", id.short());
    let host = tokio::task::spawn_blocking(move || {
        let host = falak_sandbox::HostSandbox::detect(Some(&scope));
        let left = host.cgroups.as_ref().map_or(0, |c| c.remove_leftovers());
        (host, left)
    })
    .await;
    let (host, left) = host.map_err(|e| DaemonError::Sandbox(e.to_string()))?;
    if left > 0 {
        tracing::warn!(cgroups = left, "removed workload cgroups the previous run of this node left");
    }
    tracing::info!(sandbox = %host.report, "workload sandbox");
    // Free space kept for the ledger; the executor measures every attempt's working directory.
    let disk_reserve = crate::disk::reserve(&config.data_dir, config.disk_reserve);
    // Workloads see neither the node's data dir (keys, ledger, other workloads' directories)
    // nor its home nor the directories its config names.
    let mut process_config = ProcessConfig::from_host(&host);
    process_config.disk = falak_exec::DiskConfig::new(config.disk_check_interval, Some(disk_reserve.clone()));
    process_config.workload.hide.push(config.data_dir.clone());
    process_config.workload.hide.extend(config.hidden_from_workloads.iter().cloned());
    let hidden = process_config.workload.hide.clone();
    let (runtime, state_dir) = (config.container_runtime.clone(), config.data_dir.join("runc"));
    let containers = tokio::task::spawn_blocking(move || {
        let runtime = falak_exec::ContainerRuntime::detect(&runtime, state_dir)?;
        let left = runtime.remove_leftovers();
        if left > 0 {
            tracing::warn!(containers = left, "deleted the containers the previous run of this node left");
        }
        Ok::<_, falak_exec::RuntimeUnavailable>(runtime)
    })
    .await;
    process_config.containers = match containers.map_err(|e| DaemonError::Sandbox(e.to_string()))? {
        Ok(runtime) => {
            let layers = if runtime.overlay { "an overlay over the image" } else { "a copy of the image" };
            tracing::info!(runtime = %runtime.program.display(), version = %runtime.version, rootless = runtime.rootless, root_filesystem = layers, "containers");
            Some(runtime)
        }
        Err(error) => {
            tracing::warn!(%error, "this node runs no containers");
            None
        }
    };
    let containers = process_config.containers.clone();
    let executor = Arc::new(ProcessExecutor::new(process_config));
    // A uid per capsule and per function, where the node can give one: as root, or inside a
    // user namespace.
    let workload_users = (host.can_switch_users || host.namespaces == falak_exec::Namespaces::User).then(|| {
        let (first, count) = config.workload_uids;
        Arc::new(falak_exec::WorkloadUsers::new(first, count))
    });
    let task_users = match (config.run_as, &workload_users) {
        (Some((uid, gid)), _) => TaskUsers::All(RunAs { uid, gid }),
        (None, Some(users)) => TaskUsers::PerCapsule(users.clone()),
        (None, None) => TaskUsers::Default,
    };
    // Attempts a previous run of this node left running (it was killed) were re-elected
    // elsewhere long ago: stop them before taking new work.
    let groups_dir = config.data_dir.join("groups");
    let leftover_dir = groups_dir.clone();
    let killed = tokio::task::spawn_blocking(move || crate::orphans::kill_leftovers(&leftover_dir)).await.unwrap_or(0);
    if killed > 0 {
        tracing::warn!(processes = killed, "killed task processes left by the previous run of this node");
    }
    // One artifact store for the node: function bundles and capsules' code, served to peers.
    let artifacts = crate::artifacts::NodeArtifacts::open(
        &config.data_dir,
        id,
        dyn_transport.clone(),
        ledger.clone(),
        membership.watch(),
    )?;
    dyn_transport.serve(Protocol::Artifact, artifacts.handler());
    let images = crate::images::NodeImages::new(artifacts.clone(), &config);
    let runner = Runner::new(
        executor,
        tasks_dir.clone(),
        groups_dir,
        task_users,
        falak_core::secret::SecretKey::from_mesh_secret(&files.secret),
        artifacts.clone(),
        images.clone(),
    );

    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|source| DaemonError::Api { addr: config.api_addr, source })?;
    let api_addr = listener.local_addr().map_err(|source| DaemonError::Api { addr: config.api_addr, source })?;
    let mut record = config.record(id, format!("https://{api_addr}"));
    // What isolation this node can give, for placement and for the API's check at submission.
    record.namespaces = Some(match host.namespaces {
        falak_sandbox::Namespaces::Privileged => falak_core::node::Namespaces::Privileged,
        falak_sandbox::Namespaces::User => falak_core::node::Namespaces::User,
        falak_sandbox::Namespaces::Unavailable => falak_core::node::Namespaces::Unavailable,
    });
    let tls = falak_transport::https::server_config(&files.key, &files.cert)
        .map_err(|e| DaemonError::Trust { path: config.data_dir.join("node.crt"), reason: e.to_string() })?;
    let listener = crate::https::TlsListener::new(listener, tls)
        .map_err(|source| DaemonError::Api { addr: config.api_addr, source })?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (functions_stop, functions_stopping) = watch::channel(false);
    let functions = FunctionHost::new(FunctionHostParts {
        id,
        node_name: config.name.clone(),
        data_dir: config.data_dir.clone(),
        api_url: record.api_url.clone(),
        node_key: falak_transport::NodeKey::from_pem(&files.key.to_pem())
            .expect("the node key re-reads from its own PEM"),
        ca_cert_pem: files.ca_cert_pem.clone(),
        ledger: ledger.clone(),
        transport: dyn_transport.clone(),
        membership: membership.watch(),
        artifacts,
        images: images.clone(),
        containers,
        events: events_tx.clone(),
        stop: functions_stopping,
        secrets: falak_core::secret::SecretKey::from_mesh_secret(&files.secret),
        hidden,
        users: workload_users.clone(),
        disk_reserve: Some(disk_reserve.clone()),
    });
    dyn_transport.serve(Protocol::Rpc, crate::api::rpc_handler(tasks_dir.clone(), functions.clone()));
    let functions_task = tokio::spawn(functions.clone().run());
    let (actions_tx, actions) = mpsc::channel(ACTION_QUEUE);
    let gateway = Arc::new(GatewayHandle(NodeGateway::new(functions.clone())));
    let auth = crate::access::start(&ledger, bootstrap_tokens, id, admitted.clone(), functions_stop.subscribe());
    let router = falak_api::router_with_gateway(actions_tx, falak_api::ApiConfig::default(), gateway, auth)
        .layer(axum::middleware::map_response_with_state(ledger.clone(), crate::api::ledger_headers));
    let (stop_tx, _) = broadcast::channel::<()>(1);
    let mut api_stop = stop_tx.subscribe();
    let api = tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = api_stop.recv().await;
        });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "API server failed");
        }
    });
    tracing::info!(api = %record.api_url, transport = %config.transport_addr, gossip = %config.gossip_addr, "node up");

    let main_loop = MainLoop::new(MainLoopParts {
        id,
        config,
        record,
        ledger: ledger.clone(),
        runner,
        membership: MembershipLink::new(membership.clone()),
        transport: transport.clone(),
        admitted,
        actions,
        authority,
        secrets: falak_core::secret::SecretKey::from_mesh_secret(&files.secret),
        bootstrap_credentials: (
            files.bootstrap.iter().flat_map(|b| b.tokens.iter().map(|t| t.id)).collect(),
            files.bootstrap.iter().flat_map(|b| b.deployers.iter().map(|d| d.id)).collect(),
        ),
        functions,
        images,
        events: (events_tx, events_rx),
        disk_reserve,
    });
    let main = tokio::spawn(main_loop.run(stop_tx.subscribe()));

    shutdown.await;
    tracing::info!("stopping: tasks first, then membership, ledger and transport");
    let _ = stop_tx.send(());
    let _ = functions_stop.send(true);
    let _ = main.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), functions_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
    // Say goodbye so peers mark this node OFFLINE at once rather than after suspicion.
    membership.leave().await;
    if let Ok(handle) = Arc::try_unwrap(membership) {
        handle.shutdown().await;
    }
    if let Err(e) = ledger.shutdown().await {
        tracing::warn!(error = %e, "ledger shutdown");
    }
    transport.shutdown().await;
    // The tasks are gone (the main loop stopped them): remove this node's cgroup scope.
    if let Some(cgroups) = host.cgroups.clone() {
        let removed = tokio::task::spawn_blocking(move || cgroups.remove_scope()).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(error = %e, "cannot remove the workload cgroup scope");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The hosts a node's certificate must name for clients of its HTTPS API: the API address's IP,
/// or loopback and `localhost` when it listens on every address.
pub fn api_hosts(addr: std::net::SocketAddr) -> Vec<String> {
    if addr.ip().is_unspecified() {
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
    } else {
        vec![addr.ip().to_string()]
    }
}

/// Make sure the node's certificate names its API hosts: reissue it with the mesh CA when this
/// node holds the CA key (a node provisioned before HTTPS, or whose API address changed),
/// otherwise say what to do.
fn ensure_api_names(config: &NodeConfig, files: &mut MeshFiles) -> Result<(), DaemonError> {
    let hosts = api_hosts(config.api_addr);
    if hosts.iter().all(|h| files.cert.names_host(h)) {
        return Ok(());
    }
    let path = config.data_dir.join("node.crt");
    let trust = |reason: String| DaemonError::Trust { path: path.clone(), reason };
    let key_path = config.data_dir.join("ca.key");
    let Ok(key_pem) = std::fs::read_to_string(&key_path) else {
        return Err(trust(format!(
            "it does not name the API host {} and this node has no CA key to reissue it; join again with a new join token, or start the node with the API address it joined with",
            hosts.join(", ")
        )));
    };
    let ca = falak_transport::MeshCa::from_pem(&files.ca_cert_pem, &key_pem).map_err(|e| trust(e.to_string()))?;
    let cert = ca
        .issue_for_hosts(files.id(), &config.name, &hosts, crate::clock::system_now())
        .map_err(|e| trust(e.to_string()))?;
    crate::mesh_files::write_node_cert(&config.data_dir, &cert)?;
    tracing::info!(hosts = %hosts.join(", "), "reissued the node certificate for the API's hosts");
    files.cert = cert;
    Ok(())
}

fn start_membership(
    config: &NodeConfig,
    id: NodeId,
    secret: [u8; 32],
    voters: &[crate::mesh_files::BootstrapMember],
) -> Result<Arc<falak_membership::MembershipHandle>, DaemonError> {
    let socket = std::net::UdpSocket::bind(config.gossip_addr)
        .and_then(|s| {
            s.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(s)
        })
        .map_err(|source| DaemonError::Gossip { addr: config.gossip_addr, source })?;
    // The generation grows with every start, so peers tell this run from the previous one.
    let identity = MemberIdentity::new(id, config.gossip_addr, now_millis());
    let rng = rand_chacha::ChaCha8Rng::from_entropy();
    let timing = match config.failure_detection {
        crate::config::FailureDetection::Fast => MembershipConfig::lan(),
        crate::config::FailureDetection::PauseTolerant => MembershipConfig::pause_tolerant(),
    };
    let core = Membership::new(identity, &falak_membership::MeshSecret(secret), timing, rng)
        .map_err(|e| DaemonError::Membership(e.to_string()))?;
    let handle = Arc::new(falak_membership::spawn(socket, core));
    let seeds: Vec<SocketAddr> = config
        .seeds
        .iter()
        .copied()
        .chain(voters.iter().filter(|v| v.id != id).filter_map(|v| v.gossip_addr.parse().ok()))
        .filter(|addr| *addr != config.gossip_addr)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let joining = handle.clone();
    tokio::spawn(async move {
        for seed in seeds {
            if let Err(error) = joining.join(seed).await {
                tracing::warn!(%seed, %error, "membership join failed");
            }
        }
    });
    Ok(handle)
}
