//! Pipeline behaviour around a failing store, driven through a store that fails on demand.

use super::*;
use adflow_store::async_trait;
use adflow_store::{Cursor, Health, Page, StoreError};
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;

/// An in-memory store whose next `fail` appends fail; while `gated`, each append first
/// waits for a permit of `gate` (a commit held in flight).
struct FlakyStore {
    events: Mutex<Vec<StoredEvent>>,
    fail: AtomicU32,
    gated: std::sync::atomic::AtomicBool,
    gate: tokio::sync::Semaphore,
    appends: AtomicU32,
}

impl Default for FlakyStore {
    fn default() -> Self {
        Self {
            events: Mutex::default(),
            fail: AtomicU32::new(0),
            gated: Default::default(),
            gate: tokio::sync::Semaphore::new(0),
            appends: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl EventStore for FlakyStore {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn append(&self, events: &[StoredEvent]) -> adflow_store::Result<()> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        if self.gated.load(Ordering::SeqCst) {
            self.gate.acquire().await.unwrap().forget();
        }
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Io {
                op: "write",
                path: "mem".into(),
                source: std::io::Error::other("disk on fire"),
            });
        }
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
    async fn scan(&self, _: Option<Cursor>, _: usize) -> adflow_store::Result<Page> {
        Ok(Page { events: self.events.lock().unwrap().clone(), next: None })
    }
    async fn health(&self) -> Health {
        Health { ok: true, detail: "ok".into(), degraded: false }
    }
    async fn close(&self) -> adflow_store::Result<()> {
        Ok(())
    }
}

fn cfg() -> IngestConfig {
    IngestConfig {
        store_retry_attempts: 3,
        store_retry_base_ms: 1,
        store_retry_max_ms: 2,
        ..Default::default()
    }
}

fn ev(id: &str) -> Bytes {
    use prost::Message;
    let e = pb::AdEvent {
        event_id: id.into(),
        ad_id: "ad".into(),
        r#type: pb::EventType::Click as i32,
        ..Default::default()
    };
    e.encode_to_vec().into()
}

fn start(store: Arc<FlakyStore>) -> Pipeline {
    let analytics = Arc::new(RwLock::new(Analytics::default()));
    let dedup = Some(Arc::new(Window::new(60_000, 10_000)));
    Pipeline::start(cfg(), Limits::default(), store, Some(analytics), dedup, None, None)
}

#[tokio::test]
async fn a_failed_commit_fails_durable_requests_and_their_retry_is_accepted() {
    let store = Arc::new(FlakyStore::default());
    store.fail.store(3, Ordering::SeqCst);
    let p = start(store.clone());
    let pending = p.enqueue(vec![ev("a"), ev("b")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    assert!(matches!(pending.wait().await, Err(IngestError::CommitFailed(_))));
    assert!(store.events.lock().unwrap().is_empty());
    assert_eq!(p.queued(), 0, "room is given back after a failure");
    // The ids were forgotten, so the client's retry is stored, not refused as duplicate.
    let reply = p.enqueue(vec![ev("a"), ev("b")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    assert_eq!(reply.wait().await.unwrap().accepted, 2);
    assert_eq!(store.events.lock().unwrap().len(), 2);
    p.shutdown().await;
}

#[tokio::test]
async fn events_acked_in_accepted_mode_are_retried_until_stored() {
    let store = Arc::new(FlakyStore::default());
    store.fail.store(7, Ordering::SeqCst); // more failures than the retry budget
    let p = start(store.clone());
    let r = p.enqueue(vec![ev("x"), ev("y")], pb::AckMode::Accepted, 0, WhenFull::Refuse).await.unwrap();
    assert_eq!(r.wait().await.unwrap().accepted, 2);
    while store.events.lock().unwrap().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    p.shutdown().await;
    let ids: Vec<_> = store.events.lock().unwrap().iter().map(|e| e.event().unwrap().event_id).collect();
    assert_eq!(ids, vec!["x", "y"]);
    assert_eq!(p.counters().store_errors.load(Ordering::Relaxed), 7);
}

#[tokio::test]
async fn after_shutdown_requests_are_refused_as_unavailable() {
    let p = start(Arc::new(FlakyStore::default()));
    p.shutdown().await;
    let err = p.enqueue(vec![ev("late")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap_err();
    assert!(matches!(err, IngestError::ShuttingDown), "{err}");
}

#[tokio::test]
async fn the_receive_time_fills_a_missing_timestamp() {
    let store = Arc::new(FlakyStore::default());
    let p = start(store.clone());
    p.enqueue(vec![ev("t")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap().wait().await.unwrap();
    let e = store.events.lock().unwrap()[0].clone();
    assert!(e.event().unwrap().timestamp_ms > 0);
    assert_eq!(e.event().unwrap().timestamp_ms, e.received_at_ms);
    p.shutdown().await;
}

/// Waits until the store has seen `n` append attempts (the first commit is in flight).
async fn appends_reach(store: &FlakyStore, n: u32) {
    while store.appends.load(Ordering::SeqCst) < n {
        tokio::task::yield_now().await;
    }
}

/// True when `task` has still not finished after the runtime had many chances to run it.
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    !task.is_finished()
}

#[tokio::test]
async fn a_repeat_racing_a_failing_first_commit_fails_with_it_and_its_retry_is_stored() {
    let store = Arc::new(FlakyStore::default());
    store.gated.store(true, Ordering::SeqCst);
    store.fail.store(3, Ordering::SeqCst); // the whole retry budget
    let p = start(store.clone());
    let first = p.enqueue(vec![ev("x1"), ev("x2")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    appends_reach(&store, 1).await;
    // The same batch again, while the first commit is in flight: duplicates, but pending.
    let repeat =
        p.enqueue(vec![ev("x1"), ev("x2")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    store.gate.add_permits(3);
    assert!(matches!(first.wait().await, Err(IngestError::CommitFailed(_))));
    let err = repeat.wait().await.expect_err("a duplicate of an unstored event is not 'stored'");
    assert!(matches!(err, IngestError::CommitFailed(_)), "{err}");
    assert!(store.events.lock().unwrap().is_empty());
    // Both clients retry: the first retry is stored, the second is a duplicate.
    store.gated.store(false, Ordering::SeqCst);
    let r = p.enqueue(vec![ev("x1"), ev("x2")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    assert_eq!(r.wait().await.unwrap().accepted, 2);
    let r = p.enqueue(vec![ev("x1"), ev("x2")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    assert_eq!(r.wait().await.unwrap().duplicates, 2);
    assert_eq!(store.events.lock().unwrap().len(), 2);
    p.shutdown().await;
}

#[tokio::test]
async fn a_repeat_racing_a_commit_is_answered_only_after_that_commit() {
    let store = Arc::new(FlakyStore::default());
    store.gated.store(true, Ordering::SeqCst);
    let p = Arc::new(start(store.clone()));
    let first = p.enqueue(vec![ev("y1")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    appends_reach(&store, 1).await;
    // A repeat plus a new event: its reply needs both commits.
    let repeat =
        p.enqueue(vec![ev("y1"), ev("y2")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    let waiting = tokio::spawn(repeat.wait());
    assert!(still_waiting(&waiting).await, "the repeat was answered while the first copy was not stored");
    assert!(store.events.lock().unwrap().is_empty());
    store.gate.add_permits(10);
    assert_eq!(first.wait().await.unwrap().accepted, 1);
    let reply = waiting.await.unwrap().unwrap();
    assert_eq!((reply.accepted, reply.duplicates), (1, 1));
    let ids: Vec<_> = store.events.lock().unwrap().iter().map(|e| e.event().unwrap().event_id).collect();
    assert_eq!(ids, vec!["y1", "y2"]);
    p.shutdown().await;
}

#[tokio::test]
async fn an_accepted_mode_repeat_of_a_pending_id_is_answered_at_once() {
    let store = Arc::new(FlakyStore::default());
    store.gated.store(true, Ordering::SeqCst);
    let p = start(store.clone());
    let _first = p.enqueue(vec![ev("z")], pb::AckMode::Accepted, 0, WhenFull::Refuse).await.unwrap();
    appends_reach(&store, 1).await;
    let r = p.enqueue(vec![ev("z")], pb::AckMode::Accepted, 0, WhenFull::Refuse).await.unwrap();
    assert_eq!(r.wait().await.unwrap().duplicates, 1);
    store.gate.add_permits(10);
    p.shutdown().await;
    assert_eq!(store.events.lock().unwrap().len(), 1);
}

fn ids(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n).map(|i| ev(&format!("{prefix}-{i}"))).collect()
}

fn small(admission_wait_ms: u64) -> IngestConfig {
    IngestConfig { queue_capacity_events: 100, admission_wait_ms, ..cfg() }
}

#[tokio::test]
async fn under_overload_a_unary_caller_gets_its_turn_in_line_with_streams() {
    let store = Arc::new(FlakyStore::default());
    store.gated.store(true, Ordering::SeqCst);
    let analytics = Arc::new(RwLock::new(Analytics::default()));
    let p = Arc::new(Pipeline::start(
        small(60_000),
        Limits::default(),
        store.clone(),
        Some(analytics),
        None,
        None,
        None,
    ));
    // The pipeline is full: 100 events held in a commit that does not end yet.
    let first = p.enqueue(ids("full", 100), pb::AckMode::Durable, 0, WhenFull::Wait).await.unwrap();
    appends_reach(&store, 1).await;
    // A stream queues for room, then an ordinary request, then another stream.
    let spawn = |prefix: &'static str, n: usize, mode: WhenFull| {
        let p = p.clone();
        tokio::spawn(
            async move { p.enqueue(ids(prefix, n), pb::AckMode::Durable, 0, mode).await?.wait().await },
        )
    };
    let settle = || async {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    };
    let s1 = spawn("s1", 50, WhenFull::Wait);
    settle().await;
    let unary = spawn("u", 10, WhenFull::Refuse);
    settle().await;
    let s2 = spawn("s2", 50, WhenFull::Wait);
    settle().await;
    assert!(!unary.is_finished(), "the ordinary request waits in line instead of being refused");
    store.gate.add_permits(1_000);
    first.wait().await.unwrap();
    assert_eq!(unary.await.unwrap().unwrap().accepted, 10, "served in its turn");
    assert_eq!(s1.await.unwrap().unwrap().accepted, 50);
    assert_eq!(s2.await.unwrap().unwrap().accepted, 50);
    p.shutdown().await;
}

#[tokio::test]
async fn a_request_that_waited_its_admission_time_is_refused_with_a_retry_hint() {
    let store = Arc::new(FlakyStore::default());
    store.gated.store(true, Ordering::SeqCst);
    let analytics = Arc::new(RwLock::new(Analytics::default()));
    let p = Pipeline::start(small(20), Limits::default(), store.clone(), Some(analytics), None, None, None);
    let _first = p.enqueue(ids("full", 100), pb::AckMode::Durable, 0, WhenFull::Wait).await.unwrap();
    appends_reach(&store, 1).await;
    let err = p.enqueue(ids("late", 5), pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap_err();
    assert!(matches!(err, IngestError::Full { queued: 100, capacity: 100 }), "{err}");
    let status = tonic::Status::from(err);
    assert_eq!(status.metadata().get(crate::status::RETRY_PUSHBACK).unwrap().to_str().unwrap(), "500");
    store.gate.add_permits(1_000);
    p.shutdown().await;
}

#[tokio::test]
async fn a_repeat_of_several_pending_commits_waits_for_each_and_no_ticket_stays_open() {
    let store = Arc::new(FlakyStore::default());
    store.gated.store(true, Ordering::SeqCst);
    let p = Arc::new(start(store.clone()));
    let a = p.enqueue(vec![ev("a1"), ev("a2")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    appends_reach(&store, 1).await;
    let b = p.enqueue(vec![ev("b1")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    appends_reach(&store, 2).await;
    // Repeats of two first copies, interleaved (nothing new: no commit of its own).
    let batch = vec![ev("a1"), ev("b1"), ev("a2")];
    let repeat = p.enqueue(batch, pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    let waiting = tokio::spawn(repeat.wait());
    store.gate.add_permits(1); // only the first commit (a1, a2) ends
    assert_eq!(a.wait().await.unwrap().accepted, 2);
    assert!(still_waiting(&waiting).await, "answered while b1's first copy was not stored");
    store.gate.add_permits(10);
    assert_eq!(b.wait().await.unwrap().accepted, 1);
    let reply = waiting.await.unwrap().unwrap();
    assert_eq!((reply.accepted, reply.duplicates), (0, 3));
    assert_eq!(store.events.lock().unwrap().len(), 3);
    p.shutdown().await;
    assert_eq!(p.in_flight.len(), 0, "every commit's ticket is closed");
}

#[tokio::test]
async fn an_accepted_mode_repeat_of_a_pending_durable_id_fails_with_it() {
    let store = Arc::new(FlakyStore::default());
    store.gated.store(true, Ordering::SeqCst);
    store.fail.store(3, Ordering::SeqCst); // the whole retry budget: the durable copy is dropped
    let p = start(store.clone());
    let first = p.enqueue(vec![ev("d1"), ev("d2")], pb::AckMode::Durable, 0, WhenFull::Refuse).await.unwrap();
    appends_reach(&store, 1).await;
    let repeat =
        p.enqueue(vec![ev("d1"), ev("d2")], pb::AckMode::Accepted, 0, WhenFull::Refuse).await.unwrap();
    let waiting = tokio::spawn(repeat.wait());
    assert!(
        still_waiting(&waiting).await,
        "answered 'duplicate' while the durable first copy was not stored"
    );
    store.gate.add_permits(3);
    assert!(matches!(first.wait().await, Err(IngestError::CommitFailed(_))));
    let err = waiting.await.unwrap().expect_err("the first copy was dropped: no 'duplicate'");
    assert!(matches!(err, IngestError::CommitFailed(_)), "{err}");
    // Its retry is taken as new and stored.
    store.gated.store(false, Ordering::SeqCst);
    let r = p.enqueue(vec![ev("d1"), ev("d2")], pb::AckMode::Accepted, 0, WhenFull::Refuse).await.unwrap();
    assert_eq!(r.wait().await.unwrap().accepted, 2);
    p.shutdown().await;
    assert_eq!(store.events.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn shutdown_ends_even_while_a_commit_retries_on_a_dead_store() {
    let store = Arc::new(FlakyStore::default());
    store.fail.store(u32::MAX, Ordering::SeqCst);
    // One commit at a time, as on the file store: the batcher itself is inside the commit.
    let analytics = Arc::new(RwLock::new(Analytics::default()));
    let one = IngestConfig { commits_in_flight: 1, ..cfg() };
    let p = Pipeline::start(one, Limits::default(), store.clone(), Some(analytics), None, None, None);
    let r = p.enqueue(vec![ev("s1")], pb::AckMode::Accepted, 0, WhenFull::Refuse).await.unwrap();
    assert_eq!(r.wait().await.unwrap().accepted, 1);
    appends_reach(&store, 5).await; // past the retry budget: accepted-mode events are kept
    tokio::time::timeout(std::time::Duration::from_secs(10), p.shutdown())
        .await
        .expect("shutdown gives up on a dead store after its budget");
    assert_eq!(p.counters().abandoned.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn at_shutdown_on_a_dead_store_later_batches_do_not_each_spend_a_retry_budget() {
    let store = Arc::new(FlakyStore::default());
    store.fail.store(u32::MAX, Ordering::SeqCst);
    let analytics = Arc::new(RwLock::new(Analytics::default()));
    // One event per commit: five queued batches.
    let one = IngestConfig { commits_in_flight: 1, max_batch_events: 1, ..cfg() };
    let p = Pipeline::start(one, Limits::default(), store.clone(), Some(analytics), None, None, None);
    for i in 0..5 {
        let r =
            p.enqueue(vec![ev(&format!("q{i}"))], pb::AckMode::Accepted, 0, WhenFull::Refuse).await.unwrap();
        r.wait().await.unwrap();
    }
    appends_reach(&store, 5).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), p.shutdown()).await.expect("shutdown ends");
    assert_eq!(p.counters().abandoned.load(Ordering::Relaxed), 5);
    // The first batch spends its budget (2 x 3 attempts after the stop); the other four
    // try once each, instead of 6 attempts each.
    let appends = store.appends.load(Ordering::SeqCst);
    assert!(appends <= 25, "{appends} attempts");
}
