//! The shared conformance suite against a real Redis (ADFLOW_TEST_REDIS_URL, set by .ci/run).

use adflow_store::EventStore;
use adflow_store::conformance::{Harness, run_all};
use adflow_store::redis_store::{RedisConfig, RedisStore};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct RedisHarness {
    url: String,
    cluster_nodes: Vec<String>,
    keys: Mutex<Vec<String>>,
}

impl RedisHarness {
    fn cfg(&self, key: &str) -> RedisConfig {
        RedisConfig {
            url: self.url.clone(),
            cluster_nodes: self.cluster_nodes.clone(),
            stream_key: key.into(),
            max_len: 1_000_000,
        }
    }
}

#[async_trait]
impl Harness for RedisHarness {
    async fn fresh(&self) -> Arc<dyn EventStore> {
        let key = format!("{{adflow-test}}:events:{}", uuid::Uuid::new_v4());
        self.keys.lock().unwrap().push(key.clone());
        Arc::new(RedisStore::open(self.cfg(&key)).await.expect("connect to redis"))
    }

    async fn reopen(&self, store: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        store.close().await.expect("close");
        let key = self.keys.lock().unwrap().last().expect("a fresh store first").clone();
        Arc::new(RedisStore::open(self.cfg(&key)).await.expect("reconnect"))
    }
}

#[tokio::test]
async fn redis_backend_passes_the_conformance_suite() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL (e.g. redis://127.0.0.1:6390/) to run against Redis");
        return;
    };
    run_all(&RedisHarness { url, cluster_nodes: Vec::new(), keys: Mutex::new(Vec::new()) }).await;
}

#[tokio::test]
async fn redis_backend_passes_the_conformance_suite_on_a_cluster() {
    let Ok(nodes) = std::env::var("ADFLOW_TEST_REDIS_CLUSTER") else {
        eprintln!(
            "skipped: set ADFLOW_TEST_REDIS_CLUSTER (comma-separated node URLs) to run against a Redis Cluster"
        );
        return;
    };
    let cluster_nodes = nodes.split(',').map(|s| s.trim().to_owned()).collect();
    run_all(&RedisHarness { url: String::new(), cluster_nodes, keys: Mutex::new(Vec::new()) }).await;
}

#[tokio::test]
async fn a_cursor_trimmed_away_by_max_len_reads_on_with_a_gap() {
    use adflow_store::eventlog::Start;
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run against Redis");
        return;
    };
    let h = RedisHarness { url, cluster_nodes: Vec::new(), keys: Mutex::new(Vec::new()) };
    let key = format!("{{adflow-test}}:events:{}", uuid::Uuid::new_v4());
    let s = RedisStore::open(RedisConfig { max_len: 10, ..h.cfg(&key) }).await.unwrap();
    let evs: Vec<_> = (0..50).map(adflow_store::conformance::sample).collect();
    s.append(&evs[..5]).await.unwrap();
    let oldest = s.log_start(&Start::Oldest).await.unwrap();
    let first = s.log_read(&oldest, 1).await.unwrap();
    assert!(!first.gap);
    let after_first = first.next.unwrap();
    assert!(!s.log_read(&after_first, 1).await.unwrap().gap, "no gap before any trim");
    // Far past max_len: the approximate trim drops whole stream nodes, the first ones included.
    for _ in 0..40 {
        s.append(&evs).await.unwrap();
    }
    let p = s.log_read(&after_first, 5).await.unwrap();
    assert!(p.gap, "reading from a trimmed position does not report the gap");
    assert_eq!(p.events.len(), 5, "the read goes on from the oldest entry left");
    // The oldest position and a page's own cursor are never gaps.
    assert!(!s.log_read(&oldest, 5).await.unwrap().gap, "the oldest position reported a gap");
    assert!(!s.log_read(&p.next.unwrap(), 5).await.unwrap().gap, "a fresh cursor reported a gap");
    let pos = s.log_start(&Start::Time(0)).await.unwrap();
    assert!(!s.log_read(&pos, 5).await.unwrap().gap, "a time start reported a gap");
}

/// A commit is one stream entry: pages that end inside it resume at the next event, a
/// group keeps such a position, and entries of the older one-event layout read the same.
#[tokio::test]
async fn pages_resume_inside_a_commit_and_the_old_layout_still_reads() {
    use adflow_store::conformance::sample;
    use adflow_store::eventlog::Start;
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the Redis log layout test");
        return;
    };
    let h = RedisHarness { url: url.clone(), cluster_nodes: Vec::new(), keys: Mutex::new(Vec::new()) };
    let s = h.fresh().await;
    let key = h.keys.lock().unwrap()[0].clone();
    // An entry written the old way (one event, `r` then `e`), then two commits.
    let old = sample(0);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("r")
        .arg(old.received_at_ms)
        .arg("e")
        .arg(old.raw.as_ref())
        .query_async(&mut con)
        .await
        .unwrap();
    let first: Vec<_> = (1..=10).map(sample).collect();
    let second: Vec<_> = (11..=13).map(sample).collect();
    s.append(&first).await.unwrap();
    s.append(&second).await.unwrap();
    let len: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut con).await.unwrap();
    assert_eq!(len, 3, "one entry per commit");

    let mut at = s.log_start(&Start::Oldest).await.unwrap();
    let mut got = Vec::new();
    let mut cursors = Vec::new();
    loop {
        let page = s.log_read(&at, 4).await.unwrap();
        assert!(!page.gap);
        if page.events.is_empty() {
            break;
        }
        assert!(page.events.len() <= 4);
        got.extend(page.events);
        at = page.next.unwrap();
        s.check_cursor(&at).unwrap();
        cursors.push(at.0.clone());
    }
    let want: Vec<_> = std::iter::once(old).chain(first).chain(second).collect();
    assert_eq!(got, want, "every event once, in order, across pages ending inside commits");
    assert!(cursors.iter().any(|c| c.contains(':')), "some page ended inside a commit: {cursors:?}");

    // A group resumes from a position inside a commit.
    let inside = cursors.iter().find(|c| c.contains(':')).unwrap().clone();
    s.group_commit("g", &adflow_store::Cursor(inside.clone())).await.unwrap();
    let pos = s.group_get("g").await.unwrap().unwrap();
    assert_eq!(pos.cursor.0, inside);
    let rest = s.log_read(&pos.cursor, 100).await.unwrap();
    let done = want.len() - rest.events.len();
    assert_eq!(rest.events, want[done..].to_vec());

    // Scans (the start-up rebuild) see the same events.
    let mut scanned = Vec::new();
    let mut from = None;
    loop {
        let page = s.scan(from, 3).await.unwrap();
        scanned.extend(page.events);
        match page.next {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    assert_eq!(scanned, want);
    // A position inside an entry that is not there, or past an entry's last event, reads
    // as "after that entry": follow mode then waits instead of re-reading in a loop.
    for (from, want) in [("99999999999999-0:0", "99999999999999-0"), ("0-1:5", "0-1")] {
        let page = s.log_read(&adflow_store::Cursor(from.into()), 10).await.unwrap();
        if from.starts_with('9') {
            assert!(page.events.is_empty());
            assert_eq!(page.next.unwrap().0, want, "{from}");
        } else {
            assert_eq!(page.events.len(), 10, "{from} reads on from the first entry");
        }
    }
    let last_entry = cursors.last().unwrap().clone();
    let past = format!("{last_entry}:999");
    let page = s.log_read(&adflow_store::Cursor(past), 10).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.next.unwrap().0, last_entry, "an index past the entry's end is the whole entry");
    for bad in ["1-2:", "1-2:x", "1-2:-1", "1-2:1:2", ":3", "1-2:1234567890"] {
        assert!(s.check_cursor(&adflow_store::Cursor(bad.into())).is_err(), "{bad:?} was accepted");
    }
}
