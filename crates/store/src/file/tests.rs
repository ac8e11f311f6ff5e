//! File-backend specifics that the conformance suite cannot express: torn tails,
//! rotation, cursors; the damage matrix is in `tests/damage.rs`.

use super::*;
use adflow_proto::v1::AdEvent;

mod damage;
mod lifecycle;

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
    FileConfig { dir: dir.to_path_buf(), segment_bytes, ..FileConfig::default() }
}

async fn read_pages(s: &FileStore, page: usize) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut cur = None;
    loop {
        let p = s.scan(cur, page).await.expect("scan");
        assert!(p.events.len() <= page);
        out.extend(p.events);
        match p.next {
            Some(c) => cur = Some(c),
            None => return out,
        }
    }
}

async fn read_all(s: &FileStore) -> Vec<StoredEvent> {
    read_pages(s, 3).await
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
async fn garbage_after_the_last_record_is_quarantined_and_truncated() {
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
    let d = s.damage();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].kind, d[0].start, d[0].end), (Kind::TornTail, good, good + 40));
    assert_eq!(std::fs::read(d[0].quarantine.as_ref().unwrap()).unwrap(), vec![0xff; 40]);
    let h = s.health().await;
    assert!(h.ok && h.detail.contains("torn tail of 40 bytes"), "{h:?}");
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
    assert!(s.damage().is_empty());
    assert_eq!(s.health().await.detail, format!("ok, segment {}", list_segments(dir.path()).unwrap().len()));
}

#[tokio::test]
async fn a_scan_reads_only_what_its_page_needs_across_big_segments() {
    // Pages much smaller than a segment (the reader's window moves, it does not reread
    // the rest of the segment per page); cursors resume exactly.
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(cfg(dir.path(), 4 << 20)).await.unwrap();
    let evs: Vec<_> = (0..30_000).map(ev).collect();
    for chunk in evs.chunks(1000) {
        s.append(chunk).await.unwrap();
    }
    assert_eq!(read_pages(&s, 777).await, evs);
}

#[tokio::test]
async fn a_closed_store_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(cfg(dir.path(), 1 << 20)).await.unwrap();
    s.close().await.unwrap();
    assert!(matches!(s.append(&[ev(1)]).await, Err(StoreError::Closed)));
    assert!(!s.health().await.ok);
}

#[tokio::test]
async fn a_second_open_of_a_live_directory_is_refused_and_cuts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let live = FileStore::open(cfg(dir.path(), 1 << 20)).await.unwrap();
    live.append(&[ev(1), ev(2)]).await.unwrap();
    // A half-written batch at the end, as a concurrent reader could see it mid-write.
    let seg = segment_path(dir.path(), 1);
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[0xAD, 0xF1]).unwrap();
    let err = FileStore::open(cfg(dir.path(), 1 << 20)).await.err().expect("the directory is locked");
    assert!(err.to_string().contains("in use by another process"), "{err}");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len + 2, "the refused open cut nothing");
    live.close().await.unwrap();
    drop(live);
    // Once the first store is gone, the directory opens again.
    let again = FileStore::open(cfg(dir.path(), 1 << 20)).await.unwrap();
    assert_eq!(read_all(&again).await.len(), 2);
}
