//! The conformance suite every `EventStore` backend must pass. A backend's test file
//! implements `Harness` (how to open a fresh store, and how to reopen the same data) and
//! calls `run_all`; each check panics with a message naming the broken guarantee.

use crate::{EventStore, StoredEvent};
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
