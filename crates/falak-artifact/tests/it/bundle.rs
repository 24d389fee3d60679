use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use falak_artifact::bundle::{MAX_ENTRIES, MAX_PATH_BYTES, MAX_UNPACKED_BYTES};
use falak_artifact::{BundleError, MAX_BUNDLE_BYTES, pack, unpack, validate};
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

/// A small project: a script, a library file, an empty directory, an inside symlink and a
/// `.git` directory that must not be packed.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("lib/util")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join(".git/objects")).unwrap();
    fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(root.join("lib/util/strings.py"), "def upper(s):\n    return s.upper()\n").unwrap();
    fs::set_permissions(root.join("lib/util/strings.py"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("util/strings.py", root.join("lib/strings.py")).unwrap();
    symlink("../run.sh", root.join("lib/run")).unwrap();
    dir
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn pack_is_deterministic_and_unpack_restores_the_tree() {
    let project = project();
    let first = pack(project.path()).unwrap();
    let second = pack(project.path()).unwrap();
    assert_eq!(first, second, "two packs of the same directory differ");
    assert_eq!(&first[..2], &[0x1f, 0x8b], "packed bundles are gzip-compressed");

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("bundle");
    let report = unpack(&first, &dest).unwrap();
    assert!(!report.already_present);
    assert_eq!(report.entries, 7, "lib, lib/run, lib/strings.py, lib/util, lib/util/strings.py, empty, run.sh");
    assert_eq!(fs::read_to_string(dest.join("run.sh")).unwrap(), "#!/bin/sh\necho hi\n");
    assert_eq!(mode(&dest.join("run.sh")), 0o755);
    assert_eq!(mode(&dest.join("lib/util/strings.py")), 0o644);
    assert_eq!(mode(&dest.join("lib/util")), 0o755);
    assert!(dest.join("empty").is_dir());
    assert!(!dest.join(".git").exists(), ".git was packed");
    assert_eq!(fs::read_link(dest.join("lib/strings.py")).unwrap(), PathBuf::from("util/strings.py"));
    assert_eq!(fs::read_to_string(dest.join("lib/run")).unwrap(), "#!/bin/sh\necho hi\n");
    // Only the destination was created next to it: the staging directory is gone.
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);

    // Packing the unpacked tree gives the same bytes again.
    assert_eq!(pack(&dest).unwrap(), first);
}

#[test]
fn unpack_into_an_existing_destination_leaves_it_as_is() {
    let bundle = pack(project().path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("bundle");
    unpack(&bundle, &dest).unwrap();
    fs::write(dest.join("marker"), "kept").unwrap();
    let again = unpack(&bundle, &dest).unwrap();
    assert!(again.already_present);
    assert_eq!(fs::read_to_string(dest.join("marker")).unwrap(), "kept");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
}

#[test]
fn pack_refuses_a_symlink_that_leaves_the_directory() {
    let project = project();
    symlink("../../outside", project.path().join("lib/escape")).unwrap();
    let err = pack(project.path()).unwrap_err();
    assert!(matches!(&err, BundleError::SymlinkEscapes { entry, .. } if entry == "lib/escape"), "{err}");
    assert!(err.to_string().contains("lib/escape"), "{err}");

    let absolute = tempfile::tempdir().unwrap();
    symlink("/etc/passwd", absolute.path().join("passwd")).unwrap();
    assert!(matches!(pack(absolute.path()), Err(BundleError::SymlinkEscapes { .. })));
}

#[test]
fn pack_accepts_an_existing_archive_as_is_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let tar = archive(|b| file(b, "app/main.py", b"print(1)\n", 0o644));
    for name in ["bundle.tar", "bundle.TGZ"] {
        fs::write(dir.path().join(name), &tar).unwrap();
        assert_eq!(pack(&dir.path().join(name)).unwrap(), tar);
    }
    let gz = gzip(&tar);
    fs::write(dir.path().join("bundle.tar.gz"), &gz).unwrap();
    assert_eq!(pack(&dir.path().join("bundle.tar.gz")).unwrap(), gz);

    fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let err = pack(&dir.path().join("notes.txt")).unwrap_err();
    assert!(matches!(err, BundleError::UnsupportedInput { .. }));
    assert!(err.to_string().contains("a directory or a .tar, .tar.gz or .tgz file"), "{err}");
    assert!(matches!(pack(&dir.path().join("missing")), Err(BundleError::Input { .. })));

    let hostile = archive(|b| raw(b, b"../evil", EntryType::Regular, b"x", None));
    fs::write(dir.path().join("hostile.tar"), hostile).unwrap();
    assert!(matches!(pack(&dir.path().join("hostile.tar")), Err(BundleError::ParentComponent { .. })));
}

// --- hostile archives ---------------------------------------------------------------------

/// Unpack `bytes`, expect a refusal, and check nothing was left behind.
fn refused(bytes: &[u8]) -> BundleError {
    let out = tempfile::tempdir().unwrap();
    let err = unpack(bytes, &out.path().join("dest")).unwrap_err();
    let left: Vec<_> = fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "unpack left {left:?} behind after: {err}");
    let checked = validate(bytes).expect_err("validate accepted what unpack refused");
    assert_eq!(std::mem::discriminant(&checked), std::mem::discriminant(&err), "{checked} vs {err}");
    err
}

fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    build(&mut builder);
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut header = Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    builder.append_data(&mut header, path, data).unwrap();
}

/// An entry written with raw name bytes: the tar builder refuses `..` and absolute paths, so
/// hostile names go straight into the header.
fn raw(builder: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: EntryType, data: &[u8], link: Option<&[u8]>) {
    let mut header = Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    }
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

#[test]
fn a_parent_component_is_refused() {
    let err = refused(&archive(|b| raw(b, b"../escape", EntryType::Regular, b"x", None)));
    assert!(matches!(&err, BundleError::ParentComponent { entry } if entry == "../escape"), "{err}");
    let err = refused(&archive(|b| raw(b, b"a/../../escape", EntryType::Regular, b"x", None)));
    assert!(matches!(err, BundleError::ParentComponent { .. }), "{err}");
}

#[test]
fn an_absolute_path_is_refused() {
    let err = refused(&archive(|b| raw(b, b"/abs", EntryType::Regular, b"x", None)));
    assert!(matches!(&err, BundleError::AbsolutePath { entry } if entry == "/abs"), "{err}");
}

#[test]
fn symlinks_that_escape_are_refused() {
    let err = refused(&archive(|b| raw(b, b"etc", EntryType::Symlink, b"", Some(b"/etc"))));
    assert!(matches!(&err, BundleError::SymlinkEscapes { entry, target } if entry == "etc" && target == "/etc"));
    let err = refused(&archive(|b| raw(b, b"a", EntryType::Symlink, b"", Some(b"../../x"))));
    assert!(matches!(&err, BundleError::SymlinkEscapes { entry, .. } if entry == "a"), "{err}");
    let err = refused(&archive(|b| raw(b, b"d/a", EntryType::Symlink, b"", Some(b"../../x"))));
    assert!(matches!(err, BundleError::SymlinkEscapes { .. }), "{err}");
    // `d/s -> ..` is inside, but `d/s/..` through it would be the root's parent.
    let err = refused(&archive(|b| {
        raw(b, b"d/s", EntryType::Symlink, b"", Some(b".."));
        raw(b, b"t", EntryType::Symlink, b"", Some(b"d/s/.."));
    }));
    assert!(matches!(&err, BundleError::SymlinkEscapes { entry, .. } if entry == "t"), "{err}");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let err = refused(&archive(|b| {
        raw(b, b"sub", EntryType::Directory, b"", None);
        raw(b, b"link", EntryType::Symlink, b"", Some(b"sub"));
        raw(b, b"link/file", EntryType::Regular, b"x", None);
    }));
    assert!(
        matches!(&err, BundleError::UnderNonDirectory { entry, parent } if entry == "link/file" && parent == "link")
    );
    let err = refused(&archive(|b| {
        raw(b, b"link", EntryType::Symlink, b"", Some(b"sub"));
        raw(b, b"link", EntryType::Regular, b"x", None);
    }));
    assert!(matches!(&err, BundleError::Duplicate { entry } if entry == "link"), "{err}");
}

#[test]
fn hard_links_devices_and_fifos_are_refused() {
    let err = refused(&archive(|b| {
        file(b, "real", b"x", 0o644);
        raw(b, b"hard", EntryType::Link, b"", Some(b"real"));
    }));
    assert!(matches!(&err, BundleError::HardLink { entry } if entry == "hard"), "{err}");
    let err = refused(&archive(|b| raw(b, b"dev", EntryType::Block, b"", None)));
    assert!(matches!(err, BundleError::UnsupportedEntry { kind: "device", .. }), "{err}");
    let err = refused(&archive(|b| raw(b, b"pipe", EntryType::Fifo, b"", None)));
    assert!(matches!(err, BundleError::UnsupportedEntry { kind: "fifo", .. }), "{err}");
}

#[test]
fn too_many_entries_are_refused_after_the_first_ones_were_written() {
    let bytes = gzip(&archive(|b| {
        for i in 0..=MAX_ENTRIES {
            file(b, &format!("f{i}"), b"", 0o644);
        }
    }));
    let err = refused(&bytes);
    assert!(matches!(&err, BundleError::TooManyEntries { entry, limit: MAX_ENTRIES } if entry == "f20000"), "{err}");
    assert!(err.to_string().contains("20000"), "{err}");
}

#[test]
fn implied_directories_count_as_entries() {
    // Each file at a new depth-500 path implies 500 directories: 50 of them imply 25,000.
    let path: String = (0..500).map(|i| format!("{}/", i % 10)).collect::<String>() + "file";
    let bytes = archive(|b| {
        for i in 0..50 {
            file(b, &format!("{i}/{path}"), b"", 0o644);
        }
    });
    // Validated only: creating 20,000 directories on disk is what `too_many_entries…` covers.
    let err = validate(&bytes).unwrap_err();
    assert!(matches!(err, BundleError::TooManyEntries { .. }), "{err}");
}

#[test]
fn oversize_bundles_are_refused() {
    let big = vec![0u8; usize::try_from(MAX_BUNDLE_BYTES).unwrap() + 1];
    let err = refused(&big);
    assert!(matches!(err, BundleError::TooLarge { limit: MAX_BUNDLE_BYTES, .. }), "{err}");

    // A header announcing more than the unpacked limit is refused before any content is read.
    let mut header = Header::new_gnu();
    header.set_path("huge.bin").unwrap();
    header.set_size(MAX_UNPACKED_BYTES + 1);
    header.set_mode(0o644);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(&[0; 1024]);
    let err = refused(&gzip(&bytes));
    assert!(matches!(&err, BundleError::UnpackedTooLarge { entry, .. } if entry == "huge.bin"), "{err}");
}

#[test]
fn files_together_over_the_unpacked_limit_are_refused() {
    // Three files of 200 MiB each: each fits, together they do not. Streamed through gzip so
    // the test holds no large buffer; validated only, so nothing is written to disk.
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for i in 0..3 {
        let mut header = Header::new_gnu();
        header.set_path(format!("part{i}")).unwrap();
        header.set_size(200 << 20);
        header.set_mode(0o644);
        header.set_cksum();
        encoder.write_all(header.as_bytes()).unwrap();
        for _ in 0..200 {
            encoder.write_all(&zeros).unwrap();
        }
    }
    encoder.write_all(&[0; 1024]).unwrap();
    let err = validate(&encoder.finish().unwrap()).unwrap_err();
    assert!(
        matches!(&err, BundleError::UnpackedTooLarge { entry, limit: MAX_UNPACKED_BYTES } if entry == "part2"),
        "{err}"
    );
}

#[test]
fn long_paths_are_refused() {
    let name = "a".repeat(MAX_PATH_BYTES + 1);
    let err = refused(&archive(|b| file(b, &name, b"", 0o644)));
    assert!(matches!(err, BundleError::PathTooLong { len, .. } if len == MAX_PATH_BYTES + 1), "{err}");
}

#[test]
fn a_huge_gnu_long_name_is_refused_without_buffering_it() {
    // A GNU long-name record announcing 1 GiB; the reader must give up long before the end.
    let mut header = Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    header.set_entry_type(EntryType::GNULongName);
    header.set_size(1 << 30);
    header.set_cksum();
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(header.as_bytes()).unwrap();
    let block = vec![b'a'; 1 << 20];
    encoder.write_all(&block).unwrap();
    let err = refused(&encoder.finish().unwrap());
    assert!(matches!(err, BundleError::OversizeHeader { .. }), "{err}");
}

#[test]
fn garbage_is_not_an_archive() {
    for garbage in [&b"not a tar archive"[..], &[0xab; 2048][..], &[0x1f, 0x8b, 1, 2, 3][..], &[][..]] {
        let err = refused(garbage);
        assert!(matches!(err, BundleError::NotAnArchive { .. }), "{err}");
        assert!(err.to_string().contains("not a tar archive"), "{err}");
    }
    let err = refused(&gzip(&[0xcd; 4096]));
    assert!(matches!(err, BundleError::NotAnArchive { .. }), "{err}");
}

#[test]
fn a_name_the_filesystem_refuses_is_an_unpack_error_and_leaves_nothing() {
    let name = "n".repeat(300);
    let err = refused_by_disk(&archive(|b| file(b, &name, b"x", 0o644)));
    assert!(matches!(&err, BundleError::Unpack { path, .. } if path.ends_with(&name)), "{err}");
}

/// Unpack `bytes` that pass validation but fail on disk; check nothing was left behind.
fn refused_by_disk(bytes: &[u8]) -> BundleError {
    validate(bytes).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = unpack(bytes, &out.path().join("dest")).unwrap_err();
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0, "unpack left something behind after: {err}");
    err
}

#[test]
fn a_truncated_archive_is_corrupt_and_leaves_nothing() {
    let bytes = archive(|b| {
        file(b, "a", b"first", 0o644);
        file(b, "b", &[1u8; 4096], 0o644);
    });
    let err = refused(&bytes[..1024 + 512 + 100]);
    assert!(matches!(&err, BundleError::Corrupt { .. }), "{err}");
}
