//! Imports of OCI layouts (directories and tars) and docker archives built here, byte by byte:
//! names, digests, refusals of a blob that does not match its name, of an entry that escapes
//! the archive and of a manifest naming a blob the archive lacks; then the root filesystem.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use falak_artifact::{ArtifactStore, Sha256Digest};
use falak_image::{ImageError, Images, import};
use serde_json::json;

/// A layer: an uncompressed tar of `files`.
fn layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, text.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn config() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": falak_image::host_platform().1, "os": "linux",
        "config": { "Cmd": ["/bin/hello"], "Env": ["PATH=/bin"], "WorkingDir": "/srv" },
        "rootfs": { "type": "layers", "diff_ids": [] }
    }))
    .unwrap()
}

struct Image {
    blobs: BTreeMap<Sha256Digest, Vec<u8>>,
    manifest: Sha256Digest,
}

fn image(layers: &[Vec<u8>]) -> Image {
    let mut blobs = BTreeMap::new();
    let config = config();
    let config_digest = Sha256Digest::of(&config);
    blobs.insert(config_digest, config.clone());
    let mut descriptors = Vec::new();
    for l in layers {
        let d = Sha256Digest::of(l);
        blobs.insert(d, l.clone());
        descriptors.push(
            json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": l.len() }),
        );
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len() },
        "layers": descriptors,
    }))
    .unwrap();
    let digest = Sha256Digest::of(&manifest);
    blobs.insert(digest, manifest);
    Image { blobs, manifest: digest }
}

/// The files of an OCI layout of `image`, with `ref_name` as the index's annotation.
fn layout_files(image: &Image, ref_name: &str) -> Vec<(String, Vec<u8>)> {
    let index = json!({ "schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": image.manifest.to_string(), "size": image.blobs[&image.manifest].len(),
        "annotations": { "org.opencontainers.image.ref.name": ref_name } }] });
    let mut files = vec![
        ("oci-layout".to_owned(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json".to_owned(), serde_json::to_vec(&index).unwrap()),
    ];
    for (d, bytes) in &image.blobs {
        files.push((format!("blobs/sha256/{}", d.hex()), bytes.clone()));
    }
    files
}

fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`; write the raw name so hostile archives can be built.
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn images() -> (tempfile::TempDir, Arc<Images>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ArtifactStore::open(dir.path().join("artifacts")).unwrap());
    let images = Arc::new(Images::open(dir.path().join("images"), store).unwrap());
    (dir, images)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn an_oci_layout_imports_from_a_directory_and_from_a_tar_under_its_digest() {
    let (dir, images) = images();
    let app = image(&[layer(&[("bin/hello", "#!/bin/sh\necho hi\n")]), layer(&[("srv/data", "42\n")])]);
    let files = layout_files(&app, "127.0.0.1:5000/app:v1");
    let layout = dir.path().join("layout");
    for (name, bytes) in &files {
        write(&layout, name, bytes);
    }
    let imported = import(&images, &layout, None).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(
        (imported[0].digest, imported[0].names.clone()),
        (app.manifest, vec!["127.0.0.1:5000/app:v1".to_owned()])
    );

    // The same image as a tar, named on the command line: the same digest.
    let archive = write(dir.path(), "app.tar", &tar_of(&files));
    let again = import(&images, &archive, Some("registry.local/team/app:v2")).unwrap();
    assert_eq!(again[0].digest, app.manifest);
    assert_eq!(images.resolve("registry.local/team/app:v2"), Some(app.manifest));
    assert_eq!(images.resolve(&app.manifest.hex()[..12]), Some(app.manifest));

    let listed = images.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].names.len(), 2);
    assert_eq!(listed[0].layers, 2);
    let details = images.inspect(app.manifest).unwrap();
    assert_eq!(details.cmd, ["/bin/hello"]);
    assert_eq!(details.working_dir.as_deref(), Some("/srv"));

    let rootfs = images.rootfs(app.manifest).unwrap();
    assert_eq!(std::fs::read_to_string(rootfs.join("bin/hello")).unwrap(), "#!/bin/sh\necho hi\n");
    assert_eq!(std::fs::read_to_string(rootfs.join("srv/data")).unwrap(), "42\n");

    // Removing one name keeps the other; removing by digest removes the rest.
    assert_eq!(images.remove("127.0.0.1:5000/app:v1").unwrap().1, ["127.0.0.1:5000/app:v1"]);
    assert_eq!(images.remove(&app.manifest.to_string()).unwrap().1, ["registry.local/team/app:v2"]);
    assert!(images.list().is_empty());
    assert!(matches!(images.remove("127.0.0.1:5000/app:v1"), Err(ImageError::NotFound(_))));
    // The root goes with the last name (read-only directories included).
    std::fs::set_permissions(rootfs.join("srv"), std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    assert_eq!(images.collect_roots(), 1);
    assert!(!rootfs.exists());
}

#[test]
fn a_bare_tag_names_nothing_without_a_name_and_a_docker_archive_gets_a_manifest() {
    let (dir, images) = images();
    let app = image(&[layer(&[("bin/hello", "hi")])]);
    let layout = dir.path().join("layout");
    for (name, bytes) in layout_files(&app, "v1") {
        write(&layout, &name, &bytes);
    }
    let imported = import(&images, &layout, None).unwrap();
    assert!(imported[0].names.is_empty(), "skopeo's bare tag is no repository: {imported:?}");

    // `docker save`: manifest.json, the config and `<id>/layer.tar` named by path.
    let layer_bytes = layer(&[("bin/tool", "tool")]);
    let files = vec![
        (
            "manifest.json".to_owned(),
            serde_json::to_vec(&json!([{ "Config": "cfg.json", "RepoTags": ["tool:1"], "Layers": ["abc/layer.tar"] }]))
                .unwrap(),
        ),
        ("cfg.json".to_owned(), config()),
        ("abc/layer.tar".to_owned(), layer_bytes.clone()),
    ];
    let archive = write(dir.path(), "docker.tar", &tar_of(&files));
    let imported = import(&images, &archive, None).unwrap();
    assert_eq!(imported[0].names, ["docker.io/library/tool:1"]);
    let manifest = images.manifest(imported[0].digest).unwrap();
    assert_eq!(manifest.layers[0].digest, Sha256Digest::of(&layer_bytes).to_string());
    assert_eq!(manifest.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar");
    let rootfs = images.rootfs(imported[0].digest).unwrap();
    assert_eq!(std::fs::read_to_string(rootfs.join("bin/tool")).unwrap(), "tool");
}

#[test]
fn a_blob_that_does_not_hash_to_its_name_an_escaping_entry_and_a_missing_blob_are_refused() {
    let (dir, images) = images();
    let app = image(&[layer(&[("bin/hello", "hi")])]);
    let mut files = layout_files(&app, "127.0.0.1:5000/app:v1");
    let layer_name = format!("blobs/sha256/{}", Sha256Digest::of(&layer(&[("bin/hello", "hi")])).hex());
    for (name, bytes) in files.iter_mut() {
        if *name == layer_name {
            *bytes = layer(&[("bin/hello", "tampered")]);
        }
    }
    let tampered = write(dir.path(), "tampered.tar", &tar_of(&files));
    let error = import(&images, &tampered, None).unwrap_err().to_string();
    assert!(error.starts_with(&format!("{layer_name}: its bytes hash to sha256:")), "{error}");
    assert!(images.list().is_empty(), "nothing was named");

    let mut escaping = layout_files(&app, "127.0.0.1:5000/app:v1");
    escaping.push(("../evil".to_owned(), b"x".to_vec()));
    let archive = write(dir.path(), "escaping.tar", &tar_of(&escaping));
    let error = import(&images, &archive, None).unwrap_err().to_string();
    assert!(error.contains("entry ../evil escapes the archive"), "{error}");

    // A store that never held the layer (the imports above stored it before they failed).
    let (_fresh_dir, images) = self::images();
    let missing: Vec<_> =
        layout_files(&app, "127.0.0.1:5000/app:v1").into_iter().filter(|(n, _)| *n != layer_name).collect();
    let archive = write(dir.path(), "missing.tar", &tar_of(&missing));
    let error = import(&images, &archive, None).unwrap_err().to_string();
    assert!(error.contains("which the archive does not hold"), "{error}");
    assert!(images.list().is_empty());

    let error =
        import(&images, &write(dir.path(), "junk.tar", &tar_of(&[("x".into(), b"y".to_vec())])), None).unwrap_err();
    assert!(error.to_string().contains("neither an index.json"), "{error}");
}
