//! A capsule's code in an attempt's working directory: the unpacked bundle (owned by the node,
//! shared by every attempt on it) is copied in before the task starts, owned by the task's
//! user, so the task runs its scripts from where it starts, may change or add files beside
//! them, and no attempt can alter what the next one starts with.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use falak_sandbox::RunAs;

use crate::log::Stream;
use crate::process::TMP_DIR;

/// Names the executor makes at the top of every working directory; code may not use them.
pub const RESERVED_NAMES: [&str; 4] = ["stdin", Stream::Stdout.file_name(), Stream::Stderr.file_name(), TMP_DIR];

/// What a copy wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
}

/// Copy the tree `from` into the existing directory `to`, giving what it makes to `owner`
/// (`None`: the node's user). Files keep their permission bits; symlinks are copied as links
/// (the bundle checker allowed only links that stay inside the tree). Nothing is written
/// through an entry already in `to`: an entry that exists is left as it is (a reused working
/// directory already holds the code), and a directory that exists must be a real directory.
/// Blocking.
pub fn copy_into(from: &Path, to: &Path, owner: Option<RunAs>) -> io::Result<Copied> {
    for entry in fs::read_dir(from)? {
        let name = entry?.file_name();
        if let Some(reserved) = RESERVED_NAMES.iter().find(|r| name == **r) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the code has an entry named `{reserved}` at its top, a name the task's own files use \
                     ({}); rename it or leave it out of `source`",
                    RESERVED_NAMES.join(", ")
                ),
            ));
        }
    }
    let mut copied = Copied::default();
    copy_dir(from, to, owner, &mut copied)?;
    Ok(copied)
}

/// Copy the tree `from` into the existing directory `to` as [`copy_into`] does, without its
/// check of the top-level names (for an image's root filesystem). Blocking.
pub fn copy_tree(from: &Path, to: &Path, owner: Option<RunAs>) -> io::Result<Copied> {
    let mut copied = Copied::default();
    copy_dir(from, to, owner, &mut copied)?;
    Ok(copied)
}

fn copy_dir(from: &Path, to: &Path, owner: Option<RunAs>, copied: &mut Copied) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let meta = fs::symlink_metadata(&source)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            match fs::DirBuilder::new().mode(meta.mode() & 0o7777).create(&target) {
                Ok(()) => chown(&target, owner)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !fs::symlink_metadata(&target)?.is_dir() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a directory", target.display()),
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
            copy_dir(&source, &target, owner, copied)?;
        } else if kind.is_symlink() {
            match std::os::unix::fs::symlink(fs::read_link(&source)?, &target) {
                Ok(()) => chown(&target, owner)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        } else if kind.is_file() {
            // `create_new` is O_EXCL: it never opens an existing file or follows a link.
            let opened = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&target);
            let mut out = match opened {
                Ok(out) => out,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let mut input = fs::File::open(&source)?;
            copied.bytes += io::copy(&mut input, &mut out)?;
            copied.files += 1;
            if let Some(user) = owner {
                std::os::unix::fs::fchown(&out, Some(user.uid), Some(user.gid))?;
            }
            out.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o777))?;
        }
        // A bundle holds nothing else (the checker refuses devices, fifos and sockets).
    }
    Ok(())
}

fn chown(path: &Path, owner: Option<RunAs>) -> io::Result<()> {
    match owner {
        Some(user) => std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("bin")).unwrap();
        fs::write(dir.path().join("bin/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.path().join("bin/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.path().join("data.txt"), "42\n").unwrap();
        std::os::unix::fs::symlink("bin/run.sh", dir.path().join("run")).unwrap();
        dir
    }

    #[test]
    fn the_tree_arrives_with_its_modes_and_links_and_a_second_copy_changes_nothing() {
        let (from, to) = (tree(), tempfile::tempdir().unwrap());
        let copied = copy_into(from.path(), to.path(), None).unwrap();
        assert_eq!(copied, Copied { files: 2, bytes: 21 });
        let script = to.path().join("bin/run.sh");
        assert_eq!(fs::metadata(&script).unwrap().mode() & 0o777, 0o755);
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&to.path().join("data.txt")), mode(&from.path().join("data.txt")));
        assert_eq!(fs::read_link(to.path().join("run")).unwrap(), Path::new("bin/run.sh"));
        assert_eq!(fs::read_to_string(to.path().join("run")).unwrap(), "#!/bin/sh\necho hi\n");

        // The task changed a file; copying again (a reused directory) leaves its change.
        fs::write(to.path().join("data.txt"), "changed\n").unwrap();
        assert_eq!(copy_into(from.path(), to.path(), None).unwrap(), Copied::default());
        assert_eq!(fs::read_to_string(to.path().join("data.txt")).unwrap(), "changed\n");
    }

    #[test]
    fn a_link_or_file_where_a_directory_goes_is_not_written_through() {
        let (from, to) = (tree(), tempfile::tempdir().unwrap());
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), to.path().join("bin")).unwrap();
        let error = copy_into(from.path(), to.path(), None).unwrap_err();
        assert!(error.to_string().contains("is not a directory"), "{error}");
        assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn code_may_not_take_the_names_of_the_tasks_own_files() {
        for name in RESERVED_NAMES {
            let (from, to) = (tree(), tempfile::tempdir().unwrap());
            fs::write(from.path().join(name), "x").unwrap();
            let error = copy_into(from.path(), to.path(), None).unwrap_err();
            assert!(error.to_string().contains(&format!("named `{name}`")), "{error}");
            assert_eq!(fs::read_dir(to.path()).unwrap().count(), 0, "nothing copied");
        }
    }
}
