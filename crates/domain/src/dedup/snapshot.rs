//! Saving the dedup window to a checkpoint and loading it back, so a restart does not
//! have to re-read the whole event store to remember which ids it accepted.
//!
//! The snapshot is the shards' flat tables as they are (keys, generation bytes, the
//! generation list), so loading is a sequential read with no rehashing: ~9 bytes per
//! slot. Ids still *pending* (accepted, commit not ended) are left out: their commit may
//! yet fail, and a checkpoint must never make a restart call an unstored id a duplicate.
//! Their commits, when they succeed, come after the checkpoint's store position and are
//! read back from the store at start. A shard is copied under its lock, written, dropped:
//! taking a snapshot costs one shard's table of extra memory, not the whole window.
//!
//! Layout (little-endian): `window_ms i64, shards u32`, then per shard
//! `next_id u8, generations u32, [id u8, start_ms i64, count u64]*, slots u64,
//! keys [u64; slots], gens [u8; slots]`. Integrity (CRC, truncation) is the caller's
//! framing; this module refuses shapes it cannot load (`SnapshotError`).

use super::table::Table;
use super::{DedupWindow, Generation, SHARDS, Shard};
use std::io::{Read, Write};

/// Why a snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The snapshot was taken with other settings or is malformed.
    #[error("dedup snapshot does not fit this window: {0}")]
    Mismatch(String),
}

fn put_u64(w: &mut impl Write, v: u64) -> std::io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn get<const N: usize>(r: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Converts and writes `words` in chunks (no full-size byte copy).
fn put_words(w: &mut impl Write, words: &[u64]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8 * 4096);
    for chunk in words.chunks(4096) {
        buf.clear();
        chunk.iter().for_each(|k| buf.extend_from_slice(&k.to_le_bytes()));
        w.write_all(&buf)?;
    }
    Ok(())
}

fn get_words(r: &mut impl Read, n: usize) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 8 * 4096];
    let mut left = n;
    while left > 0 {
        let take = left.min(4096);
        r.read_exact(&mut buf[..take * 8])?;
        out.extend(
            buf[..take * 8].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
        );
        left -= take;
    }
    Ok(out)
}

impl<P: Clone> DedupWindow<P> {
    /// Writes the committed ids (not the pending ones) with their generations to `w`.
    pub fn write_snapshot(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.window_ms.to_le_bytes())?;
        w.write_all(&(SHARDS as u32).to_le_bytes())?;
        for i in 0..SHARDS {
            let (table, gens, next_id) = {
                let s = self.lock(i);
                let gens: Vec<(u8, i64, usize)> =
                    s.gens.iter().map(|g| (g.id, g.start_ms, g.count)).collect();
                let mut t = s.table.clone();
                for k in s.pending.keys() {
                    if let Some(at) = t.find(*k) {
                        t.remove_at(at);
                    }
                }
                (t, gens, s.next_id)
            };
            w.write_all(&[next_id])?;
            w.write_all(&(gens.len() as u32).to_le_bytes())?;
            for (id, start, count) in gens {
                w.write_all(&[id])?;
                w.write_all(&start.to_le_bytes())?;
                put_u64(w, count as u64)?;
            }
            let (keys, tags) = table.parts();
            put_u64(w, keys.len() as u64)?;
            put_words(w, keys)?;
            w.write_all(tags)?;
        }
        Ok(())
    }

    /// Replaces the window's contents with a snapshot from `r`; returns the ids loaded.
    /// Refused (window untouched) when the snapshot's shape does not fit this window's
    /// settings (another window length, or tables larger than the memory budget allows).
    pub fn read_snapshot(&self, r: &mut impl Read) -> Result<usize, SnapshotError> {
        let window_ms = i64::from_le_bytes(get::<8>(r)?);
        let shards = u32::from_le_bytes(get::<4>(r)?) as usize;
        if window_ms != self.window_ms || shards != SHARDS {
            return Err(SnapshotError::Mismatch(format!(
                "taken with window {window_ms} ms and {shards} shards, this window is {} ms and {SHARDS}",
                self.window_ms
            )));
        }
        let mut loaded = Vec::with_capacity(SHARDS);
        for i in 0..SHARDS {
            let next_id = get::<1>(r)?[0];
            let n = u32::from_le_bytes(get::<4>(r)?) as usize;
            if n > 256 {
                return Err(SnapshotError::Mismatch(format!("shard {i}: {n} generations")));
            }
            let mut gens = std::collections::VecDeque::with_capacity(n);
            for _ in 0..n {
                let id = get::<1>(r)?[0];
                let start_ms = i64::from_le_bytes(get::<8>(r)?);
                let count = u64::from_le_bytes(get::<8>(r)?) as usize;
                gens.push_back(Generation { id, start_ms, count });
            }
            let slots = u64::from_le_bytes(get::<8>(r)?) as usize;
            if slots > self.max_slots.max(super::INITIAL_SLOTS) || slots < 8 {
                return Err(SnapshotError::Mismatch(format!(
                    "shard {i}: {slots} slots, the memory budget allows {}",
                    self.max_slots
                )));
            }
            let keys = get_words(r, slots)?;
            let mut tags = vec![0u8; slots];
            r.read_exact(&mut tags)?;
            let table = Table::from_parts(keys, tags).ok_or_else(|| {
                SnapshotError::Mismatch(format!("shard {i}: table fuller than its load bound"))
            })?;
            loaded.push((table, gens, next_id));
        }
        let mut total = 0;
        for (i, (table, gens, next_id)) in loaded.into_iter().enumerate() {
            let mut s = self.lock(i);
            total += table.len();
            *s = Shard { table, pending: Default::default(), gens, next_id };
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Seen, key};
    use super::*;

    #[test]
    fn a_snapshot_restores_committed_ids_and_leaves_out_pending_ones() {
        let d: DedupWindow<u32> = DedupWindow::new(600_000, 1_000_000);
        for i in 0..50_000 {
            assert_eq!(d.claim(key(&format!("c{i}")), i, &1), Seen::New);
        }
        let committed: Vec<u64> = (0..50_000).map(|i| key(&format!("c{i}"))).collect();
        d.settle(&committed);
        for i in 0..300 {
            assert_eq!(d.claim(key(&format!("p{i}")), 60_000, &2), Seen::New);
        }
        let mut buf = Vec::new();
        d.write_snapshot(&mut buf).unwrap();

        let r: DedupWindow<u32> = DedupWindow::new(600_000, 1_000_000);
        assert_eq!(r.read_snapshot(&mut buf.as_slice()).unwrap(), 50_000);
        for i in (0..50_000).step_by(97) {
            assert_eq!(r.claim(key(&format!("c{i}")), 70_000, &3), Seen::Stored, "c{i}");
        }
        for i in 0..300 {
            assert_eq!(r.claim(key(&format!("p{i}")), 70_000, &3), Seen::New, "pending p{i} must not load");
        }
        // The generations came along: the old ids still expire on time.
        assert_eq!(r.claim(key("c10"), 600_000 + 80_000, &4), Seen::New);
    }

    #[test]
    fn a_snapshot_for_other_settings_or_cut_short_is_refused_and_changes_nothing() {
        let d: DedupWindow<()> = DedupWindow::new(600_000, 1_000_000);
        for i in 0..10_000 {
            d.insert(key(&format!("x{i}")), 0);
        }
        let mut buf = Vec::new();
        d.write_snapshot(&mut buf).unwrap();
        let other: DedupWindow<()> = DedupWindow::new(60_000, 1_000_000);
        assert!(matches!(other.read_snapshot(&mut buf.as_slice()), Err(SnapshotError::Mismatch(_))));
        let small: DedupWindow<()> = DedupWindow::new(600_000, 64 * 8);
        assert!(small.read_snapshot(&mut buf.as_slice()).is_err());
        let same: DedupWindow<()> = DedupWindow::new(600_000, 1_000_000);
        same.insert(key("kept"), 0);
        assert!(same.read_snapshot(&mut &buf[..buf.len() - 5]).is_err());
        assert_eq!(same.len(), 1, "a failed load leaves the window as it was");
    }
}
