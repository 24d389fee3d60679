//! `container` instances: the node's OCI runtime (`runc`, `crun`) runs the image's process in
//! the foreground, as for a container task ([`falak_exec::write_bundle`]), and the instance
//! serves HTTP on its socket or port.
//!
//! - **Socket.** The instance's socket directory (`run/c<N>`, owned by the container's user as
//!   the host sees it: its own uid on a root node, the node's on a rootless one) is bound
//!   writable at [`CONTAINER_SOCKET_DIR`]; `FALAK_SOCKET` names the socket inside it, and the
//!   node connects to the same file from outside.
//! - **Port.** On `network: host` (the default) the instance may instead listen on
//!   `127.0.0.1:$PORT`; on `network: none` it has only its own loopback, and the socket.
//! - **Bundle.** `config.json`, the overlay's upper layer (or a copy of the image where the
//!   node cannot mount one) and the runtime's state live in `containers/i<N>` under the work
//!   dir, the node's alone: the container's user can never rewrite what the runtime (root on a
//!   root node) reads.
//! - **Cgroup and teardown.** The instance's cgroup is made as for every instance; on v1 the
//!   runtime joins it and nests the container's inside it, on v2 it is given it. Stopping is
//!   SIGTERM to the runtime's group (it passes the signal on), then the enclosure runs the
//!   runtime's `delete --force` (which reaches the container where no cgroup holds it), kills
//!   what is left in the cgroup and removes the socket and container directories.
//!   [`remove_leftovers`] does the same for the containers of a killed run of the node.

use std::collections::BTreeMap;
use std::ffi::OsString;

use falak_exec::workload::{Launch, launch, private_dir};
use falak_exec::{ContainerProcess, ContainerRuntime, ReadOnlyMount};
use falak_sandbox::{Confinement, Network};
use tokio::time::Instant;

use crate::error::StartError;
use crate::instance::{Health, Ident, Instance, StartKind, StartTimings};
use crate::prepare::Prepared;
use crate::sandbox::{Needs, enclose};
use crate::spawn::{Listening, connect, free_port, micros};

/// Where a container instance finds its socket's directory.
pub const CONTAINER_SOCKET_DIR: &str = "/run/falak";
/// The socket's name in it.
const SOCKET_NAME: &str = "http.sock";
/// The work dir's subdirectory of containers' bundles (the node's, `0700`).
const CONTAINERS_DIR: &str = "containers";

/// Start instance `ident.instance` of a container deployment; resolves once it accepts
/// connections.
pub(crate) async fn spawn(prepared: &Prepared, ident: Ident) -> Result<Instance, StartError> {
    let spec = prepared.spec();
    let deployment = spec.deployment.clone();
    let Some(host) = spec.container.clone() else {
        return Err(StartError::Io {
            deployment,
            what: "starting a container instance".into(),
            source: std::io::Error::other("the deployment names no image; it was not prepared as a container"),
        });
    };
    let instance = ident.instance;
    let what = format!("instance {instance}");
    let name = format!("i{instance}");
    let io_error = |step: &str| {
        let (deployment, what) = (deployment.clone(), format!("{step} of {what}"));
        move |source| StartError::Io { deployment, what, source }
    };
    let started = Instant::now();
    // The cgroup; the runtime needs its own privileges, so no namespaces, filter or Landlock
    // of the node's: the container gets the runtime's.
    let mut made = enclose(prepared, &what, &name, Needs { tmp: false, cgroup: true, launch: false }).await?;
    let socket_dir = prepared.container_socket_dir(instance);
    let bundle_dir = spec.work_dir.join(CONTAINERS_DIR).join(&name);
    let state_dir = bundle_dir.join("state");
    // Where no cgroup holds the container (rootless), killing the runtime leaves it running:
    // the runtime's `delete --force` reaches it.
    made.enclosure.run_at_teardown(host.runtime.delete_command(&state_dir, &name));
    made.enclosure.remove_with(socket_dir.clone());
    made.enclosure.remove_with(bundle_dir.clone());
    let mut env: BTreeMap<String, String> = host.env.clone();
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("FALAK_FUNCTION".into(), spec.function.clone());
    env.insert("FALAK_DEPLOYMENT".into(), deployment.clone());
    env.insert("FALAK_INSTANCE".into(), instance.to_string());
    env.insert("FALAK_SOCKET".into(), format!("{CONTAINER_SOCKET_DIR}/{SOCKET_NAME}"));
    let port = match host.network {
        Network::Host => Some(free_port().map_err(io_error("finding a free port for PORT"))?),
        Network::None => None,
    };
    if let Some(port) = port {
        env.insert("PORT".into(), port.to_string());
    }
    let process = ContainerProcess {
        args: host.args.clone(),
        env,
        network: host.network,
        open_files: 1024,
        writable: Some(ReadOnlyMount { source: socket_dir.clone(), destination: CONTAINER_SOCKET_DIR.into() }),
    };
    let cgroups_path = made.enclosure.unified_path();
    let written = {
        let (runtime, image, socket_dir, bundle_dir) =
            (host.runtime.clone(), host.image.clone(), socket_dir.clone(), bundle_dir.clone());
        tokio::task::spawn_blocking(move || {
            // Root node: the container's uid is the host's; rootless: the node's own.
            let owner = (!runtime.rootless).then_some(image.user);
            private_dir(&socket_dir, owner, 0o700)?;
            std::fs::create_dir_all(bundle_dir.parent().unwrap_or(&bundle_dir))?;
            private_dir(&bundle_dir, None, 0o700)?;
            falak_exec::write_bundle(&runtime, &bundle_dir, &process, &image, cgroups_path)
        })
        .await
        .unwrap_or_else(|e| Err(e.into()))
    };
    let bundle = written.map_err(io_error("writing the container bundle"))?;
    let joins = if made.enclosure.unified_path().is_some() { Vec::new() } else { std::mem::take(&mut made.joins) };
    let mut confinement = Confinement::new().rlimits(&spec.sandbox.rlimits).join_cgroups(joins);
    if let Some(overlay) = bundle.overlay {
        confinement = confinement.private_overlay(overlay);
    }
    let args = ContainerRuntime::run_args(&state_dir, &bundle.dir, &name);
    let path: BTreeMap<String, OsString> = [("PATH".to_owned(), OsString::from(falak_exec::DEFAULT_PATH))].into();
    let launched = launch(Launch {
        program: &host.runtime.program,
        args,
        cwd: &bundle_dir,
        env: path,
        log_path: &spec.log_path,
        ready_pipe: false,
        piped: false,
        confinement,
    })
    .map_err(|source| StartError::Spawn {
        deployment: deployment.clone(),
        what: what.clone(),
        program: host.runtime.program.clone(),
        source,
    })?;
    let spawned = Instant::now();
    let (process, enclosure) = (launched.process, made.enclosure);
    let socket = socket_dir.join(SOCKET_NAME);
    let tcp = port.map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let said = match port {
        Some(port) => format!("FALAK_SOCKET or PORT {port}"),
        None => "FALAK_SOCKET; with `network: none` its PORT is out of the node's reach".to_owned(),
    };
    let listening = Listening { socket: &socket, tcp, said: &said };
    let client = connect(prepared, &what, &process, &enclosure, listening, spawned).await?;
    let timings =
        StartTimings { kind: StartKind::Cold, spawn_us: micros(spawned - started), init_us: micros(spawned.elapsed()) };
    Ok(Instance::served(ident, timings, process, client, Health::Connect, enclosure))
}

/// Delete the containers a killed run of the node left in the work dirs under `bases` (their
/// runtime died with the node; where no cgroup holds them, they still run) and remove their
/// directories. Blocking; the number removed.
pub fn remove_leftovers(runtime: Option<&ContainerRuntime>, bases: &[std::path::PathBuf]) -> usize {
    let mut removed = 0;
    for base in bases {
        let Ok(work_dirs) = std::fs::read_dir(base) else { continue };
        for work_dir in work_dirs.flatten() {
            let Ok(containers) = std::fs::read_dir(work_dir.path().join(CONTAINERS_DIR)) else { continue };
            for container in containers.flatten() {
                let id = container.file_name().to_string_lossy().into_owned();
                if let Some(runtime) = runtime {
                    let deleted = runtime.delete_command(&container.path().join("state"), &id).status();
                    if let Err(error) = deleted {
                        tracing::warn!(%error, container = %container.path().display(), "cannot delete a leftover container");
                    }
                }
                let _ = std::fs::remove_dir_all(
                    work_dir.path().join(crate::prepare::RUN_DIR).join(id.replacen('i', "c", 1)),
                );
                let _ = std::fs::remove_dir_all(container.path());
                removed += 1;
            }
        }
    }
    removed
}
