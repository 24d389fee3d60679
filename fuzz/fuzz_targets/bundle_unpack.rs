//! Code bundles (tar or tar.gz): unpack into a fresh directory and check that nothing was
//! written beside it and that nothing inside resolves outside it.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fn assert_inside(root: &Path, dir: &Path) {
    for entry in fs::read_dir(dir).expect("readable") {
        let path = entry.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("metadata");
        if meta.file_type().is_symlink() {
            // A link may dangle, but where it points must stay under the root.
            let target = fs::read_link(&path).expect("link");
            assert!(!target.is_absolute(), "absolute link {path:?} -> {target:?}");
            let mut depth = path.parent().expect("parent").strip_prefix(root).expect("inside").components().count();
            for component in target.components() {
                match component {
                    std::path::Component::ParentDir => {
                        assert!(depth > 0, "link {path:?} -> {target:?} climbs out");
                        depth -= 1;
                    }
                    std::path::Component::Normal(_) => depth += 1,
                    _ => {}
                }
            }
        } else if meta.is_dir() {
            assert_inside(root, &path);
        } else {
            assert!(meta.is_file(), "{path:?} is neither a file, a directory nor a link");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let dest = sandbox.path().join("bundle");
    let validated = falak_artifact::validate(data).is_ok();
    match falak_artifact::unpack(data, &dest) {
        Ok(_) => {
            assert!(validated, "unpack accepted what validate refused");
            assert_inside(&dest, &dest);
        }
        Err(_) => assert!(!dest.exists(), "a failed unpack left its destination behind"),
    }
    // Nothing but the destination appears in the sandbox (no staging left, nothing escaped).
    let names: Vec<_> =
        fs::read_dir(sandbox.path()).expect("readable").map(|e| e.expect("entry").file_name()).collect();
    assert!(names.iter().all(|n| n == "bundle"), "unpack wrote beside its destination: {names:?}");
});
