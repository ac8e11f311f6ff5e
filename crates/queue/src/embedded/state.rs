//! The embedded queue's memory: the scheduling `Index`, the records of active ads, the
//! leases, the recently finished ads and the watchers. Everything here runs under the
//! queue's mutex; a change that must reach disk is queued on the journal in the same
//! critical section, so the journal's order is the order of the changes.

use crate::index::{AdKey, Index, Rules};
use crate::journal::Journal;
use crate::watchers::Watchers;
use crate::{model, parse_id, policy};
use adflow_proto::v1::{self as pb};
use std::collections::{BTreeMap, HashMap, VecDeque};

pub(super) struct Record {
    pub(super) ad: pb::Ad,
    pub(super) seq: u64,
    pub(super) lease: Option<u64>,
    /// W3C trace context of the submission (memory only: a restart starts new traces).
    pub(super) trace: String,
}

pub(super) struct LeaseInfo {
    pub(super) key: AdKey,
    pub(super) session: u64,
    pub(super) deadline: i64,
}

/// Completions per second over the last minute.
#[derive(Default)]
pub(super) struct Rate {
    buckets: VecDeque<(i64, u64)>,
}

impl Rate {
    pub(super) fn add(&mut self, now: i64) {
        let sec = now / 1000;
        match self.buckets.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => self.buckets.push_back((sec, 1)),
        }
        while self.buckets.front().is_some_and(|(s, _)| *s <= sec - 60) {
            self.buckets.pop_front();
        }
    }

    pub(super) fn last_minute(&self, now: i64) -> u64 {
        let sec = now / 1000;
        self.buckets.iter().filter(|(s, _)| *s > sec - 60).map(|(_, n)| n).sum()
    }
}

pub(super) struct State {
    pub(super) index: Index,
    pub(super) ads: HashMap<AdKey, Record>,
    pub(super) recent: HashMap<AdKey, pb::Ad>,
    pub(super) recent_order: VecDeque<AdKey>,
    pub(super) leases: HashMap<u64, LeaseInfo>,
    pub(super) lease_deadlines: BTreeMap<(i64, u64), ()>,
    pub(super) dead: BTreeMap<(i64, AdKey), ()>,
    pub(super) watchers: Watchers,
    pub(super) next_seq: u64,
    /// The next lease id; every id below it was handed out (in this run or an earlier
    /// one: the journal keeps the highest, committed before its lease is handed out).
    pub(super) next_lease: u64,
    pub(super) policy: pb::Policy,
    pub(super) rate: Rate,
    pub(super) completed_total: u64,
    pub(super) sum_enqueued: i128,
}

impl State {
    pub(super) fn new(policy: pb::Policy) -> Self {
        Self {
            index: Index::default(),
            ads: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            leases: HashMap::new(),
            lease_deadlines: BTreeMap::new(),
            dead: BTreeMap::new(),
            watchers: Watchers::default(),
            next_seq: 1,
            next_lease: 1,
            policy,
            rate: Rate::default(),
            completed_total: 0,
            sum_enqueued: 0,
        }
    }

    pub(super) fn rules(&self) -> Rules {
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

    pub(super) fn enqueue(&mut self, key: AdKey, seq: u64) {
        let Some(r) = self.ads.get(&key) else { return };
        let deadline = self.deadline(&r.ad);
        let (p, at) = (r.ad.priority as u8, r.ad.enqueued_at_ms);
        self.index.push(key, p, seq, at, deadline);
        self.sum_enqueued += at as i128;
    }

    pub(super) fn dequeue(&mut self, key: AdKey) -> bool {
        match self.index.remove(key) {
            Some((_, _, at)) => {
                self.sum_enqueued -= at as i128;
                true
            }
            None => false,
        }
    }

    /// A copy of the ad with its computed fields filled in.
    pub(super) fn snapshot(&self, ad: &pb::Ad, now: i64) -> pb::Ad {
        let mut a = ad.clone();
        let key = parse_id(&ad.id).unwrap_or_default();
        let position = self.index.position(key).unwrap_or(0);
        model::fill_computed(&mut a, position, self.rate.last_minute(now) as f64 / 60.0, now);
        a
    }

    /// Tells the ad's watchers its new state once the journal has committed it (the
    /// change was queued on the journal just before): WatchAd never reports a state that
    /// a crash could undo, and reports the states in the order they happened.
    pub(super) fn notify(&mut self, journal: &Journal, key: AdKey, now: i64) {
        let ad = match self.ads.get(&key) {
            Some(r) => &r.ad,
            None => match self.recent.get(&key) {
                Some(a) => a,
                None => return,
            },
        };
        if !self.watchers.watching(&ad.id) {
            return;
        }
        let snap = self.snapshot(ad, now);
        // A final state is the last message: the watchers are dropped after it.
        let to = self.watchers.take(&snap.id, snap.status);
        if !to.is_empty() {
            journal.after(move || {
                for w in &to {
                    let _ = w.try_send(snap.clone());
                }
            });
        }
    }

    /// Moves a finished ad out of the active set.
    pub(super) fn finish(&mut self, key: AdKey, cap: usize) {
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

    pub(super) fn drop_lease(&mut self, lease_id: u64) -> Option<LeaseInfo> {
        let l = self.leases.remove(&lease_id)?;
        self.lease_deadlines.remove(&(l.deadline, lease_id));
        Some(l)
    }
}
