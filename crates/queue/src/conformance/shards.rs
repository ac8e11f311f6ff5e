//! What a queue split into shards must keep (the Redis queue with `shards` = k > 1; see
//! "Across shards" in `redis_queue`): every ad completed exactly once by concurrent
//! workers on two gateways, also when a gateway dies holding a claim; FIFO and priority
//! inside each shard; across shards, a claim never serves a lower level while a higher
//! one waits, single claims follow the global order, and FIFO holds for ads enqueued
//! further apart than the slack (aging and overdue ads included); and every operator
//! command sees every shard.

use super::{Harness, config, ids, result, spec};
use crate::index::ALL_PARTITIONS;
use crate::redis_queue::shard_of;
use crate::{AdQueue, QueueConfig, QueueError};
use adflow_proto::v1::{self as pb, AdStatus};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Runs every check of this module on a harness whose queues have `k` shards.
pub async fn run_all(h: &dyn Harness, k: usize) {
    exactly_once_across_two_gateways_and_a_dead_one(h).await;
    each_shard_keeps_priority_and_fifo(h, k).await;
    claims_never_serve_a_lower_level_while_a_higher_one_waits(h, k).await;
    fifo_aging_and_overdue_hold_across_shards(h, k).await;
    operator_commands_see_every_shard(h, k).await;
}

fn title(l: &crate::Leased) -> String {
    l.ad.spec.clone().unwrap_or_default().title
}

/// 600 ads submitted through two gateways; 8 workers (4 on each) lease claims of
/// different sizes, settle one by one or in batches, and sometimes retry; a third gateway
/// claims 50 and dies. Every ad ends completed, acked successfully exactly once, and the
/// dead gateway's leases come back with one more attempt.
pub async fn exactly_once_across_two_gateways_and_a_dead_one(h: &dyn Harness) {
    let a = h.fresh(config()).await;
    let b = h.peer().await.expect("a shared backend has peers");
    let n = 600;
    let mut submitted = HashSet::new();
    for (i, q) in [&a, &b].into_iter().enumerate() {
        let specs = (0..n / 2).map(|j| spec(&format!("x-{i}-{j}"), "a", 1 + (j % 5) as u32)).collect();
        submitted.extend(ids(q.as_ref(), specs, 10).await);
    }
    let dying = h.peer().await.expect("a third gateway");
    let held = dying.lease(1, ALL_PARTITIONS, 50, 11).await;
    assert_eq!(held.len(), 50, "the dying gateway's claim");
    let deadline = held[0].deadline_ms;
    drop(dying); // killed: no release, its leases stay until their deadline
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let q = if w % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut round = 0u64;
            loop {
                round += 1;
                let l = q.lease(200 + w, ALL_PARTITIONS, 1 + ((w + round) % 9) as usize, 20).await;
                if l.is_empty() {
                    break;
                }
                let (retry, keep): (Vec<_>, Vec<_>) =
                    l.into_iter().partition(|x| x.attempt == 1 && x.ad.id.ends_with(['0', '7']));
                for x in retry {
                    q.nack(200 + w, x.lease_id, true, "try again", 20).await.expect("nack own lease");
                }
                if w % 4 < 2 {
                    for x in keep {
                        q.ack(200 + w, x.lease_id, result(), 21).await.expect("ack own lease");
                        done.push(x.ad.id);
                    }
                } else {
                    let items = keep.iter().map(|x| (x.lease_id, result())).collect();
                    for r in q.ack_many(200 + w, items, 21).await {
                        r.expect("batched ack of own lease");
                    }
                    done.extend(keep.into_iter().map(|x| x.ad.id));
                }
            }
            done
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    // A retry can land after the other workers stopped: drain what is left.
    loop {
        let l = a.lease(299, ALL_PARTITIONS, 50, 22).await;
        if l.is_empty() {
            break;
        }
        for r in a.ack_many(299, l.iter().map(|x| (x.lease_id, result())).collect(), 22).await {
            r.expect("ack of a retried ad");
        }
        acked.extend(l.into_iter().map(|x| x.ad.id));
    }
    assert_eq!(acked.len(), n - held.len(), "every ad not held by the dead gateway is acked once");
    let back = a.expire(deadline).await;
    assert_eq!(back.len(), held.len(), "the dead gateway's leases expire");
    let again = b.lease(300, ALL_PARTITIONS, 100, deadline).await;
    assert_eq!(again.len(), held.len(), "and are redelivered");
    assert!(again.iter().all(|x| x.attempt == 2), "with one more attempt");
    for x in &held {
        assert!(
            matches!(a.ack(1, x.lease_id, result(), deadline).await, Err(QueueError::StaleLease(_))),
            "an expired lease of the dead gateway cannot complete its ad"
        );
    }
    for r in b.ack_many(300, again.iter().map(|x| (x.lease_id, result())).collect(), deadline).await {
        r.expect("ack of the redelivered lease");
    }
    acked.extend(again.into_iter().map(|x| x.ad.id));
    let unique: HashSet<String> = acked.iter().cloned().collect();
    assert_eq!((acked.len(), &unique), (n, &submitted), "each ad acked exactly once");
    let st = a.stats(deadline).await.unwrap();
    assert_eq!((st.completed_total, st.total_queued, st.in_flight), (n as u64, 0, 0), "stats agree");
    for id in submitted.iter().take(50) {
        assert_eq!(b.get(id, deadline).await.unwrap().status, AdStatus::Completed as i32);
    }
    a.close().await;
    b.close().await;
}

/// Inside each shard, leases come out by priority, then in submission order.
pub async fn each_shard_keeps_priority_and_fifo(h: &dyn Harness, k: usize) {
    let q = h.fresh(QueueConfig { aging_step_seconds: 0, ..config() }).await;
    let mut order = HashMap::new();
    for t in 0..6 {
        let specs = (0..10).map(|j| spec(&format!("s-{t}-{j}"), "a", [2, 4][j % 2])).collect();
        for (j, id) in ids(q.as_ref(), specs, t * 10).await.into_iter().enumerate() {
            order.insert(id, (t as usize, j));
        }
    }
    let mut per_shard: Vec<Vec<(u32, (usize, usize))>> = vec![Vec::new(); k];
    for _ in 0..60 {
        for l in q.lease(1, ALL_PARTITIONS, 3, 100).await {
            per_shard[shard_of(&l.ad.id, k)].push((l.ad.priority, order[&l.ad.id]));
        }
    }
    assert_eq!(per_shard.iter().map(Vec::len).sum::<usize>(), 60, "every ad leased");
    assert!(per_shard.iter().filter(|s| !s.is_empty()).count() > 1, "ads spread over the shards");
    for (s, got) in per_shard.iter().enumerate() {
        let mut want = got.clone();
        want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(got, &want, "shard {s} serves by priority, then first in first out");
    }
    q.close().await;
}

/// With priority-1 ads in every shard and younger priority-5 ads in every shard, no
/// claim (single or batch) serves a priority-1 ad while a priority-5 ad waits anywhere.
pub async fn claims_never_serve_a_lower_level_while_a_higher_one_waits(h: &dyn Harness, k: usize) {
    let q = h.fresh(QueueConfig { aging_step_seconds: 0, ..config() }).await;
    let low = ids(q.as_ref(), (0..30).map(|i| spec(&format!("low-{i}"), "a", 1)).collect(), 0).await;
    let high = ids(q.as_ref(), (0..30).map(|i| spec(&format!("high-{i}"), "a", 5)).collect(), 1_000).await;
    let shards_of = |v: &[String]| v.iter().map(|id| shard_of(id, k)).collect::<HashSet<_>>().len();
    assert_eq!((shards_of(&low), shards_of(&high)), (k, k), "both levels in every shard");
    let mut got = Vec::new();
    for _ in 0..6 {
        got.extend(q.lease(1, ALL_PARTITIONS, 1, 2_000).await.iter().map(title));
    }
    for n in [4, 7, 13, 30] {
        got.extend(q.lease(1, ALL_PARTITIONS, n, 2_000).await.iter().map(title));
    }
    assert_eq!(got.len(), 60);
    let first_low = got.iter().position(|t| t.starts_with("low")).unwrap();
    assert_eq!(first_low, 30, "every priority-5 ad before any priority-1 ad, across shards: {got:?}");
    q.close().await;
}

/// Ads of one level enqueued 1 s apart (ten times the default slack) come out first in,
/// first out across shards, in claims of one and of several; aged and overdue ads take
/// their place in the global order.
pub async fn fifo_aging_and_overdue_hold_across_shards(h: &dyn Harness, k: usize) {
    let q = h.fresh(QueueConfig { aging_step_seconds: 0, ..config() }).await;
    let mut want = Vec::new();
    for t in 0..24 {
        ids(q.as_ref(), vec![spec(&format!("f-{t:02}"), "a", 3)], t * 1_000).await;
        want.push(format!("f-{t:02}"));
    }
    let mut got: Vec<String> = Vec::new();
    for n in [1, 1, 1, 2, 5, 3, 11] {
        got.extend(q.lease(1, ALL_PARTITIONS, n, 30_000).await.iter().map(title));
    }
    assert_eq!(got, want, "first in, first out across {k} shards");
    q.close().await;

    // Aging (1 s steps): old priority-1 ads reach level 5 and have waited longest.
    // Overdue: priority-2 ads with a 3 s max wait, due before everything else.
    let cfg = QueueConfig { aging_step_seconds: 1, max_wait_seconds: 300, ..config() };
    let q = h.fresh(cfg).await;
    for t in 0..6 {
        let mut due = spec(&format!("due-{t}"), "a", 2);
        due.max_wait_seconds = 3;
        let specs = vec![spec(&format!("old-{t}"), "a", 1), due, spec(&format!("new-{t}"), "a", 5)];
        q.submit(specs, "", t * 500).await.unwrap();
    }
    for t in 0..6 {
        q.submit(vec![spec(&format!("young-{t}"), "a", 5)], "", 7_000 + t * 100).await.unwrap();
    }
    let mut got = Vec::new();
    for n in [1, 2, 1, 4, 3, 7, 6] {
        got.extend(q.lease(1, ALL_PARTITIONS, n, 8_000).await.iter().map(title));
    }
    // due-*: overdue since 3-5.5 s, by deadline; old-* and new-* (enqueued 0-2.5 s) aged
    // to level 5 and waited longest, by wait; young-* at level 5 too, younger.
    let due: Vec<String> = (0..6).map(|t| format!("due-{t}")).collect();
    assert_eq!(&got[..6], &due[..], "overdue ads first across shards, by deadline: {got:?}");
    let kinds: HashSet<&str> = got[6..18].iter().map(|t| t.split('-').next().unwrap()).collect();
    assert_eq!(kinds, HashSet::from(["old", "new"]), "then the aged ads that waited longest: {got:?}");
    let times: Vec<u32> = got[6..18].iter().map(|t| t[t.len() - 1..].parse().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "aged ads 500 ms apart, older first: {got:?}");
    assert!(got[18..].iter().all(|t| t.starts_with("young")), "then the younger ones: {got:?}");
    q.close().await;
}

/// Stats, peek, families, reprioritize, pause, purge, dead letters, requeue, list, get,
/// cancel, set_priority and the policy: each sees the ads of every shard, and a change
/// made through one gateway holds on every shard for another.
pub async fn operator_commands_see_every_shard(h: &dyn Harness, k: usize) {
    let q = h.fresh(QueueConfig { aging_step_seconds: 0, ..config() }).await;
    let other: Arc<dyn AdQueue> = h.peer().await.expect("a shared backend has peers");
    let fams = ["Puzzle", "RPG", "Racing"];
    let specs = (0..30).map(|i| spec(&format!("o-{i:02}"), fams[i % 3], 1 + (i % 5) as u32)).collect();
    let all = ids(q.as_ref(), specs, 0).await;
    assert_eq!(
        all.iter().map(|id| shard_of(id, k)).collect::<HashSet<_>>().len(),
        k,
        "every shard holds ads"
    );
    let st = other.stats(1).await.unwrap();
    assert_eq!(st.total_queued, 30, "stats sum the shards");
    assert!(st.partitions.iter().all(|p| p.queued == 6), "6 per partition: {:?}", st.partitions);
    let peek: Vec<String> = other.peek(30, 1).await.unwrap().into_iter().map(|a| a.title).collect();
    let mut want: Vec<String> = (0..30).map(|i| format!("o-{i:02}")).collect();
    want.sort_by_key(|t| (std::cmp::Reverse(1 + t[2..].parse::<usize>().unwrap() % 5), t.clone()));
    assert_eq!(peek, want, "peek merges the shards in serving order");
    let f = other.family_stats(1).await.unwrap();
    assert_eq!(f.iter().map(|f| f.queued).collect::<Vec<_>>(), vec![10, 10, 10], "families over every shard");
    let filter = pb::AdFilter { game_family: "rpg".into(), ..Default::default() };
    assert_eq!(other.reprioritize(&filter, 5, false, 2).await.unwrap(), (8, 10), "2 RPG ads were at 5");
    let st = other.set_paused(5, true).await.unwrap();
    assert_eq!((st.paused, st.queued), (true, 14), "one partition state over every shard");
    let l = q.lease(1, ALL_PARTITIONS, 30, 3).await;
    assert_eq!(l.len(), 16, "no shard serves the paused partition to another gateway");
    assert!(l.iter().all(|x| x.ad.priority != 5));
    assert!(q.stats(3).await.unwrap().partitions.iter().any(|p| p.priority == 5 && p.paused));
    other.set_paused(5, false).await.unwrap();
    // Dead letters from every shard, newest first, then requeued.
    other.set_policy(&pb::SetPolicyRequest { max_attempts: Some(1), ..Default::default() }).await.unwrap();
    for (i, x) in l.iter().enumerate() {
        q.nack(1, x.lease_id, true, "flaky", 10 + i as i64).await.unwrap();
    }
    let (dead, total) = other.dead_letters(5).await.unwrap();
    assert_eq!((dead.len(), total), (5, 16), "max attempts 1 holds on every shard");
    let newest: Vec<String> = l.iter().rev().take(5).map(|x| x.ad.id.clone()).collect();
    assert_eq!(dead.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), newest, "newest first");
    assert_eq!(other.requeue_dead(&[l[0].ad.id.clone(), l[1].ad.id.clone()], 40).await.unwrap(), 2);
    assert_eq!(other.requeue_dead(&[], 41).await.unwrap(), 14, "the rest, from every shard");
    assert_eq!(other.purge(3, 42).await.unwrap(), 4, "purge empties the partition in every shard");
    // One ad's commands find it in its shard (priority-5 ads were never leased).
    let p5: Vec<String> = other
        .peek(30, 43)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.priority == 5 && shard_of(&a.id, k) != 0)
        .map(|a| a.id)
        .collect();
    assert_eq!(other.set_priority(&p5[0], 4, 43).await.unwrap(), (5, 4));
    let moved = q.get(&p5[0], 43).await.unwrap();
    assert_eq!((moved.status, moved.priority), (AdStatus::Queued as i32, 4));
    assert_eq!(other.cancel(&p5[1], 44).await.unwrap().status, AdStatus::Cancelled as i32);
    assert_eq!(q.get(&p5[1], 44).await.unwrap().status, AdStatus::Cancelled as i32);
    // The listing pages over every shard, newest first, each ad once.
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let req = pb::ListAdsRequest { page_size: 7, page_token: token, ..Default::default() };
        let page = other.list(&req, 45).await.unwrap();
        seen.extend(page.ads.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut newest_first = all.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "ListAds over every shard, newest first");
    q.close().await;
    other.close().await;
}
