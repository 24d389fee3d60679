//! A writable layer over a read-only directory, mounted in a mount namespace of the process's
//! own: an OCI runtime started in it finds its container's root filesystem ready, and the
//! mount goes away with the last process of the namespace (a killed node leaves no mount on
//! the host).
//!
//! [`PrivateOverlay::new`] checks the paths and builds the mount's arguments in the node;
//! [`Confinement::private_overlay`](crate::Confinement::private_overlay) has the child make it
//! between fork and exec, with raw system calls only. [`overlay_works`] finds out once whether
//! this host lets the node make one.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The arguments of one overlay mount, ready for the child.
#[derive(Debug)]
pub struct PrivateOverlay {
    target: CString,
    options: CString,
}

impl PrivateOverlay {
    /// `lower` (read-only, shared) under `upper` (this workload's changes), seen at `target`;
    /// `work` is overlayfs's scratch directory, on `upper`'s file system. All four must exist
    /// and be absolute, and may not contain `,`, `:` or `\` (the option syntax has no escape
    /// the node relies on).
    pub fn new(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<PrivateOverlay> {
        for path in [lower, upper, work, target] {
            let bytes = path.as_os_str().as_bytes();
            if !path.is_absolute() || bytes.iter().any(|b| matches!(b, b',' | b':' | b'\\' | 0)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} cannot be part of an overlay mount: it must be absolute, without `,` `:` or `\\`",
                        path.display()
                    ),
                ));
            }
        }
        let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        let nul = |e: std::ffi::NulError| io::Error::new(io::ErrorKind::InvalidInput, e);
        Ok(PrivateOverlay {
            target: CString::new(target.as_os_str().as_bytes()).map_err(nul)?,
            options: CString::new(options).map_err(nul)?,
        })
    }

    /// Enter a new mount namespace whose mounts no longer propagate to the host's, and mount
    /// the overlay there.
    ///
    /// # Safety
    /// Only in a child between `fork` and `exec`: raw system calls on values owned by `self`.
    pub(crate) unsafe fn apply(&self) -> io::Result<()> {
        // SAFETY: plain system calls with NUL-terminated strings owned by `self` or static.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"overlay".as_ptr(),
                self.target.as_ptr(),
                c"overlay".as_ptr(),
                0,
                self.options.as_ptr().cast(),
            ))
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Whether the node can mount an overlay in a namespace of a child's own (root, on a kernel
/// and file system that have overlayfs), tried with `true` in `scratch` (created and removed).
/// Blocking.
pub fn overlay_works(scratch: &Path) -> Result<(), String> {
    let dirs: Vec<PathBuf> = ["lower", "upper", "work", "merged"].iter().map(|d| scratch.join(d)).collect();
    let made = dirs.iter().try_for_each(std::fs::create_dir_all);
    let tried = made.map_err(|e| format!("cannot make {}: {e}", scratch.display())).and_then(|()| {
        let overlay = PrivateOverlay::new(&dirs[0], &dirs[1], &dirs[2], &dirs[3]).map_err(|e| e.to_string())?;
        let confinement = crate::Confinement::new().private_overlay(overlay);
        let mut command = std::process::Command::new("true");
        // SAFETY: `apply` is async-signal-safe (see `crate::confinement`).
        unsafe { command.pre_exec(move || confinement.apply()) };
        match command.status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("`true` in an overlay namespace ended with {status}")),
            Err(e) => Err(format!("cannot mount an overlay in a mount namespace of its own: {e}")),
        }
    });
    let _ = std::fs::remove_dir_all(scratch);
    tried
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_the_option_syntax_cannot_carry_are_refused() {
        let ok = Path::new("/a");
        assert!(PrivateOverlay::new(ok, ok, ok, ok).is_ok());
        for bad in ["/a,b", "/a:b", "relative", "/a\\b"] {
            let error = PrivateOverlay::new(Path::new(bad), ok, ok, ok).unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
