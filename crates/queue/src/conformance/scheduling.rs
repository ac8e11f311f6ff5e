//! Scheduling order on every backend, checked against the Rust `Index`. The embedded and
//! MongoDB queues choose with the `Index` itself; the Redis queue's LEASE script repeats
//! its rules in Lua (overdue first by deadline, aging by one level per step up to 5, the
//! longest wait first among equal effective priorities, then the higher priority). These
//! cases run every one of those branches (a 1 s aging step; the clock is the `now` each
//! call takes, so waits of seconds cost nothing) and check that the lease order equals
//! the `peek` order and the order the `Index` gives for the same ads, so the Lua and the
//! Rust rules cannot drift apart unnoticed.

use super::{Harness, config, spec};
use crate::index::{ALL_PARTITIONS, Index, PartitionMask};
use crate::{QueueConfig, policy};

/// One ad of a scenario: title, priority, its own max wait (s, 0: the policy's), and
/// when it is submitted (ms; ads are submitted in this order).
type Planned = (&'static str, u32, u32, i64);

/// Ads that exercise every rule at `now` = 3 s: two overdue ads (deadline order differs
/// from submission order), aging that lifts a priority-2 ad above younger priority-5
/// ones, ads capped at 5 that tie on effective priority and differ by wait, and two ads
/// submitted together at priorities 4 and 5 that tie on both (the higher one first).
const PLAN: [Planned; 10] = [
    ("a-p1-0s", 1, 0, 0),
    ("b-p2-0s", 2, 0, 0),
    ("i-p2-due1.5s", 2, 1, 500),
    ("c-p3-1s", 3, 0, 1_000),
    ("d-p1-due3s", 1, 2, 1_000),
    ("g-p4-2s", 4, 0, 2_000),
    ("h-p5-2s", 5, 0, 2_000),
    ("e-p5-2.5s", 5, 0, 2_500),
    ("f-p4-2.5s", 4, 0, 2_500),
    ("j-p3-2.5s", 3, 0, 2_500),
];

/// The scheduling settings of these cases: anti-starvation on, a 1 s aging step.
fn aging_config() -> QueueConfig {
    QueueConfig { anti_starvation: true, aging_step_seconds: 1, max_wait_seconds: 300, ..config() }
}

/// The serving order the `Index` gives for `plan` at `now` from the partitions in `mask`.
fn index_order(cfg: &QueueConfig, plan: &[Planned], now: i64, mask: PartitionMask) -> Vec<String> {
    let mut index = Index::default();
    for (seq, (_, priority, own_wait, at)) in plan.iter().enumerate() {
        let wait = if *own_wait > 0 { *own_wait } else { cfg.max_wait_seconds };
        index.push(seq as u128, *priority as u8, seq as u64 + 1, *at, at + wait as i64 * 1000);
    }
    let rules = policy::rules(&cfg.policy());
    std::iter::from_fn(|| index.pop(now, rules, mask)).map(|(k, _)| plan[k as usize].0.to_owned()).collect()
}

/// A fresh queue holding `plan`, each ad submitted at its own time.
async fn submitted(
    h: &dyn Harness,
    cfg: &QueueConfig,
    plan: &[Planned],
) -> std::sync::Arc<dyn crate::AdQueue> {
    let q = h.fresh(cfg.clone()).await;
    for (title, priority, own_wait, at) in plan {
        let mut s = spec(title, "sched", *priority);
        s.max_wait_seconds = *own_wait;
        q.submit(vec![s], "", *at).await.expect("submit");
    }
    q
}

/// Runs every scheduling check.
pub async fn run_all(h: &dyn Harness) {
    lease_order_matches_the_index_with_aging_and_overdue_ads(h).await;
    leases_taken_one_at_a_time_follow_the_same_order(h).await;
    a_partition_mask_keeps_the_order_of_the_rest(h).await;
}

/// Overdue first (by deadline), then aging and the tie-breaks: one LEASE of every ad, and
/// `peek` before it, give exactly the `Index` order; at a later clock, when every ad has
/// aged to the top level, the order is by wait and then by priority.
pub async fn lease_order_matches_the_index_with_aging_and_overdue_ads(h: &dyn Harness) {
    let cfg = aging_config();
    for now in [3_000, 9_000] {
        let want = index_order(&cfg, &PLAN, now, ALL_PARTITIONS);
        if now == 3_000 {
            // The rules this plan is meant to exercise, spelled out once.
            assert_eq!(&want[..3], ["i-p2-due1.5s", "d-p1-due3s", "b-p2-0s"], "overdue first, then aging");
            assert_eq!(&want[3..5], ["c-p3-1s", "h-p5-2s"], "equal effective priority: longest wait first");
        }
        let q = submitted(h, &cfg, &PLAN).await;
        let peek: Vec<String> = q.peek(PLAN.len(), now).await.unwrap().into_iter().map(|a| a.title).collect();
        assert_eq!(peek, want, "peek at {now} ms follows the scheduling rules of the Index");
        let leased: Vec<String> = q
            .lease(1, ALL_PARTITIONS, PLAN.len(), now)
            .await
            .into_iter()
            .map(|l| l.ad.spec.unwrap_or_default().title)
            .collect();
        assert_eq!(
            leased, want,
            "one lease of every ad at {now} ms follows the scheduling rules of the Index"
        );
        q.close().await;
    }
}

/// Leasing one ad per call gives the same order as one call for all.
pub async fn leases_taken_one_at_a_time_follow_the_same_order(h: &dyn Harness) {
    let cfg = aging_config();
    let want = index_order(&cfg, &PLAN, 3_000, ALL_PARTITIONS);
    let q = submitted(h, &cfg, &PLAN).await;
    let mut got = Vec::new();
    for _ in 0..PLAN.len() {
        let l = q.lease(2, ALL_PARTITIONS, 1, 3_000).await;
        got.extend(l.into_iter().map(|l| l.ad.spec.unwrap_or_default().title));
    }
    assert_eq!(got, want, "single leases follow the scheduling rules of the Index");
    q.close().await;
}

/// A worker serving only some partitions gets their ads in the `Index` order (an overdue
/// ad of another partition does not block them).
pub async fn a_partition_mask_keeps_the_order_of_the_rest(h: &dyn Harness) {
    let cfg = aging_config();
    let mask: PartitionMask = 0b1_1010; // priorities 2, 4 and 5
    let want = index_order(&cfg, &PLAN, 3_000, mask);
    let q = submitted(h, &cfg, &PLAN).await;
    let got: Vec<String> = q
        .lease(3, mask, PLAN.len(), 3_000)
        .await
        .into_iter()
        .map(|l| l.ad.spec.unwrap_or_default().title)
        .collect();
    assert_eq!(got, want, "masked leases follow the scheduling rules of the Index");
    q.close().await;
}
