//! The embedded queue: the scheduling `Index`, the records of active ads, leases and
//! watchers behind one `std::sync::Mutex` (`state`: every operation is a few map updates
//! and never awaits while holding it), with every state change journaled to redb.
//!
//! Durability: memory is changed first and the change queued on the journal in the same
//! critical section; the operation then waits for the group commit that covers it before
//! it answers (`durably`). A worker's batch of acks is the exception: the worker gets no
//! answer to it but refusals, so the session goes on leasing while the commit runs.
//! Reads (GetAd, WatchAd, ListAds, stats, ...) wait like answers, with
//! what they read: memory may be ahead of the disk by the writes of the current group
//! commit, so a read answers once every write queued before it is committed: at most
//! one group commit later, at once when nothing is pending. (Waiting for the reader's
//! own ad only would skip some waits, but needs per-ad bookkeeping, and stats read every
//! ad.) Watchers are told by the journal after the commit (`State::notify`). So a kill -9
//! loses only changes nobody was told about.
//!
//! A lease writes a small lease record (ad, attempt number) and the highest lease id before
//! it is handed out, so lease ids never repeat across restarts and attempts taken before a
//! crash count (the ad's own record is rewritten when the lease is settled, which drops
//! the lease record). At start every stored ad that was leased comes back queued, or
//! dead-lettered when its interrupted lease was its last attempt (as if it had expired).
//! Worker session ids (which authorise acks) come from the gateway and restart at 1 in
//! every process; that is safe here because leases live in memory only: no session of a
//! new process can name a lease of an old one, and the old lease ids are refused as stale.
//!
//! Memory holds only what is active (queued, leased, dead-lettered) plus a bounded set
//! of recently finished ads; everything else is read from redb.

mod state;

use crate::index::{AdKey, MAX_PRIORITY, PartitionMask};
use crate::journal::{Journal, JournalError};
use crate::policy::{self, QueueConfig};
use crate::{AdQueue, Expired, FamilyStats, Leased, QueueError, parse_id};
use adflow_proto::v1::{self as pb, AdStatus};
use async_trait::async_trait;
use prost::Message;
use state::{LeaseInfo, Record, State};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::{mpsc, watch};

pub(crate) use state::{is_final, status_name};

/// Writes the journal may hold uncommitted before an ack batch waits for its commit.
const ACK_BACKLOG: u64 = 2_048;

/// The journal key of the highest lease id handed out (u64 little-endian).
const LEASE_SEQ: &str = "lease_seq";

/// The embedded queue.
pub struct EmbeddedQueue {
    state: Mutex<State>,
    journal: Journal,
    recent_cap: usize,
    signal: watch::Sender<u64>,
}

impl EmbeddedQueue {
    /// Opens the queue database and restores queued and leased ads as queued.
    pub fn open(cfg: &QueueConfig) -> Result<Self, QueueError> {
        let journal = Journal::open(&cfg.path)?;
        let mut st = State::new(cfg.policy());
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
        let lease_seq = journal.meta(LEASE_SEQ)?.and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        st.next_lease = lease_seq.unwrap_or(0) + 1;
        let now = adflow_domain::now_ms();
        let mut restored = Vec::new();
        // Ads whose lease died with the last process, as they are now.
        let mut interrupted = Vec::new();
        // Leases handed out and never settled, with their attempt numbers.
        let leases: HashMap<u128, u32> = journal.leases()?.into_iter().collect();
        journal.for_each(|key, mut ad| match AdStatus::try_from(ad.status) {
            Ok(AdStatus::Queued) if !leases.contains_key(&key) => restored.push((ad.enqueued_at_ms, key, ad)),
            Ok(AdStatus::Queued | AdStatus::Processing) => {
                ad.attempts = ad.attempts.max(leases.get(&key).copied().unwrap_or(0));
                // The interrupted lease counts as an attempt, like one that expired.
                ad.last_error = format!("the gateway stopped while attempt {} held the lease", ad.attempts);
                if ad.attempts >= st.policy.max_attempts {
                    ad.status = AdStatus::DeadLetter as i32;
                    ad.finished_at_ms = now;
                    st.dead.insert((now, key), ());
                    interrupted.push((key, ad.clone()));
                    st.ads.insert(key, Record { ad, seq: 0, lease: None, trace: String::new() });
                } else {
                    ad.status = AdStatus::Queued as i32;
                    interrupted.push((key, ad.clone()));
                    restored.push((ad.enqueued_at_ms, key, ad));
                }
            }
            Ok(AdStatus::DeadLetter) => {
                st.dead.insert((ad.finished_at_ms, key), ());
                st.ads.insert(key, Record { ad, seq: 0, lease: None, trace: String::new() });
            }
            // The completion count is the number of completed ads on disk.
            Ok(AdStatus::Completed) => st.completed_total += 1,
            _ => {}
        })?;
        journal.commit_now(&interrupted, &[])?;
        // FIFO order survives: ads are re-sequenced by their enqueue time (then id).
        restored.sort_by_key(|(at, key, _)| (*at, *key));
        let n = restored.len();
        for (_, key, ad) in restored {
            let seq = st.next_seq;
            st.next_seq += 1;
            st.ads.insert(key, Record { ad, seq, lease: None, trace: String::new() });
            st.enqueue(key, seq);
        }
        tracing::info!(
            queued = n,
            interrupted_leases = interrupted.len(),
            dead_letters = st.dead.len(),
            next_lease = st.next_lease,
            path = %cfg.path.display(),
            "ad queue restored"
        );
        Ok(Self {
            state: Mutex::new(st),
            journal,
            recent_cap: cfg.recent_finished.max(1),
            signal: watch::channel(0).0,
        })
    }

    /// Stops the journal without committing what is queued (a simulated kill -9); drop
    /// the queue afterwards and open it again to see what a crash leaves. For crash tests.
    #[cfg(feature = "conformance")]
    pub fn crash(&self) {
        self.journal.abandon();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the state, then waits until every journal write queued so far (those
    /// of `f` included) is committed, so nothing `f` returns describes a change a crash
    /// could still undo.
    async fn durably<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, QueueError> {
        let (out, seq) = {
            let mut st = self.lock();
            let out = f(&mut st);
            (out, self.journal.written())
        };
        self.journal.synced(seq).await?;
        Ok(out)
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
        st.notify(&self.journal, key, now);
    }

    fn current_lease(st: &State, session: u64, lease_id: u64) -> Result<AdKey, QueueError> {
        match st.leases.get(&lease_id) {
            Some(l) if l.session == session => Ok(l.key),
            Some(_) => Err(QueueError::StaleLease(lease_id)),
            None if lease_id > 0 && lease_id < st.next_lease => Err(QueueError::StaleLease(lease_id)),
            None => Err(QueueError::UnknownLease(lease_id)),
        }
    }

    /// Completes the ad of a lease (queued on the journal, not yet committed).
    fn ack_locked(
        &self,
        st: &mut State,
        session: u64,
        lease_id: u64,
        result: pb::AnalysisResult,
        now: i64,
    ) -> Result<String, QueueError> {
        let key = Self::current_lease(st, session, lease_id)?;
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
        st.notify(&self.journal, key, now);
        st.finish(key, self.recent_cap);
        Ok(trace)
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
        let seq = {
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
            self.journal.written()
        };
        // Workers may start leasing now: a lease waits for its own commit, which comes
        // after (and so includes) this one.
        self.wake();
        self.journal.synced(seq).await?;
        Ok(out)
    }

    async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        let key = parse_id(id)?;
        self.durably(|st| Ok(st.snapshot(&self.find(st, key, id)?, now))).await?
    }

    async fn list(&self, req: &pb::ListAdsRequest, now: i64) -> Result<pb::ListAdsResponse, QueueError> {
        let size = crate::page_size(req.page_size)?;
        let before = if req.page_token.is_empty() { None } else { Some(parse_id(&req.page_token)?) };
        let family = req.game_family.to_lowercase();
        self.durably(|st| {
            let mut ads = Vec::new();
            let mut last = None;
            let mut more = false;
            self.journal.scan_newest(before, |key, stored| {
                // Memory is newer than the journal's last commit for active and recent ads.
                let ad = st
                    .ads
                    .get(&key)
                    .map(|r| r.ad.clone())
                    .or_else(|| st.recent.get(&key).cloned())
                    .unwrap_or(stored);
                let fam_ok = family.is_empty()
                    || ad.spec.as_ref().is_some_and(|s| s.game_family.to_lowercase() == family);
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
        })
        .await?
    }

    async fn cancel(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        let key = parse_id(id)?;
        self.durably(|st| {
            let Some(r) = st.ads.get(&key) else {
                let ad = self.find(st, key, id)?;
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
            st.notify(&self.journal, key, now);
            st.finish(key, self.recent_cap);
            Ok(st.snapshot(&ad, now))
        })
        .await?
    }

    async fn watch(&self, id: &str, now: i64) -> Result<(pb::Ad, mpsc::Receiver<pb::Ad>), QueueError> {
        let key = parse_id(id)?;
        self.durably(|st| {
            let ad = self.find(st, key, id)?;
            let (tx, rx) = mpsc::channel(64);
            if !is_final(ad.status) {
                st.watchers.entry(key).or_default().push(tx);
            }
            Ok((st.snapshot(&ad, now), rx))
        })
        .await?
    }

    async fn lease(&self, session: u64, mask: PartitionMask, n: usize, now: i64) -> Vec<Leased> {
        let leased = self.durably(|st| {
            let mut out = Vec::new();
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
                // The attempt is on disk before the worker has the ad (a small lease
                // record; the ad itself is written when the lease is settled).
                self.journal.leased(key, r.ad.attempts);
                let (ad, attempt, traceparent) = (r.ad.clone(), r.ad.attempts, r.trace.clone());
                st.leases.insert(lease_id, LeaseInfo { key, session, deadline });
                st.lease_deadlines.insert((deadline, lease_id), ());
                st.notify(&self.journal, key, now);
                out.push(Leased {
                    lease_id,
                    ad: st.snapshot(&ad, now),
                    attempt,
                    deadline_ms: deadline,
                    traceparent,
                });
            }
            if !out.is_empty() {
                // Committed with the leases: no id below it is handed out again.
                self.journal.set_meta(LEASE_SEQ, (st.next_lease - 1).to_le_bytes().to_vec());
            }
            out
        });
        match leased.await {
            Ok(v) => v,
            Err(e) => {
                // The leases stay in memory and expire; nothing reached a worker.
                tracing::error!(error = %e, "leases not committed; not handed out");
                Vec::new()
            }
        }
    }

    async fn ack(
        &self,
        session: u64,
        lease_id: u64,
        result: pb::AnalysisResult,
        now: i64,
    ) -> Result<String, QueueError> {
        self.durably(|st| self.ack_locked(st, session, lease_id, result, now)).await?
    }

    async fn ack_many(
        &self,
        session: u64,
        items: Vec<(u64, pb::AnalysisResult)>,
        now: i64,
    ) -> Vec<Result<String, QueueError>> {
        // A worker's batch of acks gets no answer but refusals (which change nothing), so
        // the session does not wait for the commit here: the ads are reported COMPLETED
        // (GetAd, WatchAd, stats) only once it is done, and leasing goes on meanwhile.
        let (out, seq) = {
            let mut st = self.lock();
            let out: Vec<_> = items
                .into_iter()
                .map(|(lease_id, r)| self.ack_locked(&mut st, session, lease_id, r, now))
                .collect();
            (out, self.journal.written())
        };
        // Backpressure: when commits fall behind, the acking session waits, so the
        // journal's backlog (which every lease and read waits behind) stays short.
        if self.journal.backlog() > ACK_BACKLOG
            && let Err(e) = self.journal.synced(seq).await
        {
            tracing::error!(error = %e, "queue journal failed while acks waited for it");
        }
        out
    }

    async fn nack(
        &self,
        session: u64,
        lease_id: u64,
        retry: bool,
        error: &str,
        now: i64,
    ) -> Result<(), QueueError> {
        self.durably(|st| {
            let key = Self::current_lease(st, session, lease_id)?;
            st.drop_lease(lease_id);
            self.settle_retry(st, key, retry, error.to_owned(), now);
            Ok::<_, QueueError>(())
        })
        .await??;
        self.wake();
        Ok(())
    }

    async fn extend(&self, session: u64, lease_id: u64, seconds: u32, now: i64) -> Result<i64, QueueError> {
        crate::check_extension(seconds)?;
        // Deadlines are memory only (a lease does not outlive the process): nothing to commit.
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
        let released = self.durably(|st| {
            let mine: Vec<u64> =
                st.leases.iter().filter(|(_, l)| l.session == session).map(|(id, _)| *id).collect();
            for id in &mine {
                if let Some(l) = st.drop_lease(*id) {
                    let why = "worker disconnected while holding the lease".to_owned();
                    self.settle_retry(st, l.key, true, why, now);
                }
            }
            mine.len()
        });
        let n = released.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, session, "released leases not committed");
            0
        });
        if n > 0 {
            self.wake();
        }
        n
    }

    async fn expire(&self, now: i64) -> Vec<Expired> {
        let expired = self.durably(|st| {
            let due: Vec<u64> = st.lease_deadlines.range(..(now + 1, 0)).map(|(&(_, id), _)| id).collect();
            let mut out = Vec::with_capacity(due.len());
            for id in &due {
                if let Some(l) = st.drop_lease(*id) {
                    let secs = st.policy.lease_seconds;
                    self.settle_retry(st, l.key, true, format!("lease {id} expired after {secs} s"), now);
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
            out
        });
        let out = expired.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "expired leases not committed");
            Vec::new()
        });
        if !out.is_empty() {
            self.wake();
        }
        out
    }

    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError> {
        self.durably(|st| {
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
            pb::QueueStats {
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
            }
        })
        .await
    }

    async fn peek(&self, n: usize, now: i64) -> Result<Vec<pb::QueuedAd>, QueueError> {
        self.durably(|st| {
            st.index
                .peek(n, now, st.rules())
                .into_iter()
                .filter_map(|p| {
                    let spec = st.ads.get(&p.key)?.ad.spec.clone().unwrap_or_default();
                    Some(crate::queued_ad(&p, uuid::Uuid::from_u128(p.key).to_string(), spec, now))
                })
                .collect()
        })
        .await
    }

    async fn set_priority(&self, id: &str, priority: u8, now: i64) -> Result<(u8, u8), QueueError> {
        check_priority(priority)?;
        let key = parse_id(id)?;
        let old = self
            .durably(|st| {
                let Some(old) = st.index.set_priority(key, priority) else {
                    let ad = self.find(st, key, id)?;
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
                st.notify(&self.journal, key, now);
                Ok(old)
            })
            .await??;
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
        let counts = self
            .durably(|st| {
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
                let changed: Vec<AdKey> =
                    matched.iter().filter(|(_, p)| *p != priority).map(|(k, _)| *k).collect();
                if !dry_run {
                    for &k in &changed {
                        st.index.set_priority(k, priority);
                        if let Some(r) = st.ads.get_mut(&k) {
                            r.ad.priority = priority as u32;
                            self.journal.put(k, &r.ad);
                        }
                    }
                }
                (changed.len() as u64, matched.len() as u64)
            })
            .await?;
        if !dry_run {
            self.wake();
        }
        Ok(counts)
    }

    async fn set_paused(&self, priority: u8, paused: bool) -> Result<pb::PartitionState, QueueError> {
        check_priority(priority)?;
        let queued = self
            .durably(|st| {
                st.index.set_paused(priority, paused);
                let flags = (1..=MAX_PRIORITY).map(|p| st.index.is_paused(p) as u8).collect();
                self.journal.set_meta("paused", flags);
                st.index.partition_len(priority) as u64
            })
            .await?;
        self.wake();
        Ok(pb::PartitionState { priority: priority as u32, paused, queued })
    }

    async fn policy(&self) -> Result<pb::Policy, QueueError> {
        self.durably(|st| st.policy).await
    }

    async fn set_policy(&self, update: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError> {
        let next = self
            .durably(|st| {
                let next = policy::apply(&st.policy, update);
                policy::check(&next).map_err(|(field, message)| QueueError::Invalid { field, message })?;
                let deadlines_change = next.max_wait_seconds != st.policy.max_wait_seconds;
                st.policy = next;
                self.journal.set_meta("policy", next.encode_to_vec());
                if deadlines_change {
                    // Ads without their own max wait follow the policy's: recompute their deadlines.
                    let keys: Vec<(AdKey, u64)> = st
                        .ads
                        .iter()
                        .filter(|(k, _)| st.index.contains(**k))
                        .map(|(k, r)| (*k, r.seq))
                        .collect();
                    for (k, seq) in keys {
                        st.dequeue(k);
                        st.enqueue(k, seq);
                    }
                }
                Ok::<_, QueueError>(next)
            })
            .await??;
        self.wake();
        Ok(next)
    }

    async fn dead_letters(&self, limit: usize) -> Result<(Vec<pb::DeadLetter>, u64), QueueError> {
        self.durably(|st| {
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
            (items, st.dead.len() as u64)
        })
        .await
    }

    async fn requeue_dead(&self, ids: &[String], now: i64) -> Result<u64, QueueError> {
        let wanted: Option<Vec<AdKey>> = if ids.is_empty() {
            None
        } else {
            Some(ids.iter().map(|i| parse_id(i)).collect::<Result<_, _>>()?)
        };
        let n = self
            .durably(|st| {
                let picked: Vec<(i64, AdKey)> = st
                    .dead
                    .keys()
                    .filter(|(_, k)| wanted.as_ref().is_none_or(|w| w.contains(k)))
                    .copied()
                    .collect();
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
                    st.notify(&self.journal, *key, now);
                }
                picked.len() as u64
            })
            .await?;
        self.wake();
        Ok(n)
    }

    async fn purge(&self, priority: u8, now: i64) -> Result<u64, QueueError> {
        check_priority(priority)?;
        self.durably(|st| {
            let keys = st.index.keys_in(priority);
            for &key in &keys {
                st.dequeue(key);
                if let Some(r) = st.ads.get_mut(&key) {
                    r.ad.status = AdStatus::Cancelled as i32;
                    r.ad.finished_at_ms = now;
                    r.ad.last_error = format!("purged from partition {priority}");
                    self.journal.put(key, &r.ad);
                }
                st.notify(&self.journal, key, now);
                st.finish(key, self.recent_cap);
            }
            keys.len() as u64
        })
        .await
    }

    async fn family_stats(&self, now: i64) -> Result<Vec<FamilyStats>, QueueError> {
        let mut out = self
            .durably(|st| {
                let mut by: std::collections::HashMap<String, (FamilyStats, i128)> =
                    std::collections::HashMap::new();
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
                by.into_values()
                    .map(|(mut f, sum)| {
                        f.average_wait_ms = if f.queued > 0 { (sum / f.queued as i128) as i64 } else { 0 };
                        f
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        crate::sort_families(&mut out);
        Ok(out)
    }

    async fn audit_append(&self, entry: &pb::AuditEntry) -> Result<(), QueueError> {
        let key = parse_id(&entry.command_id)?;
        self.journal.audit(key, entry.encode_to_vec())?;
        Ok(self.journal.sync().await?)
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
                pb::AuditEntry::decode(v.as_slice()).map_err(|e| JournalError::Db(e.to_string()).into())
            })
            .collect()
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    async fn close(&self) {
        let _ = self.journal.sync().await;
        self.journal.close();
    }
}
