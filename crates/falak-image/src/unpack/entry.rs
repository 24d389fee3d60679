//! One tar entry's name, link target, ids and content, checked before anything is written.

use super::*;

/// The entry's path without `.` components (an empty path is the root), refusing absolute
/// paths and `..`.
pub(super) fn normalize(raw: &[u8], layer: usize, entry: &str) -> Result<PathBuf, UnpackError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(UnpackError::PathTooLong { layer, entry: entry.into(), len: raw.len(), limit: MAX_PATH_BYTES });
    }
    let mut out = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnpackError::ParentComponent { layer, entry: entry.into() }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::AbsolutePath { layer, entry: entry.into() });
            }
        }
    }
    Ok(out)
}

/// A symlink's target as written, refused when relative and climbing above the root from the
/// link's directory.
pub(super) fn link_target<R: Read>(
    raw: &tar::Entry<'_, R>,
    link: &Path,
    layer: usize,
    entry: &str,
) -> Result<Vec<u8>, UnpackError> {
    let target = raw.link_name_bytes().unwrap_or_default().into_owned();
    if target.len() > MAX_PATH_BYTES {
        return Err(UnpackError::PathTooLong { layer, entry: entry.into(), len: target.len(), limit: MAX_PATH_BYTES });
    }
    if target.is_empty() {
        return Err(UnpackError::BadHeader { layer, entry: entry.into(), reason: "the symlink has no target".into() });
    }
    if !target.starts_with(b"/") {
        let mut depth = link.components().count().saturating_sub(1);
        for component in target.split(|b| *b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => match depth.checked_sub(1) {
                    Some(up) => depth = up,
                    None => {
                        let target = String::from_utf8_lossy(&target).into_owned();
                        return Err(UnpackError::LinkEscapes { layer, entry: entry.into(), target });
                    }
                },
                _ => depth += 1,
            }
        }
    }
    Ok(target)
}

/// A hard link's target as a root-relative path (`./` and a leading `/` stripped, `..`
/// refused) and as written.
pub(super) fn hard_link_target<R: Read>(
    raw: &tar::Entry<'_, R>,
    layer: usize,
    entry: &str,
) -> Result<(PathBuf, String), UnpackError> {
    let target = raw.link_name_bytes().unwrap_or_default().into_owned();
    let written = String::from_utf8_lossy(&target).into_owned();
    if target.len() > MAX_PATH_BYTES {
        return Err(UnpackError::PathTooLong { layer, entry: entry.into(), len: target.len(), limit: MAX_PATH_BYTES });
    }
    let mut out = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(&target)).components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(UnpackError::HardLinkEscapes { layer, entry: entry.into(), target: written });
            }
        }
    }
    Ok((out, written))
}

/// A uid or gid from a header, as the kernel takes it (`-1` means "unchanged" there).
pub(super) fn id(value: u64, what: &str, layer: usize, entry: &str) -> Result<u32, UnpackError> {
    u32::try_from(value).ok().filter(|id| *id != u32::MAX).ok_or_else(|| UnpackError::BadHeader {
        layer,
        entry: entry.into(),
        reason: format!("{what} {value} is out of range"),
    })
}

pub(super) fn describe(entry_type: EntryType) -> String {
    match entry_type {
        EntryType::GNUSparse => "GNU sparse file".into(),
        other => format!("tar entry of type {:?}", char::from(other.as_byte())),
    }
}

/// Copy exactly `size` bytes, telling a short or broken layer (corrupt) from a failing disk.
pub(super) fn copy_content(
    reader: &mut dyn Read,
    file: &mut File,
    size: u64,
    layer: usize,
    entry: &str,
) -> Result<(), UnpackError> {
    let corrupt = |reason: String| UnpackError::Corrupt { layer, after: entry.into(), reason };
    let mut buf = vec![0u8; 64 << 10];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => return Err(corrupt(format!("the layer ends {left} bytes before the end of this file"))),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(e.to_string())),
        };
        file.write_all(&buf[..n]).map_err(|source| UnpackError::Write { layer, entry: entry.into(), source })?;
        left -= n as u64;
    }
    Ok(())
}
