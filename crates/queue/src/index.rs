//! The scheduling index: which queued ad is served next. Pure data structure, no I/O.
//!
//! Each priority partition is a `BTreeMap<seq, AdKey>` (FIFO by enqueue sequence), and a
//! second `BTreeMap<(deadline, seq), AdKey>` orders every queued ad by the moment it
//! exceeds its max wait. Choosing the next ad looks at the overdue head of the deadline
//! map and at the five partition heads, so push, pop, remove and reprioritize are all
//! O(log n) with n queued ads (a handful of B-tree operations), whatever n is.
//!
//! Anti-starvation, when on: (1) an ad past its deadline is served before anything else,
//! oldest deadline first; (2) aging: an ad gains one effective priority level per
//! `aging_step_ms` waited (capped at 5), and among equal effective priorities the ad that
//! waited longest wins, so a low-priority ad under a flood of high-priority ones reaches
//! the top level and then beats every younger ad there.
//!
//! These rules are the one definition of the serving order: the embedded and MongoDB
//! queues pop from this index, and Redis `peek` runs its candidates through it. Only the
//! Redis LEASE script (`redis_queue/lua/lease.lua`) repeats `choose` in Lua, to claim
//! atomically; `conformance::scheduling` checks on every backend that leases come out in
//! the order this index gives, aging, overdue ads and tie-breaks included.

use std::collections::{BTreeMap, HashMap};

/// An ad's key inside the queue (its UUID as a number).
pub type AdKey = u128;

/// Highest priority.
pub const MAX_PRIORITY: u8 = 5;

/// Scheduling knobs the index needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Max-wait jumping and aging on.
    pub anti_starvation: bool,
    /// Aging step in ms (0: no aging).
    pub aging_step_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    priority: u8,
    seq: u64,
    enqueued_at: i64,
    deadline: i64,
}

/// Queued ads by partition and deadline.
#[derive(Default)]
pub struct Index {
    parts: [BTreeMap<u64, AdKey>; MAX_PRIORITY as usize],
    paused: [bool; MAX_PRIORITY as usize],
    deadlines: BTreeMap<(i64, u64), AdKey>,
    entries: HashMap<AdKey, Entry>,
}

/// A candidate for the next ad, as `peek` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The ad.
    pub key: AdKey,
    /// Its priority.
    pub priority: u8,
    /// Its priority after aging.
    pub effective: u8,
    /// Past its max wait.
    pub overdue: bool,
    /// When it was enqueued.
    pub enqueued_at: i64,
}

/// Which partitions a caller may take from: bit p-1 set = priority p allowed.
pub type PartitionMask = u8;

/// Every partition.
pub const ALL_PARTITIONS: PartitionMask = 0b1_1111;

fn slot(priority: u8) -> usize {
    (priority.clamp(1, MAX_PRIORITY) - 1) as usize
}

impl Index {
    /// Queued ads.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queued ads of one priority.
    pub fn partition_len(&self, priority: u8) -> usize {
        self.parts[slot(priority)].len()
    }

    /// Whether `key` is queued.
    pub fn contains(&self, key: AdKey) -> bool {
        self.entries.contains_key(&key)
    }

    /// Enqueues `key`; an ad already queued is moved to the new values.
    pub fn push(&mut self, key: AdKey, priority: u8, seq: u64, enqueued_at: i64, deadline: i64) {
        self.remove(key);
        let e = Entry { priority: priority.clamp(1, MAX_PRIORITY), seq, enqueued_at, deadline };
        self.parts[slot(e.priority)].insert(seq, key);
        self.deadlines.insert((deadline, seq), key);
        self.entries.insert(key, e);
    }

    /// Dequeues `key` wherever it is; returns its (priority, seq, enqueued_at) if it was queued.
    pub fn remove(&mut self, key: AdKey) -> Option<(u8, u64, i64)> {
        let e = self.entries.remove(&key)?;
        self.parts[slot(e.priority)].remove(&e.seq);
        self.deadlines.remove(&(e.deadline, e.seq));
        Some((e.priority, e.seq, e.enqueued_at))
    }

    /// Moves a queued ad to another priority, keeping its place in time.
    pub fn set_priority(&mut self, key: AdKey, priority: u8) -> Option<u8> {
        let e = *self.entries.get(&key)?;
        self.push(key, priority, e.seq, e.enqueued_at, e.deadline);
        Some(e.priority)
    }

    /// Pauses or resumes a partition.
    pub fn set_paused(&mut self, priority: u8, paused: bool) {
        self.paused[slot(priority)] = paused;
    }

    /// Whether a partition is paused.
    pub fn is_paused(&self, priority: u8) -> bool {
        self.paused[slot(priority)]
    }

    fn effective(&self, e: &Entry, now: i64, rules: Rules) -> u8 {
        if !rules.anti_starvation || rules.aging_step_ms <= 0 {
            return e.priority;
        }
        let steps = ((now - e.enqueued_at).max(0) / rules.aging_step_ms).min(MAX_PRIORITY as i64);
        (e.priority + steps as u8).min(MAX_PRIORITY)
    }

    fn eligible(&self, e: &Entry, mask: PartitionMask) -> bool {
        mask & (1 << slot(e.priority)) != 0 && !self.paused[slot(e.priority)]
    }

    /// The ad that would be served next, skipping keys in `skip`.
    fn choose(
        &self,
        now: i64,
        rules: Rules,
        mask: PartitionMask,
        skip: &dyn Fn(AdKey) -> bool,
    ) -> Option<Pick> {
        if rules.anti_starvation {
            for (&(deadline, _), &key) in self.deadlines.range(..(now + 1, 0)) {
                let e = &self.entries[&key];
                if deadline <= now && self.eligible(e, mask) && !skip(key) {
                    return Some(Pick {
                        key,
                        priority: e.priority,
                        effective: MAX_PRIORITY,
                        overdue: true,
                        enqueued_at: e.enqueued_at,
                    });
                }
            }
        }
        let mut best: Option<Pick> = None;
        for (i, part) in self.parts.iter().enumerate() {
            if self.paused[i] || mask & (1 << i) == 0 {
                continue;
            }
            let Some((_, &key)) = part.iter().find(|(_, k)| !skip(**k)) else { continue };
            let e = &self.entries[&key];
            let pick = Pick {
                key,
                priority: e.priority,
                effective: self.effective(e, now, rules),
                overdue: false,
                enqueued_at: e.enqueued_at,
            };
            let better = match best {
                None => true,
                Some(b) => {
                    (pick.effective, -pick.enqueued_at, pick.priority)
                        > (b.effective, -b.enqueued_at, b.priority)
                }
            };
            if better {
                best = Some(pick);
            }
        }
        best
    }

    /// Removes and returns the next ad to serve from the partitions in `mask`.
    pub fn pop(&mut self, now: i64, rules: Rules, mask: PartitionMask) -> Option<(AdKey, u64)> {
        let pick = self.choose(now, rules, mask, &|_| false)?;
        let (_, seq, _) = self.remove(pick.key)?;
        Some((pick.key, seq))
    }

    /// The next `n` ads in serving order, without removing them.
    pub fn peek(&self, n: usize, now: i64, rules: Rules) -> Vec<Pick> {
        let mut taken = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(n.min(self.len()));
        while out.len() < n {
            let Some(p) = self.choose(now, rules, ALL_PARTITIONS, &|k| taken.contains(&k)) else { break };
            taken.insert(p.key);
            out.push(p);
        }
        out
    }

    /// Ads served before `key` under strict priority (ads in higher unpaused partitions
    /// plus those ahead in its own; in a paused partition, every ad of every unpaused one
    /// is served first); an estimate when aging or deadlines reorder the queue.
    /// Costs O(ads ahead of it in its partition).
    pub fn position(&self, key: AdKey) -> Option<u64> {
        let e = self.entries.get(&key)?;
        let first = if self.paused[slot(e.priority)] { 1 } else { e.priority + 1 };
        let higher: usize = (first..=MAX_PRIORITY)
            .filter(|&p| p != e.priority && !self.paused[slot(p)])
            .map(|p| self.parts[slot(p)].len())
            .sum();
        let ahead = self.parts[slot(e.priority)].range(..e.seq).count();
        Some((higher + ahead) as u64)
    }

    /// The queued keys with their priority and enqueue time (for filters).
    pub fn iter(&self) -> impl Iterator<Item = (AdKey, u8, i64)> + '_ {
        self.entries.iter().map(|(k, e)| (*k, e.priority, e.enqueued_at))
    }

    /// The oldest enqueue time in a partition.
    pub fn oldest_in(&self, priority: u8) -> Option<i64> {
        let (_, key) = self.parts[slot(priority)].first_key_value()?;
        Some(self.entries[key].enqueued_at)
    }

    /// Keys of one partition, oldest first.
    pub fn keys_in(&self, priority: u8) -> Vec<AdKey> {
        self.parts[slot(priority)].values().copied().collect()
    }
}

#[cfg(test)]
mod tests;
