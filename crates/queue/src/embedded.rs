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

mod ads;
mod controls;
mod leases;
mod reports;
mod state;

use crate::index::{AdKey, MAX_PRIORITY};
use crate::journal::Journal;
use crate::{AdQueue, QueueConfig, QueueError};
use adflow_proto::v1::{self as pb, AdStatus};
use async_trait::async_trait;
use prost::Message;
use state::{Record, State};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

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

#[async_trait]
impl AdQueue for EmbeddedQueue {
    async fn close(&self) {
        let _ = self.journal.sync().await;
        self.journal.close();
    }
}
