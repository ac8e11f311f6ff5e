//! What a restart and a crash must keep, on every backend: an answered state change is
//! still there after a kill -9 (an acked ad stays COMPLETED with its analysis), lease ids
//! never come back, attempts taken before a crash count toward `max_attempts`, and every
//! policy field reads back as it was set, from this gateway, another one, and after a
//! restart or a crash.

use super::{Harness, config, ids, result, spec, titles};
use crate::QueueError;
use crate::index::ALL_PARTITIONS;
use adflow_proto::v1::{self as pb, AdStatus};
use std::collections::HashSet;
use std::time::Duration;

/// Runs every check of this module.
pub async fn run_all(h: &dyn Harness) {
    lease_ids_never_repeat_across_restarts(h).await;
    attempts_survive_a_crash(h).await;
    answered_changes_survive_a_crash(h).await;
    every_policy_field_round_trips(h).await;
}

fn scored(score: u32) -> pb::AnalysisResult {
    pb::AnalysisResult { score, ..result() }
}

/// Lease ids are never handed out twice: not after a restart, not after a crash, not by
/// two gateways; an ack of a lease from before a restart settles nothing.
pub async fn lease_ids_never_repeat_across_restarts(h: &dyn Harness) {
    let q = h.fresh(config()).await;
    ids(q.as_ref(), (0..8).map(|i| spec(&format!("l-{i}"), "a", 3)).collect(), 0).await;
    let mut seen = HashSet::new();
    let before = q.lease(1, ALL_PARTITIONS, 2, 1).await;
    assert_eq!(before.len(), 2);
    seen.extend(before.iter().map(|l| l.lease_id));
    q.ack(1, before[0].lease_id, scored(1), 2).await.unwrap();

    // A restarted gateway numbers its worker sessions from 1 again.
    let q = h.reopen(q).await;
    let after = q.lease(1, ALL_PARTITIONS, 2, 3).await;
    assert_eq!(after.len(), 2);
    for l in &after {
        assert!(seen.insert(l.lease_id), "lease id {} was handed out before the restart", l.lease_id);
    }
    for old in &before {
        assert!(
            matches!(q.ack(1, old.lease_id, scored(99), 4).await, Err(QueueError::StaleLease(_))),
            "an ack of lease {} from before the restart is refused as stale",
            old.lease_id
        );
    }
    for l in &after {
        let ad = q.get(&l.ad.id, 4).await.unwrap();
        assert_eq!(ad.status, AdStatus::Processing as i32, "an old ack settled another ad");
    }

    let q = h.crash(q).await;
    let q2 = h.peer().await;
    for (n, q) in [Some(&q), q2.as_ref()].into_iter().flatten().enumerate() {
        let l = q.lease(1, ALL_PARTITIONS, 2, 5).await;
        assert!(!l.is_empty(), "gateway {n} leased after the crash");
        for l in &l {
            assert!(seen.insert(l.lease_id), "lease id {} was handed out before (gateway {n})", l.lease_id);
        }
    }
    q.close().await;
    if let Some(p) = q2 {
        p.close().await;
    }
}

/// An ad whose every lease ends in a crash of the gateway keeps its attempt count and is
/// dead-lettered after `max_attempts` (3 here), like an ad whose leases expire.
pub async fn attempts_survive_a_crash(h: &dyn Harness) {
    let mut q = h.fresh(config()).await;
    let id = ids(q.as_ref(), vec![spec("crashy", "a", 3)], 0).await.remove(0);
    let mut now = 1;
    for attempt in 1..=3 {
        let l = q.lease(1, ALL_PARTITIONS, 1, now).await;
        assert_eq!(l.len(), 1, "attempt {attempt} is leased");
        assert_eq!(l[0].attempt, attempt, "attempts taken before a crash are counted");
        now = l[0].deadline_ms;
        q = h.crash(q).await;
        // A lease that outlives the gateway (shared backends) ends at its deadline; the
        // embedded queue has requeued it at start.
        q.expire(now).await;
        let ad = q.get(&id, now).await.unwrap();
        assert_eq!(ad.attempts, attempt, "the attempt count survives the crash");
        let want = if attempt < 3 { AdStatus::Queued } else { AdStatus::DeadLetter };
        assert_eq!(ad.status, want as i32, "after the crash of attempt {attempt}");
    }
    let (dead, total) = q.dead_letters(10).await.unwrap();
    assert_eq!((total, dead[0].id.as_str(), dead[0].attempts), (1, id.as_str(), 3));
    q.close().await;
}

/// Every state change that was answered survives a kill -9 right after the answer: acks
/// (one by one and batched, and one that WatchAd reported), a nack that retries and one
/// that gives up, a cancel, a priority change, a pause and a policy change.
pub async fn answered_changes_survive_a_crash(h: &dyn Harness) {
    let q = h.fresh(config()).await;
    let n = 40;
    let acked = ids(q.as_ref(), (0..n).map(|i| spec(&format!("s-{i}"), "a", 2)).collect(), 0).await;
    let ones = ids(
        q.as_ref(),
        vec![
            spec("cancel-me", "a", 1),
            spec("bump-me", "a", 1),
            spec("retry-me", "a", 1),
            spec("give-up", "a", 1),
        ],
        0,
    )
    .await;
    let (_, mut watch) = q.watch(&acked[n - 1], 1).await.unwrap();
    let l = q.lease(1, 1 << 1, n, 1).await;
    assert_eq!(l.len(), n, "the priority-2 ads are leased");
    let score = |id: &str| acked.iter().position(|a| a == id).unwrap() as u32 + 1;
    let (single, batch) = l[..n - 1].split_at(n / 2);
    for x in single {
        q.ack(1, x.lease_id, scored(score(&x.ad.id)), 2).await.unwrap();
    }
    for r in q.ack_many(1, batch.iter().map(|x| (x.lease_id, scored(score(&x.ad.id)))).collect(), 2).await {
        r.unwrap();
    }
    q.cancel(&ones[0], 2).await.unwrap();
    q.set_priority(&ones[1], 4, 2).await.unwrap();
    let l1 = q.lease(1, 1, 2, 2).await;
    assert_eq!(l1.len(), 2);
    q.nack(1, l1[0].lease_id, true, "transient", 3).await.unwrap();
    q.nack(1, l1[1].lease_id, false, "bad creative", 3).await.unwrap();
    q.set_paused(3, true).await.unwrap();
    q.set_policy(&pb::SetPolicyRequest { max_attempts: Some(9), ..Default::default() }).await.unwrap();
    let last = &l[n - 1];
    q.ack(1, last.lease_id, scored(score(&last.ad.id)), 4).await.unwrap();
    let mut reported = Vec::new();
    while let Ok(Some(ad)) = tokio::time::timeout(Duration::from_secs(5), watch.recv()).await {
        reported.push(ad.status);
    }
    assert_eq!(reported.last(), Some(&(AdStatus::Completed as i32)), "WatchAd reports the ack");

    let q = h.crash(q).await;
    for id in &acked {
        let ad = q.get(id, 5).await.unwrap();
        assert_eq!(ad.status, AdStatus::Completed as i32, "an acked ad is still completed after a crash");
        assert_eq!(ad.analysis.map(|a| a.score), Some(score(id)), "with the analysis it was acked with");
    }
    assert_eq!(q.stats(5).await.unwrap().completed_total, n as u64, "completions are counted once");
    assert_eq!(q.get(&ones[0], 5).await.unwrap().status, AdStatus::Cancelled as i32);
    assert_eq!(q.get(&ones[1], 5).await.unwrap().priority, 4, "a priority change survives");
    let retried = q.get(&ones[2], 5).await.unwrap();
    assert_eq!(
        (retried.status, retried.attempts, retried.last_error.as_str()),
        (AdStatus::Queued as i32, 1, "transient")
    );
    assert_eq!(q.get(&ones[3], 5).await.unwrap().status, AdStatus::DeadLetter as i32);
    assert_eq!(q.policy().await.unwrap().max_attempts, 9, "a policy change survives");
    let st = q.stats(5).await.unwrap();
    assert!(st.partitions.iter().any(|p| p.priority == 3 && p.paused), "a pause survives");
    assert_eq!(titles(q.as_ref(), 10, 6).await, vec!["bump-me", "retry-me"], "nothing else is queued");
    q.close().await;
}

/// Every policy field reads back as set: through GetPolicy, from another gateway, after a
/// restart and after a crash; both values of the flag, and the zero aging step. With
/// anti-starvation off after a restart, an overdue ad waits its turn.
pub async fn every_policy_field_round_trips(h: &dyn Harness) {
    let mut q = h.fresh(config()).await;
    let d = q.policy().await.unwrap();
    let wanted = [
        pb::Policy {
            anti_starvation: !d.anti_starvation,
            max_wait_seconds: d.max_wait_seconds + 7,
            aging_step_seconds: d.aging_step_seconds + 3,
            max_attempts: d.max_attempts + 2,
            lease_seconds: d.lease_seconds + 5,
        },
        pb::Policy {
            anti_starvation: true,
            max_wait_seconds: 2,
            aging_step_seconds: 0,
            max_attempts: 1,
            lease_seconds: 1,
        },
        pb::Policy {
            anti_starvation: false,
            max_wait_seconds: 2,
            aging_step_seconds: 0,
            max_attempts: 100,
            lease_seconds: 3600,
        },
    ];
    for want in wanted {
        let set = pb::SetPolicyRequest {
            anti_starvation: Some(want.anti_starvation),
            max_wait_seconds: Some(want.max_wait_seconds),
            aging_step_seconds: Some(want.aging_step_seconds),
            max_attempts: Some(want.max_attempts),
            lease_seconds: Some(want.lease_seconds),
        };
        assert_eq!(q.set_policy(&set).await.unwrap(), want, "SetPolicy answers the policy in force");
        assert_eq!(q.policy().await.unwrap(), want, "GetPolicy after SetPolicy");
        if let Some(p) = h.peer().await {
            assert_eq!(p.policy().await.unwrap(), want, "another gateway reads the same policy");
            p.close().await;
        }
        q = h.reopen(q).await;
        assert_eq!(q.policy().await.unwrap(), want, "the policy after a restart");
        q = h.crash(q).await;
        assert_eq!(q.policy().await.unwrap(), want, "the policy after a crash");
    }
    // The last policy has anti-starvation off: the overdue ad does not jump.
    let mut low = spec("patient", "a", 1);
    low.max_wait_seconds = 2;
    q.submit(vec![low], "", 0).await.unwrap();
    q.submit((0..2).map(|i| spec(&format!("hot-{i}"), "a", 5)).collect(), "", 1_000).await.unwrap();
    assert_eq!(
        titles(q.as_ref(), 3, 5_000).await,
        vec!["hot-0", "hot-1", "patient"],
        "anti-starvation off (read back from the store) keeps strict priority"
    );
    q.close().await;
}
