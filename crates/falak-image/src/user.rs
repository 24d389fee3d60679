//! The user a container runs as: `uid[:gid]` or `name[:group]`, names looked up in the image's
//! own `/etc/passwd` and `/etc/group` (Docker's rules: a uid the image does not list gets gid 0).
//!
//! The files are opened inside the root filesystem with `openat2(RESOLVE_IN_ROOT)`: an image
//! whose `/etc/passwd` is a link to the node's own cannot make the node read it.

use std::io::Read as _;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// The largest `/etc/passwd` or `/etc/group` read.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// `(uid, gid)` of `user` in the image at `rootfs`; `None` or an empty user is root.
pub fn resolve_user(rootfs: &Path, user: Option<&str>) -> Result<(u32, u32), String> {
    let Some(user) = user.filter(|u| !u.is_empty()) else { return Ok((0, 0)) };
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    let passwd = read_in_root(rootfs, "etc/passwd");
    // name:password:uid:gid:…
    let entry = |field: usize, wanted: &str| -> Option<Vec<String>> {
        passwd
            .lines()
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[field] == wanted)
    };
    let (uid, passwd_gid) = match name.parse::<u32>() {
        Ok(uid) => (uid, entry(2, name).and_then(|f| f[3].parse().ok())),
        Err(_) => {
            let found = entry(0, name).ok_or_else(|| {
                format!("user {name:?} is not in the image's /etc/passwd; name a user it has or a numeric uid")
            })?;
            let uid = found[2].parse().map_err(|_| format!("the image's /etc/passwd has a bad uid for {name:?}"))?;
            (uid, found[3].parse().ok())
        }
    };
    let gid = match group {
        None => passwd_gid.unwrap_or(0),
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_in_root(rootfs, "etc/group");
                // name:password:gid:members
                groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() > 2 && f[0] == group)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| {
                        format!(
                            "group {group:?} is not in the image's /etc/group; name a group it has or a numeric gid"
                        )
                    })?
            }
        },
    };
    Ok((uid, gid))
}

/// The text of `path` inside `root`, or empty when it is missing or unreadable.
fn read_in_root(root: &Path, path: &str) -> String {
    let read = || -> std::io::Result<String> {
        let dir = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        let fd = rustix::fs::openat2(&dir, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty(), resolve)?;
        let mut text = String::new();
        std::fs::File::from(fd).take(MAX_FILE_BYTES).read_to_string(&mut text)?;
        Ok(text)
    };
    read().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_from_the_image_s_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
            .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nstaff:x:50:app\n").unwrap();
        assert_eq!(resolve_user(&root, None), Ok((0, 0)));
        assert_eq!(resolve_user(&root, Some("app")), Ok((1000, 1001)));
        assert_eq!(resolve_user(&root, Some("1000")), Ok((1000, 1001)));
        assert_eq!(resolve_user(&root, Some("4242")), Ok((4242, 0)));
        assert_eq!(resolve_user(&root, Some("app:staff")), Ok((1000, 50)));
        assert_eq!(resolve_user(&root, Some("7:8")), Ok((7, 8)));
        assert!(resolve_user(&root, Some("ghost")).unwrap_err().contains("not in the image's /etc/passwd"));
        assert!(resolve_user(&root, Some("app:ghosts")).unwrap_err().contains("not in the image's /etc/group"));
    }

    #[test]
    fn a_passwd_that_links_out_of_the_image_reads_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // Outside the image, a passwd file that would give `app` uid 1.
        std::fs::write(dir.path().join("host-passwd"), "app:x:1:1::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("../../host-passwd", root.join("etc/passwd")).unwrap();
        assert!(resolve_user(&root, Some("app")).is_err(), "the link must not leave the image's root");
    }
}
