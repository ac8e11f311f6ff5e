//! The checkpoint journal: records appended after a base checkpoint, each holding a
//! store position, the analytics at that position, and the dedup ids settled since the
//! previous save, so a save writes what changed instead of the whole dedup window.
//!
//! Record: `"ADCJ"`, `body_len u32`, body, `crc32(body) u32`; body: `base_id u64`,
//! `seq u32` (0 for the first record after its base, then 1, 2, ...: a missing or
//! reordered record ends the journal there), `created_ms i64`, `cursor_len u16`, cursor, `analytics_len u64`, analytics snapshot,
//! `groups u32`, then per group `at_ms i64`, `n u32`, `n` keys `u64`. All little-endian.

const MAGIC: &[u8; 4] = b"ADCJ";
/// Ids kept for the next record at most; beyond, the next save writes a base instead.
const MAX_PENDING_IDS: usize = 4 << 20;
/// A journal may grow to the size of its base (rewriting a small base is cheap), but at
/// least to the first and at most to the second bound: a start inserts every id of the
/// journal one by one (~4M ids at the upper bound), while a base loads table by table.
const JOURNAL_BYTES: std::ops::RangeInclusive<u64> = (4 << 20)..=(32 << 20);

/// The base checkpoint the journal extends.
#[derive(Clone, Copy, Debug)]
pub(super) struct Base {
    pub id: u64,
    /// Records appended after it (the next record's sequence number).
    pub records: u32,
    /// Size of the base file.
    pub bytes: u64,
    /// Size of the journal after it.
    pub journal_bytes: u64,
}

impl Base {
    /// Whether the next save may append to the journal instead of writing a new base.
    pub fn has_room(&self) -> bool {
        self.journal_bytes < self.bytes.clamp(*JOURNAL_BYTES.start(), *JOURNAL_BYTES.end())
    }
}

/// Dedup ids settled since the last save, grouped by commit (with its receive time).
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Set by the first save: before it there is no base to extend.
    collecting: bool,
    /// Too many ids piled up (saves failing): the next save must write a base.
    overflowed: bool,
    groups: Vec<(i64, Vec<u64>)>,
    n: usize,
}

impl Pending {
    /// Keeps the `ids` of a commit received at `at_ms`.
    pub fn push(&mut self, at_ms: i64, ids: Vec<u64>) {
        if !self.collecting || self.overflowed || ids.is_empty() {
            return;
        }
        if self.n + ids.len() > MAX_PENDING_IDS {
            self.overflowed = true;
            self.groups = Vec::new();
            self.n = 0;
            return;
        }
        self.n += ids.len();
        self.groups.push((at_ms, ids));
    }

    /// The ids kept since the last call, if they are complete (None: a base is needed);
    /// from now on ids are kept when `collect`.
    pub fn take(&mut self, collect: bool) -> Option<Vec<(i64, Vec<u64>)>> {
        let complete = self.collecting && !self.overflowed;
        let groups = std::mem::take(&mut self.groups);
        *self = Pending { collecting: collect, ..Default::default() };
        complete.then_some(groups)
    }
}

/// One record's contents.
pub(super) struct Record<'a> {
    pub base_id: u64,
    pub seq: u32,
    pub cursor: &'a str,
    pub analytics: &'a [u8],
    pub groups: Vec<(i64, &'a [u8])>,
}

impl Record<'_> {
    /// The keys of every group with their receive time.
    pub fn ids(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.groups.iter().flat_map(|(at, keys)| {
            keys.chunks_exact(8).map(move |k| (*at, u64::from_le_bytes(k.try_into().expect("8 bytes"))))
        })
    }
}

/// Encodes a record.
pub(super) fn encode(
    base_id: u64,
    seq: u32,
    created_ms: i64,
    cursor: &str,
    analytics: &[u8],
    groups: &[(i64, Vec<u64>)],
) -> Vec<u8> {
    let keys: usize = groups.iter().map(|(_, k)| k.len()).sum();
    let mut body = Vec::with_capacity(64 + cursor.len() + analytics.len() + groups.len() * 12 + keys * 8);
    body.extend_from_slice(&base_id.to_le_bytes());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&created_ms.to_le_bytes());
    body.extend_from_slice(&(cursor.len() as u16).to_le_bytes());
    body.extend_from_slice(cursor.as_bytes());
    body.extend_from_slice(&(analytics.len() as u64).to_le_bytes());
    body.extend_from_slice(analytics);
    body.extend_from_slice(&(groups.len() as u32).to_le_bytes());
    for (at, ks) in groups {
        body.extend_from_slice(&at.to_le_bytes());
        body.extend_from_slice(&(ks.len() as u32).to_le_bytes());
        ks.iter().for_each(|k| body.extend_from_slice(&k.to_le_bytes()));
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out
}

/// A little-endian reader over a record body that refuses to run past its end.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (self.0.len() >= n).then(|| {
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        })
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
}

fn decode_body(body: &[u8]) -> Option<Record<'_>> {
    let mut b = Body(body);
    let base_id = b.u64()?;
    let seq = b.u32()?;
    let _created_ms = b.u64()?;
    let n = b.u16()? as usize;
    let cursor = std::str::from_utf8(b.take(n)?).ok()?;
    let n = usize::try_from(b.u64()?).ok()?;
    let analytics = b.take(n)?;
    let count = b.u32()?;
    let mut groups = Vec::new();
    for _ in 0..count {
        let at = b.u64()? as i64;
        let n = b.u32()? as usize;
        groups.push((at, b.take(n.checked_mul(8)?)?));
    }
    b.0.is_empty().then_some(Record { base_id, seq, cursor, analytics, groups })
}

/// The valid records of `journal` that extend base `base_id`, in order: reading stops at
/// the first record that is torn, damaged, of another base or out of sequence (a record
/// after a missing one must not be used: the ids of the missing one would be absent
/// while its commits lie before the position used). Also returns how many bytes the
/// records used take.
pub(super) fn records(journal: &[u8], base_id: u64) -> (Vec<Record<'_>>, usize) {
    let (mut out, mut at) = (Vec::new(), 0usize);
    while let Some(rest) = journal.get(at..) {
        if rest.len() < 12 || &rest[..4] != MAGIC {
            break;
        }
        let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
        let Some(body) = rest.get(8..8 + len) else { break };
        let Some(crc) = rest.get(8 + len..12 + len) else { break };
        if crc32fast::hash(body).to_le_bytes() != crc {
            break;
        }
        match decode_body(body) {
            Some(r) if r.base_id == base_id && r.seq as usize == out.len() => out.push(r),
            _ => break,
        }
        at += 12 + len;
    }
    (out, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(base: u64, seq: u32, cursor: &str, keys: &[u64]) -> Vec<u8> {
        encode(base, seq, 7, cursor, b"analytics", &[(100, keys.to_vec()), (101, vec![9])])
    }

    #[test]
    fn records_read_back_in_order_until_a_torn_or_foreign_one() {
        let mut j = record(1, 0, "1:10", &[1, 2]);
        j.extend(record(1, 1, "1:20", &[3]));
        let (rs, used) = records(&j, 1);
        assert_eq!(used, j.len());
        assert_eq!(rs.iter().map(|r| r.cursor).collect::<Vec<_>>(), ["1:10", "1:20"]);
        assert_eq!(rs[0].ids().collect::<Vec<_>>(), [(100, 1), (100, 2), (101, 9)]);
        assert_eq!(rs[1].analytics, b"analytics");
        // Another base's records are not ours.
        assert!(records(&j, 2).0.is_empty());
        // A torn last record, a flipped bit, trailing garbage: the valid prefix only.
        let first = record(1, 0, "1:10", &[1, 2]).len();
        assert_eq!(records(&j[..j.len() - 3], 1).0.len(), 1);
        for at in [first + 2, first + 9, j.len() - 1] {
            let mut bad = j.clone();
            bad[at] ^= 0x40;
            assert_eq!(records(&bad, 1).0.len(), 1, "flip at {at}");
        }
        let mut junk = j.clone();
        junk.extend_from_slice(&[0xAD; 40]);
        assert_eq!(records(&junk, 1).0.len(), 2);
    }

    #[test]
    fn a_missing_or_reordered_record_ends_the_journal() {
        let (a, b, c) = (record(1, 0, "1:10", &[1]), record(1, 1, "1:20", &[2]), record(1, 2, "1:30", &[3]));
        let gap = [a.clone(), c.clone()].concat();
        assert_eq!(records(&gap, 1).0.iter().map(|r| r.cursor).collect::<Vec<_>>(), ["1:10"]);
        let swapped = [b.clone(), a.clone(), c.clone()].concat();
        assert!(records(&swapped, 1).0.is_empty());
        let twice = [a.clone(), b.clone(), a, b, c].concat();
        assert_eq!(records(&twice, 1).0.len(), 2);
    }

    #[test]
    fn a_journal_grows_to_its_base_within_bounds() {
        let b = |bytes: u64, journal_bytes: u64| Base { id: 1, records: 0, bytes, journal_bytes }.has_room();
        const MB: u64 = 1 << 20;
        assert!(b(MB, 3 * MB) && !b(MB, 4 * MB), "a small base: up to 4 MiB");
        assert!(b(10 * MB, 9 * MB) && !b(10 * MB, 10 * MB), "as large as its base");
        assert!(b(500 * MB, 31 * MB) && !b(500 * MB, 32 * MB), "never past 32 MiB");
    }

    #[test]
    fn pending_ids_are_complete_only_between_two_saves_that_kept_them() {
        let mut p = Pending::default();
        p.push(1, vec![1]);
        assert_eq!(p.take(true), None, "nothing was kept before the first save");
        p.push(2, vec![2, 3]);
        p.push(3, vec![]);
        assert_eq!(p.take(true), Some(vec![(2, vec![2, 3])]));
        assert_eq!(p.take(true), Some(vec![]));
        p.n = MAX_PENDING_IDS;
        p.push(4, vec![4]);
        assert_eq!(p.take(true), None, "an overflow asks for a base");
        assert_eq!(p.take(false), Some(vec![]));
        p.push(5, vec![5]);
        assert_eq!(p.take(true), None, "not kept while not collecting");
    }
}
