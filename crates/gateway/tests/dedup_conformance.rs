//! One dedup suite for every place accepted event ids can live: this gateway's memory
//! (`DedupWindow`) and Redis shared by all gateways (`SharedDedup`, on one server with
//! ADFLOW_TEST_REDIS_URL and on a cluster with ADFLOW_TEST_REDIS_CLUSTER). (With the
//! mongodb backend the store itself refuses a second copy: `_id` = event id.)

use adflow_domain::dedup::{DedupWindow, key};
use adflow_gateway::shared_dedup::SharedDedup;
use adflow_store::redis_conn::Target;
use async_trait::async_trait;
use std::time::{Duration, Instant};

/// The contract the ingest pipeline relies on.
#[async_trait]
trait Ids: Send + Sync {
    /// For each id in order: true when new (and now claimed), false for a duplicate.
    async fn claim(&self, ids: &[String]) -> Vec<bool>;
    /// Forgets ids whose write failed.
    async fn forget(&self, ids: &[String]);
}

struct Memory {
    w: DedupWindow<()>,
    start: Instant,
}

#[async_trait]
impl Ids for Memory {
    async fn claim(&self, ids: &[String]) -> Vec<bool> {
        let now = self.start.elapsed().as_millis() as i64;
        ids.iter().map(|id| self.w.insert(key(id), now)).collect()
    }

    async fn forget(&self, ids: &[String]) {
        for id in ids {
            self.w.remove(key(id));
        }
    }
}

#[async_trait]
impl Ids for SharedDedup {
    async fn claim(&self, ids: &[String]) -> Vec<bool> {
        // Claims stay pending here (no commit settles them); they expire after claim_secs = 1.
        SharedDedup::claim(self, ids).await.expect("redis answers")
    }

    async fn forget(&self, ids: &[String]) {
        SharedDedup::forget(self, ids).await;
    }
}

/// The suite: new ids, repeats (across calls and inside one call), forget, expiry.
async fn suite(name: &str, d: &dyn Ids) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let ids: Vec<String> = (0..100).map(|i| format!("{run}-{i}")).collect();
    assert!(d.claim(&ids).await.iter().all(|&n| n), "{name}: new ids are accepted");
    let again: Vec<String> = ids[90..].iter().cloned().chain([format!("{run}-new")]).collect();
    assert_eq!(
        d.claim(&again).await,
        [vec![false; 10], vec![true]].concat(),
        "{name}: repeats are duplicates, a new id is not"
    );
    let twice = vec![format!("{run}-x"), format!("{run}-x")];
    assert_eq!(d.claim(&twice).await, vec![true, false], "{name}: a repeat inside one request");
    d.forget(&ids[..5]).await;
    assert_eq!(d.claim(&ids[..6]).await, vec![true, true, true, true, true, false], "{name}: forgotten ids");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(d.claim(&ids[10..12]).await.iter().all(|&n| n), "{name}: ids are new again after the window");
}

#[tokio::test]
async fn the_in_memory_window_keeps_the_dedup_contract() {
    let m = Memory { w: DedupWindow::new(1_000, 100_000), start: Instant::now() };
    suite("memory", &m).await;
}

#[tokio::test]
async fn redis_keeps_the_dedup_contract() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the dedup suite on Redis");
        return;
    };
    let d = SharedDedup::connect(&Target { url, cluster_nodes: Vec::new() }, "{adflow-test}:dedup:", 1)
        .await
        .unwrap()
        .with_claim_secs(1);
    suite("redis", &d).await;
}

#[tokio::test]
async fn a_redis_cluster_keeps_the_dedup_contract() {
    let Ok(nodes) = std::env::var("ADFLOW_TEST_REDIS_CLUSTER") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_CLUSTER to run the dedup suite on a Redis Cluster");
        return;
    };
    let cluster_nodes = nodes.split(',').map(|s| s.trim().to_owned()).collect();
    let d = SharedDedup::connect(&Target { url: String::new(), cluster_nodes }, "{adflow-test}:dedup:", 1)
        .await
        .unwrap()
        .with_claim_secs(1);
    suite("redis cluster", &d).await;
}

/// Two gateways' handles on one Redis (distinct claim tokens), or None when not configured.
async fn two_gateways(claim_secs: u64) -> Option<(SharedDedup, SharedDedup)> {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the shared dedup protocol tests");
        return None;
    };
    let t = Target { url, cluster_nodes: Vec::new() };
    let open = |tok: &'static str| {
        let t = t.clone();
        async move {
            SharedDedup::connect(&t, "{adflow-test}:dedup:", 60)
                .await
                .unwrap()
                .with_token(&format!("{tok}-{}", uuid::Uuid::new_v4().simple()))
                .with_claim_secs(claim_secs)
        }
    };
    Some((open("a").await, open("b").await))
}

/// A stored event carrying `id` (what a spill replay hands the guard).
fn event(id: &str) -> adflow_store::StoredEvent {
    adflow_store::StoredEvent::encode(
        1,
        &adflow_domain::pb::AdEvent {
            event_id: id.into(),
            ad_id: "a".into(),
            r#type: 1,
            ..Default::default()
        },
    )
}

fn ids(n: usize) -> Vec<String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    (0..n).map(|i| format!("{run}-{i}")).collect()
}

#[tokio::test]
async fn a_durable_repeat_on_another_gateway_waits_for_the_first_commit() {
    let Some((a, b)) = two_gateways(30).await else { return };
    let x = ids(3);
    assert_eq!(a.admit(&x, true).await.unwrap(), vec![true; 3]);
    // B sees the ids pending: an accepted-mode repeat is a duplicate at once ...
    assert_eq!(b.admit(&x, false).await.unwrap(), vec![false; 3]);
    // ... a durable one waits until A's commit settles them.
    let b = std::sync::Arc::new(b);
    let (b2, x2) = (b.clone(), x.clone());
    let waiting = tokio::spawn(async move { b2.admit(&x2, true).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "B answered before A's commit ended");
    let refs: Vec<&str> = x.iter().map(String::as_str).collect();
    a.settle(&refs, false).await;
    assert_eq!(waiting.await.unwrap(), vec![false; 3], "stored by A: duplicates on B");
}

#[tokio::test]
async fn a_repeat_of_a_failed_first_commit_is_taken_as_new() {
    let Some((a, b)) = two_gateways(30).await else { return };
    let x = ids(2);
    assert_eq!(a.admit(&x, true).await.unwrap(), vec![true, true]);
    let b = std::sync::Arc::new(b);
    let (b2, x2) = (b.clone(), x.clone());
    let waiting = tokio::spawn(async move { b2.admit(&x2, true).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.forget(&x).await; // A's commit failed
    assert_eq!(waiting.await.unwrap(), vec![true, true], "B now holds the only copy");
    // A's client retries on A: B's claim is pending, so A's durable retry waits; B stores.
    let refs: Vec<&str> = x.iter().map(String::as_str).collect();
    b.settle(&refs, false).await;
    assert_eq!(a.admit(&x, true).await.unwrap(), vec![false, false]);
}

#[tokio::test]
async fn a_claim_of_a_dead_gateway_expires_and_a_durable_repeat_then_stores() {
    let Some((a, b)) = two_gateways(1).await else { return };
    let x = ids(1);
    assert_eq!(a.admit(&x, true).await.unwrap(), vec![true]);
    drop(a); // killed mid-commit: never settles, never forgets
    assert_eq!(b.admit(&x, true).await.unwrap(), vec![true], "claimed by B once A's claim expired");
}

#[tokio::test]
async fn the_spill_replay_skips_what_another_gateway_stored_and_records_the_rest() {
    use adflow_store::resilient::ReplayGuard;
    let Some((a, b)) = two_gateways(30).await else { return };
    let x = ids(3);
    // A took x0 and x1 and parked them in its spill; x2 arrived while Redis was down.
    assert_eq!(a.admit(&x[..2], true).await.unwrap(), vec![true, true]);
    a.settle(&[&x[0], &x[1]], true).await;
    // A held claim is pending for everyone else: B's accepted-mode repeat is a duplicate.
    assert_eq!(b.admit(&x[..1], false).await.unwrap(), vec![false]);
    // Meanwhile a client resent x2 to B, which stored it.
    assert_eq!(b.admit(&x[2..], true).await.unwrap(), vec![true]);
    b.settle(&[&x[2]], false).await;
    // The spill holds x0, x1, x2 and x0 again (the client retried on A during the outage).
    let page = vec![event(&x[0]), event(&x[1]), event(&x[2]), event(&x[0])];
    let keep = ReplayGuard::admit(&a, &page).await.unwrap();
    assert_eq!(keep, vec![true, true, false, false]);
    ReplayGuard::written(&a, &[event(&x[0]), event(&x[1])]).await;
    // After the replay every id is a plain duplicate, on both gateways, without waiting.
    assert_eq!(b.admit(&x, true).await.unwrap(), vec![false; 3]);
    assert_eq!(a.admit(&x, true).await.unwrap(), vec![false; 3]);
}

#[tokio::test]
async fn stored_ids_are_duplicates_for_the_window_and_new_after_two() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the shared dedup expiry test");
        return;
    };
    let prefix = format!("{{adflow-test-{}}}:dedup:", uuid::Uuid::new_v4().simple());
    let d = SharedDedup::connect(&Target { url, cluster_nodes: Vec::new() }, &prefix, 1).await.unwrap();
    let x = ids(50);
    let refs: Vec<&str> = x.iter().map(String::as_str).collect();
    assert_eq!(d.admit(&x, true).await.unwrap(), vec![true; 50]);
    d.settle(&refs, false).await;
    let stored = Instant::now();
    // Remembered at least one window (1 s) whatever generation boundary fell in between.
    while stored.elapsed() < Duration::from_millis(950) {
        assert_eq!(d.admit(&x, true).await.unwrap(), vec![false; 50], "a stored id within the window");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // ... and at most two.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(stored.elapsed())).await;
    assert_eq!(d.admit(&x, true).await.unwrap(), vec![true; 50], "new again two windows later");
}

/// The commit path: a request's ids are settled, held or dropped as whole claims.
#[tokio::test]
async fn whole_claims_settle_hold_and_drop_a_request_s_ids() {
    let Some((a, b)) = two_gateways(30).await else { return };
    let b = std::sync::Arc::new(b);
    // Settled: a durable repeat on B waits for A's commit, then is a duplicate.
    let x = ids(300);
    let (new, claims) = a.claim_request(&x, true).await.unwrap();
    assert_eq!(new, vec![true; 300]);
    let (b2, x2) = (b.clone(), x.clone());
    let waiting = tokio::spawn(async move { b2.admit(&x2, true).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!waiting.is_finished(), "B answered before A's commit ended");
    a.settle_claims(&claims, false).await;
    assert_eq!(waiting.await.unwrap(), vec![false; 300], "stored by A: duplicates on B");
    // Dropped: the repeat waiting on B takes the ids as new.
    let y = ids(5);
    let (_, claims) = a.claim_request(&y, true).await.unwrap();
    let (b2, y2) = (b.clone(), y.clone());
    let waiting = tokio::spawn(async move { b2.claim_request(&y2, true).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.drop_claims(&claims).await;
    let (new, b_claims) = waiting.await.unwrap();
    assert_eq!(new, vec![true; 5], "A's commit failed: B holds the only copy");
    b.settle_claims(&b_claims, false).await;
    assert_eq!(a.admit(&y, true).await.unwrap(), vec![false; 5]);
    // Held (spilled): pending for everyone else, and the held ids are this gateway's own.
    let z = ids(4);
    let (_, claims) = a.claim_request(&z, true).await.unwrap();
    a.settle_claims(&claims, true).await;
    assert_eq!(b.admit(&z, false).await.unwrap(), vec![false; 4], "held by A: a duplicate for now");
    let page: Vec<_> = z.iter().map(|id| event(id)).collect();
    use adflow_store::resilient::ReplayGuard;
    assert_eq!(ReplayGuard::admit(&a, &page).await.unwrap(), vec![true; 4], "the replay keeps its own");
    ReplayGuard::written(&a, &page).await;
    assert_eq!(b.admit(&z, true).await.unwrap(), vec![false; 4]);
}

/// Generations and deadlines follow the Redis clock: a gateway whose clock is ahead still
/// sees, and is seen by, the others at every generation boundary.
#[tokio::test]
async fn gateways_with_different_clocks_see_each_other_s_claims() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the clock skew test");
        return;
    };
    let t = Target { url, cluster_nodes: Vec::new() };
    let prefix = format!("{{adflow-test-{}}}:dedup:", uuid::Uuid::new_v4().simple());
    // A 2 s window: a boundary every 2 s; A's clock is 1.5 s ahead of B's.
    let a = SharedDedup::connect(&t, &prefix, 2).await.unwrap().with_token("aaaa").with_clock_skew_ms(1500);
    let b = SharedDedup::connect(&t, &prefix, 2).await.unwrap().with_token("bbbb");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        let x = ids(20);
        assert_eq!(a.admit(&x, false).await.unwrap(), vec![true; 20]);
        assert_eq!(b.admit(&x, false).await.unwrap(), vec![false; 20], "B must see A's claims");
        let y = ids(20);
        assert_eq!(b.admit(&y, false).await.unwrap(), vec![true; 20]);
        assert_eq!(a.admit(&y, false).await.unwrap(), vec![false; 20], "A must see B's claims");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A restart that draws the start tag of an earlier run never reuses its claim names:
/// a new id is not taken for stored because an old claim of that name was.
#[tokio::test]
async fn a_restart_never_reuses_a_stored_claim_name() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the claim name test");
        return;
    };
    let t = Target { url, cluster_nodes: Vec::new() };
    let prefix = format!("{{adflow-test-{}}}:dedup:", uuid::Uuid::new_v4().simple());
    let open = |tok: &'static str| {
        let (t, prefix) = (t.clone(), prefix.clone());
        async move { SharedDedup::connect(&t, &prefix, 60).await.unwrap().with_token(tok).with_start_tag("same") }
    };
    let first = open("gw-a").await;
    let x = ids(3);
    let (_, claims) = first.claim_request(&x, true).await.unwrap();
    first.settle_claims(&claims, false).await;
    drop(first);
    // The restarted gateway (same token, same start tag) takes new ids.
    let again = open("gw-a").await;
    let y = ids(3);
    let (new, claims) = again.claim_request(&y, true).await.unwrap();
    assert_eq!(new, vec![true; 3]);
    // Another gateway sees them pending, not stored: its durable repeat waits ...
    let other = std::sync::Arc::new(open("gw-b").await);
    let (o, y2) = (other.clone(), y.clone());
    let waiting = tokio::spawn(async move { o.admit(&y2, true).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a new id was answered before its commit ended");
    // ... and takes them as new when that commit fails.
    again.drop_claims(&claims).await;
    assert_eq!(waiting.await.unwrap(), vec![true; 3]);
    // The first run's ids stay stored through all of it.
    assert_eq!(other.admit(&x, true).await.unwrap(), vec![false; 3], "stored ids came back as new");
}

/// A's commit landed in Redis (events and claims in one transaction), then A died before it
/// could settle, or heard an error (reply lost) and dropped or held its claims for a spill:
/// the ids are stored, so B's durable retry, after A's claim deadline, is a duplicate, and
/// A's spill replay skips them. (Found by an attacker: kill -9 mid-commit, and a Redis
/// shutdown mid-commit, each stored one batch twice.)
#[tokio::test]
async fn a_commit_that_landed_settles_its_claims_whatever_its_gateway_hears() {
    use adflow_store::EventStore;
    use adflow_store::redis_store::{COMMIT_SCRIPT, RedisConfig, RedisStore};
    use adflow_store::resilient::ReplayGuard;
    let Some((a, b)) = two_gateways(1).await else { return };
    let url = std::env::var("ADFLOW_TEST_REDIS_URL").unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("{{adflow-test}}:events-{run}");
    let a = a.with_events_stream(&stream);
    let store =
        RedisStore::open(RedisConfig { url, stream_key: stream, ..Default::default() }).await.unwrap();
    for how in ["died", "dropped", "held for the spill"] {
        let x = ids(3);
        let (new, claims) = a.claim_request(&x, true).await.unwrap();
        assert_eq!(new, vec![true; 3]);
        let script = a.commit_script(&claims);
        assert!(script.is_some(), "same hash slot: the commit settles its claims");
        let evs: Vec<_> = x.iter().map(|i| event(i)).collect();
        COMMIT_SCRIPT.scope(script, store.append(&evs)).await.unwrap();
        match how {
            "dropped" => a.drop_claims(&claims).await,
            "held for the spill" => a.settle_claims(&claims, true).await,
            _ => {}
        }
        // Past A's claim deadline (1 s): still a duplicate on B, for a durable retry.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(b.admit(&x, true).await.unwrap(), vec![false; 3], "{how}: stored, so a duplicate");
        if how == "held for the spill" {
            assert_eq!(
                ReplayGuard::admit(&a, &evs).await.unwrap(),
                vec![false; 3],
                "the replay skips what landed"
            );
        }
    }
    // Another hash slot: no script (MULTI/EXEC cannot span slots), the settle after the
    // commit does it as before.
    let (c, _) = two_gateways(1).await.unwrap();
    let c = c.with_events_stream("{elsewhere}:events");
    let (_, claims) = c.claim_request(&ids(1), true).await.unwrap();
    assert!(c.commit_script(&claims).is_none());
}
