//! The conformance suite every `EventStore` backend must pass. A backend's test file
//! implements `Harness` (how to open a fresh store, and how to reopen the same data) and
//! calls `run_all`; each check panics with a message naming the broken guarantee.

use crate::eventlog::Start;
use crate::{Cursor, EventStore, StoreError, StoredEvent};
use adflow_proto::v1::{AdEvent, EventType};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How the suite gets stores of one backend.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A new, empty store.
    async fn fresh(&self) -> Arc<dyn EventStore>;
    /// The same data as `store`, opened again after `close` (a restart).
    async fn reopen(&self, store: Arc<dyn EventStore>) -> Arc<dyn EventStore>;
}

/// A sample event with every field set.
pub fn sample(i: u64) -> StoredEvent {
    let mut attributes = BTreeMap::new();
    attributes.insert("placement".to_string(), format!("slot-{}", i % 3));
    StoredEvent::encode(
        1_800_000_000_000 + i as i64,
        &AdEvent {
            event_id: format!("conf-{i:06}"),
            r#type: EventType::Impression as i32 + (i % 3) as i32,
            ad_id: format!("ad-{}", i % 5),
            campaign_id: format!("cmp-{}", i % 2),
            game_id: "g-1".into(),
            game_family: "RPG-Fantasy".into(),
            user_id: format!("u-{i}"),
            timestamp_ms: 1_800_000_000_000 + i as i64,
            revenue_usd: i.is_multiple_of(4).then_some(0.25),
            video_position_ms: 0,
            platform: 2,
            country: "DE".into(),
            device: "tablet".into(),
            attributes,
        },
    )
}

/// Reads every event of `store` in pages of `page`.
pub async fn read_all(store: &dyn EventStore, page: usize) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let p = store.scan(cursor, page).await.expect("scan failed");
        assert!(p.events.len() <= page, "scan returned {} events for a page of {page}", p.events.len());
        out.extend(p.events);
        match p.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// Runs every check.
pub async fn run_all(h: &dyn Harness) {
    an_empty_store_scans_nothing(h).await;
    appended_batches_read_back_in_order_with_every_field(h).await;
    paged_scans_see_each_event_once(h).await;
    committed_events_survive_a_reopen(h).await;
    a_healthy_store_says_so(h).await;
    a_scan_since_keeps_every_recent_event(h).await;
    log_from_oldest_reads_every_commit_in_order(h).await;
    log_from_newest_reads_only_later_commits(h).await;
    log_cursors_resume_exactly_after_their_page(h).await;
    log_from_a_time_skips_earlier_events(h).await;
    log_wait_wakes_on_a_commit_and_times_out_without_one(h).await;
    group_positions_round_trip_and_survive_a_reopen(h).await;
    malformed_log_cursors_are_refused(h).await;
}

/// A new store has no events.
pub async fn an_empty_store_scans_nothing(h: &dyn Harness) {
    let s = h.fresh().await;
    let p = s.scan(None, 10).await.expect("scan of an empty store");
    assert!(p.events.is_empty() && p.next.is_none(), "an empty store returned events");
    s.close().await.expect("close");
}

/// Batches come back in commit order, field for field.
pub async fn appended_batches_read_back_in_order_with_every_field(h: &dyn Harness) {
    let s = h.fresh().await;
    let evs: Vec<_> = (0..25).map(sample).collect();
    s.append(&evs[..10]).await.expect("append 1");
    s.append(&evs[10..]).await.expect("append 2");
    s.append(&[]).await.expect("an empty append is a no-op");
    assert_eq!(read_all(&*s, 1000).await, evs, "events differ after a round trip");
    s.close().await.expect("close");
}

/// Page boundaries neither drop nor repeat events.
pub async fn paged_scans_see_each_event_once(h: &dyn Harness) {
    let s = h.fresh().await;
    let evs: Vec<_> = (0..23).map(sample).collect();
    for c in evs.chunks(6) {
        s.append(c).await.expect("append");
    }
    for page in [1, 4, 7, 23, 100] {
        assert_eq!(read_all(&*s, page).await, evs, "paging by {page} changed the result");
    }
    s.close().await.expect("close");
}

/// What was appended is there after closing and opening again.
pub async fn committed_events_survive_a_reopen(h: &dyn Harness) {
    let s = h.fresh().await;
    let evs: Vec<_> = (0..12).map(sample).collect();
    s.append(&evs).await.expect("append");
    let s = h.reopen(s).await;
    assert_eq!(read_all(&*s, 5).await, evs, "events lost or changed across a reopen");
    s.append(&[sample(99)]).await.expect("append after reopen");
    assert_eq!(read_all(&*s, 50).await.len(), 13, "append after reopen not visible");
    s.close().await.expect("close");
}

/// A working store reports healthy and names its backend.
pub async fn a_healthy_store_says_so(h: &dyn Harness) {
    let s = h.fresh().await;
    assert!(s.health().await.ok, "a fresh store is unhealthy: {:?}", s.health().await);
    assert!(!s.backend().is_empty());
    s.close().await.expect("close");
}

/// `scan_since` may skip older events but never one received at or after `since`.
pub async fn a_scan_since_keeps_every_recent_event(h: &dyn Harness) {
    let s = h.fresh().await;
    let now = adflow_domain::now_ms();
    // Received over the last 10 minutes, one every 10 s.
    let evs: Vec<_> = (0..60u64)
        .map(|i| {
            let mut e = sample(i);
            e.received_at_ms = now - 600_000 + i as i64 * 10_000;
            e
        })
        .collect();
    s.append(&evs).await.expect("append");
    let since = now - 120_000;
    let mut got = Vec::new();
    let mut cur = None;
    loop {
        let p = s.scan_since(since, cur, 7).await.expect("scan_since");
        got.extend(p.events);
        match p.next {
            Some(c) => cur = Some(c),
            None => break,
        }
    }
    let recent: Vec<_> = evs.iter().filter(|e| e.received_at_ms >= since).cloned().collect();
    assert!(recent.len() >= 10);
    for e in &recent {
        assert!(got.contains(e), "scan_since dropped an event received at {}", e.received_at_ms);
    }
    s.close().await.expect("close");
}

/// Reads the log from `from` in pages of `page` until a page comes back empty: the events
/// and the cursor after them. Checks the page contract on the way (at most `page` events,
/// a cursor on every page, the same cursor back when nothing is new).
pub async fn read_log(store: &dyn EventStore, from: &Cursor, page: usize) -> (Vec<StoredEvent>, Cursor) {
    let mut out = Vec::new();
    let mut cursor = from.clone();
    loop {
        let p = store.log_read(&cursor, page).await.expect("log_read failed");
        assert!(p.events.len() <= page, "log_read returned {} events for a page of {page}", p.events.len());
        let next = p.next.expect("every log page carries a cursor");
        if p.events.is_empty() {
            assert_eq!(next, cursor, "an empty page moved the cursor");
            return (out, cursor);
        }
        assert_ne!(next, cursor, "a page with events did not move the cursor");
        out.extend(p.events);
        cursor = next;
    }
}

/// `n` events numbered from `first`, received now (stores that order or seek by receive
/// time see them in append order).
fn recent(first: u64, n: u64) -> Vec<StoredEvent> {
    (first..first + n)
        .map(|i| {
            let mut e = sample(i);
            e.received_at_ms = adflow_domain::now_ms();
            e
        })
        .collect()
}

/// Reading from the oldest position returns every commit, in commit order, field for
/// field; at the end a read returns nothing and leaves the cursor where it was.
pub async fn log_from_oldest_reads_every_commit_in_order(h: &dyn Harness) {
    let s = h.fresh().await;
    let empty = s.log_start(&Start::Oldest).await.expect("log_start(Oldest) of an empty store");
    assert!(read_log(&*s, &empty, 10).await.0.is_empty(), "an empty store's log has events");
    let evs: Vec<_> = (0..40).map(sample).collect();
    for c in evs.chunks(7) {
        s.append(c).await.expect("append");
    }
    let from = s.log_start(&Start::Oldest).await.expect("log_start(Oldest)");
    let (got, end) = read_log(&*s, &from, 1000).await;
    assert_eq!(got, evs, "the log from the oldest position differs from what was committed");
    // The oldest cursor taken before the appends sees them too.
    assert_eq!(read_log(&*s, &empty, 9).await.0, evs, "an oldest cursor taken earlier misses commits");
    s.append(&[sample(40)]).await.expect("append");
    assert_eq!(
        read_log(&*s, &end, 10).await.0,
        vec![sample(40)],
        "the end cursor does not see the next commit"
    );
    s.close().await.expect("close");
}

/// The newest position sees only what is committed after it was taken.
pub async fn log_from_newest_reads_only_later_commits(h: &dyn Harness) {
    let s = h.fresh().await;
    let before = s.log_start(&Start::Newest).await.expect("log_start(Newest) of an empty store");
    let evs: Vec<_> = (0..30).map(sample).collect();
    s.append(&evs[..10]).await.expect("append");
    let newest = s.log_start(&Start::Newest).await.expect("log_start(Newest)");
    assert!(read_log(&*s, &newest, 10).await.0.is_empty(), "the newest position has events after it");
    s.append(&evs[10..20]).await.expect("append");
    s.append(&evs[20..]).await.expect("append");
    assert_eq!(read_log(&*s, &newest, 4).await.0, evs[10..], "newest missed or repeated commits");
    assert_eq!(read_log(&*s, &before, 100).await.0, evs, "newest of an empty store missed commits");
    s.close().await.expect("close");
}

/// A page's cursor resumes exactly after it: many small pages, each read from a cursor
/// handed through `log_start(At)` as a reconnecting reader does, see each event once.
pub async fn log_cursors_resume_exactly_after_their_page(h: &dyn Harness) {
    let s = h.fresh().await;
    let evs: Vec<_> = (0..57).map(sample).collect();
    for c in evs.chunks(5) {
        s.append(c).await.expect("append");
    }
    for page in [1, 3, 8] {
        let mut cursor = s.log_start(&Start::Oldest).await.expect("log_start(Oldest)");
        let mut got = Vec::new();
        loop {
            // Resume as a new reader would: from the cursor of the last page.
            cursor = s.log_start(&Start::At(cursor)).await.expect("log_start(At)");
            let p = s.log_read(&cursor, page).await.expect("log_read");
            if p.events.is_empty() {
                break;
            }
            assert!(!p.gap, "a gap without retention");
            got.extend(p.events);
            cursor = p.next.expect("a cursor");
            assert!(cursor.0.len() <= 64, "cursor {:?} is longer than 64 characters", cursor.0);
        }
        assert_eq!(got, evs, "pages of {page} dropped or repeated events");
    }
    s.close().await.expect("close");
}

/// A read from a time skips what was received (appended, on Redis) before it and keeps
/// everything after.
pub async fn log_from_a_time_skips_earlier_events(h: &dyn Harness) {
    let s = h.fresh().await;
    let early = recent(0, 10);
    s.append(&early[..5]).await.expect("append");
    s.append(&early[5..]).await.expect("append");
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let t = adflow_domain::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let late = recent(10, 10);
    s.append(&late[..3]).await.expect("append");
    s.append(&late[3..]).await.expect("append");
    let from = s.log_start(&Start::Time(t)).await.expect("log_start(Time)");
    assert_eq!(read_log(&*s, &from, 4).await.0, late, "a time start returned the wrong events");
    let from = s.log_start(&Start::Time(t - 3_600_000)).await.expect("log_start(Time) before everything");
    assert_eq!(read_log(&*s, &from, 100).await.0.len(), 20, "a time before everything skipped events");
    let from = s.log_start(&Start::Time(t + 3_600_000)).await.expect("log_start(Time) after everything");
    assert!(read_log(&*s, &from, 100).await.0.is_empty(), "a time after everything returned events");
    s.close().await.expect("close");
}

/// `log_wait` returns once another task commits (and the next read sees the commit), and
/// returns after its timeout when nothing comes.
pub async fn log_wait_wakes_on_a_commit_and_times_out_without_one(h: &dyn Harness) {
    use std::time::Duration;
    let s = h.fresh().await;
    s.append(&[sample(0)]).await.expect("append");
    let newest = s.log_start(&Start::Newest).await.expect("log_start(Newest)");
    // Nothing comes: the wait ends by itself and there is still nothing to read.
    tokio::time::timeout(Duration::from_secs(30), s.log_wait(&newest, Duration::from_millis(200)))
        .await
        .expect("log_wait outlived its timeout");
    assert!(s.log_read(&newest, 10).await.expect("log_read").events.is_empty());
    // A commit from another task ends a long wait.
    let (s2, at) = (s.clone(), newest.clone());
    let waiter = tokio::spawn(async move {
        s2.log_wait(&at, Duration::from_secs(600)).await;
        s2.log_read(&at, 10).await.expect("log_read after the wait").events
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let evs: Vec<_> = (1..4).map(sample).collect();
    s.append(&evs).await.expect("append");
    let got = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("log_wait did not return after a commit")
        .expect("waiting task");
    assert_eq!(got, evs, "the read after the wake-up missed the commit");
    // Something already after the cursor: the wait returns at once.
    tokio::time::timeout(Duration::from_secs(60), s.log_wait(&newest, Duration::from_secs(600)))
        .await
        .expect("log_wait blocked although events were there");
    s.close().await.expect("close");
}

/// A group's committed cursor comes back (and survives a reopen); an unknown group has
/// none; reading from the committed cursor resumes after it.
pub async fn group_positions_round_trip_and_survive_a_reopen(h: &dyn Harness) {
    let s = h.fresh().await;
    assert!(s.group_get("billing").await.expect("group_get").is_none(), "a new store knows a group");
    let evs: Vec<_> = (0..12).map(sample).collect();
    s.append(&evs).await.expect("append");
    let from = s.log_start(&Start::Oldest).await.expect("log_start");
    let p = s.log_read(&from, 5).await.expect("log_read");
    let c5 = p.next.expect("a cursor");
    s.group_commit("billing", &c5).await.expect("group_commit");
    s.group_commit("fraud.v2", &from).await.expect("group_commit");
    let pos = s.group_get("billing").await.expect("group_get").expect("a committed group");
    assert_eq!((pos.cursor.clone(), pos.lost_events), (c5.clone(), 0));
    let c12 = s.log_read(&c5, 100).await.expect("log_read").next.expect("a cursor");
    s.group_commit("billing", &c12).await.expect("a second commit");
    assert_eq!(
        s.group_get("billing").await.expect("group_get").expect("group").cursor,
        c12,
        "commit not replaced"
    );
    let s = h.reopen(s).await;
    assert_eq!(s.group_get("billing").await.expect("group_get").expect("group lost on reopen").cursor, c12);
    let fraud = s.group_get("fraud.v2").await.expect("group_get").expect("group lost on reopen");
    assert_eq!(fraud.cursor, from);
    let at = s.log_start(&Start::At(fraud.cursor)).await.expect("log_start(At) of a group cursor");
    assert_eq!(read_log(&*s, &at, 5).await.0, evs, "resuming a group lost events");
    let at = s.log_start(&Start::At(c5)).await.expect("log_start(At)");
    assert_eq!(read_log(&*s, &at, 5).await.0, evs[5..], "resuming after a page repeated or lost events");
    assert!(s.group_get("nobody").await.expect("group_get").is_none(), "an unknown group has a cursor");
    s.close().await.expect("close");
}

/// A cursor this backend did not make is `BadCursor`, wherever it is handed in.
pub async fn malformed_log_cursors_are_refused(h: &dyn Harness) {
    let s = h.fresh().await;
    s.append(&[sample(0)]).await.expect("append");
    for bad in ["", "not a cursor", "??"] {
        let c = Cursor(bad.into());
        let is_bad = |r: &Result<(), StoreError>| matches!(r, Err(StoreError::BadCursor(_)));
        assert!(is_bad(&s.log_read(&c, 10).await.map(|_| ())), "log_read took {bad:?}");
        assert!(is_bad(&s.log_start(&Start::At(c.clone())).await.map(|_| ())), "log_start took {bad:?}");
        assert!(is_bad(&s.group_commit("g", &c).await), "group_commit took {bad:?}");
        assert!(is_bad(&s.check_cursor(&c)), "check_cursor took {bad:?}");
        // A wait on it does not hang.
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            s.log_wait(&c, std::time::Duration::from_millis(50)),
        )
        .await
        .expect("log_wait on a bad cursor hung");
    }
    assert!(s.group_get("g").await.expect("group_get").is_none(), "a refused commit was stored");
    s.close().await.expect("close");
}

/// Starts a `redis-server` on `port` with an fsync-always AOF in `dir` (for outage tests
/// that kill and restart it) and waits until it accepts connections.
pub fn spawn_redis(port: u16, dir: &std::path::Path) -> std::process::Child {
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .args(["--appendfsync", "always", "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}
