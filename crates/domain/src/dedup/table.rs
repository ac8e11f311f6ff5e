//! The compact id table behind each dedup shard: open addressing with linear probing over
//! two flat arrays, 8 bytes of key and 1 byte of generation per slot, no per-entry
//! allocation and no control bytes. A slot holding 0 is empty (keys are never 0).
//! Up to 3/4 of the slots are used, so an id costs between 12 bytes (table full) and
//! 18 bytes (just grown by half) of memory. Expiring a generation rebuilds the table without
//! it (one pass over the slots, once per generation), which also resizes it.

/// Most slots used, as a fraction of the table: 3/4. (Linear probing's miss, the common
/// case for new ids, scans ~8.5 slots at 3/4 but ~32 at 7/8.)
pub const LOAD_NUM: usize = 3;
/// Denominator of the load bound.
pub const LOAD_DEN: usize = 4;
/// Bytes one slot costs.
pub const SLOT_BYTES: usize = 9;

/// An open-addressing set of nonzero u64 keys, each tagged with a generation byte.
#[derive(Clone)]
pub struct Table {
    keys: Vec<u64>,
    gens: Vec<u8>,
    len: usize,
}

/// Keys are uniform hashes; 0 marks an empty slot, so a 0 key is stored as 1.
pub fn nonzero(key: u64) -> u64 {
    key.max(1)
}

impl Table {
    /// A table of `slots` slots (at least 8).
    pub fn with_slots(slots: usize) -> Self {
        let slots = slots.max(8);
        Self { keys: vec![0; slots], gens: vec![0; slots], len: 0 }
    }

    /// A table over saved slots (see `parts`); None when more than the load bound
    /// of them are used or the arrays differ in length.
    pub fn from_parts(keys: Vec<u64>, gens: Vec<u8>) -> Option<Self> {
        let len = keys.iter().filter(|&&k| k != 0).count();
        let t = Self { keys, gens, len };
        (t.keys.len() == t.gens.len() && t.keys.len() >= 8 && len <= t.room()).then_some(t)
    }

    /// The slot arrays (keys, generation bytes), to save them as they are.
    pub fn parts(&self) -> (&[u64], &[u8]) {
        (&self.keys, &self.gens)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated.
    pub fn slots(&self) -> usize {
        self.keys.len()
    }

    /// Keys the table can hold before it must grow (or evict).
    pub fn room(&self) -> usize {
        self.slots() * LOAD_NUM / LOAD_DEN
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> usize {
        self.slots() * SLOT_BYTES
    }

    fn home(&self, key: u64) -> usize {
        // Multiply-shift: the key's high bits pick the slot (the shard used the low bits).
        ((key as u128 * self.keys.len() as u128) >> 64) as usize
    }

    /// The slot holding `key`, if any.
    pub fn find(&self, key: u64) -> Option<usize> {
        let n = self.keys.len();
        let mut i = self.home(key);
        loop {
            match self.keys[i] {
                0 => return None,
                k if k == key => return Some(i),
                _ => i = if i + 1 == n { 0 } else { i + 1 },
            }
        }
    }

    /// Adds `key` (which must be absent) in generation `generation`; the caller keeps
    /// `len < room()`.
    pub fn insert_new(&mut self, key: u64, generation: u8) {
        let n = self.keys.len();
        let mut i = self.home(key);
        while self.keys[i] != 0 {
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        self.keys[i] = key;
        self.gens[i] = generation;
        self.len += 1;
    }

    /// Removes the key in slot `i`, shifting later keys of its probe run back (no
    /// tombstones, so lookups never slow down).
    pub fn remove_at(&mut self, mut hole: usize) {
        let n = self.keys.len();
        let mut j = hole;
        loop {
            j = if j + 1 == n { 0 } else { j + 1 };
            let k = self.keys[j];
            if k == 0 {
                break;
            }
            let home = self.home(k);
            // Move k into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.keys[hole] = k;
                self.gens[hole] = self.gens[j];
                hole = j;
            }
        }
        self.keys[hole] = 0;
        self.len -= 1;
    }

    /// A table of `slots` slots holding the keys for which `keep(generation)` is true.
    pub fn rebuilt(&self, slots: usize, keep: impl Fn(u8) -> bool) -> Table {
        let mut t = Table::with_slots(slots);
        for (i, &k) in self.keys.iter().enumerate() {
            if k != 0 && keep(self.gens[i]) {
                t.insert_new(k, self.gens[i]);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u64) -> u64 {
        nonzero(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
    }

    #[test]
    fn insert_find_and_remove_keep_every_other_key_reachable() {
        let mut t = Table::with_slots(1024);
        for i in 0..768 {
            t.insert_new(k(i), (i % 3) as u8);
        }
        assert_eq!(t.len(), 768);
        // Remove every third key: the shifted runs must still find the others.
        for i in (0..768).step_by(3) {
            let at = t.find(k(i)).expect("present");
            t.remove_at(at);
        }
        for i in 0..768 {
            assert_eq!(t.find(k(i)).is_some(), i % 3 != 0, "key {i}");
        }
        let r = t.rebuilt(2048, |g| g == 1);
        for i in 0..768 {
            assert_eq!(r.find(k(i)).is_some(), i % 3 == 1, "key {i} after rebuild");
        }
    }

    #[test]
    fn colliding_homes_wrap_around_the_end() {
        // Keys with the highest homes probe past the last slot into slot 0.
        let mut t = Table::with_slots(8);
        let high: Vec<u64> = (0..6).map(|i| u64::MAX - i).collect();
        for &h in &high {
            t.insert_new(h, 0);
        }
        for &h in &high {
            assert!(t.find(h).is_some());
        }
        t.remove_at(t.find(high[0]).unwrap());
        for &h in &high[1..] {
            assert!(t.find(h).is_some(), "{h:x} lost after a removal across the wrap");
        }
    }
}
