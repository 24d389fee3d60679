//! A directory filled beside its destination and renamed into place, so the destination
//! appears complete or not at all: code bundles and image roots are unpacked through one.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A hidden sibling of the destination (`.<name>.unpack-<pid>-<n>`, mode 0700 while it is
/// filled), removed with everything in it when dropped unless [kept](Staging::keep).
#[derive(Debug)]
pub struct Staging {
    pub path: PathBuf,
    kept: bool,
}

impl Staging {
    /// Make the staging directory of `dest` (its parents too). Blocking.
    pub fn beside(dest: &Path) -> io::Result<Staging> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = dest.file_name().ok_or_else(|| io::Error::other("the destination has no file name"))?;
        fs::create_dir_all(parent)?;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!(".{}.unpack-{}-{n}", name.to_string_lossy(), std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Staging { path, kept: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// It was renamed into place: leave it.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.kept {
            // std's remove_dir_all never follows symlinks.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
