//! The file store's lifecycle: retention by age and size (never the active segment, a
//! lagging consumer group protected from age and told what the size limit cost it), the
//! time index, and reads that start in a segment retention removed.

use super::*;
use crate::eventlog::{GroupPosition, Start};

fn at(i: u64, t: i64) -> StoredEvent {
    StoredEvent::encode(
        t,
        &AdEvent { event_id: format!("life-{i}"), ad_id: "ad".into(), r#type: 1, ..Default::default() },
    )
}

/// A store with ~9 segments of ~6 events each (appends of one event, 256-byte segments).
async fn filled(dir: &Path) -> FileStore {
    let s = FileStore::open(FileConfig { min_free_mb: 0, ..cfg(dir, 256) }).await.unwrap();
    for i in 0..50 {
        s.append(&[at(i, 1_000 + i as i64 * 10)]).await.unwrap();
    }
    s
}

fn sweep(s: &FileStore, c: FileConfig, now: i64) -> u64 {
    let active = s.active().0;
    retention::sweep(&c, active, now, &s.groups, &s.index).unwrap()
}

fn segment_count(dir: &Path) -> usize {
    list_segments(dir).unwrap().len()
}

#[tokio::test]
async fn age_removes_old_sealed_segments_but_never_the_active_one_nor_unread_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = filled(dir.path()).await;
    let n = segment_count(dir.path());
    assert!(n >= 8, "{n} segments");
    // A group that read only the first 12 events holds everything after them.
    let page = s.log_read(&s.log_start(&Start::Oldest).await.unwrap(), 12).await.unwrap();
    s.group_commit("lagging", page.next.as_ref().unwrap()).await.unwrap();
    let c = FileConfig { retention_hours: 1, ..s.cfg.clone() };
    let far_future = adflow_domain::now_ms() + 10 * 3_600_000;
    let removed = sweep(&s, c.clone(), far_future);
    assert!(removed >= 1 && removed < n as u64 - 1, "only what the group read went: {removed} of {n}");
    let rest = s.log_read(&page.next.clone().unwrap(), 1000).await.unwrap();
    assert_eq!(rest.events.len(), 38, "the group loses nothing to age");
    assert!(!rest.gap);
    // Once the group read everything, age takes all sealed segments, never the active one.
    s.group_commit("lagging", rest.next.as_ref().unwrap()).await.unwrap();
    sweep(&s, c, far_future);
    assert_eq!(segment_count(dir.path()), 1, "the active segment stays");
    s.append(&[at(99, 5_000)]).await.unwrap();
    let tail = s.log_read(rest.next.as_ref().unwrap(), 10).await.unwrap();
    assert_eq!(tail.events.len(), 1);
}

#[tokio::test]
async fn the_size_limit_removes_unread_segments_and_tells_the_group_how_many_events_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let s = filled(dir.path()).await;
    let start = s.log_start(&Start::Oldest).await.unwrap();
    let first = s.log_read(&start, 3).await.unwrap();
    s.group_commit("slow", first.next.as_ref().unwrap()).await.unwrap();
    let before = read_all(&s).await.len();
    let c = FileConfig { max_bytes: 3 * 256, ..s.cfg.clone() };
    let removed = sweep(&s, c, adflow_domain::now_ms());
    assert!(removed >= 5, "{removed}");
    let total: u64 = list_segments(dir.path())
        .unwrap()
        .iter()
        .map(|&n| std::fs::metadata(segment_path(dir.path(), n)).unwrap().len())
        .sum();
    assert!(total <= 3 * 256 + 256, "{total} bytes left");
    let left = read_all(&s).await.len();
    let pos: GroupPosition = s.group_get("slow").await.unwrap().unwrap();
    assert_eq!(pos.lost_events as usize, before - left - 3, "lost = removed events the group had not read");
    // The group resumes at the oldest event left, without a gap flag (its loss is counted).
    let next = s.log_read(&pos.cursor, 1000).await.unwrap();
    assert_eq!(next.events.len(), left);
    // A plain reader with an old cursor is told about the gap.
    let old = s.log_read(&start, 1000).await.unwrap();
    assert!(old.gap);
    assert_eq!(old.events.len(), left);
}

#[tokio::test]
async fn a_time_start_finds_the_first_event_received_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = filled(dir.path()).await;
    for (t, want) in [(0, 0), (1_000, 0), (1_001, 1), (1_250, 25), (1_490, 49), (1_491, 50), (i64::MAX, 50)] {
        let c = s.log_start(&Start::Time(t)).await.unwrap();
        let got = s.log_read(&c, 1000).await.unwrap().events.len();
        assert_eq!(50 - got, want, "time {t}");
    }
    assert_eq!(s.log_start(&Start::Newest).await.unwrap(), s.end_cursor().unwrap());
}

#[tokio::test]
async fn a_follow_wait_returns_on_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(filled(dir.path()).await);
    let end = s.log_start(&Start::Newest).await.unwrap();
    let waiter = {
        let (s, end) = (s.clone(), end.clone());
        tokio::spawn(async move { s.log_wait(&end, std::time::Duration::from_secs(3600)).await })
    };
    tokio::task::yield_now().await;
    s.append(&[at(500, 9_000)]).await.unwrap();
    waiter.await.unwrap();
    assert_eq!(s.log_read(&end, 10).await.unwrap().events.len(), 1);
}

#[tokio::test]
async fn a_cursor_that_does_not_point_at_a_record_is_refused_and_reports_no_damage() {
    let dir = tempfile::tempdir().unwrap();
    let s = filled(dir.path()).await;
    let first = list_segments(dir.path()).unwrap()[0];
    for off in [1, 7, 17, 33] {
        let c = Cursor(format!("{first}:{off}"));
        let e = s.log_start(&Start::At(c.clone())).await.unwrap_err();
        assert!(matches!(e, StoreError::BadCursor(_)), "{e}");
        assert!(s.group_commit("g", &c).await.is_err());
    }
    assert!(s.damage().is_empty(), "a forged cursor must not be taken for damage");
    assert!(!dir.path().join("quarantine").exists());
    // Real record boundaries and segment ends are fine.
    let page = s.log_read(&s.log_start(&Start::Oldest).await.unwrap(), 3).await.unwrap();
    let c = page.next.unwrap();
    assert_eq!(s.log_start(&Start::At(c.clone())).await.unwrap(), c);
    s.group_commit("g", &c).await.unwrap();
}
