//! The dedup window: remembers which event ids were accepted recently, so a client's
//! retry is counted as a duplicate instead of being stored twice.
//!
//! Ids are kept as 64-bit xxh3 hashes (8 bytes each, whatever the id's length). With n
//! ids remembered, a new id is mistaken for a duplicate with probability n / 2^64: about
//! 3e-14 at the default 500k ids, i.e. about once per 4*10^13 events. Half-size keys keep the map
//! small enough that the per-event probe stays cheap (measured: see BENCHMARKS.md).
//! The set is split into shards, each behind its own `std::sync::Mutex` that is held only
//! for one hash-map probe (no `.await` inside), so contention stays negligible. Within a
//! shard one map answers "seen?" with a single probe; alongside it a ring of time
//! generations lists which keys arrived when. Expiry pops whole generations once they are
//! older than the window and removes their keys from the map, so each id costs one
//! insert and one removal over its life, never a scan. The memory bound (`max_ids`) pops
//! the oldest generation early when exceeded; a generation also closes when it holds its
//! share of the bound, so the bound drops a slice of the oldest ids, never all of them.
//! Early evictions are counted so operators can size the window.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Generations per window: expiry is accurate to window / GENERATIONS.
const GENERATIONS: i64 = 8;
const SHARDS: usize = 64;

/// The dedup key of an event id.
pub fn key(event_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(event_id.as_bytes())
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
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// Key -> number of the generation that holds it.
type IdMap = HashMap<u64, u32, BuildHasherDefault<FoldHasher>>;

struct Generation {
    seq: u32,
    start_ms: i64,
    keys: Vec<u64>,
}

#[derive(Default)]
struct Shard {
    ids: IdMap,
    gens: VecDeque<Generation>,
    next_seq: u32,
}

impl Shard {
    /// Drops the oldest generation; returns how many ids it still held.
    fn pop_oldest(&mut self) -> usize {
        let Some(g) = self.gens.pop_front() else {
            return 0;
        };
        let mut n = 0;
        for k in g.keys {
            if self.ids.get(&k) == Some(&g.seq) {
                self.ids.remove(&k);
                n += 1;
            }
        }
        n
    }
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

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The top bits pick the shard; hashbrown uses the low bits and the top 7 inside it.
        let i = (key >> 50) as usize % SHARDS;
        // A poisoned lock only means another thread panicked mid-insert; the set is still usable.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `key` as accepted at `now_ms`; false when it was already inside the window.
    pub fn insert(&self, key: u64, now_ms: i64) -> bool {
        let mut guard = self.shard(key);
        let s = &mut *guard;
        while s.gens.front().is_some_and(|g| g.start_ms + self.gen_ms <= now_ms - self.window_ms) {
            s.pop_oldest();
        }
        let gen_cap = (self.max_per_shard / GENERATIONS as usize).max(1);
        let needs_new =
            s.gens.back().is_none_or(|g| now_ms >= g.start_ms + self.gen_ms || g.keys.len() >= gen_cap);
        if needs_new {
            s.gens.push_back(Generation { seq: s.next_seq, start_ms: now_ms, keys: Vec::new() });
            s.next_seq = s.next_seq.wrapping_add(1);
        }
        let newest = s.gens.back_mut().expect("a generation exists");
        match s.ids.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => return false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(newest.seq);
            }
        }
        newest.keys.push(key);
        while s.ids.len() > self.max_per_shard && s.gens.len() > 1 {
            let n = s.pop_oldest();
            self.evicted_early.fetch_add(n as u64, Ordering::Relaxed);
        }
        true
    }

    /// Forgets `key` (used when the write holding it failed, so a retry is not refused).
    pub fn remove(&self, key: u64) {
        self.shard(key).ids.remove(&key);
    }

    /// How many ids are remembered now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.ids.len()).unwrap_or(0)).sum()
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
    fn a_removed_then_reinserted_id_survives_expiry_of_its_old_generation() {
        let d = DedupWindow::new(80_000, 1_000_000);
        assert!(d.insert(key("a"), 0));
        d.remove(key("a"));
        assert!(d.insert(key("a"), 50_000));
        // The first generation expires at 90 s; "a" now lives in the 50 s one.
        assert!(!d.insert(key("a"), 95_000));
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
