//! No acked event is lost when Redis dies mid-ingest: batches spill to the local buffer
//! while it is down and are replayed, in order and exactly once, when it is back.
//! Runs when ADFLOW_TEST_REDIS_URL is set (so redis-server is installed); it starts and
//! kills its own redis-server with an fsync-always AOF on a free port.

use adflow_proto::v1::AdEvent;
use adflow_store::redis_store::{RedisConfig, RedisStore};
use adflow_store::resilient::{ResilienceConfig, Resilient};
use adflow_store::{EventStore, StoredEvent};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn ev(b: usize, i: usize) -> StoredEvent {
    StoredEvent::encode(
        1_800_000_000_000,
        &AdEvent { event_id: format!("r-{b}-{i}"), ad_id: "ad".into(), r#type: 1, ..Default::default() },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_event_reaches_redis_exactly_once_across_an_outage() {
    if std::env::var("ADFLOW_TEST_REDIS_URL").is_err() {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL (and install redis-server) to run the outage test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = adflow_store::conformance::spawn_redis(port, dir.path());
    let rcfg = RedisConfig {
        url: format!("redis://127.0.0.1:{port}/"),
        stream_key: "{t}:events".into(),
        max_len: 10_000_000,
        ..Default::default()
    };
    let backend: Arc<dyn EventStore> = Arc::new(RedisStore::open(rcfg.clone()).await.unwrap());
    let rcfg2 = ResilienceConfig {
        spill_dir: dir.path().join("spill"),
        attempts: 2,
        retry_base_ms: 5,
        breaker_cooldown_ms: 200,
        drain_page: 100,
    };
    let store = Resilient::open(backend, rcfg2).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain = tokio::spawn(store.clone().drain_loop(Duration::from_millis(50), stop_rx));

    let mut acked = HashSet::new();
    for b in 0..60 {
        let batch: Vec<_> = (0..50).map(|i| ev(b, i)).collect();
        store.append(&batch).await.expect("every batch is acked, to Redis or to the spill");
        acked.extend(batch.iter().map(|e| e.event().unwrap().event_id));
        if b == 20 {
            redis.kill().unwrap(); // the backend dies mid-ingest
            redis.wait().unwrap();
        }
        if b == 40 {
            redis = adflow_store::conformance::spawn_redis(port, dir.path()); // and comes back with its AOF
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.spilled() > 0, "the outage made the store spill");
    for _ in 0..400 {
        if store.pending().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.pending().await, 0, "the spill drained");
    assert_eq!(store.replayed(), store.spilled());
    let _ = stop_tx.send(true);
    drain.await.unwrap();

    let check = RedisStore::open(rcfg).await.unwrap();
    let all = adflow_store::conformance::read_all(&check, 1000).await;
    let ids: Vec<_> = all.iter().map(|e| e.event().unwrap().event_id).collect();
    let unique: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "no event twice");
    assert_eq!(unique, acked, "every acked event is in Redis");
    // Order is kept: batch b's events come before batch b+1's.
    let order: Vec<usize> = ids.iter().map(|i| i.split('-').nth(1).unwrap().parse().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "replay kept the order");
    redis.kill().unwrap();
    let _ = redis.wait();
}

/// A commit that Redis runs after its client gave up waiting (a response timeout while
/// Redis was stalled: a long script, a fork, a pause) must not be written a second time
/// by the retry: the retry asks for the commit's landed marker first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_reply_timed_out_is_not_written_again() {
    let Some(redis) = OwnRedis::start("lost-reply test") else { return };
    let (dir, url) = (&redis.dir, redis.url.clone());
    let rcfg = RedisConfig { url: url.clone(), stream_key: "{t}:events".into(), ..Default::default() };
    let backend: Arc<dyn EventStore> = Arc::new(RedisStore::open(rcfg.clone()).await.unwrap());
    let cfg = ResilienceConfig {
        spill_dir: dir.path().join("spill"),
        attempts: 3,
        retry_base_ms: 20,
        breaker_cooldown_ms: 100,
        drain_page: 100,
    };
    let store = Resilient::open(backend, cfg).await.unwrap();
    store.append(&[ev(0, 0)]).await.unwrap(); // connected and warm

    // Stall Redis past the store's 2 s response timeout: the commit is read, then run
    // when the pause ends, after its caller has heard an error.
    let admin = redis::Client::open(url.as_str()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () =
        redis::cmd("CLIENT").arg("PAUSE").arg(2_600).arg("ALL").query_async(&mut admin).await.unwrap();
    let batch: Vec<_> = (0..50).map(|i| ev(1, i)).collect();
    store.append(&batch).await.expect("acked, to Redis or to the spill");
    for _ in 0..200 {
        if store.pending().await == 0 {
            break;
        }
        let _ = store.drain_once().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.pending().await, 0, "the spill drained");

    let check = RedisStore::open(rcfg).await.unwrap();
    let all = adflow_store::conformance::read_all(&check, 1000).await;
    let ids: Vec<_> = all.iter().map(|e| e.event().unwrap().event_id).collect();
    let unique: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), 51, "each event once (placed: spilled {}): {ids:?}", store.spilled());
    assert_eq!(unique.len(), 51);
}

/// A redis-server of the test's own (fsync-always AOF in a temporary directory), stopped
/// when dropped, even after a failed assertion (it would outlive the test).
struct OwnRedis {
    dir: tempfile::TempDir,
    url: String,
    child: std::process::Child,
}

impl OwnRedis {
    /// Starts one on a free port, or prints that `what` was skipped and returns None
    /// without ADFLOW_TEST_REDIS_URL (which says redis-server is installed).
    fn start(what: &str) -> Option<Self> {
        if std::env::var("ADFLOW_TEST_REDIS_URL").is_err() {
            eprintln!("skipped: set ADFLOW_TEST_REDIS_URL (and install redis-server) to run the {what}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = adflow_store::conformance::spawn_redis(port, dir.path());
        Some(Self { dir, url: format!("redis://127.0.0.1:{port}/"), child })
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis runs a MULTI on past a command that fails: when the XADD is refused (the stream
/// key holds another type), the landed marker must not be set, or a retry would take the
/// refused batch for stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_inside_its_transaction_leaves_no_landed_marker() {
    let Some(redis) = OwnRedis::start("marker test") else { return };
    let url = redis.url.clone();
    let store = RedisStore::open(RedisConfig {
        url: url.clone(),
        stream_key: "{t}:events".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let batch: Vec<_> = (0..3).map(|i| ev(7, i)).collect();
    let marker = adflow_store::Marker::of(&batch);
    store.append_marked(&batch, &marker).await.unwrap();
    assert_eq!(
        store.landed(&batch[..1]).await.unwrap(),
        vec![Some(marker.landed)],
        "a stored commit is marked"
    );

    let admin = redis::Client::open(url.as_str()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL").arg("{t}:events").query_async(&mut admin).await.unwrap();
    let _: () =
        redis::cmd("SET").arg("{t}:events").arg("not a stream").query_async(&mut admin).await.unwrap();
    let other: Vec<_> = (0..3).map(|i| ev(8, i)).collect();
    assert!(store.append_marked(&other, &adflow_store::Marker::of(&other)).await.is_err());
    assert_eq!(store.landed(&other[..1]).await.unwrap(), vec![None], "a refused commit is not marked");
}
