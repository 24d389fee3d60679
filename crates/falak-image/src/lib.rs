//! OCI images for container capsules: a store of blobs named by their sha256 digest (the OCI
//! image layout), imports from OCI layouts and docker archives, pulls from registries, and
//! root filesystems unpacked from layers. `docs/design/images.md`.

pub mod unpack;
