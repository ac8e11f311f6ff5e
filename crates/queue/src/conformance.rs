//! The queue conformance suite: the semantics every `AdQueue` backend must keep (order,
//! leases, expiry, dead letters, sessions, restart, operator controls, watches, and no
//! double lease under concurrency), and what a restart or a crash must keep
//! (`durability`), and that every backend serves ads in the order of the Rust `Index`
//! (`scheduling`). A backend's test implements `Harness` and calls `run_all`; each check
//! panics with a message naming the broken guarantee.

pub mod durability;
pub mod scheduling;
pub mod shards;

use crate::index::ALL_PARTITIONS;
use crate::{AdQueue, QueueConfig, QueueError};
use adflow_proto::v1::{self as pb, AdStatus};
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How the suite gets queues of one backend.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A new, empty queue with these settings.
    async fn fresh(&self, cfg: QueueConfig) -> Arc<dyn AdQueue>;
    /// The same data opened again after `close` (a gateway restart).
    async fn reopen(&self, q: Arc<dyn AdQueue>) -> Arc<dyn AdQueue>;
    /// The same data opened again after a kill -9 of the gateway holding `q`: no `close`,
    /// and only what the backend had committed survives.
    async fn crash(&self, q: Arc<dyn AdQueue>) -> Arc<dyn AdQueue>;
    /// A second handle on the same data, as another gateway sees it (None: one process only).
    async fn peer(&self) -> Option<Arc<dyn AdQueue>>;
    /// Whether leases survive a restart (shared backends) or come back queued (embedded).
    fn leases_survive_restart(&self) -> bool;
}

/// How to open a shared backend (Redis, MongoDB) on a named, isolated namespace.
#[async_trait]
pub trait Opener: Send + Sync {
    /// Opens (a handle on) the queue in namespace `space` with `cfg`.
    async fn open(&self, cfg: &QueueConfig, space: &str) -> Arc<dyn AdQueue>;
}

/// The harness of every shared backend: a fresh namespace per queue, a restart or a peer
/// gateway is another handle on the same namespace, and leases survive restarts.
pub struct Shared<O> {
    opener: O,
    last: std::sync::Mutex<Option<(QueueConfig, String)>>,
}

impl<O: Opener> Shared<O> {
    /// A harness over `opener`.
    pub fn new(opener: O) -> Self {
        Self { opener, last: std::sync::Mutex::new(None) }
    }

    async fn open(&self) -> Arc<dyn AdQueue> {
        let (cfg, space) = self.last.lock().unwrap().clone().expect("a fresh queue first");
        self.opener.open(&cfg, &space).await
    }
}

#[async_trait]
impl<O: Opener> Harness for Shared<O> {
    async fn fresh(&self, cfg: QueueConfig) -> Arc<dyn AdQueue> {
        *self.last.lock().unwrap() = Some((cfg, uuid::Uuid::new_v4().simple().to_string()));
        self.open().await
    }

    async fn reopen(&self, q: Arc<dyn AdQueue>) -> Arc<dyn AdQueue> {
        q.close().await;
        drop(q);
        self.open().await
    }

    async fn crash(&self, q: Arc<dyn AdQueue>) -> Arc<dyn AdQueue> {
        // The state lives in the server: a gateway that dies just stops talking to it.
        drop(q);
        self.open().await
    }

    async fn peer(&self) -> Option<Arc<dyn AdQueue>> {
        Some(self.open().await)
    }

    fn leases_survive_restart(&self) -> bool {
        true
    }
}

/// Settings the suite uses: 3 attempts, 10 s leases.
pub fn config() -> QueueConfig {
    QueueConfig { max_attempts: 3, lease_seconds: 10, ..Default::default() }
}

pub(crate) fn spec(title: &str, family: &str, priority: u32) -> pb::AdSpec {
    pb::AdSpec { title: title.into(), game_family: family.into(), priority, ..Default::default() }
}

pub(crate) fn result() -> pb::AnalysisResult {
    pb::AnalysisResult { score: 80, verdict: pb::Verdict::Approved as i32, ..Default::default() }
}

pub(crate) async fn titles(q: &dyn AdQueue, n: usize, now: i64) -> Vec<String> {
    q.lease(1, ALL_PARTITIONS, n, now).await.into_iter().map(|l| l.ad.spec.unwrap().title).collect()
}

pub(crate) async fn ids(q: &dyn AdQueue, specs: Vec<pb::AdSpec>, now: i64) -> Vec<String> {
    q.submit(specs, "", now).await.expect("submit").into_iter().map(|r| r.id).collect()
}

/// Runs every check against fresh queues of the backend.
pub async fn run_all(h: &dyn Harness) {
    priority_order_then_fifo(h).await;
    expiry_redelivers_then_dead_letters_and_requeue(h).await;
    released_session_hands_leases_to_others(h).await;
    nack_retries_then_dead_letters(h).await;
    state_survives_a_restart(h).await;
    operator_controls_and_watch(h).await;
    overdue_ads_jump_the_queue(h).await;
    concurrent_leases_never_share_an_ad(h).await;
    audit_log_pages_newest_first(h).await;
    durability::run_all(h).await;
    scheduling::run_all(h).await;
}

/// Strict priority, FIFO inside a priority; ids, positions and the trace travel.
pub async fn priority_order_then_fifo(h: &dyn Harness) {
    let q = h.fresh(config()).await;
    let r = q
        .submit(
            vec![
                spec("low-1", "a", 1),
                spec("high-1", "a", 5),
                spec("mid-1", "a", 3),
                spec("high-2", "a", 5),
            ],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].queue_position, 0, "first ad, nothing ahead");
    assert_eq!(r[3].queue_position, 1, "second priority-5 ad has one ahead");
    q.submit(vec![spec("low-2", "a", 1)], "", 1_000).await.unwrap();
    let stats = q.stats(1_000).await.unwrap();
    assert_eq!(stats.total_queued, 5, "stats count the queued ads");
    let leased = q.lease(1, ALL_PARTITIONS, 1, 1_001).await;
    assert_eq!(leased[0].traceparent, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert_eq!(leased[0].ad.id, r[1].id, "the lease carries the ad's id");
    let mut got = vec![leased[0].ad.spec.clone().unwrap().title];
    got.extend(titles(q.as_ref(), 10, 1_001).await);
    assert_eq!(got, vec!["high-1", "high-2", "mid-1", "low-1", "low-2"], "strict priority, then FIFO");
    q.close().await;
}

/// An expired lease redelivers with attempt+1 until max attempts, then dead-letters.
pub async fn expiry_redelivers_then_dead_letters_and_requeue(h: &dyn Harness) {
    let q = h.fresh(config()).await;
    let id = ids(q.as_ref(), vec![spec("flaky", "a", 3)], 0).await.remove(0);
    let mut now = 0;
    for attempt in 1..=3 {
        let l = q.lease(1, ALL_PARTITIONS, 1, now).await;
        assert_eq!(l.len(), 1, "attempt {attempt} leased");
        assert_eq!(l[0].attempt, attempt);
        now = l[0].deadline_ms;
        assert_eq!(q.expire(now).await.len(), 1, "lease {attempt} expires at its deadline");
        assert!(
            matches!(q.ack(1, l[0].lease_id, result(), now).await, Err(QueueError::StaleLease(_))),
            "a late ack on an expired lease is refused"
        );
    }
    let ad = q.get(&id, now).await.unwrap();
    assert_eq!(ad.status, AdStatus::DeadLetter as i32);
    assert_eq!(ad.attempts, 3);
    assert!(ad.last_error.contains("expired"), "{}", ad.last_error);
    let (dead, total) = q.dead_letters(10).await.unwrap();
    assert_eq!((dead.len(), total), (1, 1));
    assert_eq!(dead[0].id, id);
    assert_eq!(q.requeue_dead(&[], now).await.unwrap(), 1);
    let l = q.lease(1, ALL_PARTITIONS, 1, now).await;
    assert_eq!((l.len(), l[0].attempt), (1, 1), "a requeued dead letter starts over");
    assert_eq!(q.ack(1, l[0].lease_id, result(), now).await.unwrap(), "");
    let ad = q.get(&id, now).await.unwrap();
    assert_eq!(ad.status, AdStatus::Completed as i32);
    assert_eq!(ad.analysis.unwrap().score, 80, "the analysis is stored with the ad");
    assert_eq!(q.stats(now).await.unwrap().completed_total, 1);
    q.close().await;
}

/// A session's leases go back when it ends; only the lease holder may settle.
pub async fn released_session_hands_leases_to_others(h: &dyn Harness) {
    let q = h.fresh(config()).await;
    q.submit(vec![spec("x", "a", 2)], "", 0).await.unwrap();
    let l = q.lease(7, ALL_PARTITIONS, 5, 1).await;
    assert_eq!(l.len(), 1);
    assert!(q.lease(8, ALL_PARTITIONS, 5, 2).await.is_empty(), "a leased ad is not leased twice");
    assert_eq!(q.release_session(7, 3).await, 1);
    let again = q.lease(8, ALL_PARTITIONS, 5, 4).await;
    assert_eq!((again.len(), again[0].attempt), (1, 2));
    assert!(matches!(q.ack(7, l[0].lease_id, result(), 5).await, Err(QueueError::StaleLease(_))));
    assert!(
        matches!(q.ack(7, again[0].lease_id, result(), 5).await, Err(QueueError::StaleLease(_))),
        "another session cannot settle a lease"
    );
    assert!(matches!(q.ack(8, 999_999_999, result(), 5).await, Err(QueueError::UnknownLease(_))));
    let mixed = q.ack_many(8, vec![(l[0].lease_id, result()), (999_999_999, result())], 5).await;
    assert!(
        matches!(mixed[..], [Err(QueueError::StaleLease(_)), Err(QueueError::UnknownLease(_))]),
        "a batch answers per item: {mixed:?}"
    );
    let d = q.extend(8, again[0].lease_id, 60, 5).await.unwrap();
    assert_eq!(d, 60_005);
    assert!(q.expire(30_000).await.is_empty(), "an extended lease does not expire at its old deadline");
    q.ack(8, again[0].lease_id, result(), 6).await.unwrap();
    q.close().await;
}

/// nack(retry) requeues while attempts remain; nack(give up) dead-letters at once.
pub async fn nack_retries_then_dead_letters(h: &dyn Harness) {
    let q = h.fresh(config()).await;
    let ids = ids(q.as_ref(), vec![spec("r", "a", 2), spec("g", "a", 1)], 0).await;
    let l = q.lease(1, ALL_PARTITIONS, 1, 1).await;
    q.nack(1, l[0].lease_id, true, "transient", 2).await.unwrap();
    let r = q.get(&ids[0], 2).await.unwrap();
    assert_eq!((r.status, r.last_error.as_str()), (AdStatus::Queued as i32, "transient"));
    let l = q.lease(1, ALL_PARTITIONS, 2, 3).await;
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].ad.id, ids[0], "a retried ad keeps its place in line");
    q.nack(1, l[1].lease_id, false, "bad creative", 4).await.unwrap();
    let g = q.get(&ids[1], 4).await.unwrap();
    assert_eq!((g.status, g.last_error.as_str()), (AdStatus::DeadLetter as i32, "bad creative"));
    q.close().await;
}

/// Completed, dead and queued ads survive a restart; queued order is kept.
pub async fn state_survives_a_restart(h: &dyn Harness) {
    let q = h.fresh(config()).await;
    let ids = ids(
        q.as_ref(),
        vec![
            spec("done", "a", 5),
            spec("leased", "a", 4),
            spec("dead", "a", 3),
            spec("q1", "a", 2),
            spec("q2", "a", 2),
        ],
        0,
    )
    .await;
    let l = q.lease(1, ALL_PARTITIONS, 3, 1).await;
    q.ack(1, l[0].lease_id, result(), 2).await.unwrap();
    q.nack(1, l[2].lease_id, false, "nope", 2).await.unwrap();
    q.set_policy(&pb::SetPolicyRequest { max_attempts: Some(4), ..Default::default() }).await.unwrap();
    q.set_paused(1, true).await.unwrap();
    let q = h.reopen(q).await;
    assert_eq!(q.policy().await.unwrap().max_attempts, 4, "a policy set at run time survives a restart");
    let st = q.stats(3).await.unwrap();
    assert!(st.partitions.iter().any(|p| p.priority == 1 && p.paused), "a paused partition stays paused");
    q.set_paused(1, false).await.unwrap();
    let done = q.get(&ids[0], 3).await.unwrap();
    assert_eq!(done.status, AdStatus::Completed as i32);
    assert_eq!(done.analysis.unwrap().score, 80);
    assert_eq!(q.get(&ids[2], 3).await.unwrap().status, AdStatus::DeadLetter as i32);
    if h.leases_survive_restart() {
        assert_eq!(q.get(&ids[1], 3).await.unwrap().status, AdStatus::Processing as i32);
        assert_eq!(q.stats(3).await.unwrap().total_queued, 2);
        assert_eq!(titles(q.as_ref(), 10, 4).await, vec!["q1", "q2"]);
        // The lease is still bounded by its deadline.
        assert_eq!(q.expire(l[1].deadline_ms).await.len(), 1);
        assert_eq!(titles(q.as_ref(), 10, l[1].deadline_ms).await, vec!["leased"]);
    } else {
        assert_eq!(q.get(&ids[1], 3).await.unwrap().status, AdStatus::Queued as i32);
        assert_eq!(q.stats(3).await.unwrap().total_queued, 3);
        assert_eq!(titles(q.as_ref(), 10, 4).await, vec!["leased", "q1", "q2"]);
    }
    q.close().await;
}

/// Reprioritize (dry run and real), peek, cancel, pause, families, policy, purge, watch.
pub async fn operator_controls_and_watch(h: &dyn Harness) {
    let q = h.fresh(config()).await;
    let ids = ids(
        q.as_ref(),
        vec![spec("rpg-1", "RPG-Fantasy", 1), spec("puz", "Puzzle", 2), spec("rpg-2", "rpg-fantasy", 3)],
        0,
    )
    .await;
    let f = pb::AdFilter { game_family: "RPG-Fantasy".into(), ..Default::default() };
    assert_eq!(q.reprioritize(&f, 5, true, 1).await.unwrap(), (2, 2), "dry run counts");
    assert_eq!(q.peek(1, 1).await.unwrap()[0].title, "rpg-2", "dry run changed nothing");
    assert_eq!(q.reprioritize(&f, 5, false, 1).await.unwrap(), (2, 2));
    let peek: Vec<String> = q.peek(3, 1).await.unwrap().into_iter().map(|a| a.title).collect();
    assert_eq!(peek, vec!["rpg-1", "rpg-2", "puz"], "reprioritized ads keep their age order");
    let fams = q.family_stats(1).await.unwrap();
    assert_eq!(fams.len(), 2);
    assert_eq!(fams[0].queued, 2, "families are counted case-insensitively: {fams:?}");
    assert!(matches!(q.set_priority(&ids[1], 9, 1).await, Err(QueueError::Invalid { .. })));
    assert!(matches!(q.get("not-a-uuid", 1).await, Err(QueueError::BadId(_))));
    assert!(matches!(q.get(&uuid::Uuid::now_v7().to_string(), 1).await, Err(QueueError::NotFound(_))));

    let (snap, mut rx) = q.watch(&ids[1], 1).await.unwrap();
    assert_eq!(snap.status, AdStatus::Queued as i32);
    let cancelled = q.cancel(&ids[0], 2).await.unwrap();
    assert_eq!(cancelled.status, AdStatus::Cancelled as i32);
    assert!(
        matches!(q.cancel(&ids[0], 2).await, Err(QueueError::WrongState { .. })),
        "a cancelled ad cannot be cancelled again"
    );
    let st = q.set_paused(5, true).await.unwrap();
    assert_eq!((st.paused, st.queued), (true, 1));
    let l = q.lease(1, ALL_PARTITIONS, 5, 3).await;
    let got: Vec<String> = l.iter().map(|l| l.ad.spec.clone().unwrap().title).collect();
    assert_eq!(got, vec!["puz"], "a paused partition is not served");
    q.ack(1, l[0].lease_id, result(), 4).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(ad)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        seen.push(ad.status);
    }
    assert_eq!(seen, vec![AdStatus::Processing as i32, AdStatus::Completed as i32], "watch sees each status");
    q.set_paused(5, false).await.unwrap();
    let p =
        q.set_policy(&pb::SetPolicyRequest { max_attempts: Some(7), ..Default::default() }).await.unwrap();
    assert_eq!(p.max_attempts, 7);
    assert_eq!(q.policy().await.unwrap().max_attempts, 7);
    assert!(matches!(
        q.set_policy(&pb::SetPolicyRequest { lease_seconds: Some(0), ..Default::default() }).await,
        Err(QueueError::Invalid { field: "lease_seconds", .. })
    ));
    assert_eq!(q.purge(5, 5).await.unwrap(), 1);
    assert_eq!(q.get(&ids[2], 5).await.unwrap().status, AdStatus::Cancelled as i32);
    assert_eq!(q.stats(5).await.unwrap().total_queued, 0);
    let listed = q
        .list(&pb::ListAdsRequest { status: AdStatus::Cancelled as i32, ..Default::default() }, 5)
        .await
        .unwrap();
    assert_eq!(listed.ads.len(), 2, "list filters by status");
    let page = q.list(&pb::ListAdsRequest { page_size: 2, ..Default::default() }, 5).await.unwrap();
    assert_eq!(page.ads.len(), 2);
    assert_eq!(page.ads[0].id, ids[2], "newest first");
    let rest = q
        .list(&pb::ListAdsRequest { page_size: 2, page_token: page.next_page_token, ..Default::default() }, 5)
        .await
        .unwrap();
    assert_eq!(rest.ads.iter().map(|a| a.id.clone()).collect::<Vec<_>>(), vec![ids[0].clone()]);
    q.close().await;
}

/// An ad past its max wait is served before younger, higher-priority ads.
pub async fn overdue_ads_jump_the_queue(h: &dyn Harness) {
    let q = h.fresh(QueueConfig { aging_step_seconds: 0, ..config() }).await;
    let mut low = spec("patient", "a", 1);
    low.max_wait_seconds = 2;
    q.submit(vec![low], "", 0).await.unwrap();
    q.submit((0..5).map(|i| spec(&format!("hot-{i}"), "a", 5)).collect(), "", 1_000).await.unwrap();
    assert_eq!(titles(q.as_ref(), 1, 1_500).await, vec!["hot-0"], "before its deadline: priority wins");
    assert_eq!(titles(q.as_ref(), 1, 2_001).await, vec!["patient"], "after its deadline: it jumps");
    let peek = q.peek(1, 2_001).await.unwrap();
    assert_eq!(peek[0].title, "hot-1");
    q.close().await;
}

/// Many sessions (and gateways, when the backend is shared) lease at once: each ad is
/// leased exactly once and acked exactly once.
pub async fn concurrent_leases_never_share_an_ad(h: &dyn Harness) {
    let q = h.fresh(config()).await;
    let other = h.peer().await.unwrap_or_else(|| q.clone());
    let n = 400;
    let submitted: HashSet<String> =
        ids(q.as_ref(), (0..n).map(|i| spec(&format!("c-{i}"), "a", 1 + (i % 5) as u32)).collect(), 10)
            .await
            .into_iter()
            .collect();
    let mut tasks = Vec::new();
    for s in 0..8u64 {
        let q = if s % 2 == 0 { q.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let l = q.lease(100 + s, ALL_PARTITIONS, 7, 20).await;
                if l.is_empty() {
                    break;
                }
                // Odd sessions settle one by one, even ones in batches.
                if s % 2 == 1 {
                    for x in l {
                        q.ack(100 + s, x.lease_id, result(), 21).await.expect("ack own lease");
                        got.push(x.ad.id);
                    }
                } else {
                    let items = l.iter().map(|x| (x.lease_id, result())).collect();
                    for r in q.ack_many(100 + s, items, 21).await {
                        r.expect("batched ack of own lease");
                    }
                    got.extend(l.into_iter().map(|x| x.ad.id));
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(all.len(), n, "every ad leased once, none twice");
    assert_eq!(unique, submitted, "exactly the submitted ads");
    assert_eq!(q.stats(22).await.unwrap().completed_total, n as u64);
    q.close().await;
}

/// Audit entries are durable and page newest first.
pub async fn audit_log_pages_newest_first(h: &dyn Harness) {
    let q = h.fresh(config()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = uuid::Uuid::now_v7().to_string();
        q.audit_append(&pb::AuditEntry {
            command_id: id.clone(),
            text: format!("cmd {i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        ids.push(id);
    }
    let first = q.audit_list(None, 2).await.unwrap();
    assert_eq!(first.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), vec!["cmd 4", "cmd 3"]);
    let next = q.audit_list(Some(&ids[3]), 10).await.unwrap();
    assert_eq!(next.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), vec!["cmd 2", "cmd 1", "cmd 0"]);
    let q = h.reopen(q).await;
    assert_eq!(q.audit_list(None, 10).await.unwrap().len(), 5, "the audit log survives a restart");
    q.close().await;
}
