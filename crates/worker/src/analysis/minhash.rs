//! Near-duplicate detection with MinHash over word 3-shingles and LSH banding: each ad
//! gets 64 min-hashes; ads sharing all 4 rows of any of the 16 bands become candidates,
//! and candidates are compared on their signatures (an estimate of Jaccard similarity).
//! The index keeps the most recent `capacity` ads, and each band bucket only its
//! `BUCKET` most recent members, so a lookup compares at most BANDS * BUCKET signatures
//! even when thousands of ads share the same template.

use std::collections::{HashMap as StdHashMap, VecDeque};
use std::hash::BuildHasherDefault;

/// Keys here are already hashes or small tuples of them: xxh3 beats SipHash on this path.
type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<xxhash_rust::xxh3::Xxh3>>;

const HASHES: usize = 64;
const BANDS: usize = 16;
const ROWS: usize = HASHES / BANDS;
const BUCKET: usize = 4;

/// A MinHash signature.
pub type Signature = [u64; HASHES];

/// Hash `i` of the family: the shingle hash mixed with a per-index constant
/// (a splitmix64 finaliser: cheap, and independent enough for MinHash).
fn mix(base: u64, i: u64) -> u64 {
    let mut z = base ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The signature of `text` (lower-cased words, 3-word shingles; shorter texts use words).
pub fn signature(text: &str) -> Signature {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect();
    let mut sig = [u64::MAX; HASHES];
    let mut add = |shingle: &str| {
        let base = xxhash_rust::xxh3::xxh3_64(shingle.as_bytes());
        for (i, s) in sig.iter_mut().enumerate() {
            *s = (*s).min(mix(base, i as u64));
        }
    };
    if words.len() < 3 {
        words.iter().for_each(|w| add(w));
    } else {
        for w in words.windows(3) {
            add(&w.join(" "));
        }
    }
    sig
}

/// Estimated Jaccard similarity of two signatures.
pub fn similarity(a: &Signature, b: &Signature) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / HASHES as f64
}

/// Recently seen signatures, searchable by LSH band. Ads are tracked by a 64-bit hash
/// of their id, so buckets hold plain integers.
pub struct Recent {
    capacity: usize,
    order: VecDeque<u64>,
    sigs: HashMap<u64, (String, Signature)>,
    bands: HashMap<(usize, u64), VecDeque<u64>>,
}

fn band_key(sig: &Signature, band: usize) -> u64 {
    let rows = &sig[band * ROWS..(band + 1) * ROWS];
    rows.iter().fold(band as u64, |acc, r| mix(acc ^ r, 0x5bd1))
}

fn band_keys(sig: &Signature) -> [u64; BANDS] {
    std::array::from_fn(|b| band_key(sig, b))
}

fn id_key(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

impl Recent {
    /// An index remembering `capacity` ads.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            sigs: HashMap::default(),
            bands: HashMap::default(),
        }
    }

    /// The most similar remembered ad (other than `id`) and its similarity.
    pub fn most_similar(&self, id: &str, sig: &Signature) -> Option<(String, f64)> {
        self.best_match(id_key(id), sig, &band_keys(sig))
    }

    /// Finds the most similar remembered ad, then remembers this one (band keys computed once).
    pub fn check_and_insert(&mut self, id: String, sig: Signature) -> Option<(String, f64)> {
        let keys = band_keys(&sig);
        let best = self.best_match(id_key(&id), &sig, &keys);
        self.insert_keyed(id, sig, &keys);
        best
    }

    fn best_match(&self, me: u64, sig: &Signature, keys: &[u64; BANDS]) -> Option<(String, f64)> {
        let mut seen: Vec<u64> = Vec::with_capacity(BANDS * BUCKET);
        let mut best: Option<(u64, f64)> = None;
        for (b, &bk) in keys.iter().enumerate() {
            for &other in self.bands.get(&(b, bk)).into_iter().flatten() {
                if other == me || seen.contains(&other) {
                    continue;
                }
                seen.push(other);
                let Some((_, osig)) = self.sigs.get(&other) else { continue };
                let s = similarity(sig, osig);
                if best.is_none_or(|(_, bs)| s > bs) {
                    best = Some((other, s));
                }
            }
        }
        best.and_then(|(k, s)| Some((self.sigs.get(&k)?.0.clone(), s)))
    }

    /// Remembers an ad, forgetting the oldest beyond capacity.
    pub fn insert(&mut self, id: String, sig: Signature) {
        let keys = band_keys(&sig);
        self.insert_keyed(id, sig, &keys);
    }

    fn insert_keyed(&mut self, id: String, sig: Signature, keys: &[u64; BANDS]) {
        let key = id_key(&id);
        for (b, &bk) in keys.iter().enumerate() {
            let bucket = self.bands.entry((b, bk)).or_default();
            bucket.push_back(key);
            if bucket.len() > BUCKET {
                bucket.pop_front();
            }
        }
        if self.sigs.insert(key, (id, sig)).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            let Some(old) = self.order.pop_front() else { break };
            let Some((_, osig)) = self.sigs.remove(&old) else { continue };
            for b in 0..BANDS {
                let k = (b, band_key(&osig, b));
                if let Some(v) = self.bands.get_mut(&k) {
                    v.retain(|x| *x != old);
                    if v.is_empty() {
                        self.bands.remove(&k);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_copies_are_similar_and_different_texts_are_not() {
        let a =
            signature("Slay the ancient dragon and claim the crystal throne in this epic fantasy adventure");
        let b = signature(
            "Slay the ancient dragon and claim the crystal throne in this epic fantasy adventure now",
        );
        let c = signature("Match three candies to clear the board in a relaxing puzzle for the whole family");
        assert!(similarity(&a, &b) > 0.7, "{}", similarity(&a, &b));
        assert!(similarity(&a, &c) < 0.2, "{}", similarity(&a, &c));
    }

    #[test]
    fn the_index_finds_candidates_and_forgets_old_ads() {
        let mut r = Recent::new(2);
        let text = "Build your kingdom and lead mighty armies into battle today";
        r.insert("a".into(), signature(text));
        let (id, s) = r.most_similar("b", &signature(text)).unwrap();
        assert_eq!((id.as_str(), s), ("a", 1.0));
        r.insert("x".into(), signature("one two three four five"));
        r.insert("y".into(), signature("six seven eight nine ten"));
        assert!(r.most_similar("b", &signature(text)).is_none(), "a was evicted");
    }
}
