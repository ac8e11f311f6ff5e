//! The embedded queue's semantics, driven through the `AdQueue` trait.

use adflow_proto::v1::{self as pb, AdStatus};
use adflow_queue::index::ALL_PARTITIONS;
use adflow_queue::{AdQueue, EmbeddedQueue, QueueConfig, QueueError};

fn cfg(dir: &std::path::Path) -> QueueConfig {
    QueueConfig { path: dir.join("q.redb"), max_attempts: 3, lease_seconds: 10, ..Default::default() }
}

fn spec(title: &str, family: &str, priority: u32) -> pb::AdSpec {
    pb::AdSpec { title: title.into(), game_family: family.into(), priority, ..Default::default() }
}

fn result() -> pb::AnalysisResult {
    pb::AnalysisResult { score: 80, verdict: pb::Verdict::Approved as i32, ..Default::default() }
}

async fn titles(q: &dyn AdQueue, n: usize, now: i64) -> Vec<String> {
    q.lease(1, ALL_PARTITIONS, n, now).await.into_iter().map(|l| l.ad.spec.unwrap().title).collect()
}

#[tokio::test]
async fn priority_order_then_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&cfg(dir.path())).unwrap();
    q.submit(
        vec![
            spec("low-1", "a", 1),
            spec("high-1", "a", 5),
            spec("mid-1", "a", 3),
            spec("high-2", "a", 5),
            spec("low-2", "a", 1),
        ],
        "",
        1_000,
    )
    .await
    .unwrap();
    assert_eq!(titles(&q, 10, 1_001).await, vec!["high-1", "high-2", "mid-1", "low-1", "low-2"]);
}

#[tokio::test]
async fn expiry_redelivers_then_dead_letters_and_requeue_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&cfg(dir.path())).unwrap();
    let id = q.submit(vec![spec("flaky", "a", 3)], "", 0).await.unwrap()[0].id.clone();
    let mut now = 0;
    for attempt in 1..=3 {
        let l = q.lease(1, ALL_PARTITIONS, 1, now).await;
        assert_eq!(l.len(), 1, "attempt {attempt} leased");
        assert_eq!(l[0].attempt, attempt);
        now = l[0].deadline_ms;
        assert_eq!(q.expire(now).await.len(), 1);
        // A late ack on the expired lease changes nothing.
        assert!(matches!(q.ack(1, l[0].lease_id, result(), now).await, Err(QueueError::StaleLease(_))));
    }
    let ad = q.get(&id, now).await.unwrap();
    assert_eq!(ad.status, AdStatus::DeadLetter as i32);
    assert_eq!(ad.attempts, 3);
    assert!(ad.last_error.contains("expired"), "{}", ad.last_error);
    let (dead, total) = q.dead_letters(10).await;
    assert_eq!((dead.len(), total), (1, 1));
    assert_eq!(q.requeue_dead(&[], now).await.unwrap(), 1);
    let l = q.lease(1, ALL_PARTITIONS, 1, now).await;
    assert_eq!((l.len(), l[0].attempt), (1, 1));
    q.ack(1, l[0].lease_id, result(), now).await.unwrap();
    assert_eq!(q.get(&id, now).await.unwrap().status, AdStatus::Completed as i32);
}

#[tokio::test]
async fn a_released_session_hands_its_leases_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&cfg(dir.path())).unwrap();
    q.submit(vec![spec("x", "a", 2)], "", 0).await.unwrap();
    let l = q.lease(7, ALL_PARTITIONS, 5, 1).await;
    assert_eq!(l.len(), 1);
    assert!(q.lease(8, ALL_PARTITIONS, 5, 2).await.is_empty());
    assert_eq!(q.release_session(7, 3).await, 1);
    let again = q.lease(8, ALL_PARTITIONS, 5, 4).await;
    assert_eq!((again.len(), again[0].attempt), (1, 2));
    // Session 7's old lease is refused; another session cannot ack session 8's lease.
    assert!(matches!(q.ack(7, l[0].lease_id, result(), 5).await, Err(QueueError::StaleLease(_))));
    assert!(matches!(q.ack(7, again[0].lease_id, result(), 5).await, Err(QueueError::StaleLease(_))));
    assert!(matches!(q.ack(8, 999_999, result(), 5).await, Err(QueueError::UnknownLease(_))));
    q.ack(8, again[0].lease_id, result(), 6).await.unwrap();
}

#[tokio::test]
async fn nack_retries_until_the_limit_and_give_up_dead_letters_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&cfg(dir.path())).unwrap();
    let ids: Vec<_> = q
        .submit(vec![spec("r", "a", 2), spec("g", "a", 1)], "", 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let l = q.lease(1, ALL_PARTITIONS, 1, 1).await;
    q.nack(1, l[0].lease_id, true, "transient", 2).await.unwrap();
    assert_eq!(q.get(&ids[0], 2).await.unwrap().status, AdStatus::Queued as i32);
    let l = q.lease(1, ALL_PARTITIONS, 2, 3).await;
    assert_eq!(l.len(), 2);
    q.nack(1, l[1].lease_id, false, "bad creative", 4).await.unwrap();
    let g = q.get(&ids[1], 4).await.unwrap();
    assert_eq!((g.status, g.last_error.as_str()), (AdStatus::DeadLetter as i32, "bad creative"));
}

#[tokio::test]
async fn state_survives_a_restart_and_leased_ads_come_back_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (done, leased, dead);
    {
        let q = EmbeddedQueue::open(&cfg(dir.path())).unwrap();
        let ids: Vec<_> = q
            .submit(
                vec![
                    spec("done", "a", 5),
                    spec("leased", "a", 4),
                    spec("dead", "a", 3),
                    spec("q1", "a", 2),
                    spec("q2", "a", 2),
                ],
                "",
                0,
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        (done, leased, dead) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
        let l = q.lease(1, ALL_PARTITIONS, 3, 1).await;
        q.ack(1, l[0].lease_id, result(), 2).await.unwrap();
        q.nack(1, l[2].lease_id, false, "nope", 2).await.unwrap();
        q.close().await;
    }
    let q = EmbeddedQueue::open(&cfg(dir.path())).unwrap();
    assert_eq!(q.get(&done, 3).await.unwrap().status, AdStatus::Completed as i32);
    assert_eq!(q.get(&done, 3).await.unwrap().analysis.unwrap().score, 80);
    assert_eq!(q.get(&leased, 3).await.unwrap().status, AdStatus::Queued as i32);
    assert_eq!(q.get(&dead, 3).await.unwrap().status, AdStatus::DeadLetter as i32);
    assert_eq!(q.stats(3).await.total_queued, 3);
    assert_eq!(titles(&q, 10, 4).await, vec!["leased", "q1", "q2"]);
}

#[tokio::test]
async fn reprioritize_cancel_pause_and_watch() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&cfg(dir.path())).unwrap();
    let ids: Vec<_> = q
        .submit(
            vec![spec("rpg-1", "RPG-Fantasy", 1), spec("puz", "Puzzle", 2), spec("rpg-2", "rpg-fantasy", 3)],
            "",
            0,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let f = pb::AdFilter { game_family: "RPG-Fantasy".into(), ..Default::default() };
    assert_eq!(q.reprioritize(&f, 5, true, 1).await, (2, 2), "dry run counts");
    assert_eq!(q.peek(1, 1).await[0].title, "rpg-2", "dry run changed nothing");
    assert_eq!(q.reprioritize(&f, 5, false, 1).await, (2, 2));
    assert_eq!(
        q.peek(3, 1).await.iter().map(|a| a.title.as_str()).collect::<Vec<_>>(),
        vec!["rpg-1", "rpg-2", "puz"]
    );

    let (snap, mut rx) = q.watch(&ids[1], 1).await.unwrap();
    assert_eq!(snap.status, AdStatus::Queued as i32);
    q.cancel(&ids[0], 2).await.unwrap();
    assert!(q.cancel(&ids[0], 2).await.is_err(), "a cancelled ad cannot be cancelled again");
    q.set_paused(5, true).await;
    let l = q.lease(1, ALL_PARTITIONS, 5, 3).await;
    assert_eq!(l.iter().map(|l| l.ad.spec.clone().unwrap().title).collect::<Vec<_>>(), vec!["puz"]);
    q.ack(1, l[0].lease_id, result(), 4).await.unwrap();
    let seen: Vec<i32> = [rx.recv().await.unwrap().status, rx.recv().await.unwrap().status].to_vec();
    assert_eq!(seen, vec![AdStatus::Processing as i32, AdStatus::Completed as i32]);
    assert!(rx.recv().await.is_none(), "the watch ends after a final state");
    q.set_paused(5, false).await;
    assert_eq!(titles(&q, 5, 5).await, vec!["rpg-2"]);
}
