//! Near-duplicate detection with MinHash over word 3-shingles and LSH banding: each ad
//! gets 64 min-hashes; ads sharing all 4 rows of any of the 16 bands become candidates,
//! and candidates are compared on their signatures (an estimate of Jaccard similarity).
//! The index keeps the most recent `capacity` ads, so memory and cost stay bounded.

use std::collections::{HashMap, VecDeque};

const HASHES: usize = 64;
const BANDS: usize = 16;
const ROWS: usize = HASHES / BANDS;

/// A MinHash signature.
pub type Signature = [u64; HASHES];

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
            // Hash i of the family: the shingle hash re-hashed with seed i.
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(&base.to_le_bytes(), i as u64);
            *s = (*s).min(h);
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

/// Recently seen signatures, searchable by LSH band.
pub struct Recent {
    capacity: usize,
    order: VecDeque<String>,
    sigs: HashMap<String, Signature>,
    bands: HashMap<(usize, u64), Vec<String>>,
}

fn band_key(sig: &Signature, band: usize) -> u64 {
    let rows = &sig[band * ROWS..(band + 1) * ROWS];
    let mut bytes = [0u8; ROWS * 8];
    for (i, r) in rows.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&r.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

impl Recent {
    /// An index remembering `capacity` ads.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            sigs: HashMap::new(),
            bands: HashMap::new(),
        }
    }

    /// The most similar remembered ad (other than `id`) and its similarity.
    pub fn most_similar(&self, id: &str, sig: &Signature) -> Option<(String, f64)> {
        let mut best: Option<(String, f64)> = None;
        for b in 0..BANDS {
            for other in self.bands.get(&(b, band_key(sig, b))).into_iter().flatten() {
                if other == id {
                    continue;
                }
                let Some(osig) = self.sigs.get(other) else { continue };
                let s = similarity(sig, osig);
                if best.as_ref().is_none_or(|(_, bs)| s > *bs) {
                    best = Some((other.clone(), s));
                }
            }
        }
        best
    }

    /// Remembers an ad, forgetting the oldest beyond capacity.
    pub fn insert(&mut self, id: String, sig: Signature) {
        for b in 0..BANDS {
            self.bands.entry((b, band_key(&sig, b))).or_default().push(id.clone());
        }
        if self.sigs.insert(id.clone(), sig).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.capacity {
            let Some(old) = self.order.pop_front() else { break };
            let Some(osig) = self.sigs.remove(&old) else { continue };
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
