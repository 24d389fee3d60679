//! Namespaces: what a workload sees of the node — its own network, its own file system view,
//! its own processes, its own user id — whether the node is root or not.
//!
//! A node makes namespaces one of two ways ([`Namespaces`]):
//!
//! - **privileged** (the node is root, or has `CAP_SYS_ADMIN`): the child calls
//!   `unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET)` and later switches to the workload's
//!   user;
//! - **user** (an ordinary user, where the kernel allows unprivileged user namespaces, as for
//!   bubblewrap, rootless Podman and Chrome's sandbox): the child calls
//!   `unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET)` and maps one id: the
//!   workload's uid inside is the node's uid outside (`/proc/self/uid_map`, `setgroups` denied,
//!   then `gid_map`). The capabilities that the new namespace gives the child (to mount and to
//!   bring `lo` up) end at `exec`, because the mapped user is not root inside.
//!
//! The pid namespace needs two more processes, made by the child after everything here: the
//! namespace's init, and the workload, which mounts the namespace's `/proc` (so it lists only
//! its own processes) before anything else ([`crate::init`]). A host where the rest works but a fresh
//! `/proc` cannot be mounted (a user namespace in a container that masks parts of `/proc`)
//! runs workloads without one ([`Namespaces::probe_pid`], [`Isolation::pid_namespace`]).
//!
//! Either way the child then builds its [`View`] of the file system: mounts are made private
//! (nothing propagates back to the host), each hidden directory — the node's data dir, the
//! mesh's keys, the node user's home — is covered by an empty read-only tmpfs, and the
//! directories the workload needs are bound back at their own paths (its working directory
//! writable, a function's bundle and virtualenv read-only). The child then enters its working
//! directory through the new mounts: a working directory entered before them would keep a
//! path (`..`) into what they cover.
//!
//! Every path is resolved, checked and turned into C strings in the node
//! ([`Isolation::prepare`]); the child makes only raw system calls ([`Prepared::enter`]). The
//! child opens each exposed directory (`O_PATH`) itself, after `unshare` and before hiding
//! anything: a bind mount's source must be a mount of the caller's own mount namespace.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::network::{self, Network};
use crate::user::RunAs;

/// How this node gives workloads namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespaces {
    /// The node may create them directly (root or `CAP_SYS_ADMIN`).
    Privileged,
    /// Through a user namespace of the workload's own (an unprivileged node).
    User,
    /// Neither: the workload shares the node's mounts and network.
    Unavailable,
}

impl Namespaces {
    /// Find out by trying, in a short-lived child, what a workload will do. Blocking (a fork
    /// and a wait); call it once at startup. The error says why neither way works.
    pub fn probe() -> (Namespaces, Option<io::Error>) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let first = if unsafe { libc::geteuid() } == 0 { Namespaces::Privileged } else { Namespaces::User };
        let probe = |namespaces| {
            Isolation::new(namespaces)
                .network(Network::None)
                .pid_namespace(false)
                .prepare()
                .and_then(|prepared| probe_in_child(&prepared))
        };
        match probe(first) {
            Ok(()) => (first, None),
            Err(e) if first == Namespaces::Privileged => {
                // Root in a container without CAP_SYS_ADMIN may still have user namespaces.
                match probe(Namespaces::User) {
                    Ok(()) => (Namespaces::User, None),
                    Err(_) => (Namespaces::Unavailable, Some(e)),
                }
            }
            Err(e) => (Namespaces::Unavailable, Some(e)),
        }
    }

    /// Find out by trying, in a short-lived child, whether a workload made this way can also
    /// have a pid namespace with its own `/proc`. Blocking (forks and waits); call it once at
    /// startup, after [`Namespaces::probe`]. The error says why not.
    pub fn probe_pid(self) -> io::Result<()> {
        if self == Namespaces::Unavailable {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "no namespaces at all"));
        }
        let prepared = Isolation::new(self).network(Network::None).prepare()?;
        probe_in_child(&prepared)
    }

    pub fn name(self) -> &'static str {
        match self {
            Namespaces::Privileged => "privileged",
            Namespaces::User => "user",
            Namespaces::Unavailable => "unavailable",
        }
    }
}

/// What no workload sees by default: the node user's home (its keys, tokens, SSH agent
/// configuration). The node adds its data dir and its mesh's files.
pub fn default_hidden() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    home.filter(|home| home.is_absolute() && home != Path::new("/")).into_iter().collect()
}

fn probe_in_child(prepared: &Prepared) -> io::Result<()> {
    let fd_scan_limit = crate::confinement::fd_scan_limit();
    // SAFETY: the child makes only the raw system calls of `enter` (and, with a pid namespace,
    // of `init::split`, whose relay passes the workload's exit code on), then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: the single-threaded child of fork; `enter` and `split` are
        // async-signal-safe.
        unsafe {
            let entered = prepared
                .enter()
                .and_then(|()| if prepared.pid_namespace() { crate::init::split(None, fd_scan_limit) } else { Ok(()) });
            let code = match entered {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc::EPERM),
            };
            libc::_exit(code & 0xff);
        }
    }
    network::wait_probe(pid, "the namespace probe")
}

/// A directory the workload sees at its own path although it lies in a hidden one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub path: PathBuf,
    pub writable: bool,
}

/// What a workload sees of the node's file system: everything, except the `hide` directories,
/// of which it sees only the `expose` ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub hide: Vec<PathBuf>,
    pub expose: Vec<Exposure>,
}

impl View {
    pub fn hiding(hide: Vec<PathBuf>) -> View {
        View { hide, expose: Vec::new() }
    }

    /// Let the workload see and write `path`.
    pub fn writable(mut self, path: impl Into<PathBuf>) -> View {
        self.expose.push(Exposure { path: path.into(), writable: true });
        self
    }

    /// Let the workload see and read `path`.
    pub fn readable(mut self, path: impl Into<PathBuf>) -> View {
        self.expose.push(Exposure { path: path.into(), writable: false });
        self
    }
}

/// The namespaces of one workload, as the node decides them.
#[derive(Debug, Clone)]
pub struct Isolation {
    namespaces: Namespaces,
    network: Network,
    /// With [`Namespaces::User`], the ids the workload has inside (its own uid from the node's
    /// range, or the node's); the node's are outside.
    inner: Option<RunAs>,
    view: View,
    chdir: Option<PathBuf>,
    pid: bool,
}

impl Isolation {
    /// The namespaces `namespaces` can make: a mount and a pid namespace, the host's network
    /// (see [`Isolation::network`]); none with [`Namespaces::Unavailable`].
    pub fn new(namespaces: Namespaces) -> Isolation {
        Isolation { namespaces, network: Network::Host, inner: None, view: View::default(), chdir: None, pid: true }
    }

    /// Whether the workload gets a pid namespace (the default, where there are namespaces):
    /// `false` on a host that cannot mount a fresh `/proc` ([`Namespaces::probe_pid`]).
    pub fn pid_namespace(mut self, pid: bool) -> Isolation {
        self.pid = pid;
        self
    }

    pub fn network(mut self, network: Network) -> Isolation {
        self.network = network;
        self
    }

    /// With [`Namespaces::User`]: the uid and gid the workload has inside its namespace.
    pub fn inner_user(mut self, user: Option<RunAs>) -> Isolation {
        self.inner = user;
        self
    }

    pub fn view(mut self, view: View) -> Isolation {
        self.view = view;
        self
    }

    /// The directory the workload starts in, entered after the mounts.
    pub fn chdir(mut self, dir: impl Into<PathBuf>) -> Isolation {
        self.chdir = Some(dir.into());
        self
    }

    /// Resolve and check everything the child will need, and turn it into C strings.
    /// Blocking (it resolves paths and reads their mounts' flags). An error names the path.
    pub fn prepare(self) -> io::Result<Prepared> {
        let mut prepared = Prepared::nothing();
        if self.namespaces == Namespaces::Unavailable {
            if self.network == Network::None {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this node cannot create namespaces, so it cannot give a workload a network of its own",
                ));
            }
            prepared.chdir = self.chdir.as_deref().map(c_path).transpose()?;
            return Ok(prepared);
        }
        prepared.flags = libc::CLONE_NEWNS;
        if self.pid {
            prepared.flags |= libc::CLONE_NEWPID;
        }
        if self.network == Network::None {
            prepared.flags |= libc::CLONE_NEWNET;
            prepared.network = true;
        }
        if self.namespaces == Namespaces::User {
            prepared.flags |= libc::CLONE_NEWUSER;
            // SAFETY: getuid/getgid have no preconditions and cannot fail.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let inner = self.inner.unwrap_or(RunAs { uid, gid });
            prepared.maps = Some(Maps {
                uid_map: format!("{} {uid} 1\n", inner.uid).into_bytes(),
                gid_map: format!("{} {gid} 1\n", inner.gid).into_bytes(),
            });
        }
        prepared.plan_view(&self.view)?;
        prepared.chdir = self.chdir.as_deref().map(c_path).transpose()?;
        Ok(prepared)
    }
}

#[derive(Debug)]
struct Maps {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

#[derive(Debug)]
enum Step {
    /// An empty tmpfs over a hidden directory.
    Hide(CString),
    /// A read-only remount of a mount made above (the flags it must keep included).
    ReadOnly { target: CString, flags: libc::c_ulong },
    /// A mount point inside a hidden directory's tmpfs.
    Mkdir(CString),
    /// Bind source `n` (opened by the child before anything is hidden) at `target`.
    Bind { source: usize, target: CString },
}

/// A bind mount's source: its path, and the child's descriptor of it once opened (only the
/// child's copy of this memory is ever written).
#[derive(Debug)]
struct Source {
    path: CString,
    fd: AtomicI32,
}

/// An [`Isolation`] ready for the child: flags, maps and mount steps as C strings.
#[derive(Debug)]
pub struct Prepared {
    flags: libc::c_int,
    maps: Option<Maps>,
    steps: Vec<Step>,
    network: bool,
    chdir: Option<CString>,
    sources: Vec<Source>,
}

const TMPFS_OPTIONS: &[u8] = b"mode=0755,size=64k,nr_inodes=1024\0";
const HIDDEN_FLAGS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

impl Prepared {
    /// Nothing to do yet.
    fn nothing() -> Prepared {
        Prepared { flags: 0, maps: None, steps: Vec::new(), network: false, chdir: None, sources: Vec::new() }
    }

    /// Whether the workload gets a pid namespace of its own: after [`Prepared::enter`], the
    /// child must fork its init and the workload ([`crate::init::split`]).
    pub fn pid_namespace(&self) -> bool {
        self.flags & libc::CLONE_NEWPID != 0
    }

    /// Whether the workload gets a network namespace of its own.
    pub fn private_network(&self) -> bool {
        self.network
    }

    /// Whether the workload's ids are mapped in a user namespace (and so it must not switch
    /// users itself).
    pub fn maps_user(&self) -> bool {
        self.maps.is_some()
    }

    fn plan_view(&mut self, view: &View) -> io::Result<()> {
        let resolve =
            |path: &Path| path.canonicalize().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())));
        // Hidden roots: existing directories, none inside another, each lifted to its outermost
        // ancestor that others may not pass through (a `0700` home or `mktemp -d`): the
        // workload could not see into that one anyway, and its tmpfs lets the workload pass
        // to what is exposed inside.
        let mut hidden: Vec<PathBuf> = view
            .hide
            .iter()
            .filter_map(|path| path.canonicalize().ok())
            .filter(|path| path.is_dir() && path != Path::new("/"))
            .map(|path| outermost_closed(&path).unwrap_or(path))
            .collect();
        hidden.sort();
        hidden.dedup();
        let outermost: Vec<PathBuf> =
            hidden.iter().filter(|p| !hidden.iter().any(|q| q != *p && p.starts_with(q))).cloned().collect();
        let mut exposed: Vec<(PathBuf, bool)> = Vec::new();
        for exposure in &view.expose {
            exposed.push((resolve(&exposure.path)?, exposure.writable));
        }
        // Parents before children, so a writable dir inside a read-only one is bound on top.
        exposed.sort_by_key(|(path, _)| path.components().count());
        if outermost.is_empty() && exposed.iter().all(|(_, writable)| *writable) {
            return Ok(());
        }
        for root in &outermost {
            self.steps.push(Step::Hide(c_path(root)?));
        }
        let mut made: Vec<PathBuf> = Vec::new();
        let mut bound: Vec<PathBuf> = Vec::new();
        for (path, writable) in &exposed {
            let Some(root) = outermost.iter().find(|root| path.starts_with(root)) else {
                // Visible anyway: bind it onto itself to make it read-only, or writable again
                // inside a read-only one bound before.
                if !writable || bound.iter().any(|b| path.starts_with(b)) {
                    self.bind(path, path)?;
                    if !writable {
                        self.read_only(path)?;
                    }
                    bound.push(path.clone());
                }
                continue;
            };
            // The mount points from the hidden root down to `path`, unless an earlier bind
            // already brings them.
            let mut dir = root.clone();
            for component in path.strip_prefix(root).unwrap_or(Path::new("")).components() {
                dir.push(component);
                if bound.iter().any(|b| dir.starts_with(b)) || made.contains(&dir) {
                    continue;
                }
                self.steps.push(Step::Mkdir(c_path(&dir)?));
                made.push(dir.clone());
            }
            self.bind(path, path)?;
            if !writable {
                self.read_only(path)?;
            }
            bound.push(path.clone());
        }
        for root in &outermost {
            self.steps.push(Step::ReadOnly { target: c_path(root)?, flags: HIDDEN_FLAGS });
        }
        Ok(())
    }

    fn bind(&mut self, source: &Path, target: &Path) -> io::Result<()> {
        if !source.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", source.display()),
            ));
        }
        self.sources.push(Source { path: c_path(source)?, fd: AtomicI32::new(-1) });
        self.steps.push(Step::Bind { source: self.sources.len() - 1, target: c_path(target)? });
        Ok(())
    }

    /// A read-only remount of the bind at `path`, keeping the flags of the mount it came from
    /// (a user namespace may not drop `nosuid`, `nodev`, `noexec` or the atime flags).
    fn read_only(&mut self, path: &Path) -> io::Result<()> {
        let target = c_path(path)?;
        // SAFETY: statvfs writes one struct into a zeroed local from a NUL-terminated path.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::statvfs(target.as_ptr(), &mut stat) } == -1 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
        }
        let kept = [
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ];
        let flags = kept.iter().filter(|(st, _)| stat.f_flag & st != 0).fold(0, |acc, (_, ms)| acc | ms);
        self.steps.push(Step::ReadOnly { target, flags });
        Ok(())
    }

    /// Enter the namespaces, build the view and bring `lo` up. With a pid namespace, only the
    /// child's children will be in it: [`Prepared::pid_namespace`] says to fork them next.
    ///
    /// # Safety
    /// Only in a child between `fork` and `exec`, before it switches users: raw,
    /// async-signal-safe system calls on memory `self` owns.
    pub(crate) unsafe fn enter(&self) -> io::Result<()> {
        // SAFETY (whole function): raw system calls on NUL-terminated strings and buffers
        // owned by `self` or static.
        unsafe {
            if self.flags != 0 {
                check(libc::unshare(self.flags))?;
            }
            if let Some(maps) = &self.maps {
                write_file(c"/proc/self/uid_map", &maps.uid_map)?;
                write_file(c"/proc/self/setgroups", b"deny")?;
                write_file(c"/proc/self/gid_map", &maps.gid_map)?;
            }
            // Before any mount (the view's, or the pid namespace's /proc): on a host whose
            // mounts are shared (systemd's default) a root node's would otherwise reach the
            // host's mount namespace, its /proc included.
            if !self.steps.is_empty() || self.pid_namespace() {
                let none = std::ptr::null();
                check(libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            }
            for source in &self.sources {
                let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
                let fd = libc::open(source.path.as_ptr(), flags);
                if fd == -1 {
                    return Err(io::Error::last_os_error());
                }
                source.fd.store(fd, Ordering::Relaxed);
            }
            for step in &self.steps {
                match step {
                    Step::Hide(target) => check(libc::mount(
                        c"tmpfs".as_ptr(),
                        target.as_ptr(),
                        c"tmpfs".as_ptr(),
                        HIDDEN_FLAGS,
                        TMPFS_OPTIONS.as_ptr().cast(),
                    ))?,
                    Step::Mkdir(dir) => {
                        if libc::mkdir(dir.as_ptr(), 0o755) == -1 && *libc::__errno_location() != libc::EEXIST {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Step::Bind { source, target } => {
                        let Some(source) = self.sources.get(*source) else { continue };
                        let fd = source.fd.load(Ordering::Relaxed);
                        let path = fd_path(fd);
                        check(libc::mount(
                            path.as_ptr().cast(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        ))?;
                        libc::close(fd);
                    }
                    Step::ReadOnly { target, flags } => check(libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                        std::ptr::null(),
                    ))?,
                }
            }
            if self.network {
                network::loopback_up()?;
            }
            if let Some(dir) = &self.chdir {
                check(libc::chdir(dir.as_ptr()))?;
            }
        }
        Ok(())
    }
}

/// The outermost directory from `/` down to `path` (`/` excluded) that others may not search.
fn outermost_closed(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .filter(|dir| *dir != Path::new("/"))
        .find(|dir| std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 == 0))
        .map(Path::to_path_buf)
}

/// `/proc/self/fd/<fd>` as a NUL-terminated string on the stack.
fn fd_path(fd: libc::c_int) -> [u8; 32] {
    let mut buffer = [0u8; 32];
    let prefix = b"/proc/self/fd/";
    buffer[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let (mut n, mut count) = (fd.unsigned_abs(), 0);
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, digit) in digits[..count].iter().rev().enumerate() {
        buffer[prefix.len() + i] = *digit;
    }
    buffer
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has a NUL byte", path.display())))
}

/// # Safety
/// Raw system calls only.
unsafe fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: open, write and close on a NUL-terminated path and a live buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written != bytes.len() as isize { Err(error) } else { Ok(()) }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests;
