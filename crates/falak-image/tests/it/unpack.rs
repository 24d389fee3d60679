//! Unpacking layers into a root filesystem: changesets applied in order, whiteouts, and hostile
//! layers that try to write, link or delete outside the root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use falak_image::unpack::{LayerFile, UnpackError, UnpackLimits, UnpackReport, unpack_layers};
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const NONDISTRIBUTABLE: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";

/// A layer under construction. Names are written into the header as given (`../x` included);
/// names over 100 bytes go through the tar crate's long-name records.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn file(self, name: &str, contents: &str) -> Layer {
        self.entry(EntryType::Regular, name, "", contents.as_bytes(), 0o644)
    }

    fn file_mode(self, name: &str, contents: &str, mode: u32) -> Layer {
        self.entry(EntryType::Regular, name, "", contents.as_bytes(), mode)
    }

    fn dir(self, name: &str) -> Layer {
        self.entry(EntryType::Directory, name, "", b"", 0o755)
    }

    fn dir_mode(self, name: &str, mode: u32) -> Layer {
        self.entry(EntryType::Directory, name, "", b"", mode)
    }

    fn symlink(self, name: &str, target: &str) -> Layer {
        self.entry(EntryType::Symlink, name, target, b"", 0o777)
    }

    fn hard_link(self, name: &str, target: &str) -> Layer {
        self.entry(EntryType::Link, name, target, b"", 0o644)
    }

    fn entry(self, kind: EntryType, name: &str, link: &str, data: &[u8], mode: u32) -> Layer {
        let mut header = header(kind, data.len() as u64, mode);
        self.append(&mut header, name, link, data)
    }

    fn append(mut self, header: &mut Header, name: &str, link: &str, data: &[u8]) -> Layer {
        if name.len() <= 100 && link.len() <= 100 {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_cksum();
            self.0.append(header, data).unwrap();
        } else if link.is_empty() {
            self.0.append_data(header, name, data).unwrap();
        } else {
            self.0.append_link(header, name, link).unwrap();
        }
        self
    }

    fn tar(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }

    fn gzip(self) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(&self.tar()).unwrap();
        encoder.finish().unwrap()
    }
}

fn sparse() -> Header {
    let mut header = header(EntryType::GNUSparse, 0, 0o644);
    header.as_gnu_mut().unwrap().set_real_size(0);
    header
}

fn header(kind: EntryType, size: u64, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// A scratch directory with the layers written to files and the destination `out/rootfs`.
struct Image {
    dir: tempfile::TempDir,
    layers: Vec<(&'static str, PathBuf)>,
}

impl Image {
    fn new(layers: Vec<(&'static str, Vec<u8>)>) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let layers = layers
            .into_iter()
            .enumerate()
            .map(|(index, (media_type, bytes))| {
                let path = dir.path().join(format!("layer-{index}"));
                fs::write(&path, bytes).unwrap();
                (media_type, path)
            })
            .collect();
        Image { dir, layers }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("out/rootfs")
    }

    fn unpack_with(&self, limits: &UnpackLimits) -> Result<UnpackReport, UnpackError> {
        let layers: Vec<LayerFile<'_>> =
            self.layers.iter().map(|(media_type, path)| LayerFile { media_type, path }).collect();
        unpack_layers(&layers, &self.root(), limits)
    }

    fn unpack(&self) -> UnpackReport {
        self.unpack_with(&UnpackLimits::default()).unwrap()
    }

    /// Unpack, expecting a refusal, and check nothing was left behind.
    fn refused(&self) -> String {
        let err = self.unpack_with(&UnpackLimits::default()).unwrap_err();
        assert_nothing_left(&self.dir.path().join("out"));
        err.to_string()
    }
}

fn tar_layers(layers: Vec<Layer>) -> Image {
    Image::new(layers.into_iter().map(|layer| (TAR, layer.tar())).collect())
}

fn assert_nothing_left(out: &Path) {
    let left: Vec<_> = fs::read_dir(out).map(|dir| dir.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left behind in {}: {left:?}", out.display());
}

/// The tree under `root`, one line per entry in name order: directories end in `/`, files show
/// their content, symlinks their target; modes where they are not the usual ones.
fn tree(root: &Path) -> String {
    fn walk(root: &Path, dir: &Path, out: &mut String) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_symlink() {
                out.push_str(&format!("{rel} -> {}\n", fs::read_link(&path).unwrap().display()));
            } else if meta.is_dir() {
                let mode = if mode == 0o755 { String::new() } else { format!(" {mode:o}") };
                out.push_str(&format!("{rel}/{mode}\n"));
                walk(root, &path, out);
            } else {
                let mode = if mode == 0o644 { String::new() } else { format!(" {mode:o}") };
                out.push_str(&format!("{rel}{mode} {:?}\n", fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = String::new();
    walk(root, root, &mut out);
    out
}

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn two_layers_make_files_dirs_and_links() {
    let base = Layer::new()
        .dir("./")
        .dir("./etc/")
        .file("./etc/os-release", "alpine")
        .dir("./bin/")
        .file_mode("./bin/busybox", "#!busybox", 0o755)
        .symlink("./bin/sh", "/bin/busybox");
    let top = Layer::new()
        .dir("etc/")
        .file("etc/motd", "welcome")
        .hard_link("bin/ash", "./bin/busybox")
        .symlink("etc/release", "os-release");
    let image = Image::new(vec![(TAR_GZIP, base.gzip()), (TAR, top.tar())]);
    let report = image.unpack();
    assert_eq!(
        report,
        UnpackReport { entries: 10, bytes: 22, skipped_devices: 0, already_present: false },
        "10 entries, 6 + 9 + 7 bytes"
    );
    let root = image.root();
    assert_eq!(
        tree(&root),
        "bin/\n\
         bin/ash 755 \"#!busybox\"\n\
         bin/busybox 755 \"#!busybox\"\n\
         bin/sh -> /bin/busybox\n\
         etc/\n\
         etc/motd \"welcome\"\n\
         etc/os-release \"alpine\"\n\
         etc/release -> os-release\n"
    );
    let (ash, busybox) = (fs::metadata(root.join("bin/ash")).unwrap(), fs::metadata(root.join("bin/busybox")).unwrap());
    assert_eq!(ash.ino(), busybox.ino(), "a hard link shares the inode");
    assert_eq!(fs::metadata(&root).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_nothing_left_but(&image.dir.path().join("out"), "rootfs");
}

fn assert_nothing_left_but(out: &Path, name: &str) {
    let left: Vec<_> = fs::read_dir(out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [name], "only the destination, no staging directory");
}

#[test]
fn gzip_is_told_by_its_magic_and_every_listed_media_type_is_accepted() {
    let image = Image::new(vec![
        (DOCKER_GZIP, Layer::new().file("a", "1").gzip()),
        // Labelled plain, compressed anyway.
        (TAR, Layer::new().file("b", "2").gzip()),
        (NONDISTRIBUTABLE, Layer::new().file("c", "3").tar()),
    ]);
    image.unpack();
    assert_eq!(tree(&image.root()), "a \"1\"\nb \"2\"\nc \"3\"\n");
}

#[test]
fn whiteouts_remove_a_lower_file_and_a_lower_tree() {
    let image = tar_layers(vec![
        Layer::new().file("keep", "k").file("gone", "g").dir("d/").dir("d/sub/").file("d/sub/f", "f").file("d/x", "x"),
        Layer::new().file(".wh.gone", "").file("d/.wh.sub", "").file(".wh.never-there", "").file("d/sub2", "new"),
    ]);
    image.unpack();
    assert_eq!(tree(&image.root()), "d/\nd/sub2 \"new\"\nd/x \"x\"\nkeep \"k\"\n");
}

#[test]
fn opaque_whiteout_clears_lower_children_but_keeps_this_layers() {
    let image = tar_layers(vec![
        Layer::new()
            .dir("d/")
            .file("d/lower", "l")
            .dir("d/sub/")
            .file("d/sub/lower", "l")
            .dir("d/merged/")
            .file("d/merged/lower", "l")
            .file("outside", "o"),
        Layer::new()
            .dir("d/")
            .file("d/before", "b")
            .dir("d/merged/")
            .file("d/merged/new", "n")
            .file("d/.wh..wh..opq", "")
            .file("d/after", "a"),
    ]);
    image.unpack();
    assert_eq!(
        tree(&image.root()),
        "d/\nd/after \"a\"\nd/before \"b\"\nd/merged/\nd/merged/new \"n\"\noutside \"o\"\n"
    );
}

#[test]
fn later_layers_replace_a_dir_with_a_file_and_a_file_with_a_dir() {
    let image = tar_layers(vec![
        Layer::new().dir("x/").dir("x/deep/").file("x/deep/f", "f").file("y", "file").symlink("z", "x"),
        Layer::new().file("x", "now a file").dir("y/").file("y/inner", "i").dir("z/").file("z/f", "z"),
    ]);
    image.unpack();
    assert_eq!(tree(&image.root()), "x \"now a file\"\ny/\ny/inner \"i\"\nz/\nz/f \"z\"\n");
}

#[test]
fn usrmerge_writes_through_an_in_root_symlink() {
    let image = tar_layers(vec![
        Layer::new().dir("usr/").dir("usr/bin/").symlink("bin", "usr/bin"),
        Layer::new().file_mode("bin/tool", "t", 0o755).hard_link("bin/tool2", "bin/tool"),
    ]);
    image.unpack();
    assert_eq!(
        tree(&image.root()),
        "bin -> usr/bin\nusr/\nusr/bin/\nusr/bin/tool 755 \"t\"\nusr/bin/tool2 755 \"t\"\n"
    );
}

#[test]
fn entries_that_escape_the_root_are_refused_naming_them() {
    let cases = [
        (
            Layer::new().file("ok", "").file("../x", "x"),
            "entry \"../x\" in layer 1 has a `..` component; refusing an entry that escapes the root",
        ),
        (
            Layer::new().file("/etc/passwd", "root::0:0::/:/bin/sh"),
            "entry \"/etc/passwd\" in layer 1 has an absolute path; refusing an entry that escapes the root",
        ),
        (
            Layer::new().dir("a/").symlink("a/b", "../../../etc"),
            "symlink \"a/b\" in layer 1 points to \"../../../etc\", which climbs above the root",
        ),
        (
            Layer::new().hard_link("passwd", "../../etc/passwd"),
            "hard link \"passwd\" in layer 1 points to \"../../etc/passwd\", which escapes the root",
        ),
        (
            Layer::new().hard_link("h", "/nowhere/file"),
            "hard link \"h\" in layer 1 points to \"/nowhere/file\", which does not exist or is a directory",
        ),
        (Layer::new().file(".wh..", ""), "whiteout \".wh..\" in layer 1 names no entry that could be removed"),
        (
            Layer::new().file("f", "").file("f/g", ""),
            "entry \"f/g\" in layer 1 lies under a path that is not a directory",
        ),
        (
            Layer::new().append(&mut sparse(), "sparse", "", b""),
            "entry \"sparse\" in layer 1 is a GNU sparse file, which cannot be unpacked",
        ),
        (
            Layer::new().entry(EntryType::new(b'V'), "volume", "", b"", 0o644),
            "entry \"volume\" in layer 1 is a tar entry of type 'V', which cannot be unpacked",
        ),
    ];
    for (layer, expected) in cases {
        let image = tar_layers(vec![Layer::new().file("base", "b"), layer]);
        assert_eq!(image.refused(), expected);
    }
}

#[test]
fn a_symlink_to_outside_the_root_is_followed_inside_it() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let image = tar_layers(vec![
        Layer::new().symlink("evil", &target).symlink("evil2", &format!("{target}/nested/deeper")),
        Layer::new()
            .file("evil/pwned", "inside")
            .file("evil2/pwned", "inside too")
            .hard_link("evil/linked", "evil/pwned"),
    ]);
    image.unpack();
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside the root");
    let inside = image.root().join(target.trim_start_matches('/'));
    assert_eq!(fs::read_to_string(inside.join("pwned")).unwrap(), "inside");
    assert_eq!(fs::read_to_string(inside.join("linked")).unwrap(), "inside");
    assert_eq!(fs::read_to_string(inside.join("nested/deeper/pwned")).unwrap(), "inside too");
}

#[test]
fn a_whiteout_through_a_symlink_to_outside_deletes_only_inside() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), "keep me").unwrap();
    fs::create_dir(outside.path().join("tree")).unwrap();
    fs::write(outside.path().join("tree/f"), "keep me").unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let in_root = target.trim_start_matches('/').to_owned();
    let image = tar_layers(vec![
        Layer::new().symlink("evil", &target).symlink("dotdot", "/../../../..").file(&format!("{in_root}/secret"), "s"),
        Layer::new()
            .file("evil/.wh.secret", "")
            .file("evil/.wh.tree", "")
            .file("evil/tree/.wh..wh..opq", "")
            .file("dotdot/.wh.etc", ""),
    ]);
    image.unpack();
    assert_eq!(fs::read_to_string(outside.path().join("secret")).unwrap(), "keep me");
    assert_eq!(fs::read_to_string(outside.path().join("tree/f")).unwrap(), "keep me");
    assert!(!image.root().join(&in_root).join("secret").exists(), "the whiteout applied inside the root");
    assert!(Path::new("/etc").is_dir());
}

#[test]
fn a_symlink_climbing_out_through_dotdot_stays_inside() {
    // `up -> ..` at the root is the root itself; `..` never climbs above it.
    let image =
        tar_layers(vec![Layer::new().dir("d/").symlink("d/up", ".."), Layer::new().file("d/up/f", "root level")]);
    image.unpack();
    assert_eq!(fs::read_to_string(image.root().join("f")).unwrap(), "root level");
}

#[test]
fn an_existing_destination_is_already_present() {
    let image = tar_layers(vec![Layer::new().file("a", "1")]);
    fs::create_dir_all(image.root()).unwrap();
    fs::write(image.root().join("marker"), "").unwrap();
    let report = image.unpack();
    assert_eq!(report, UnpackReport { already_present: true, ..UnpackReport::default() });
    assert_eq!(tree(&image.root()), "marker \"\"\n");
}

#[test]
fn zstd_layers_are_refused_naming_the_media_type() {
    let image = Image::new(vec![
        (TAR, Layer::new().file("a", "1").tar()),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Vec::new()),
    ]);
    assert_eq!(
        image.refused(),
        "layer 1 has media type \"application/vnd.oci.image.layer.v1.tar+zstd\", which cannot be unpacked \
         (tar and tar+gzip layers can; zstd is not supported yet); nothing was written"
    );
}

#[test]
fn budgets_stop_before_content_is_read() {
    // The header announces a gigabyte that is not there: refused from the header alone.
    let mut bomb = header(EntryType::Regular, 1 << 30, 0o644);
    let image = Image::new(vec![
        (TAR, Layer::new().file("small", "12345").tar()),
        (TAR_GZIP, Layer::new().append(&mut bomb, "bomb", "", b"").gzip()),
    ]);
    let limits = UnpackLimits { max_bytes: 1 << 20, max_entries: 100 };
    let err = image.unpack_with(&limits).unwrap_err();
    assert_eq!(err.to_string(), "entry \"bomb\" in layer 1 brings the image's file bytes past the limit of 1048576");
    assert_nothing_left(&image.dir.path().join("out"));

    let image = tar_layers(vec![Layer::new().file("a", "").file("b", ""), Layer::new().file("c", "")]);
    let err = image.unpack_with(&UnpackLimits { max_bytes: 1 << 20, max_entries: 2 }).unwrap_err();
    assert_eq!(err.to_string(), "entry \"c\" in layer 1 is past the limit of 2 entries");
    assert_nothing_left(&image.dir.path().join("out"));
}

#[test]
fn a_truncated_layer_is_corrupt_and_leaves_nothing() {
    let mut bytes = Layer::new().file("a", "1").file("b", &"x".repeat(2000)).tar();
    bytes.truncate(2048);
    let image = Image::new(vec![(TAR, bytes)]);
    assert_eq!(
        image.refused(),
        "layer 0 is corrupt after entry \"b\": the layer ends 1488 bytes before the end of this file"
    );
}

#[test]
fn an_oversize_long_name_record_is_refused() {
    let name = vec![b'n'; 100 << 10];
    let image = tar_layers(vec![
        Layer::new().file("base", "b").entry(EntryType::GNULongName, "././@LongLink", "", &name, 0o644).file("x", ""),
    ]);
    assert_eq!(image.refused(), "layer 0: the header after entry \"base\" is larger than 65536 bytes");
}

#[test]
fn devices_and_fifos_are_skipped() {
    let mut null = header(EntryType::Char, 0, 0o666);
    null.set_device_major(1).unwrap();
    null.set_device_minor(3).unwrap();
    let image = tar_layers(vec![
        Layer::new()
            .dir("dev/")
            .append(&mut null, "dev/null", "", b"")
            .entry(EntryType::Fifo, "dev/fifo", "", b"", 0o644)
            .file("dev/.keep", ""),
    ]);
    let report = image.unpack();
    assert_eq!(report.skipped_devices, 2);
    assert_eq!(tree(&image.root()), "dev/\ndev/.keep \"\"\n");
}

#[test]
fn long_names_work() {
    let long = format!("{}/{}", "d".repeat(80), "f".repeat(120));
    let link = format!("{}/link-with-a-long-target", "l".repeat(90));
    let image = tar_layers(vec![Layer::new().file(&long, "long").symlink(&link, &format!("../{long}"))]);
    image.unpack();
    assert_eq!(fs::read_to_string(image.root().join(&long)).unwrap(), "long");
    assert_eq!(fs::read_to_string(image.root().join(&link)).unwrap(), "long");
}

#[test]
fn modes_apply_after_children_and_ownership_only_as_root() {
    let mut owned = header(EntryType::Regular, 2, 0o4755);
    owned.set_uid(1234);
    owned.set_gid(5678);
    let image = tar_layers(vec![
        Layer::new().dir_mode("ro/", 0o555).file("ro/f", "f").dir_mode("private/", 0o700),
        Layer::new().file("ro/g", "g").append(&mut owned, "suid", "", b"su").dir_mode("./", 0o711),
    ]);
    image.unpack();
    let root = image.root();
    let suid = fs::metadata(root.join("suid")).unwrap();
    if privileged() {
        assert_eq!((suid.uid(), suid.gid()), (1234, 5678));
        assert_eq!(suid.permissions().mode() & 0o7777, 0o4755, "root keeps setuid");
    } else {
        assert_eq!(suid.permissions().mode() & 0o7777, 0o755, "no setuid without root");
    }
    assert_eq!(fs::metadata(&root).unwrap().permissions().mode() & 0o7777, 0o711);
    assert_eq!(fs::metadata(root.join("ro")).unwrap().permissions().mode() & 0o7777, 0o555);
    assert_eq!(fs::metadata(root.join("private")).unwrap().permissions().mode() & 0o7777, 0o700);
    assert_eq!(fs::read_to_string(root.join("ro/g")).unwrap(), "g");
}

#[test]
fn a_whiteout_spares_what_its_own_layer_made() {
    let image = tar_layers(vec![Layer::new().file("a", "lower"), Layer::new().file("b", "same").file(".wh.b", "")]);
    image.unpack();
    assert_eq!(tree(&image.root()), "a \"lower\"\nb \"same\"\n");
}
