//! The dedup window: remembers which event ids were accepted recently, so a client's
//! retry is counted as a duplicate instead of being stored twice.
//!
//! Ids are kept as 128-bit xxh3 hashes (16 bytes each, whatever the id's length; the
//! chance of two distinct ids colliding is about n^2 / 2^129, nil at any real volume).
//! The set is split into shards, each behind its own `std::sync::Mutex` that is held only
//! for a hash lookup (no `.await` inside), so contention stays negligible. Each shard
//! keeps a ring of time generations: an id lives in the generation of the moment it was
//! accepted and is forgotten when that whole generation is older than the window, so
//! expiry costs one `VecDeque::pop_front` per generation instead of a scan. The memory
//! bound (`max_ids`) drops the oldest generation early when exceeded; such early
//! evictions are counted so operators can size the window.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Generations per window: expiry is accurate to window / GENERATIONS.
const GENERATIONS: i64 = 8;
const SHARDS: usize = 64;

/// The dedup key of an event id.
pub fn key(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// A hasher for keys that already are uniform hashes: it just folds the bits.
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= v as u64;
    }
}

type IdSet = HashSet<u128, BuildHasherDefault<FoldHasher>>;

struct Generation {
    start_ms: i64,
    ids: IdSet,
}

#[derive(Default)]
struct Shard {
    gens: VecDeque<Generation>,
    len: usize,
}

/// A time-windowed, memory-bounded set of recently accepted event ids.
pub struct DedupWindow {
    shards: Box<[Mutex<Shard>]>,
    window_ms: i64,
    gen_ms: i64,
    max_per_shard: usize,
    evicted_early: AtomicU64,
}

impl DedupWindow {
    /// A window remembering ids for `window_ms`, holding at most about `max_ids` ids.
    pub fn new(window_ms: i64, max_ids: usize) -> Self {
        let window_ms = window_ms.max(GENERATIONS);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            window_ms,
            gen_ms: window_ms / GENERATIONS,
            max_per_shard: (max_ids / SHARDS).max(1),
            evicted_early: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, Shard> {
        let i = (key >> 64) as usize % SHARDS;
        // A poisoned lock only means another thread panicked mid-insert; the set is still usable.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `key` as accepted at `now_ms`; false when it was already inside the window.
    pub fn insert(&self, key: u128, now_ms: i64) -> bool {
        let mut s = self.shard(key);
        self.expire(&mut s, now_ms);
        if s.gens.iter().any(|g| g.ids.contains(&key)) {
            return false;
        }
        // A new generation starts when the newest is older than a generation span or holds
        // its share of the memory bound, so the bound always drops a slice, never all ids.
        let gen_cap = (self.max_per_shard / GENERATIONS as usize).max(1);
        let needs_new =
            s.gens.back().is_none_or(|g| now_ms >= g.start_ms + self.gen_ms || g.ids.len() >= gen_cap);
        if needs_new {
            s.gens.push_back(Generation { start_ms: now_ms, ids: IdSet::default() });
        }
        if let Some(g) = s.gens.back_mut() {
            g.ids.insert(key);
        }
        s.len += 1;
        while s.len > self.max_per_shard && s.gens.len() > 1 {
            let Some(old) = s.gens.pop_front() else { break };
            s.len -= old.ids.len();
            self.evicted_early.fetch_add(old.ids.len() as u64, Ordering::Relaxed);
        }
        true
    }

    /// Forgets `key` (used when the write holding it failed, so a retry is not refused).
    pub fn remove(&self, key: u128) {
        let mut s = self.shard(key);
        let mut removed = 0;
        for g in s.gens.iter_mut() {
            removed += usize::from(g.ids.remove(&key));
        }
        s.len -= removed;
    }

    fn expire(&self, s: &mut Shard, now_ms: i64) {
        while let Some(front) = s.gens.front() {
            if front.start_ms + self.gen_ms > now_ms - self.window_ms {
                break;
            }
            let n = front.ids.len();
            s.gens.pop_front();
            s.len -= n;
        }
    }

    /// How many ids are remembered now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.len).unwrap_or(0)).sum()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids dropped before their window ended because `max_ids` was reached.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early.load(Ordering::Relaxed)
    }

    /// The window length in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_insert_inside_the_window_is_a_duplicate() {
        let d = DedupWindow::new(60_000, 1_000_000);
        assert!(d.insert(key("a"), 1_000));
        assert!(!d.insert(key("a"), 50_000));
        assert!(d.insert(key("b"), 50_000));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn ids_are_forgotten_after_the_window() {
        let d = DedupWindow::new(80_000, 1_000_000);
        assert!(d.insert(key("a"), 0));
        assert!(!d.insert(key("a"), 79_000));
        // The generation holding "a" (started at 0, spanning 10 s) is fully older than 80 s at 90 s.
        assert!(d.insert(key("a"), 90_001));
    }

    #[test]
    fn removed_ids_can_be_inserted_again() {
        let d = DedupWindow::new(60_000, 1_000);
        assert!(d.insert(key("a"), 0));
        d.remove(key("a"));
        assert!(d.is_empty());
        assert!(d.insert(key("a"), 1));
    }

    #[test]
    fn memory_stays_bounded_by_dropping_the_oldest_generation() {
        let d = DedupWindow::new(8_000, 64 * 100);
        for t in 0..8 {
            for i in 0..2_000 {
                d.insert(key(&format!("{t}-{i}")), t * 1_000);
            }
        }
        assert!(d.len() <= 64 * 100 + 64 * 100 / 2, "len {}", d.len());
        assert!(d.evicted_early() > 0);
        // The newest ids are still remembered.
        assert!(!d.insert(key("7-1999"), 7_500));
    }
}
