//! The embedded queue: the scheduling `Index`, the records of active ads, leases and
//! watchers behind one `std::sync::Mutex` (every operation is a few map updates and
//! never awaits while holding it), with every state change journaled to redb.
//!
//! Memory holds only what is active (queued, leased, dead-lettered) plus a bounded set
//! of recently finished ads; everything else is read from redb. At start every stored
//! ad that was queued or leased is queued again (a lease does not survive a crash).

use crate::index::{AdKey, Index, MAX_PRIORITY, PartitionMask, Rules};
use crate::journal::Journal;
use crate::policy::{self, QueueConfig};
use crate::{AdQueue, Expired, FamilyStats, Leased, QueueError, parse_id};
use adflow_proto::v1::{self as pb, AdStatus};
use async_trait::async_trait;
use prost::Message;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::{mpsc, watch};

struct Record {
    ad: pb::Ad,
    seq: u64,
    lease: Option<u64>,
    /// W3C trace context of the submission (memory only: a restart starts new traces).
    trace: String,
}

struct LeaseInfo {
    key: AdKey,
    session: u64,
    deadline: i64,
}

/// Completions per second over the last minute.
#[derive(Default)]
struct Rate {
    buckets: VecDeque<(i64, u64)>,
}

impl Rate {
    fn add(&mut self, now: i64) {
        let sec = now / 1000;
        match self.buckets.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => self.buckets.push_back((sec, 1)),
        }
        while self.buckets.front().is_some_and(|(s, _)| *s <= sec - 60) {
            self.buckets.pop_front();
        }
    }

    fn last_minute(&self, now: i64) -> u64 {
        let sec = now / 1000;
        self.buckets.iter().filter(|(s, _)| *s > sec - 60).map(|(_, n)| n).sum()
    }
}

struct State {
    index: Index,
    ads: HashMap<AdKey, Record>,
    recent: HashMap<AdKey, pb::Ad>,
    recent_order: VecDeque<AdKey>,
    leases: HashMap<u64, LeaseInfo>,
    lease_deadlines: BTreeMap<(i64, u64), ()>,
    dead: BTreeMap<(i64, AdKey), ()>,
    watchers: HashMap<AdKey, Vec<mpsc::Sender<pb::Ad>>>,
    next_seq: u64,
    next_lease: u64,
    policy: pb::Policy,
    rate: Rate,
    completed_total: u64,
    sum_enqueued: i128,
}

/// The embedded queue.
pub struct EmbeddedQueue {
    state: Mutex<State>,
    journal: Journal,
    recent_cap: usize,
    signal: watch::Sender<u64>,
}

/// The lower-case name of a status, for messages.
pub(crate) fn status_name(s: i32) -> &'static str {
    match AdStatus::try_from(s) {
        Ok(AdStatus::Queued) => "queued",
        Ok(AdStatus::Processing) => "processing",
        Ok(AdStatus::Completed) => "completed",
        Ok(AdStatus::DeadLetter) => "dead-lettered",
        Ok(AdStatus::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// Completed and cancelled ads never change again.
pub(crate) fn is_final(s: i32) -> bool {
    matches!(AdStatus::try_from(s), Ok(AdStatus::Completed | AdStatus::Cancelled))
}

impl State {
    fn rules(&self) -> Rules {
        policy::rules(&self.policy)
    }

    fn deadline(&self, ad: &pb::Ad) -> i64 {
        let wait = ad
            .spec
            .as_ref()
            .map(|s| s.max_wait_seconds)
            .filter(|&w| w > 0)
            .unwrap_or(self.policy.max_wait_seconds);
        ad.enqueued_at_ms + wait as i64 * 1000
    }

    fn enqueue(&mut self, key: AdKey, seq: u64) {
        let Some(r) = self.ads.get(&key) else { return };
        let deadline = self.deadline(&r.ad);
        let (p, at) = (r.ad.priority as u8, r.ad.enqueued_at_ms);
        self.index.push(key, p, seq, at, deadline);
        self.sum_enqueued += at as i128;
    }

    fn dequeue(&mut self, key: AdKey) -> bool {
        match self.index.remove(key) {
            Some((_, _, at)) => {
                self.sum_enqueued -= at as i128;
                true
            }
            None => false,
        }
    }

    /// A copy of the ad with its computed fields filled in.
    fn snapshot(&self, ad: &pb::Ad, now: i64) -> pb::Ad {
        let mut a = ad.clone();
        let key = parse_id(&ad.id).unwrap_or_default();
        let position = self.index.position(key).unwrap_or(0);
        crate::fill_computed(&mut a, position, self.rate.last_minute(now) as f64 / 60.0, now);
        a
    }

    fn notify(&mut self, key: AdKey, now: i64) {
        if !self.watchers.contains_key(&key) {
            return;
        }
        let ad = match self.ads.get(&key) {
            Some(r) => r.ad.clone(),
            None => match self.recent.get(&key) {
                Some(a) => a.clone(),
                None => return,
            },
        };
        let snap = self.snapshot(&ad, now);
        let done = is_final(ad.status);
        if let Some(ws) = self.watchers.get_mut(&key) {
            ws.retain(|w| w.try_send(snap.clone()).is_ok() || !w.is_closed());
            if done || ws.is_empty() {
                self.watchers.remove(&key);
            }
        }
    }

    /// Moves a finished ad out of the active set.
    fn finish(&mut self, key: AdKey, cap: usize) {
        if let Some(r) = self.ads.remove(&key) {
            self.recent.insert(key, r.ad);
            self.recent_order.push_back(key);
            while self.recent_order.len() > cap {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    fn drop_lease(&mut self, lease_id: u64) -> Option<LeaseInfo> {
        let l = self.leases.remove(&lease_id)?;
        self.lease_deadlines.remove(&(l.deadline, lease_id));
        Some(l)
    }
}

impl EmbeddedQueue {
    /// Opens the queue database and restores queued and leased ads as queued.
    pub fn open(cfg: &QueueConfig) -> Result<Self, QueueError> {
        let journal = Journal::open(&cfg.path)?;
        let mut st = State {
            index: Index::default(),
            ads: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            leases: HashMap::new(),
            lease_deadlines: BTreeMap::new(),
            dead: BTreeMap::new(),
            watchers: HashMap::new(),
            next_seq: 1,
            next_lease: 1,
            policy: cfg.policy(),
            rate: Rate::default(),
            completed_total: 0,
            sum_enqueued: 0,
        };
        // Settings changed at run time (SetPolicy, Pause) outlive restarts.
        if let Some(b) = journal.meta("policy")?
            && let Ok(p) = pb::Policy::decode(b.as_slice())
        {
            if p != st.policy {
                tracing::info!(
                    "queue policy from the queue database (set at run time) overrides the [queue] settings"
                );
            }
            st.policy = p;
        }
        if let Some(flags) = journal.meta("paused")? {
            for (i, f) in flags.iter().enumerate().take(MAX_PRIORITY as usize) {
                st.index.set_paused(i as u8 + 1, *f == 1);
            }
        }
        let mut restored = Vec::new();
        journal.for_each(|key, mut ad| match AdStatus::try_from(ad.status) {
            Ok(AdStatus::Queued | AdStatus::Processing) => {
                ad.status = AdStatus::Queued as i32;
                restored.push((ad.enqueued_at_ms, key, ad));
            }
            Ok(AdStatus::DeadLetter) => {
                st.dead.insert((ad.finished_at_ms, key), ());
                st.ads.insert(key, Record { ad, seq: 0, lease: None, trace: String::new() });
            }
            _ => {}
        })?;
        // FIFO order survives: ads are re-sequenced by their enqueue time (then id).
        restored.sort_by_key(|(at, key, _)| (*at, *key));
        let n = restored.len();
        for (_, key, ad) in restored {
            let seq = st.next_seq;
            st.next_seq += 1;
            st.ads.insert(key, Record { ad, seq, lease: None, trace: String::new() });
            st.enqueue(key, seq);
        }
        tracing::info!(queued = n, dead_letters = st.dead.len(), path = %cfg.path.display(), "ad queue restored");
        Ok(Self {
            state: Mutex::new(st),
            journal,
            recent_cap: cfg.recent_finished.max(1),
            signal: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        self.signal.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Requeues or dead-letters the ad of an ended lease.
    fn settle_retry(&self, st: &mut State, key: AdKey, retry: bool, error: String, now: i64) {
        let max = st.policy.max_attempts;
        let Some(r) = st.ads.get_mut(&key) else { return };
        r.lease = None;
        r.ad.last_error = error;
        if retry && r.ad.attempts < max {
            r.ad.status = AdStatus::Queued as i32;
            let seq = r.seq;
            self.journal.put(key, &r.ad);
            st.enqueue(key, seq);
        } else {
            r.ad.status = AdStatus::DeadLetter as i32;
            r.ad.finished_at_ms = now;
            self.journal.put(key, &r.ad);
            st.dead.insert((now, key), ());
        }
        st.notify(key, now);
    }

    fn current_lease(st: &State, session: u64, lease_id: u64) -> Result<AdKey, QueueError> {
        match st.leases.get(&lease_id) {
            Some(l) if l.session == session => Ok(l.key),
            Some(_) => Err(QueueError::StaleLease(lease_id)),
            None if lease_id > 0 && lease_id < st.next_lease => Err(QueueError::StaleLease(lease_id)),
            None => Err(QueueError::UnknownLease(lease_id)),
        }
    }

    fn find(&self, st: &State, key: AdKey, id: &str) -> Result<pb::Ad, QueueError> {
        if let Some(r) = st.ads.get(&key) {
            return Ok(r.ad.clone());
        }
        if let Some(a) = st.recent.get(&key) {
            return Ok(a.clone());
        }
        self.journal.get(key)?.ok_or_else(|| QueueError::NotFound(id.to_owned()))
    }
}

/// Priorities are 1..=5.
pub(crate) fn check_priority(p: u8) -> Result<(), QueueError> {
    if !(1..=MAX_PRIORITY).contains(&p) {
        return Err(QueueError::Invalid { field: "priority", message: format!("{p} is outside 1..=5") });
    }
    Ok(())
}

#[async_trait]
impl AdQueue for EmbeddedQueue {
    async fn submit(
        &self,
        specs: Vec<pb::AdSpec>,
        traceparent: &str,
        now: i64,
    ) -> Result<Vec<pb::SubmitAdResponse>, QueueError> {
        let mut out = Vec::with_capacity(specs.len());
        {
            let mut st = self.lock();
            for spec in specs {
                let id = uuid::Uuid::now_v7();
                let key = id.as_u128();
                let priority = spec.priority;
                let ad = pb::Ad {
                    id: id.to_string(),
                    spec: Some(spec),
                    status: AdStatus::Queued as i32,
                    priority,
                    created_at_ms: now,
                    enqueued_at_ms: now,
                    ..Default::default()
                };
                self.journal.put(key, &ad);
                let seq = st.next_seq;
                st.next_seq += 1;
                st.ads.insert(key, Record { ad, seq, lease: None, trace: traceparent.to_owned() });
                st.enqueue(key, seq);
                let snap = st.snapshot(&st.ads[&key].ad, now);
                out.push(pb::SubmitAdResponse {
                    id: snap.id,
                    status: AdStatus::Queued as i32,
                    queue_position: snap.queue_position,
                    estimated_completion_ms: snap.estimated_completion_ms,
                });
            }
        }
        // Workers may take the ads before the commit: if the gateway died before it, the
        // client got no answer and resubmits, so nothing promised is lost.
        self.wake();
        let barrier = self.journal.barrier()?;
        match barrier.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(crate::journal::JournalError::Db(e).into()),
            Err(_) => return Err(crate::journal::JournalError::Stopped.into()),
        }
        Ok(out)
    }

    async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        let key = parse_id(id)?;
        let st = self.lock();
        let ad = self.find(&st, key, id)?;
        Ok(st.snapshot(&ad, now))
    }

    async fn list(&self, req: &pb::ListAdsRequest, now: i64) -> Result<pb::ListAdsResponse, QueueError> {
        let size = crate::page_size(req.page_size)?;
        let before = if req.page_token.is_empty() { None } else { Some(parse_id(&req.page_token)?) };
        let family = req.game_family.to_lowercase();
        let mut ads = Vec::new();
        let mut last = None;
        let mut more = false;
        let st = self.lock();
        self.journal.scan_newest(before, |key, stored| {
            // Memory is newer than the write-behind journal for active and recent ads.
            let ad = st
                .ads
                .get(&key)
                .map(|r| r.ad.clone())
                .or_else(|| st.recent.get(&key).cloned())
                .unwrap_or(stored);
            let fam_ok =
                family.is_empty() || ad.spec.as_ref().is_some_and(|s| s.game_family.to_lowercase() == family);
            let ok = (req.status == 0 || ad.status == req.status)
                && (req.priority == 0 || ad.priority == req.priority)
                && fam_ok;
            if ok {
                if ads.len() == size {
                    more = true;
                    return false;
                }
                last = Some(key);
                ads.push(st.snapshot(&ad, now));
            }
            true
        })?;
        let next_page_token = match (more, last) {
            (true, Some(k)) => uuid::Uuid::from_u128(k).to_string(),
            _ => String::new(),
        };
        Ok(pb::ListAdsResponse { ads, next_page_token })
    }

    async fn cancel(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        let key = parse_id(id)?;
        let mut st = self.lock();
        let Some(r) = st.ads.get(&key) else {
            let ad = self.find(&st, key, id)?;
            return Err(QueueError::WrongState {
                id: id.into(),
                status: status_name(ad.status),
                what: "only unfinished ads can be cancelled",
            });
        };
        let lease = r.lease;
        st.dequeue(key);
        if let Some(l) = lease {
            st.drop_lease(l);
        }
        st.dead.retain(|(_, k), _| *k != key);
        let r = st.ads.get_mut(&key).expect("checked above");
        r.lease = None;
        r.ad.status = AdStatus::Cancelled as i32;
        r.ad.finished_at_ms = now;
        self.journal.put(key, &r.ad);
        let ad = r.ad.clone();
        st.notify(key, now);
        st.finish(key, self.recent_cap);
        Ok(st.snapshot(&ad, now))
    }

    async fn watch(&self, id: &str, now: i64) -> Result<(pb::Ad, mpsc::Receiver<pb::Ad>), QueueError> {
        let key = parse_id(id)?;
        let mut st = self.lock();
        let ad = self.find(&st, key, id)?;
        let (tx, rx) = mpsc::channel(64);
        if !is_final(ad.status) {
            st.watchers.entry(key).or_default().push(tx);
        }
        Ok((st.snapshot(&ad, now), rx))
    }

    async fn lease(&self, session: u64, mask: PartitionMask, n: usize, now: i64) -> Vec<Leased> {
        let mut out = Vec::new();
        let mut guard = self.lock();
        let st = &mut *guard;
        let rules = st.rules();
        let lease_ms = st.policy.lease_seconds as i64 * 1000;
        while out.len() < n {
            let Some((key, _)) = st.index.pop(now, rules, mask) else { break };
            let lease_id = st.next_lease;
            st.next_lease += 1;
            let deadline = now + lease_ms;
            let Some(r) = st.ads.get_mut(&key) else { continue };
            st.sum_enqueued -= r.ad.enqueued_at_ms as i128;
            r.lease = Some(lease_id);
            r.ad.status = AdStatus::Processing as i32;
            r.ad.attempts += 1;
            r.ad.started_at_ms = now;
            let (ad, attempt, traceparent) = (r.ad.clone(), r.ad.attempts, r.trace.clone());
            st.leases.insert(lease_id, LeaseInfo { key, session, deadline });
            st.lease_deadlines.insert((deadline, lease_id), ());
            st.notify(key, now);
            out.push(Leased {
                lease_id,
                ad: st.snapshot(&ad, now),
                attempt,
                deadline_ms: deadline,
                traceparent,
            });
        }
        out
    }

    async fn ack(
        &self,
        session: u64,
        lease_id: u64,
        result: pb::AnalysisResult,
        now: i64,
    ) -> Result<String, QueueError> {
        let mut st = self.lock();
        let key = Self::current_lease(&st, session, lease_id)?;
        st.drop_lease(lease_id);
        let Some(r) = st.ads.get_mut(&key) else { return Err(QueueError::StaleLease(lease_id)) };
        r.lease = None;
        r.ad.status = AdStatus::Completed as i32;
        r.ad.finished_at_ms = now;
        r.ad.analysis = Some(result);
        self.journal.put(key, &r.ad);
        let trace = std::mem::take(&mut r.trace);
        st.rate.add(now);
        st.completed_total += 1;
        st.notify(key, now);
        st.finish(key, self.recent_cap);
        Ok(trace)
    }

    async fn nack(
        &self,
        session: u64,
        lease_id: u64,
        retry: bool,
        error: &str,
        now: i64,
    ) -> Result<(), QueueError> {
        let mut st = self.lock();
        let key = Self::current_lease(&st, session, lease_id)?;
        st.drop_lease(lease_id);
        self.settle_retry(&mut st, key, retry, error.to_owned(), now);
        drop(st);
        self.wake();
        Ok(())
    }

    async fn extend(&self, session: u64, lease_id: u64, seconds: u32, now: i64) -> Result<i64, QueueError> {
        crate::check_extension(seconds)?;
        let mut st = self.lock();
        Self::current_lease(&st, session, lease_id)?;
        let mut l = st.drop_lease(lease_id).expect("current lease exists");
        l.deadline = now + seconds as i64 * 1000;
        let deadline = l.deadline;
        st.lease_deadlines.insert((deadline, lease_id), ());
        st.leases.insert(lease_id, l);
        Ok(deadline)
    }

    async fn release_session(&self, session: u64, now: i64) -> usize {
        let mut st = self.lock();
        let mine: Vec<u64> =
            st.leases.iter().filter(|(_, l)| l.session == session).map(|(id, _)| *id).collect();
        for id in &mine {
            if let Some(l) = st.drop_lease(*id) {
                self.settle_retry(
                    &mut st,
                    l.key,
                    true,
                    "worker disconnected while holding the lease".into(),
                    now,
                );
            }
        }
        drop(st);
        if !mine.is_empty() {
            self.wake();
        }
        mine.len()
    }

    async fn expire(&self, now: i64) -> Vec<Expired> {
        let mut st = self.lock();
        let due: Vec<u64> = st.lease_deadlines.range(..(now + 1, 0)).map(|(&(_, id), _)| id).collect();
        let mut out = Vec::with_capacity(due.len());
        for id in &due {
            if let Some(l) = st.drop_lease(*id) {
                let secs = st.policy.lease_seconds;
                self.settle_retry(&mut st, l.key, true, format!("lease {id} expired after {secs} s"), now);
                if let Some(r) = st.ads.get(&l.key) {
                    out.push(Expired {
                        ad_id: r.ad.id.clone(),
                        lease_id: *id,
                        dead_lettered: r.ad.status == AdStatus::DeadLetter as i32,
                        traceparent: r.trace.clone(),
                    });
                }
            }
        }
        drop(st);
        if !out.is_empty() {
            self.wake();
        }
        out
    }

    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError> {
        let st = self.lock();
        let partitions = (1..=MAX_PRIORITY)
            .rev()
            .map(|p| pb::PartitionStats {
                priority: p as u32,
                queued: st.index.partition_len(p) as u64,
                paused: st.index.is_paused(p),
                oldest_wait_ms: st.index.oldest_in(p).map(|t| (now - t).max(0)).unwrap_or(0),
            })
            .collect::<Vec<_>>();
        let n = st.index.len() as i128;
        let last_minute = st.rate.last_minute(now);
        Ok(pb::QueueStats {
            total_queued: n as u64,
            oldest_wait_ms: partitions.iter().map(|p| p.oldest_wait_ms).max().unwrap_or(0),
            average_wait_ms: if n > 0 { (now as i128 - st.sum_enqueued / n).max(0) as i64 } else { 0 },
            partitions,
            in_flight: st.leases.len() as u64,
            dead_letters: st.dead.len() as u64,
            completed_last_minute: last_minute,
            processing_rate_per_s: last_minute as f64 / 60.0,
            completed_total: st.completed_total,
            workers: 0,
        })
    }

    async fn peek(&self, n: usize, now: i64) -> Result<Vec<pb::QueuedAd>, QueueError> {
        let st = self.lock();
        Ok(st
            .index
            .peek(n, now, st.rules())
            .into_iter()
            .filter_map(|p| {
                let spec = st.ads.get(&p.key)?.ad.spec.clone().unwrap_or_default();
                Some(crate::queued_ad(&p, uuid::Uuid::from_u128(p.key).to_string(), spec, now))
            })
            .collect())
    }

    async fn set_priority(&self, id: &str, priority: u8, now: i64) -> Result<(u8, u8), QueueError> {
        check_priority(priority)?;
        let key = parse_id(id)?;
        let mut st = self.lock();
        let Some(old) = st.index.set_priority(key, priority) else {
            let ad = self.find(&st, key, id)?;
            return Err(QueueError::WrongState {
                id: id.into(),
                status: status_name(ad.status),
                what: "only queued ads can be reprioritized",
            });
        };
        if let Some(r) = st.ads.get_mut(&key) {
            r.ad.priority = priority as u32;
            self.journal.put(key, &r.ad);
        }
        st.notify(key, now);
        drop(st);
        self.wake();
        Ok((old, priority))
    }

    async fn reprioritize(
        &self,
        filter: &pb::AdFilter,
        priority: u8,
        dry_run: bool,
        now: i64,
    ) -> Result<(u64, u64), QueueError> {
        check_priority(priority)?;
        let family = filter.game_family.to_lowercase();
        let min_wait = filter.older_than_seconds as i64 * 1000;
        let mut st = self.lock();
        let matched: Vec<(AdKey, u8)> = st
            .index
            .iter()
            .filter(|&(k, p, at)| {
                (filter.current_priority == 0 || p as u32 == filter.current_priority)
                    && now - at >= min_wait
                    && (family.is_empty()
                        || st
                            .ads
                            .get(&k)
                            .and_then(|r| r.ad.spec.as_ref())
                            .is_some_and(|s| s.game_family.to_lowercase() == family))
            })
            .map(|(k, p, _)| (k, p))
            .collect();
        let changed: Vec<AdKey> = matched.iter().filter(|(_, p)| *p != priority).map(|(k, _)| *k).collect();
        if !dry_run {
            for &k in &changed {
                st.index.set_priority(k, priority);
                if let Some(r) = st.ads.get_mut(&k) {
                    r.ad.priority = priority as u32;
                    self.journal.put(k, &r.ad);
                }
            }
            drop(st);
            self.wake();
        }
        Ok((changed.len() as u64, matched.len() as u64))
    }

    async fn set_paused(&self, priority: u8, paused: bool) -> Result<pb::PartitionState, QueueError> {
        check_priority(priority)?;
        let mut st = self.lock();
        st.index.set_paused(priority, paused);
        let flags = (1..=MAX_PRIORITY).map(|p| st.index.is_paused(p) as u8).collect();
        self.journal.set_meta("paused", flags);
        let queued = st.index.partition_len(priority) as u64;
        drop(st);
        self.wake();
        Ok(pb::PartitionState { priority: priority as u32, paused, queued })
    }

    async fn policy(&self) -> Result<pb::Policy, QueueError> {
        Ok(self.lock().policy)
    }

    async fn set_policy(&self, update: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError> {
        let mut st = self.lock();
        let next = policy::apply(&st.policy, update);
        policy::check(&next).map_err(|(field, message)| QueueError::Invalid { field, message })?;
        let deadlines_change = next.max_wait_seconds != st.policy.max_wait_seconds;
        st.policy = next;
        self.journal.set_meta("policy", next.encode_to_vec());
        if deadlines_change {
            // Ads without their own max wait follow the policy's: recompute their deadlines.
            let keys: Vec<(AdKey, u64)> =
                st.ads.iter().filter(|(k, _)| st.index.contains(**k)).map(|(k, r)| (*k, r.seq)).collect();
            for (k, seq) in keys {
                st.dequeue(k);
                st.enqueue(k, seq);
            }
        }
        drop(st);
        self.wake();
        Ok(next)
    }

    async fn dead_letters(&self, limit: usize) -> Result<(Vec<pb::DeadLetter>, u64), QueueError> {
        let st = self.lock();
        let items = st
            .dead
            .keys()
            .rev()
            .take(limit)
            .filter_map(|(at, k)| {
                let ad = &st.ads.get(k)?.ad;
                Some(pb::DeadLetter {
                    id: ad.id.clone(),
                    attempts: ad.attempts,
                    last_error: ad.last_error.clone(),
                    dead_at_ms: *at,
                    title: ad.spec.as_ref().map(|s| s.title.clone()).unwrap_or_default(),
                    priority: ad.priority,
                })
            })
            .collect();
        Ok((items, st.dead.len() as u64))
    }

    async fn requeue_dead(&self, ids: &[String], now: i64) -> Result<u64, QueueError> {
        let wanted: Option<Vec<AdKey>> = if ids.is_empty() {
            None
        } else {
            Some(ids.iter().map(|i| parse_id(i)).collect::<Result<_, _>>()?)
        };
        let mut st = self.lock();
        let picked: Vec<(i64, AdKey)> =
            st.dead.keys().filter(|(_, k)| wanted.as_ref().is_none_or(|w| w.contains(k))).copied().collect();
        for (at, key) in &picked {
            st.dead.remove(&(*at, *key));
            let seq = st.next_seq;
            st.next_seq += 1;
            if let Some(r) = st.ads.get_mut(key) {
                r.seq = seq;
                r.ad.status = AdStatus::Queued as i32;
                r.ad.attempts = 0;
                r.ad.enqueued_at_ms = now;
                r.ad.finished_at_ms = 0;
                self.journal.put(*key, &r.ad);
            }
            st.enqueue(*key, seq);
            st.notify(*key, now);
        }
        drop(st);
        self.wake();
        Ok(picked.len() as u64)
    }

    async fn purge(&self, priority: u8, now: i64) -> Result<u64, QueueError> {
        check_priority(priority)?;
        let mut st = self.lock();
        let keys = st.index.keys_in(priority);
        for &key in &keys {
            st.dequeue(key);
            if let Some(r) = st.ads.get_mut(&key) {
                r.ad.status = AdStatus::Cancelled as i32;
                r.ad.finished_at_ms = now;
                r.ad.last_error = format!("purged from partition {priority}");
                self.journal.put(key, &r.ad);
            }
            st.notify(key, now);
            st.finish(key, self.recent_cap);
        }
        Ok(keys.len() as u64)
    }

    async fn family_stats(&self, now: i64) -> Result<Vec<FamilyStats>, QueueError> {
        let st = self.lock();
        let mut by: std::collections::HashMap<String, (FamilyStats, i128)> = std::collections::HashMap::new();
        for r in st.ads.values() {
            let fam = r.ad.spec.as_ref().map(|s| s.game_family.clone()).unwrap_or_default();
            let e = by
                .entry(fam.to_lowercase())
                .or_insert_with(|| (FamilyStats { family: fam, ..Default::default() }, 0));
            match AdStatus::try_from(r.ad.status) {
                Ok(AdStatus::Queued) => {
                    e.0.queued += 1;
                    e.1 += (now - r.ad.enqueued_at_ms) as i128;
                }
                Ok(AdStatus::Processing) => e.0.processing += 1,
                Ok(AdStatus::DeadLetter) => e.0.dead_letters += 1,
                _ => {}
            }
        }
        let mut out: Vec<FamilyStats> = by
            .into_values()
            .map(|(mut f, sum)| {
                f.average_wait_ms = if f.queued > 0 { (sum / f.queued as i128) as i64 } else { 0 };
                f
            })
            .collect();
        crate::sort_families(&mut out);
        Ok(out)
    }

    async fn audit_append(&self, entry: &pb::AuditEntry) -> Result<(), QueueError> {
        let key = parse_id(&entry.command_id)?;
        self.journal.audit(key, entry.encode_to_vec())?;
        match self.journal.barrier()?.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(crate::journal::JournalError::Db(e).into()),
            Err(_) => Err(crate::journal::JournalError::Stopped.into()),
        }
    }

    async fn audit_list(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<pb::AuditEntry>, QueueError> {
        let before = before.map(parse_id).transpose()?;
        let rows = self.journal.audit_newest(before, limit)?;
        rows.into_iter()
            .map(|(_, v)| {
                pb::AuditEntry::decode(v.as_slice())
                    .map_err(|e| crate::journal::JournalError::Db(e.to_string()).into())
            })
            .collect()
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    async fn close(&self) {
        if let Ok(rx) = self.journal.barrier() {
            let _ = rx.await;
        }
        self.journal.close();
    }
}
