//! The shared conformance suite against a MongoDB-wire server (ADFLOW_TEST_MONGODB_URI, set by .ci/run).

use adflow_store::EventStore;
use adflow_store::conformance::{Harness, run_all};
use adflow_store::mongo_store::{MongoConfig, MongoStore};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct MongoHarness {
    uri: String,
    colls: Mutex<Vec<String>>,
}

impl MongoHarness {
    fn cfg(&self, coll: &str) -> MongoConfig {
        // No settle time: the suite's events are received in the future (sample()) or
        // just now, and read at once (settling has its own test below).
        MongoConfig {
            uri: self.uri.clone(),
            database: "adflow_test".into(),
            collection: coll.into(),
            log_settle_ms: 0,
        }
    }
}

#[async_trait]
impl Harness for MongoHarness {
    async fn fresh(&self) -> Arc<dyn EventStore> {
        let coll = format!("events_{}", uuid::Uuid::new_v4().simple());
        self.colls.lock().unwrap().push(coll.clone());
        Arc::new(MongoStore::open(self.cfg(&coll)).await.expect("connect to mongodb"))
    }

    async fn reopen(&self, store: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        store.close().await.expect("close");
        let coll = self.colls.lock().unwrap().last().expect("a fresh store first").clone();
        Arc::new(MongoStore::open(self.cfg(&coll)).await.expect("reconnect"))
    }
}

#[tokio::test]
async fn mongodb_backend_passes_the_conformance_suite() {
    let Ok(uri) = std::env::var("ADFLOW_TEST_MONGODB_URI") else {
        eprintln!(
            "skipped: set ADFLOW_TEST_MONGODB_URI (e.g. mongodb://127.0.0.1:27019/?directConnection=true)"
        );
        return;
    };
    run_all(&MongoHarness { uri, colls: Mutex::new(Vec::new()) }).await;
}

#[tokio::test]
async fn replaying_a_batch_into_mongodb_is_harmless() {
    let Ok(uri) = std::env::var("ADFLOW_TEST_MONGODB_URI") else {
        eprintln!("skipped: set ADFLOW_TEST_MONGODB_URI to run against a MongoDB-wire server");
        return;
    };
    let h = MongoHarness { uri, colls: Mutex::new(Vec::new()) };
    let s = h.fresh().await;
    let evs: Vec<_> = (0..10).map(adflow_store::conformance::sample).collect();
    s.append(&evs[..6]).await.unwrap();
    // A retry of a batch that was partly written before a failure: no error, no second copy.
    s.append(&evs).await.unwrap();
    assert_eq!(adflow_store::conformance::read_all(&*s, 100).await, evs);
}

#[tokio::test]
async fn long_event_ids_get_short_cursors_that_resume_exactly() {
    use adflow_store::eventlog::Start;
    let Ok(uri) = std::env::var("ADFLOW_TEST_MONGODB_URI") else {
        eprintln!("skipped: set ADFLOW_TEST_MONGODB_URI to run against a MongoDB-wire server");
        return;
    };
    let h = MongoHarness { uri, colls: Mutex::new(Vec::new()) };
    let s = h.fresh().await;
    // 128-byte ids, several per millisecond, a mix of short and long ones.
    let evs: Vec<_> = (0..30u64)
        .map(|i| {
            let mut ev = adflow_store::conformance::sample(i).event().unwrap();
            ev.event_id = if i % 3 == 0 { format!("s{i:03}") } else { format!("{i:03}{}", "x".repeat(125)) };
            adflow_store::StoredEvent::encode(1_800_000_000_000 + (i / 4) as i64, &ev)
        })
        .collect();
    let mut sorted = evs.clone();
    sorted.sort_by_key(|e| (e.received_at_ms, e.event().unwrap().event_id));
    s.append(&evs).await.unwrap();
    for page in [1, 4] {
        let mut cursor = s.log_start(&Start::Oldest).await.unwrap();
        let mut got = Vec::new();
        loop {
            let p = s.log_read(&cursor, page).await.unwrap();
            if p.events.is_empty() {
                break;
            }
            got.extend(p.events);
            cursor = p.next.unwrap();
            assert!(cursor.0.len() <= 64, "{} is {} characters", cursor.0, cursor.0.len());
            s.check_cursor(&cursor).unwrap();
        }
        assert_eq!(got, sorted, "pages of {page}");
    }
    // A hashed cursor as a group position, and as the newest position.
    let newest = s.log_start(&Start::Newest).await.unwrap();
    s.group_commit("long", &newest).await.unwrap();
    assert_eq!(s.group_get("long").await.unwrap().unwrap().cursor, newest);
    assert!(s.log_read(&newest, 10).await.unwrap().events.is_empty());
}

#[tokio::test]
async fn a_cursor_whose_events_were_deleted_reads_on_with_a_gap() {
    use adflow_store::eventlog::Start;
    use mongodb::bson::{Document, doc};
    let Ok(uri) = std::env::var("ADFLOW_TEST_MONGODB_URI") else {
        eprintln!("skipped: set ADFLOW_TEST_MONGODB_URI to run against a MongoDB-wire server");
        return;
    };
    let h = MongoHarness { uri: uri.clone(), colls: Mutex::new(Vec::new()) };
    let s = h.fresh().await;
    let evs: Vec<_> = (0..10).map(adflow_store::conformance::sample).collect();
    s.append(&evs).await.unwrap();
    let oldest = s.log_start(&Start::Oldest).await.unwrap();
    let c3 = s.log_read(&oldest, 3).await.unwrap().next.unwrap();
    let c7 = s.log_read(&c3, 4).await.unwrap().next.unwrap();
    // What retention (a TTL index, a scheduled delete) does: the oldest six go.
    let coll = h.colls.lock().unwrap().last().unwrap().clone();
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let c = client.database("adflow_test").collection::<Document>(&coll);
    c.delete_many(doc! {"r": {"$lt": 1_800_000_000_006i64}}).await.unwrap();
    let p = s.log_read(&c3, 10).await.unwrap();
    assert!(p.gap, "reading from a deleted position does not report the gap");
    assert_eq!(p.events, evs[6..]);
    let p = s.log_read(&c7, 10).await.unwrap();
    assert!(!p.gap, "a position that is still stored reported a gap");
    assert_eq!(p.events, evs[7..]);
    assert!(!s.log_read(&oldest, 10).await.unwrap().gap, "the oldest position reported a gap");
}

#[tokio::test]
async fn log_reads_wait_for_inserts_to_settle_so_out_of_order_batches_are_not_skipped() {
    use adflow_store::eventlog::Start;
    use std::time::Duration;
    let Ok(uri) = std::env::var("ADFLOW_TEST_MONGODB_URI") else {
        eprintln!("skipped: set ADFLOW_TEST_MONGODB_URI to run against a MongoDB-wire server");
        return;
    };
    let h = MongoHarness { uri, colls: Mutex::new(Vec::new()) };
    let coll = format!("events_{}", uuid::Uuid::new_v4().simple());
    let s = MongoStore::open(MongoConfig { log_settle_ms: 500, ..h.cfg(&coll) }).await.unwrap();
    let now = adflow_domain::now_ms();
    let at = |i: u64, r: i64| {
        let mut e = adflow_store::conformance::sample(i);
        e.received_at_ms = r;
        e
    };
    // Two batches in flight: the later-received one is inserted first.
    let (x, y) = (at(2, now), at(1, now - 50));
    s.append(std::slice::from_ref(&x)).await.unwrap();
    let oldest = s.log_start(&Start::Oldest).await.unwrap();
    let early = s.log_read(&oldest, 10).await.unwrap();
    assert!(early.events.is_empty(), "an insert younger than the settle time was read");
    assert_eq!(early.next.as_ref(), Some(&oldest));
    s.append(std::slice::from_ref(&y)).await.unwrap();
    // The wait ends once they have settled; then both come, in (receive time, id) order.
    tokio::time::timeout(Duration::from_secs(30), s.log_wait(&oldest, Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(s.log_read(&oldest, 10).await.unwrap().events, vec![y, x]);
}
