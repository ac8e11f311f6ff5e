//! The dedup window: remembers which event ids were accepted recently, so a client's
//! retry is counted as a duplicate instead of being stored twice.
//!
//! Ids are kept as 64-bit xxh3 fingerprints (whatever the id's length). With n ids
//! remembered, a new id is mistaken for a duplicate with probability n / 2^64: at the
//! default budget's 22M ids about 1.2e-12 per event, i.e. once per ~7*10^11 events
//! (`no_false_duplicates_among_a_million_distinct_ids` checks a million).
//! The set is split into 64 shards, each behind its own `std::sync::Mutex` held only for
//! one probe (no `.await` inside). A shard is a flat open-addressing table (`table`): 8
//! bytes of fingerprint + 1 byte of generation per slot, at most 3/4 full, so an id costs
//! 12-18 bytes (`MAX_BYTES_PER_ID`), against ~40 for a `HashMap` plus expiry lists. A
//! full table grows by half (not double): the table just grown is at least 1/2 full, and
//! the table it replaces, which the allocator may keep for a while, is smaller.
//! Time is cut into generations (window / 8 each, and a generation also closes once it
//! holds its share of the bound). Expiry drops whole generations once they are older
//! than the window by rebuilding the shard's table without them (one pass per
//! generation). The memory budget (`ingest.dedup.max_memory_mb`) caps each table; a full
//! table first grows, then drops its oldest generation early. Early evictions are counted,
//! and the age of the oldest id still remembered at the last forced eviction is reported
//! as the *effective window*, so operators see when the window holds less than it says.
//!
//! "Duplicate" means "stored": an id is *pending* from its first acceptance until the
//! commit holding it ends. A repeat of a pending id gets the first copy's pending token
//! (`Seen::Pending`) and the caller waits for that commit and shares its outcome. The
//! pending set lives under the same shard lock as the ids, so "seen and committed" and
//! "seen and still pending" can never be confused by a commit ending in between.

mod snapshot;
mod table;

pub use snapshot::SnapshotError;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use table::Table;

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

/// Key -> token of the commit that will store it.
type PendingMap<P> = HashMap<u64, P, BuildHasherDefault<FoldHasher>>;

/// What the window knows about an id that is being accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen<P> {
    /// Not seen inside the window: now remembered and pending with the caller's token.
    New,
    /// Seen and committed: a duplicate of a stored event.
    Stored,
    /// Seen, but its first copy's commit has not ended: wait for this token's outcome.
    Pending(P),
}

/// A generation of one shard: ids that arrived from `start_ms` on.
struct Generation {
    id: u8,
    start_ms: i64,
    count: usize,
}

/// Slots a shard's table starts with.
const INITIAL_SLOTS: usize = 64;

struct Shard<P> {
    table: Table,
    pending: PendingMap<P>,
    /// Live generations, oldest first (fewer than 256, so their ids are unique).
    gens: VecDeque<Generation>,
    next_id: u8,
}

impl<P> Default for Shard<P> {
    fn default() -> Self {
        Self {
            table: Table::with_slots(INITIAL_SLOTS),
            pending: PendingMap::default(),
            gens: VecDeque::new(),
            next_id: 0,
        }
    }
}

impl<P> Shard<P> {
    /// Rebuilds the table with `slots` slots, keeping only the live generations.
    fn rebuild(&mut self, slots: usize) {
        let mut live = [false; 256];
        self.gens.iter().for_each(|g| live[g.id as usize] = true);
        self.table = self.table.rebuilt(slots, |g| live[g as usize]);
    }

    /// Drops the `n` oldest generations; returns how many ids that forgot.
    fn drop_oldest(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let before = self.table.len();
        self.gens.drain(..n.min(self.gens.len()));
        let slots = self.table.slots();
        self.rebuild(slots);
        before - self.table.len()
    }
}

/// Bytes of memory one remembered id costs at most: a 9-byte slot at the lowest load
/// after a table grows by half (1/2). Checked by `memory_per_id_is_within_the_stated_bound`.
pub const MAX_BYTES_PER_ID: usize = 18;

/// A time-windowed, memory-bounded set of recently accepted event ids, with the ids whose
/// commit is still in flight marked pending with a token of type `P`.
pub struct DedupWindow<P = ()> {
    shards: Box<[Mutex<Shard<P>>]>,
    window_ms: i64,
    gen_ms: i64,
    /// Largest table of one shard, in slots.
    max_slots: usize,
    evicted_early: AtomicU64,
    /// Age in ms of the oldest ids dropped early by the memory bound, most recently
    /// (0 = the bound never forced an eviction: the whole window is held).
    effective_ms: AtomicU64,
    /// When the memory bound last forced an eviction (ms, 0 = never).
    last_early_at: std::sync::atomic::AtomicI64,
}

/// Which shard holds `key`: its low bits (the table uses the high bits).
fn shard_of(key: u64) -> usize {
    (key as usize) % SHARDS
}

impl<P: Clone> DedupWindow<P> {
    /// A window remembering ids for `window_ms`, holding at most about `max_ids` ids.
    pub fn new(window_ms: i64, max_ids: usize) -> Self {
        let window_ms = window_ms.max(GENERATIONS);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            window_ms,
            gen_ms: window_ms / GENERATIONS,
            max_slots: (max_ids.div_ceil(SHARDS) * table::LOAD_DEN)
                .div_ceil(table::LOAD_NUM)
                .max(INITIAL_SLOTS),
            evicted_early: AtomicU64::new(0),
            effective_ms: AtomicU64::new(0),
            last_early_at: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// A window whose tables together take at most `budget_bytes` (plus the pending ids).
    pub fn with_budget(window_ms: i64, budget_bytes: usize) -> Self {
        let slots = (budget_bytes / table::SLOT_BYTES / SHARDS).max(INITIAL_SLOTS);
        Self::new(window_ms, slots * table::LOAD_NUM / table::LOAD_DEN * SHARDS)
    }

    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Shard<P>> {
        // A poisoned lock only means another thread panicked mid-insert; the set is still usable.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard<P>> {
        self.lock(shard_of(key))
    }

    /// Records `key` as accepted (and stored) at `now_ms`; false when it was already
    /// inside the window. Used for ids read back from the store.
    pub fn insert(&self, key: u64, now_ms: i64) -> bool {
        matches!(self.admit(key, now_ms, None, |_| ()), Seen::New)
    }

    /// Records `key` as accepted at `now_ms` and pending until `settle` (or `remove`):
    /// `New` when it was not inside the window; a repeat gets `Stored` or the token of
    /// the pending first copy.
    pub fn claim(&self, key: u64, now_ms: i64, token: &P) -> Seen<P> {
        self.admit(key, now_ms, Some(token), P::clone)
    }

    /// `claim`, with the pending first copy's token handed to `on_pending` while the
    /// shard is still locked: the id cannot settle (or be forgotten) until it returns, so
    /// whatever `on_pending` looks up for that token is still there.
    pub fn claim_with<R>(
        &self,
        key: u64,
        now_ms: i64,
        token: &P,
        on_pending: impl FnOnce(&P) -> R,
    ) -> Seen<R> {
        self.admit(key, now_ms, Some(token), on_pending)
    }

    fn admit<R>(
        &self,
        key: u64,
        now_ms: i64,
        token: Option<&P>,
        on_pending: impl FnOnce(&P) -> R,
    ) -> Seen<R> {
        let key = table::nonzero(key);
        let mut guard = self.shard(key);
        let s = &mut *guard;
        let expired =
            s.gens.iter().take_while(|g| g.start_ms + self.gen_ms <= now_ms - self.window_ms).count();
        s.drop_oldest(expired);
        if s.table.find(key).is_some() {
            return match s.pending.get(&key) {
                Some(p) => Seen::Pending(on_pending(p)),
                None => Seen::Stored,
            };
        }
        let gen_cap = (self.max_slots * table::LOAD_NUM / table::LOAD_DEN / GENERATIONS as usize).max(1);
        let needs_new =
            s.gens.back().is_none_or(|g| now_ms >= g.start_ms + self.gen_ms || g.count >= gen_cap);
        if needs_new {
            let id = s.next_id;
            s.next_id = s.next_id.wrapping_add(1);
            s.gens.push_back(Generation { id, start_ms: now_ms, count: 0 });
        }
        if s.table.len() >= s.table.room() {
            if s.table.slots() < self.max_slots {
                let slots = (s.table.slots() * 3 / 2).min(self.max_slots);
                s.rebuild(slots);
            } else {
                // The budget is reached: forget the oldest generation early (the newest
                // one, just opened, always stays).
                let oldest = s.gens.front().map(|g| g.start_ms).unwrap_or(now_ms);
                let n = s.drop_oldest(1.min(s.gens.len() - 1));
                let n = if n == 0 && s.table.len() >= s.table.room() {
                    // Everything is in the newest generation: start it over.
                    let all = s.table.len();
                    s.table = Table::with_slots(self.max_slots);
                    all
                } else {
                    n
                };
                self.evicted_early.fetch_add(n as u64, Ordering::Relaxed);
                let held = s.gens.front().map(|g| g.start_ms).unwrap_or(oldest);
                self.effective_ms.store((now_ms - held).max(1) as u64, Ordering::Relaxed);
                self.last_early_at.store(now_ms, Ordering::Relaxed);
            }
        }
        let newest = s.gens.back_mut().expect("a generation exists");
        newest.count += 1;
        s.table.insert_new(key, newest.id);
        if let Some(t) = token {
            s.pending.insert(key, t.clone());
        }
        Seen::New
    }

    /// Marks `keys` committed: repeats of them are now plain duplicates.
    pub fn settle(&self, keys: &[u64]) {
        self.each_shard(keys, |s, k| {
            s.pending.remove(&k);
        });
    }

    /// Forgets `key` (used when the write holding it failed, so a retry is not refused).
    pub fn remove(&self, key: u64) {
        self.remove_all(&[key]);
    }

    /// Forgets every key of `keys` (one lock per shard touched, not per key).
    pub fn remove_all(&self, keys: &[u64]) {
        self.each_shard(keys, |s, k| {
            if let Some(i) = s.table.find(k) {
                s.table.remove_at(i);
            }
            s.pending.remove(&k);
        });
    }

    /// Runs `f` on every key, taking each shard's lock once.
    fn each_shard(&self, keys: &[u64], mut f: impl FnMut(&mut Shard<P>, u64)) {
        if keys.len() < 2 * SHARDS {
            keys.iter().map(|&k| table::nonzero(k)).for_each(|k| f(&mut self.shard(k), k));
            return;
        }
        let mut by_shard: Vec<Vec<u64>> = vec![Vec::new(); SHARDS];
        keys.iter().map(|&k| table::nonzero(k)).for_each(|k| by_shard[shard_of(k)].push(k));
        for (i, ks) in by_shard.into_iter().enumerate().filter(|(_, ks)| !ks.is_empty()) {
            let mut s = self.lock(i);
            ks.into_iter().for_each(|k| f(&mut s, k));
        }
    }

    /// Ids whose commit has not ended yet.
    pub fn pending(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.pending.len()).unwrap_or(0)).sum()
    }

    /// The window actually held at `now_ms`, in ms: `window_ms` unless the memory bound
    /// forced an early eviction within the last window, then the age of the oldest id
    /// still remembered at the last such eviction.
    pub fn effective_window_ms(&self, now_ms: i64) -> i64 {
        let at = self.last_early_at.load(Ordering::Relaxed);
        match self.effective_ms.load(Ordering::Relaxed) {
            0 => self.window_ms,
            _ if now_ms - at > self.window_ms => self.window_ms,
            e => (e as i64).min(self.window_ms),
        }
    }

    /// Bytes the window's tables hold now (allocated capacity, not only the used part).
    pub fn memory_bytes(&self) -> usize {
        let pslot = 8 + std::mem::size_of::<P>() + 1;
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.table.bytes() + s.pending.capacity() * pslot
            })
            .sum()
    }

    /// Most ids the bound lets the window hold.
    pub fn capacity(&self) -> usize {
        self.max_slots * table::LOAD_NUM / table::LOAD_DEN * SHARDS
    }

    /// How many ids are remembered now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.table.len()).unwrap_or(0)).sum()
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

    type Plain = DedupWindow<()>;

    #[test]
    fn a_second_insert_inside_the_window_is_a_duplicate() {
        let d = Plain::new(60_000, 1_000_000);
        assert!(d.insert(key("a"), 1_000));
        assert!(!d.insert(key("a"), 50_000));
        assert!(d.insert(key("b"), 50_000));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn ids_are_forgotten_after_the_window() {
        let d = Plain::new(80_000, 1_000_000);
        assert!(d.insert(key("a"), 0));
        assert!(!d.insert(key("a"), 79_000));
        // The generation holding "a" (started at 0, spanning 10 s) is fully older than 80 s at 90 s.
        assert!(d.insert(key("a"), 90_001));
    }

    #[test]
    fn removed_ids_can_be_inserted_again() {
        let d = Plain::new(60_000, 1_000);
        assert!(d.insert(key("a"), 0));
        d.remove(key("a"));
        assert!(d.is_empty());
        assert!(d.insert(key("a"), 1));
    }

    #[test]
    fn a_removed_then_reinserted_id_survives_expiry_of_its_old_generation() {
        let d = Plain::new(80_000, 1_000_000);
        assert!(d.insert(key("a"), 0));
        d.remove(key("a"));
        assert!(d.insert(key("a"), 50_000));
        // The first generation expires at 90 s; "a" now lives in the 50 s one.
        assert!(!d.insert(key("a"), 95_000));
    }

    #[test]
    fn memory_stays_bounded_by_dropping_the_oldest_generation() {
        let d = Plain::new(8_000, 64 * 100);
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

    #[test]
    fn a_repeat_of_a_pending_id_gets_the_first_copys_token_until_it_settles() {
        let d: DedupWindow<u32> = DedupWindow::new(60_000, 1_000_000);
        assert_eq!(d.claim(key("a"), 0, &7), Seen::New);
        assert_eq!(d.claim(key("a"), 1, &8), Seen::Pending(7));
        assert_eq!(d.pending(), 1);
        d.settle(&[key("a")]);
        assert_eq!(d.claim(key("a"), 2, &9), Seen::Stored);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_failed_commit_forgets_its_ids_and_their_pending_marks() {
        let d: DedupWindow<u32> = DedupWindow::new(60_000, 1_000_000);
        let keys: Vec<u64> = (0..500).map(|i| key(&format!("k{i}"))).collect();
        for k in &keys {
            assert_eq!(d.claim(*k, 0, &1), Seen::New);
        }
        d.remove_all(&keys);
        assert_eq!((d.len(), d.pending()), (0, 0));
        assert_eq!(d.claim(keys[3], 1, &2), Seen::New, "a retry after the failure is new");
    }

    #[test]
    fn ids_read_back_from_the_store_are_stored_not_pending() {
        let d: DedupWindow<u32> = DedupWindow::new(60_000, 1_000_000);
        assert!(d.insert(key("s"), 0));
        assert_eq!(d.claim(key("s"), 1, &1), Seen::Stored);
    }

    #[test]
    fn the_effective_window_is_reported_when_the_bound_evicts_early() {
        let d = Plain::new(80_000, 64 * 800);
        assert_eq!(d.effective_window_ms(0), 80_000);
        // 100 ids per second for 80 s is 8,000 ids: well inside the bound of 51,200.
        for t in 0..80 {
            for i in 0..100 {
                d.insert(key(&format!("{t}-{i}")), t * 1_000);
            }
        }
        assert_eq!(d.effective_window_ms(80_000), 80_000, "the bound was not reached");
        // 10,000 ids per second overflows it within seconds.
        for t in 80..90 {
            for i in 0..10_000 {
                d.insert(key(&format!("{t}-{i}")), t * 1_000);
            }
        }
        let eff = d.effective_window_ms(90_000);
        assert!(eff < 80_000 && eff > 0, "effective window {eff} ms");
        assert!(d.evicted_early() > 0);
        // Once the load is gone for a whole window, the full window is held again.
        assert_eq!(d.effective_window_ms(90_000 + 80_001), 80_000);
    }

    #[test]
    fn memory_per_id_is_within_the_stated_bound() {
        let d = Plain::new(600_000, 10_000_000);
        for n in [10_000usize, 100_000, 300_000, 1_000_000] {
            while d.len() < n {
                let i = d.len();
                d.insert(key(&format!("id-{i}")), i as i64 / 1000);
            }
            let per_id = d.memory_bytes() / n;
            assert!(per_id <= MAX_BYTES_PER_ID, "{per_id} bytes per id at {n} ids");
        }
    }

    #[test]
    fn no_false_duplicates_among_a_million_distinct_ids() {
        // n ids make a new id look seen with probability n / 2^64 (~5e-14 here): zero expected.
        let d = Plain::new(600_000, 2_000_000);
        let fresh = (0..1_000_000).filter(|i| d.insert(key(&format!("{i:x}-evt")), 0)).count();
        assert_eq!(fresh, 1_000_000);
    }
}
