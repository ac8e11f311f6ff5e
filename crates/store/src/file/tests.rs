//! File-backend specifics that the conformance suite cannot express: torn tails,
//! rotation and damage inside a sealed segment.

use super::*;
use adflow_proto::v1::AdEvent;

fn ev(i: u64) -> StoredEvent {
    StoredEvent::encode(
        1_000 + i as i64,
        &AdEvent {
            event_id: format!("event-{i}"),
            ad_id: format!("ad-{}", i % 7),
            r#type: 1,
            ..Default::default()
        },
    )
}

fn cfg(dir: &Path, segment_bytes: u64) -> FileConfig {
    FileConfig { dir: dir.to_path_buf(), segment_bytes, fsync: true }
}

async fn read_all(s: &FileStore) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut cur = None;
    loop {
        let page = s.scan(cur, 3).await.expect("scan");
        out.extend(page.events);
        match page.next {
            Some(c) => cur = Some(c),
            None => return out,
        }
    }
}

#[tokio::test]
async fn a_segment_cut_inside_its_last_record_keeps_every_earlier_record() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(cfg(dir.path(), 1 << 20)).await.unwrap();
    let first: Vec<_> = (0..10).map(ev).collect();
    s.append(&first).await.unwrap();
    s.append(&[ev(10)]).await.unwrap();
    s.close().await.unwrap();
    let path = segment_path(dir.path(), 1);
    let len = std::fs::metadata(&path).unwrap().len();
    // Cut 5 bytes off the last record: a crash in the middle of its write.
    OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 5).unwrap();

    let s = FileStore::open(cfg(dir.path(), 1 << 20)).await.unwrap();
    assert_eq!(read_all(&s).await, first);
    // The store keeps working after the truncation.
    s.append(&[ev(11)]).await.unwrap();
    let all = read_all(&s).await;
    assert_eq!(all.len(), 11);
    assert_eq!(all[10], ev(11));
}

#[tokio::test]
async fn garbage_after_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(cfg(dir.path(), 1 << 20)).await.unwrap();
    s.append(&[ev(1), ev(2)]).await.unwrap();
    s.close().await.unwrap();
    let path = segment_path(dir.path(), 1);
    let good = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new().append(true).open(&path).unwrap().write_all(&[0xff; 40]).unwrap();
    let s = FileStore::open(cfg(dir.path(), 1 << 20)).await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
    assert_eq!(read_all(&s).await, vec![ev(1), ev(2)]);
}

#[tokio::test]
async fn segments_rotate_by_size_and_scans_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(cfg(dir.path(), 200)).await.unwrap();
    let evs: Vec<_> = (0..40).map(ev).collect();
    for chunk in evs.chunks(4) {
        s.append(chunk).await.unwrap();
    }
    assert!(list_segments(dir.path()).unwrap().len() >= 5);
    assert_eq!(read_all(&s).await, evs);
    s.close().await.unwrap();
    let s = FileStore::open(cfg(dir.path(), 200)).await.unwrap();
    assert_eq!(read_all(&s).await, evs);
}

#[tokio::test]
async fn damage_inside_a_sealed_segment_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(cfg(dir.path(), 100)).await.unwrap();
    for i in 0..6 {
        s.append(&[ev(i), ev(i + 100)]).await.unwrap();
    }
    s.close().await.unwrap();
    let path = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let s = FileStore::open(cfg(dir.path(), 100)).await.unwrap();
    let err = s.scan(None, 100).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn a_closed_store_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(cfg(dir.path(), 1 << 20)).await.unwrap();
    s.close().await.unwrap();
    assert!(matches!(s.append(&[ev(1)]).await, Err(StoreError::Closed)));
    assert!(!s.health().await.ok);
}
