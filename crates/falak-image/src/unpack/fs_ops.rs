//! File-system steps of the unpacker: open a path inside the root, list, identify and remove
//! trees without following links, rename without replacing.

use super::*;

/// Open the directory at the root-relative `path`, resolved by the kernel as if the root were
/// `/`: `..` stops at it, absolute symlinks start from it, magic links are refused.
pub(super) fn open_in_root(root: BorrowedFd<'_>, path: &Path) -> rustix::io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let mut retries = 0;
    loop {
        match rustix::fs::openat2(root, path, DIR_FLAGS, Mode::empty(), resolve) {
            // The kernel asks for a retry when a rename elsewhere raced the lookup.
            Err(Errno::AGAIN | Errno::INTR) if retries < 8 => retries += 1,
            result => return result,
        }
    }
}

/// Remove `name` in `parent`, a whole tree for a directory, never following a symlink. A
/// missing entry is fine.
pub(super) fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    struct Level {
        name: Vec<u8>,
        children: Vec<Vec<u8>>,
        dir: OwnedFd,
    }
    let open = |parent: BorrowedFd<'_>, name: Vec<u8>| -> io::Result<Level> {
        let dir = rustix::fs::openat(parent, name.as_slice(), DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?;
        Ok(Level { children: list(dir.as_fd())?, name, dir })
    };
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        // Linux answers EISDIR for a directory, POSIX EPERM.
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let mut stack = vec![open(parent, name.to_vec())?];
    while let Some(mut top) = stack.pop() {
        match top.children.pop() {
            Some(child) => match rustix::fs::unlinkat(&top.dir, child.as_slice(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => stack.push(top),
                Err(Errno::ISDIR | Errno::PERM) => {
                    if stack.len() + 1 >= MAX_TREE_DEPTH {
                        return Err(too_deep());
                    }
                    let level = open(top.dir.as_fd(), child)?;
                    stack.push(top);
                    stack.push(level);
                }
                Err(e) => return Err(e.into()),
            },
            None => {
                let parent = stack.last().map_or(parent, |level| level.dir.as_fd());
                match rustix::fs::unlinkat(parent, top.name.as_slice(), AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// The names in a directory, without `.` and `..`.
pub(super) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut stream = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = stream.read() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

pub(super) fn dir_id(dir: BorrowedFd<'_>) -> rustix::io::Result<DirId> {
    let st = rustix::fs::fstat(dir)?;
    Ok((st.st_dev, st.st_ino))
}

pub(super) fn too_deep() -> io::Error {
    io::Error::other(format!("a directory tree deeper than {MAX_TREE_DEPTH} levels"))
}

/// A path's components, last first (a stack to pop), `/` separators dropped.
pub(super) fn components_reversed(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/').filter(|c| !c.is_empty()).rev().map(<[u8]>::to_vec).collect()
}

/// Rename without replacing what may have appeared at `to`; filesystems without
/// `RENAME_NOREPLACE` get a plain rename, which replaces at most an empty directory.
pub(super) fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS) => fs::rename(from, to),
        result => result.map_err(io::Error::from),
    }
}
