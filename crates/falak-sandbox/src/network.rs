//! What network a workload sees.
//!
//! [`Network::None`] gives the workload a network namespace of its own, made by the child with
//! `unshare(CLONE_NEWNET)` while it is still root: it holds only a loopback interface (brought
//! up, so a workload can still talk to itself over `127.0.0.1`) and no route out. The node's
//! HTTP API (TCP), its RPC and transport (QUIC over UDP) and its gossip (UDP) listen in the
//! host's namespace, even when bound to `127.0.0.1`, so none of them is reachable. A node that
//! may not create namespaces (not root, or a container without `CAP_SYS_ADMIN`) fails the
//! start with that error rather than run the workload on the host's network.
//!
//! [`Network::Host`] shares the node's network, ports included.

use std::io;

/// The network a workload runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Network {
    /// A private network namespace with only a loopback interface: no way out, and the node's
    /// own ports are out of reach.
    #[default]
    None,
    /// The node's network, with everything it can reach (the node's own ports included).
    Host,
}

/// Whether this process may give a child a network namespace, found by trying it in a
/// short-lived child. Blocking (a fork and a wait); call it once at startup.
pub fn probe_namespaces() -> io::Result<()> {
    // SAFETY: after fork the child makes only async-signal-safe calls (unshare, _exit).
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: the child of fork; unshare and _exit are async-signal-safe.
        unsafe {
            let code = if libc::unshare(libc::CLONE_NEWNET) == 0 { 0 } else { *libc::__errno_location() };
            libc::_exit(code & 0xff);
        }
    }
    wait_probe(pid, "the namespace probe")
}

/// Wait for the probe child `pid`, which exits with 0 or an errno: `Ok` or that error.
pub fn wait_probe(pid: libc::pid_t, what: &str) -> io::Result<()> {
    let mut status = 0;
    loop {
        // SAFETY: waits for the child the caller forked, writing into a local.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(()),
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        None => Err(io::Error::other(format!("{what} died"))),
    }
}

/// Enter a new network namespace and bring its loopback up. Only between fork and exec, and
/// while still root.
///
/// # Safety
/// Makes only async-signal-safe system calls on stack memory.
pub(crate) unsafe fn enter_private_namespace() -> io::Result<()> {
    // SAFETY (whole function): raw system calls on values on this stack frame.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) == -1 {
            return Err(io::Error::last_os_error());
        }
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket == -1 {
            return Err(io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        let mut rc = libc::ioctl(socket, libc::SIOCGIFFLAGS as _, &mut request);
        if rc == 0 {
            request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(socket, libc::SIOCSIFFLAGS as _, &request);
        }
        let error = io::Error::last_os_error();
        libc::close(socket);
        if rc == -1 { Err(error) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_may_make_network_namespaces() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            probe_namespaces().expect("root can unshare its network");
        } else {
            assert!(probe_namespaces().is_err());
        }
    }
}
