use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use falak_artifact::BlobId;
use falak_artifact::{ArtifactStore, MAX_ARTIFACT_BYTES, PutError, ReadError, VerifyError};
use falak_core::ArtifactId;

fn store() -> (tempfile::TempDir, ArtifactStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path()).unwrap();
    (dir, store)
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn put_stores_bytes_under_their_blake3_hash_once() {
    let (dir, store) = store();
    let id = store.put(b"hello artifact").unwrap();
    assert_eq!(id, ArtifactId(*blake3::hash(b"hello artifact").as_bytes()));
    assert_eq!(store.put(b"hello artifact").unwrap(), id, "the same bytes give the same id");
    assert!(store.contains(id));
    assert_eq!(store.path(id).unwrap(), dir.path().join("blobs").join(id.to_string()));
    assert_eq!(store.read(id).unwrap().as_ref(), b"hello artifact");
    assert_eq!(store.size(id).unwrap(), 14);
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].size), (id.into(), 14));
    store.verify(id).unwrap();
}

#[test]
fn read_range_clamps_at_the_end_and_refuses_past_it() {
    let (_dir, store) = store();
    let id = store.put(b"0123456789").unwrap();
    assert_eq!(store.read_range(id, 2, 3).unwrap().as_ref(), b"234");
    assert_eq!(store.read_range(id, 8, 100).unwrap().as_ref(), b"89");
    assert!(store.read_range(id, 10, 5).unwrap().is_empty());
    assert!(matches!(store.read_range(id, 11, 1), Err(ReadError::OutOfRange { offset: 11, size: 10, .. })));
}

#[test]
fn missing_artifacts_are_reported_as_not_found() {
    let (_dir, store) = store();
    let id = ArtifactId([9; 32]);
    assert!(!store.contains(id));
    assert_eq!(store.path(id), None);
    assert!(matches!(store.read(id), Err(ReadError::NotFound(missing)) if missing == id.into()));
    assert!(matches!(store.touch(id, at(1)), Err(ReadError::NotFound(_))));
    let message = store.read(id).unwrap_err().to_string();
    assert!(message.contains(&id.to_string()) && message.contains("not in the store"), "{message}");
}

#[test]
fn put_expecting_a_different_hash_stores_nothing() {
    let (_dir, store) = store();
    let expected = ArtifactId(*blake3::hash(b"the real bytes").as_bytes());
    let err = store.put_expecting(expected, b"other bytes").unwrap_err();
    assert!(matches!(err, PutError::HashMismatch { expected: e, .. } if e == expected.into()));
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(store.blobs_dir()).unwrap().flatten().filter(|e| e.path().is_file()).count(),
        0,
        "no temporary file left"
    );
    store.put_expecting(expected, b"the real bytes").unwrap();
    assert!(store.contains(expected));
}

#[test]
fn artifacts_over_the_limit_are_refused() {
    let (_dir, store) = store();
    let too_big = vec![0u8; usize::try_from(MAX_ARTIFACT_BYTES).unwrap() + 1];
    assert!(matches!(store.put(&too_big), Err(PutError::TooLarge { limit: MAX_ARTIFACT_BYTES, .. })));
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn verify_detects_a_tampered_blob() {
    let (_dir, store) = store();
    let id = store.put(b"original").unwrap();
    fs::write(store.path(id).unwrap(), b"tampered").unwrap();
    let err = store.verify(id).unwrap_err();
    assert!(matches!(err, VerifyError::Corrupt { id: bad, actual } if bad == id.into() && actual != id.into()));
    assert!(err.to_string().contains("corrupt"), "{err}");
    // Putting the real bytes again repairs a blob whose size is wrong.
    fs::write(store.path(id).unwrap(), b"short").unwrap();
    store.put(b"original").unwrap();
    store.verify(id).unwrap();
}

#[test]
fn touch_sets_the_last_used_time() {
    let (_dir, store) = store();
    let id = store.put(b"touched").unwrap();
    store.touch(id, at(1_000)).unwrap();
    assert_eq!(store.list().unwrap()[0].last_used, at(1_000));
}

#[test]
fn gc_removes_unkept_blobs_unused_long_enough() {
    let (_dir, store) = store();
    let kept_old = store.put(b"kept but old").unwrap();
    let old = store.put(b"old").unwrap();
    let recent = store.put(b"recent").unwrap();
    store.touch(kept_old, at(100)).unwrap();
    store.touch(old, at(100)).unwrap();
    store.touch(recent, at(950)).unwrap();
    let keep = BTreeSet::from([BlobId::from(kept_old)]);
    let report = store.gc(&keep, at(1_000), Duration::from_secs(300), u64::MAX).unwrap();
    assert_eq!(report.removed_unused, vec![BlobId::from(old)]);
    assert!(report.removed_for_space.is_empty());
    assert_eq!(report.freed_bytes, 3);
    assert_eq!(report.remaining_bytes, 12 + 6);
    assert!(store.contains(kept_old) && store.contains(recent) && !store.contains(old));
}

#[test]
fn gc_evicts_least_recently_used_until_under_the_cap_but_never_kept_blobs() {
    let (_dir, store) = store();
    let kept = store.put(&[1u8; 100]).unwrap();
    let a = store.put(&[2u8; 100]).unwrap();
    let b = store.put(&[3u8; 100]).unwrap();
    let c = store.put(&[4u8; 100]).unwrap();
    store.touch(kept, at(10)).unwrap();
    store.touch(a, at(30)).unwrap();
    store.touch(b, at(20)).unwrap();
    store.touch(c, at(40)).unwrap();
    let keep = BTreeSet::from([BlobId::from(kept)]);
    // Nothing is old enough; the cap of 250 bytes forces the two least recently used out.
    let report = store.gc(&keep, at(50), Duration::from_secs(3_600), 250).unwrap();
    assert_eq!(report.removed_for_space, vec![BlobId::from(b), a.into()]);
    assert_eq!(report.remaining_bytes, 200);
    assert!(store.contains(kept) && store.contains(c));

    // Kept blobs alone over the cap stay; the report says so.
    let report = store.gc(&keep, at(50), Duration::from_secs(3_600), 50).unwrap();
    assert_eq!(report.removed_for_space, vec![BlobId::from(c)]);
    assert_eq!(report.remaining_bytes, 100);
    assert!(store.contains(kept));
}

#[test]
fn gc_treats_a_last_use_in_the_future_as_recent() {
    let (_dir, store) = store();
    let id = store.put(b"from the future").unwrap();
    store.touch(id, at(5_000)).unwrap();
    let report = store.gc(&BTreeSet::new(), at(1_000), Duration::from_secs(1), u64::MAX).unwrap();
    assert!(report.removed_unused.is_empty());
    assert!(store.contains(id));
}

#[test]
fn files_that_are_not_blobs_are_ignored() {
    let (_dir, store) = store();
    fs::write(store.blobs_dir().join("README"), b"not a blob").unwrap();
    let id = store.put(b"blob").unwrap();
    assert_eq!(store.list().unwrap().iter().map(|b| b.id).collect::<Vec<_>>(), vec![BlobId::from(id)]);
}
