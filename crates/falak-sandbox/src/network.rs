//! What network a workload sees.
//!
//! [`Network::None`] gives the workload a network namespace of its own (made by the child, see
//! [`crate::namespaces`]: directly when the node is root, inside a user namespace when it is
//! not): it holds only a loopback interface (brought up, so a workload can still talk to
//! itself over `127.0.0.1`) and no route out. The node's HTTP API (TCP), its RPC and transport
//! (QUIC over UDP) and its gossip (UDP) listen in the host's namespace, even when bound to
//! `127.0.0.1`, so none of them is reachable. A node that may create no namespace at all
//! refuses such a workload rather than run it on the host's network.
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

/// Bring the loopback interface of a new network namespace up. Only between fork and exec,
/// with `CAP_NET_ADMIN` in the namespace (root, or the new user namespace's creator).
///
/// # Safety
/// Makes only async-signal-safe system calls on stack memory.
pub(crate) unsafe fn loopback_up() -> io::Result<()> {
    // SAFETY (whole function): raw system calls on values on this stack frame.
    unsafe {
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
