//! Image layers and manifests, as a registry, a peer or an archive may send them: the bytes as
//! a one-layer image unpacked into a fresh root (nothing may appear beside the root, and a
//! failed unpack leaves neither the root nor its staging directory), and as a manifest to parse.
#![no_main]

use std::fs;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = falak_image::store::parse_manifest(data, falak_artifact::Sha256Digest::of(data));

    let sandbox = tempfile::tempdir().expect("tempdir");
    let layer = sandbox.path().join("layer");
    fs::write(&layer, data).expect("write the layer");
    let root = sandbox.path().join("root");
    let layers = [falak_image::unpack::LayerFile { media_type: "application/vnd.oci.image.layer.v1.tar", path: &layer }];
    let limits = falak_image::unpack::UnpackLimits { max_bytes: 64 << 20, max_entries: 10_000 };
    let unpacked = falak_image::unpack::unpack_layers(&layers, &root, &limits);
    if unpacked.is_err() {
        assert!(!root.exists(), "a failed unpack left its root behind");
    }
    // Only the layer and the root: no staging left, nothing written beside the root.
    let mut names: Vec<_> =
        fs::read_dir(sandbox.path()).expect("readable").map(|e| e.expect("entry").file_name()).collect();
    names.retain(|n| n != "layer" && n != "root");
    assert!(names.is_empty(), "unpacking wrote beside its root: {names:?}");
});
