//! Shared analytics counters agree with the in-memory reference: the same events,
//! appended to a backend that keeps counters, give the same sums, per-ad and per-campaign
//! totals and recent per-ad performance. Redis runs with ADFLOW_TEST_REDIS_URL, MongoDB
//! with ADFLOW_TEST_MONGODB_URI (.ci/run sets both).

use adflow_domain::analytics::{Analytics, Counters, Kind, Retention, Scope};
use adflow_proto::v1::{AdEvent, EventType};
use adflow_store::counters::{CounterSource, Local, RedisCounters};
use adflow_store::mongo_store::{MongoConfig, MongoStore};
use adflow_store::redis_store::{RedisConfig, RedisStore};
use adflow_store::{EventStore, StoredEvent};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

const MIN: i64 = 60_000;

/// A Redis store config on a stream of its own and the run's id, or None (printed as
/// skipped) without ADFLOW_TEST_REDIS_URL.
fn redis_config(what: &str) -> Option<(RedisConfig, String)> {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the {what}");
        return None;
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let stream_key = format!("{{adflow-test-{run}}}:events");
    Some((RedisConfig { url, stream_key, ..Default::default() }, run))
}

fn events(now: i64, run: &str) -> Vec<StoredEvent> {
    (0..600u64)
        .map(|i| {
            let t = [1, 1, 1, 2, 3, 5, 7][(i % 7) as usize];
            StoredEvent::encode(
                now,
                &AdEvent {
                    event_id: format!("{run}-{i}"),
                    r#type: t,
                    ad_id: format!("{run}-ad-{}", i % 6),
                    campaign_id: format!("{run}-cmp-{}", i % 2),
                    game_id: "g".into(),
                    user_id: "u".into(),
                    // Spread over the last 3 hours: hour and minute buckets both matter.
                    timestamp_ms: now - (i as i64 * 17_000) % (180 * MIN),
                    revenue_usd: (t == EventType::Conversion as i32).then_some(0.5),
                    video_position_ms: if t >= 5 { 1000 } else { 0 },
                    country: "DE".into(),
                    device: "phone".into(),
                    platform: 1,
                    attributes: BTreeMap::new(),
                    ..Default::default()
                },
            )
        })
        .collect()
}

fn close(a: &Counters, b: &Counters) -> bool {
    a.by_type == b.by_type && a.video_ms == b.video_ms && (a.revenue_usd - b.revenue_usd).abs() < 1e-9
}

/// Appends the test events and checks the shared counters against the reference; `fold`
/// (Redis) is run before the recent-performance check, which reads folded counts only.
async fn agree(
    name: &str,
    store: &dyn EventStore,
    shared: &dyn CounterSource,
    run: &str,
    fold: Option<&RedisCounters>,
) {
    let now = adflow_domain::now_ms();
    let evs = events(now, run);
    for chunk in evs.chunks(128) {
        store.append(chunk).await.expect("append");
    }
    let mut a = Analytics::new(Retention::default());
    a.record(&evs, now);
    let reference = Local(Arc::new(RwLock::new(a)));
    same_sums(name, shared, &reference, run, now).await;
    if let Some(f) = fold {
        f.fold_all().await.expect("fold");
        same_sums(&format!("{name} (folded)"), shared, &reference, run, now).await;
    }
    recent(name, shared, &reference, run, now).await;
}

/// Sums, per-ad and per-campaign totals over several windows equal the reference.
async fn same_sums(name: &str, shared: &dyn CounterSource, reference: &Local, run: &str, now: i64) {
    let windows =
        [(now - 60 * MIN, now + 1), (now - 24 * 60 * MIN, now + 1), (now - 150 * MIN, now - 30 * MIN)];
    for (from, to) in windows {
        for ad in 0..6 {
            let id = format!("{run}-ad-{ad}");
            let want = reference.sum(Scope::Ad(&id), from, to, now).await.unwrap();
            let got = shared.sum(Scope::Ad(&id), from, to, now).await.unwrap();
            assert!(close(&want, &got), "{name}: ad {id} over [{from}, {to}): want {want:?}, got {got:?}");
        }
        let cmp = format!("{run}-cmp-1");
        let want = reference.sum(Scope::Campaign(&cmp), from, to, now).await.unwrap();
        let got = shared.sum(Scope::Campaign(&cmp), from, to, now).await.unwrap();
        assert!(close(&want, &got), "{name}: campaign over [{from}, {to}): want {want:?}, got {got:?}");
        let mut want = reference.per_key(Kind::Ad, from, to, now).await.unwrap();
        let mut got: Vec<_> = shared
            .per_key(Kind::Ad, from, to, now)
            .await
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with(run))
            .collect();
        want.sort_by(|x, y| x.0.cmp(&y.0));
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(want.len(), got.len(), "{name}: ads with events");
        for (w, g) in want.iter().zip(&got) {
            assert!(w.0 == g.0 && close(&w.1, &g.1), "{name}: per-ad {w:?} vs {g:?}");
        }
    }
}

/// Recent per-ad performance equals the reference's last day.
async fn recent(name: &str, shared: &dyn CounterSource, reference: &Local, run: &str, now: i64) {
    let ids: Vec<String> = (0..6).map(|i| format!("{run}-ad-{i}")).chain([format!("{run}-none")]).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let recent = shared.recent_for_ads(&refs, now).await.unwrap();
    for (id, c) in ids.iter().zip(&recent) {
        let want = reference.sum(Scope::Ad(id), now - 86_400_000, now + 1, now).await.unwrap();
        for t in [EventType::Impression, EventType::Click, EventType::Conversion] {
            assert_eq!(c.count(t), want.count(t), "{name}: recent {t:?} of {id}");
        }
    }
}

#[tokio::test]
async fn redis_counters_agree_with_the_in_memory_reference() {
    let Some((cfg, run)) = redis_config("redis counters test") else { return };
    let s = RedisStore::open_with(cfg, Some(Retention::default())).await.unwrap();
    let c = s.counters().unwrap();
    agree("redis", &s, c.as_ref(), &run, Some(&c)).await;
}

/// Two gateways append and fold the same counters at once: every delta is added once.
#[tokio::test]
async fn redis_counters_folded_by_two_gateways_at_once_count_every_commit_once() {
    let Some((cfg, run)) = redis_config("redis fold test") else { return };
    let url = cfg.url.clone();
    let a = Arc::new(RedisStore::open_with(cfg.clone(), Some(Retention::default())).await.unwrap());
    let b = Arc::new(RedisStore::open_with(cfg, Some(Retention::default())).await.unwrap());
    let now = adflow_domain::now_ms();
    let evs = events(now, &run);
    let mut tasks = Vec::new();
    for (i, chunk) in evs.chunks(20).enumerate() {
        let (store, chunk) = (if i % 2 == 0 { a.clone() } else { b.clone() }, chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            store.append(&chunk).await.unwrap();
            // Each commit is followed by a fold from its gateway, racing the other's.
            store.counters().unwrap().fold_all().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut r = Analytics::new(Retention::default());
    r.record(&evs, now);
    let reference = Local(Arc::new(RwLock::new(r)));
    let (ca, cb) = (a.counters().unwrap(), b.counters().unwrap());
    same_sums("racing folds, read on a", ca.as_ref(), &reference, &run, now).await;
    same_sums("racing folds, read on b", cb.as_ref(), &reference, &run, now).await;
    recent("racing folds", ca.as_ref(), &reference, &run, now).await;
    // Nothing is left to fold, and the delta stream was trimmed.
    assert_eq!(ca.fold_all().await.unwrap(), 0);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let left: u64 = redis::cmd("XLEN")
        .arg(format!("{{adflow-test-{run}}}:an:delta"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(left, 0, "folded deltas are trimmed");
}

#[tokio::test]
async fn mongodb_counters_agree_with_the_in_memory_reference() {
    let Ok(uri) = std::env::var("ADFLOW_TEST_MONGODB_URI") else {
        eprintln!("skipped: set ADFLOW_TEST_MONGODB_URI to run the mongodb counters test");
        return;
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let cfg = MongoConfig { uri, database: format!("adflow_test_{run}"), ..Default::default() };
    let s = MongoStore::open(cfg).await.unwrap();
    let c = s.counters(Retention::default());
    agree("mongodb", &s, c.as_ref(), &run, None).await;
}

/// A counter Redis cannot increase (past 2^63) is skipped: the fold moves on, once.
#[tokio::test]
async fn an_overflowing_counter_does_not_stop_or_repeat_the_fold() {
    let Some((cfg, run)) = redis_config("redis fold overflow test") else { return };
    let s = RedisStore::open_with(cfg, Some(Retention::default())).await.unwrap();
    let c = s.counters().unwrap();
    let now = adflow_domain::now_ms();
    let ev = |i: u64| {
        StoredEvent::encode(
            now,
            &AdEvent {
                event_id: format!("{run}-{i}"),
                r#type: EventType::Conversion as i32,
                ad_id: format!("{run}-ad"),
                campaign_id: String::new(),
                timestamp_ms: now,
                revenue_usd: Some(5e12),
                ..Default::default()
            },
        )
    };
    for i in 0..3 {
        s.append(&[ev(i)]).await.unwrap();
        c.fold_all().await.unwrap();
    }
    assert_eq!(c.fold_all().await.unwrap(), 0, "nothing left to fold");
    let got = c.sum(Scope::Ad(&format!("{run}-ad")), now - MIN, now + MIN, now).await.unwrap();
    assert_eq!(got.count(EventType::Conversion), 3, "the counts are exact: {got:?}");
}

/// A backlog of deltas whose sums need many times one script's increments (thousands of
/// distinct ads, more entries than one read) folds in several compare-and-set steps per
/// read, every delta exactly once, while two gateways fold it at once.
#[tokio::test]
async fn a_large_backlog_folds_in_steps_exactly_once() {
    let Some((cfg, run)) = redis_config("redis fold backlog test") else { return };
    let a = RedisStore::open_with(cfg.clone(), Some(Retention::default())).await.unwrap();
    let b = RedisStore::open_with(cfg, Some(Retention::default())).await.unwrap();
    let now = adflow_domain::now_ms();
    let evs: Vec<StoredEvent> = (0..6000u64)
        .map(|i| {
            let t = [1, 1, 2, 3][(i % 4) as usize];
            StoredEvent::encode(
                now,
                &AdEvent {
                    event_id: format!("{run}-{i}"),
                    r#type: t,
                    ad_id: format!("{run}-ad-{}", i % 3000),
                    campaign_id: format!("{run}-cmp-{}", i % 2),
                    timestamp_ms: now - (i as i64 % 5) * MIN,
                    revenue_usd: (t == EventType::Conversion as i32).then_some(0.25),
                    ..Default::default()
                },
            )
        })
        .collect();
    // 750 commits of 8 events: more entries than one read, ~25k increments.
    let appends = evs.chunks(8).map(|c| a.append(c));
    for r in futures::future::join_all(appends).await {
        r.unwrap();
    }
    let (ca, cb) = (a.counters().unwrap(), b.counters().unwrap());
    let (fa, fb) = tokio::join!(ca.fold_all(), cb.fold_all());
    assert!(fa.unwrap() + fb.unwrap() > 0, "the backlog was folded");
    assert_eq!(ca.fold_all().await.unwrap(), 0, "nothing left to fold");
    let mut r = Analytics::new(Retention::default());
    r.record(&evs, now);
    let reference = Local(Arc::new(RwLock::new(r)));
    same_sums("large backlog", ca.as_ref(), &reference, &run, now).await;
    recent("large backlog", ca.as_ref(), &reference, &run, now).await;
}
