//! The zygote: one python process per deployment that imported the handler once and forks a
//! pre-initialized instance per request for one. This is Falak's snapshot of a python function
//! (CRIU cannot start on the kernels Falak targets; see docs/design/runtime-host.md).
//!
//! The control protocol is one JSON line each way on a Unix socket:
//! `{"op":"fork","instance":7,"socket":"/…/i7.sock","env":{…}}` → `{"pid":3}` with a pidfd
//! of the instance attached (`SCM_RIGHTS`), or `{"error":"…"}`. The zygote binds the instance's
//! socket before it forks, so the instance accepts connections as soon as the reply arrives.
//! The pid is the zygote's number for the instance, in the zygote's pid namespace, which the
//! node does not share; the pidfd tells the node which process it is (its number for it, from
//! `/proc/self/fdinfo`), and a pidfd never names another process, whatever the pid is reused
//! for.
//!
//! The zygote is launched confined ([`crate::sandbox`]); a forked instance inherits its user,
//! network and pid namespaces, Landlock domain and seccomp filter, and the node moves it into
//! a cgroup of its own (its tmp dir and cgroup are made before the fork request) before the
//! first health check, so its requests — the first user code it runs — are counted there.
//! Pages it shares with the zygote stay charged to the zygote.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use falak_core::function::Runtime;
use serde::Deserialize;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::client::{Client, Target};
use crate::error::StartError;
use crate::instance::{Health, Ident, Instance, StartKind, StartTimings};
use crate::prepare::Prepared;
use falak_exec::workload::Enclosure;
use falak_exec::workload::{Launch, Process, arg, launch};

use crate::sandbox::{Needs, enclose};
use crate::spawn::{healthy, host_script, micros, wait_ready};

/// How long [`Zygote::stop`] waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The longest reply line the node reads from a zygote (a pid or an error message).
const MAX_REPLY: usize = 64 * 1024;

/// Numbers the control sockets of the zygotes this node starts, so that a replacement zygote
/// never takes over its predecessor's socket.
static ZYGOTES: AtomicU64 = AtomicU64::new(0);

/// A running zygote. Dropping it kills it, and with it (through `PR_SET_PDEATHSIG`) every
/// instance forked from it.
pub struct Zygote {
    prepared: Prepared,
    process: Process,
    enclosure: Enclosure,
    control_path: PathBuf,
    /// `None` after a failed exchange (the stream may hold a late reply); the next fork
    /// reconnects, as the zygote accepts any number of control connections.
    control: Mutex<Option<UnixStream>>,
}

#[derive(Deserialize)]
struct ForkReply {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    error: Option<String>,
}

impl Zygote {
    /// Start the zygote: it imports the handler and resolves once it can fork. An import error
    /// or a missing handler is [`StartError::Load`] with Python's error text.
    pub async fn start(prepared: &Prepared) -> Result<Zygote, StartError> {
        let spec = prepared.spec();
        if spec.runtime != Runtime::Python {
            return Err(StartError::NoZygote { deployment: spec.deployment.clone(), runtime: spec.runtime.name() });
        }
        let name = format!("z{}", ZYGOTES.fetch_add(1, Ordering::Relaxed));
        let control_path = prepared.run_dir().join(format!("{name}.ctl"));
        let mut made = enclose(prepared, "the zygote", &name, Needs::LAUNCH).await?;
        let confinement = made.confinement(&spec.sandbox);
        let mut env = prepared.base_env();
        env.extend(prepared.tmp_env(&prepared.tmp_dir(&name)));
        let args: Vec<OsString> = vec![
            "-u".into(),
            arg(&host_script(prepared)),
            "zygote".into(),
            "--bundle".into(),
            arg(&spec.bundle_dir),
            "--handler".into(),
            spec.handler.clone().unwrap_or_default().into(),
            "--control".into(),
            arg(&control_path),
        ];
        let launched = launch(Launch {
            program: prepared.interpreter(),
            args,
            cwd: &spec.bundle_dir,
            env,
            log_path: &spec.log_path,
            ready_pipe: true,
            piped: false,
            confinement,
        })
        .map_err(|source| StartError::Spawn {
            deployment: spec.deployment.clone(),
            what: "the zygote".to_owned(),
            program: prepared.interpreter().to_owned(),
            source,
        })?;
        let process = launched.process;
        let enclosure = made.enclosure;
        wait_ready(prepared, "the zygote", &process, launched.ready, &enclosure).await?;
        let control = UnixStream::connect(&control_path).await.map_err(|source| StartError::Io {
            deployment: spec.deployment.clone(),
            what: format!("connecting to the zygote's control socket {}", control_path.display()),
            source,
        })?;
        Ok(Zygote { prepared: prepared.clone(), process, enclosure, control_path, control: Mutex::new(Some(control)) })
    }

    /// Fork instance `instance` from the zygote; resolves when it has answered its first
    /// health check (a few milliseconds: no interpreter start, no imports).
    pub async fn fork(&self, instance: u64) -> Result<Instance, StartError> {
        let spec = self.prepared.spec();
        let ident = Ident { deployment: spec.deployment.clone(), instance, log_path: spec.log_path.clone() };
        let socket = self.prepared.instance_socket(instance);
        let what = format!("instance {instance}");
        let name = format!("i{instance}");
        let started = Instant::now();
        let made = enclose(&self.prepared, &what, &name, Needs::FORK).await?;
        let tmp_env = self.prepared.tmp_env(&self.prepared.tmp_dir(&name));
        let pidfd = self.request_fork(instance, &socket, tmp_env).await?;
        let exited = |status: &str| StartError::Exited {
            deployment: spec.deployment.clone(),
            what: what.clone(),
            status: status.to_owned(),
            log: spec.log_path.clone(),
        };
        let process = Process::from_pidfd(pidfd).map_err(|_| exited("exited right after the fork"))?;
        let pid = process.pid();
        // Into its own cgroup before it serves anything: the node's health check is the first
        // request, so user code in the instance runs only inside it. (By the node's pid for it,
        // read from the pidfd: cgroupfs takes no pidfd. A child that died already fails the
        // move or shows dead on its pidfd, and the start fails; its pid cannot be reused
        // before the zygote reaps it.)
        let enclosure = made.enclosure;
        let adopted = tokio::task::spawn_blocking(move || {
            let adopted = enclosure.adopt(pid);
            (enclosure, adopted)
        })
        .await;
        let enclosure = match adopted {
            Ok((enclosure, Ok(()))) => enclosure,
            Ok((_, Err(_))) | Err(_) if !process.is_alive() => return Err(exited("exited right after the fork")),
            Ok((_, Err(source))) => {
                return Err(StartError::Sandbox {
                    deployment: spec.deployment.clone(),
                    what,
                    step: "moving it into its cgroup".to_owned(),
                    source,
                });
            }
            Err(e) => {
                let step = "moving it into its cgroup".to_owned();
                return Err(StartError::Sandbox { deployment: spec.deployment.clone(), what, step, source: e.into() });
            }
        };
        let forked = Instant::now();
        let client = Client::new(Target::Unix(socket));
        healthy(&self.prepared, &ident, &process, &client, Health::Endpoint).await?;
        let timings = StartTimings {
            kind: StartKind::Fork,
            spawn_us: micros(forked - started),
            init_us: micros(forked.elapsed()),
        };
        Ok(Instance::served(ident, timings, process, client, Health::Endpoint, enclosure))
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn is_alive(&self) -> bool {
        self.process.is_alive()
    }

    /// Resolves when the zygote has exited.
    pub async fn exited(&self) {
        self.process.exited().await;
    }

    /// Stop the zygote (SIGTERM, SIGKILL after a grace period) and remove its cgroup. Its
    /// instances die with it.
    pub async fn stop(&self) {
        self.process.stop(STOP_GRACE).await;
        self.enclosure.teardown().await;
    }

    /// Ask the zygote to fork instance `instance`; returns its pidfd.
    async fn request_fork(
        &self,
        instance: u64,
        socket: &std::path::Path,
        tmp_env: [(String, OsString); 2],
    ) -> Result<OwnedFd, StartError> {
        let spec = self.prepared.spec();
        let deployment = spec.deployment.clone();
        let gone = || StartError::ZygoteExited {
            deployment: deployment.clone(),
            pid: self.process.pid(),
            log: spec.log_path.clone(),
        };
        if !self.process.is_alive() {
            return Err(gone());
        }
        let mut env: BTreeMap<String, String> = [
            ("FALAK_INSTANCE".to_owned(), instance.to_string()),
            ("FALAK_SOCKET".to_owned(), socket.to_string_lossy().into_owned()),
        ]
        .into();
        env.extend(tmp_env.into_iter().map(|(k, v)| (k, v.to_string_lossy().into_owned())));
        let mut line =
            serde_json::json!({ "op": "fork", "instance": instance, "socket": socket, "env": env }).to_string();
        line.push('\n');
        let mut guard = self.control.lock().await;
        let exchange = async {
            let control = match guard.take() {
                Some(control) => control,
                None => UnixStream::connect(&self.control_path).await?,
            };
            let control = guard.insert(control);
            control.write_all(line.as_bytes()).await?;
            read_reply(control).await
        };
        let exchanged = tokio::time::timeout(self.prepared.start_timeout(), exchange).await;
        if !matches!(&exchanged, Ok(Ok((reply, _))) if !reply.is_empty()) {
            *guard = None;
        }
        drop(guard);
        let (reply, pidfd) = match exchanged {
            Ok(Ok(exchanged)) => exchanged,
            Ok(Err(_)) if !self.process.is_alive() => return Err(gone()),
            Ok(Err(source)) => {
                return Err(StartError::Io { deployment, what: "talking to the zygote".to_owned(), source });
            }
            Err(_) => {
                return Err(StartError::Timeout {
                    deployment,
                    what: format!("the zygote's fork of instance {instance}"),
                    timeout: self.prepared.start_timeout(),
                    log: spec.log_path.clone(),
                });
            }
        };
        if reply.is_empty() {
            return Err(gone());
        }
        match (serde_json::from_slice::<ForkReply>(&reply), pidfd) {
            (Ok(ForkReply { pid: Some(_), .. }), Some(pidfd)) => Ok(pidfd),
            (Ok(ForkReply { pid: Some(pid), .. }), None) => {
                Err(StartError::Fork { deployment, instance, error: format!("forked {pid} but sent no pidfd of it") })
            }
            (Ok(ForkReply { error: Some(error), .. }), _) => Err(StartError::Fork { deployment, instance, error }),
            _ => {
                let reply = String::from_utf8_lossy(&reply);
                Err(StartError::Fork { deployment, instance, error: format!("unexpected reply {reply:?}") })
            }
        }
    }
}

/// Read one reply line from the zygote and the descriptor that came with it, if any (the
/// instance's pidfd). Empty at EOF. The zygote sends nothing it was not asked for, so nothing
/// is read past the line: a stream that says more is dropped by the caller as out of step.
async fn read_reply(control: &UnixStream) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut reply = Vec::new();
    let mut pidfd = None;
    let mut buffer = [0u8; 4096];
    while !reply.ends_with(b"\n") {
        if reply.len() > MAX_REPLY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the zygote's reply is too long"));
        }
        control.readable().await?;
        let received = control.try_io(Interest::READABLE, || receive(control.as_raw_fd(), &mut buffer));
        let (read, fd) = match received {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        // Only the first descriptor counts; any other is closed as it drops.
        pidfd = pidfd.or(fd);
        if read == 0 {
            return Ok((Vec::new(), None));
        }
        reply.extend_from_slice(&buffer[..read]);
    }
    Ok((reply, pidfd))
}

/// One `recvmsg` on `socket` into `buffer`: the bytes read and the first descriptor received
/// with them (the others closed).
fn receive(socket: RawFd, buffer: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    // Room for a few descriptors' header and payload (`CMSG_SPACE` of four ints), aligned for
    // `cmsghdr`: descriptors that do not fit would be closed by the kernel, never leaked.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
    // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg writes at most the lengths given into the buffers `message` points to.
    let read = unsafe { libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled, within the length it
    // reported; each SCM_RIGHTS payload is an array of descriptors now owned by this process.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                let count = ((*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    received.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Ok((read as usize, received.into_iter().next()))
}

impl std::fmt::Debug for Zygote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zygote")
            .field("deployment", &self.prepared.spec().deployment)
            .field("pid", &self.process.pid())
            .finish()
    }
}
