//! Damage costs only the damaged bytes: bit flips in every header field and in the
//! payload, of a record inside a sealed segment and inside the newest one; the last record
//! of the newest segment flipped or cut at every byte; garbage inserted between records;
//! zeroed blocks; segments of the old format. After each: every undamaged record is read
//! exactly once and in order (in pages of 3 and of 1), the damaged ranges are exactly the
//! damaged bytes and their kind is right, the quarantine files hold those bytes, health
//! stays ok and says so, and appends after the reopen work and read back.

use super::*;
use crate::framing::{HEADER, MAGIC};
use tempfile::TempDir;

const SEGMENT: u64 = 400;

/// A record on disk: where it is and which event it holds.
#[derive(Clone, Copy, Debug)]
struct Rec {
    segment: u64,
    start: u64,
    end: u64,
    index: usize,
}

/// A store of `n` single-event commits in segments of `SEGMENT` bytes, closed.
struct Built {
    dir: TempDir,
    events: Vec<StoredEvent>,
    records: Vec<Rec>,
}

async fn build(n: u64) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(cfg(dir.path(), SEGMENT)).await.unwrap();
    let events: Vec<_> = (0..n).map(ev).collect();
    for e in &events {
        s.append(std::slice::from_ref(e)).await.unwrap();
    }
    s.close().await.unwrap();
    let mut records = Vec::new();
    for seg in list_segments(dir.path()).unwrap() {
        let path = segment_path(dir.path(), seg);
        let len = std::fs::metadata(&path).unwrap().len();
        let mut r = SegmentReader::new(File::open(&path).unwrap(), &path, 0, len, Vec::new());
        loop {
            let start = r.pos();
            match r.next_item().unwrap() {
                None => break,
                Some(Item::Record(e)) => {
                    assert_eq!(e, events[records.len()]);
                    records.push(Rec { segment: seg, start, end: r.pos(), index: records.len() });
                }
                Some(d) => panic!("a fresh store has damage: {d:?}"),
            }
        }
    }
    assert_eq!(records.len(), events.len());
    Built { dir, events, records }
}

impl Built {
    /// A copy of the store to damage.
    fn copy(&self) -> TempDir {
        let to = tempfile::tempdir().unwrap();
        for seg in list_segments(self.dir.path()).unwrap() {
            std::fs::copy(segment_path(self.dir.path(), seg), segment_path(to.path(), seg)).unwrap();
        }
        to
    }

    fn newest(&self) -> u64 {
        self.records.last().unwrap().segment
    }

    fn in_segment(&self, segment: u64) -> Vec<Rec> {
        self.records.iter().copied().filter(|r| r.segment == segment).collect()
    }

    /// A record in the middle of `segment`.
    fn middle(&self, segment: u64) -> Rec {
        let recs = self.in_segment(segment);
        assert!(recs.len() >= 3, "segment {segment} holds {} records", recs.len());
        recs[recs.len() / 2]
    }
}

fn path_of(dir: &TempDir, segment: u64) -> PathBuf {
    segment_path(dir.path(), segment)
}

fn flip(dir: &TempDir, segment: u64, at: u64, mask: u8) {
    let p = path_of(dir, segment);
    let mut b = std::fs::read(&p).unwrap();
    b[at as usize] ^= mask;
    std::fs::write(&p, b).unwrap();
}

fn bytes_of(dir: &TempDir, segment: u64, start: u64, end: u64) -> Vec<u8> {
    std::fs::read(path_of(dir, segment)).unwrap()[start as usize..end as usize].to_vec()
}

/// Deterministic pseudo-random bytes (xorshift).
fn garbage(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A damaged range the store must find: where, what kind, and the bytes it holds.
struct Want {
    segment: u64,
    start: u64,
    kind: Kind,
    bytes: Vec<u8>,
}

impl Want {
    /// The bytes `[start, end)` of `segment` as they are on disk now (after the damage).
    fn now(dir: &TempDir, segment: u64, start: u64, end: u64, kind: Kind) -> Self {
        Self { segment, start, kind, bytes: bytes_of(dir, segment, start, end) }
    }
}

/// Opens the damaged copy and checks everything the module doc promises.
async fn check(b: &Built, dir: &TempDir, lost: &[usize], want: &[Want], case: &str) {
    let expected: Vec<_> =
        b.events.iter().enumerate().filter(|(i, _)| !lost.contains(i)).map(|(_, e)| e.clone()).collect();
    let s = FileStore::open(cfg(dir.path(), SEGMENT)).await.unwrap_or_else(|e| panic!("{case}: open: {e}"));
    assert_eq!(read_pages(&s, 3).await, expected, "{case}: pages of 3");
    assert_eq!(read_pages(&s, 1).await, expected, "{case}: pages of 1");

    let mut got = s.damage();
    got.sort_by_key(|d| (d.segment, d.start));
    let summary: Vec<_> = got.iter().map(|d| (d.segment, d.start, d.end, d.kind)).collect();
    let wanted: Vec<_> =
        want.iter().map(|w| (w.segment, w.start, w.start + w.bytes.len() as u64, w.kind)).collect();
    assert_eq!(summary, wanted, "{case}: damaged ranges");
    for (d, w) in got.iter().zip(want) {
        let q = d.quarantine.as_ref().unwrap_or_else(|| panic!("{case}: {d:?} not quarantined"));
        assert!(q.starts_with(dir.path().join("quarantine")), "{case}: {q:?}");
        assert_eq!(std::fs::read(q).unwrap(), w.bytes, "{case}: quarantined bytes of {d:?}");
    }
    let h = s.health().await;
    assert!(h.ok && !h.degraded, "{case}: {h:?}");
    if want.iter().any(|w| w.kind == Kind::Skipped) {
        assert!(h.detail.contains("damaged range"), "{case}: {}", h.detail);
    }
    if want.iter().any(|w| w.kind == Kind::TornTail) {
        assert!(h.detail.contains("torn tail"), "{case}: {}", h.detail);
    }

    // Appends keep working and read back after the damage, and after another reopen.
    let more: Vec<_> = (1000..1010).map(ev).collect();
    for chunk in more.chunks(3) {
        s.append(chunk).await.unwrap_or_else(|e| panic!("{case}: append: {e}"));
    }
    let mut all = expected.clone();
    all.extend(more);
    assert_eq!(read_all(&s).await, all, "{case}: after appends");
    s.close().await.unwrap();
    let s = FileStore::open(cfg(dir.path(), SEGMENT)).await.unwrap();
    assert_eq!(read_all(&s).await, all, "{case}: after appends and a reopen");
    let skipped = want.iter().filter(|w| w.kind == Kind::Skipped).count();
    assert_eq!(s.damage().len(), skipped, "{case}: only skipped ranges remain after the reopen");
    s.close().await.unwrap();
}

/// Offsets inside a record of each field, and a name for the case.
fn fields(r: Rec) -> [(&'static str, u64); 5] {
    [
        ("magic", r.start + 1),
        ("length", r.start + 5),
        ("payload crc", r.start + 9),
        ("header crc", r.start + 14),
        ("payload", r.start + HEADER as u64 + (r.end - r.start - HEADER as u64) / 2),
    ]
}

#[tokio::test]
async fn a_flipped_bit_anywhere_in_a_middle_record_costs_only_that_record() {
    let b = build(40).await;
    assert!(list_segments(b.dir.path()).unwrap().len() >= 4);
    for (place, segment) in [("sealed", 2), ("newest", b.newest())] {
        let r = b.middle(segment);
        for (field, at) in fields(r) {
            for mask in [0x01, 0x80] {
                let case = format!("{place} segment {segment}, {field} of record {} ^ {mask:#x}", r.index);
                let d = b.copy();
                flip(&d, segment, at, mask);
                let want = [Want::now(&d, segment, r.start, r.end, Kind::Skipped)];
                check(&b, &d, &[r.index], &want, &case).await;
            }
        }
    }
}

#[tokio::test]
async fn a_flip_in_the_length_field_cannot_make_the_reader_jump() {
    // A length made larger than the segment, and one made smaller than the record.
    let b = build(40).await;
    for segment in [1, b.newest()] {
        let r = b.middle(segment);
        for byte in [r.start + 4, r.start + 6, r.start + 7] {
            let d = b.copy();
            flip(&d, segment, byte, 0x40);
            let want = [Want::now(&d, segment, r.start, r.end, Kind::Skipped)];
            check(&b, &d, &[r.index], &want, &format!("segment {segment}, length byte {byte}")).await;
        }
    }
}

#[tokio::test]
async fn a_flip_in_the_last_record_of_a_sealed_segment_is_skipped_not_cut() {
    let b = build(40).await;
    let r = *b.in_segment(2).last().unwrap();
    let len = std::fs::metadata(path_of(&b.dir, 2)).unwrap().len();
    assert_eq!(r.end, len);
    let d = b.copy();
    flip(&d, 2, r.start + 20, 0x10);
    let want = [Want::now(&d, 2, r.start, r.end, Kind::Skipped)];
    check(&b, &d, &[r.index], &want, "last record of sealed segment 2").await;
    assert_eq!(std::fs::metadata(path_of(&d, 2)).unwrap().len(), len, "a sealed segment is never cut");
}

#[tokio::test]
async fn a_flip_in_the_last_record_of_the_newest_segment_is_a_torn_tail() {
    let b = build(40).await;
    let r = *b.records.last().unwrap();
    for (field, at) in fields(r) {
        let d = b.copy();
        flip(&d, r.segment, at, 0x04);
        let want = [Want::now(&d, r.segment, r.start, r.end, Kind::TornTail)];
        check(&b, &d, &[r.index], &want, &format!("{field} of the last record")).await;
    }
}

#[tokio::test]
async fn the_newest_segment_cut_at_every_byte_of_its_last_record_keeps_every_earlier_record() {
    let b = build(40).await;
    let r = *b.records.last().unwrap();
    for cut in r.start..r.end {
        let d = b.copy();
        let want: Vec<_> = (cut > r.start)
            .then(|| Want::now(&d, r.segment, r.start, cut, Kind::TornTail))
            .into_iter()
            .collect();
        OpenOptions::new().write(true).open(path_of(&d, r.segment)).unwrap().set_len(cut).unwrap();
        check(&b, &d, &[r.index], &want, &format!("cut at {cut} (record {}..{})", r.start, r.end)).await;
    }
}

#[tokio::test]
async fn garbage_inserted_between_records_is_skipped_and_nothing_else_is_lost() {
    let b = build(40).await;
    // Random bytes, bytes with a stray magic, and bytes with a magic and a plausible header.
    let mut with_magic = garbage(50, 7);
    with_magic[10..14].copy_from_slice(&MAGIC);
    let mut fake_header = garbage(64, 9);
    fake_header[3..7].copy_from_slice(&MAGIC);
    fake_header[7..11].copy_from_slice(&20u32.to_le_bytes());
    for (name, junk) in
        [("random", garbage(37, 3)), ("stray magic", with_magic), ("fake header", fake_header)]
    {
        for segment in [2, b.newest()] {
            let r = b.middle(segment);
            let d = b.copy();
            let p = path_of(&d, segment);
            let mut bytes = std::fs::read(&p).unwrap();
            bytes.splice(r.end as usize..r.end as usize, junk.iter().copied());
            std::fs::write(&p, bytes).unwrap();
            let want = [Want::now(&d, segment, r.end, r.end + junk.len() as u64, Kind::Skipped)];
            check(
                &b,
                &d,
                &[],
                &want,
                &format!("{name} garbage after record {} in segment {segment}", r.index),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn a_zeroed_block_costs_only_the_records_it_touches() {
    let b = build(40).await;
    let recs = b.in_segment(b.newest());
    let (first, last) = (recs[1], recs[recs.len() - 2]);
    // Zero from the middle of the second record to the middle of the second-to-last one.
    let (from, to) = (first.start + 7, last.start + 30);
    let d = b.copy();
    let p = path_of(&d, first.segment);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[from as usize..to as usize].fill(0);
    std::fs::write(&p, bytes).unwrap();
    let lost: Vec<_> = (first.index..=last.index).collect();
    let want = [Want::now(&d, first.segment, first.start, last.end, Kind::Skipped)];
    check(&b, &d, &lost, &want, "zeroed block in the newest segment").await;
}

#[tokio::test]
async fn damage_in_several_places_is_each_reported_once() {
    let b = build(40).await;
    let d = b.copy();
    let (a, c, n) = (b.middle(1), b.middle(3), b.middle(b.newest()));
    flip(&d, 1, a.start + 20, 1);
    flip(&d, 3, c.start + 5, 2);
    flip(&d, n.segment, n.start + 40, 4);
    let want = [
        Want::now(&d, 1, a.start, a.end, Kind::Skipped),
        Want::now(&d, 3, c.start, c.end, Kind::Skipped),
        Want::now(&d, n.segment, n.start, n.end, Kind::Skipped),
    ];
    check(&b, &d, &[a.index, c.index, n.index], &want, "three flips").await;
    // A second store on the same directory meets the same three ranges and no other.
    let s = FileStore::open(cfg(d.path(), SEGMENT)).await.unwrap();
    read_all(&s).await;
    read_all(&s).await;
    assert_eq!(s.damage().len(), 3);
    assert!(s.health().await.detail.contains("3 damaged ranges"));
}

#[tokio::test]
async fn a_cursor_at_a_damaged_offset_moves_on() {
    let b = build(40).await;
    let d = b.copy();
    let r = b.middle(2);
    flip(&d, 2, r.start + 2, 0xff);
    let s = FileStore::open(cfg(d.path(), SEGMENT)).await.unwrap();
    for from in [r.start, r.start + 1, r.start + 17] {
        let p = s.scan(Some(Cursor(format!("2:{from}"))), 1).await.unwrap();
        assert_eq!(p.events, vec![b.events[r.index + 1].clone()], "from 2:{from}");
        assert!(p.next.is_some());
    }
    assert_eq!(s.damage().len(), 1, "{:?}", s.damage());
}

/// The first on-disk format: `[len u32][crc32 u32][payload]`.
fn old_format(events: &[StoredEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        let mut payload = e.received_at_ms.to_le_bytes().to_vec();
        payload.extend_from_slice(&e.raw);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }
    out
}

#[tokio::test]
async fn segments_of_the_old_format_are_quarantined_and_do_not_block_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = old_format(&(0..5).map(ev).collect::<Vec<_>>());
    let newest = old_format(&(5..8).map(ev).collect::<Vec<_>>());
    std::fs::write(segment_path(dir.path(), 1), &sealed).unwrap();
    std::fs::write(segment_path(dir.path(), 2), &newest).unwrap();
    let s = FileStore::open(cfg(dir.path(), SEGMENT)).await.unwrap();
    assert_eq!(read_all(&s).await, vec![]);
    let mut got: Vec<_> = s.damage().into_iter().map(|d| (d.segment, d.start, d.end, d.kind)).collect();
    got.sort_by_key(|d| d.0);
    assert_eq!(
        got,
        vec![(1, 0, sealed.len() as u64, Kind::Skipped), (2, 0, newest.len() as u64, Kind::TornTail)]
    );
    assert_eq!(std::fs::read(dir.path().join("quarantine/segment-2-offset-0.bin")).unwrap(), newest);
    assert_eq!(std::fs::read(dir.path().join("quarantine/segment-1-offset-0.bin")).unwrap(), sealed);
    s.append(&[ev(9)]).await.unwrap();
    assert_eq!(read_all(&s).await, vec![ev(9)]);
    assert!(s.health().await.ok);
}

#[tokio::test]
async fn a_second_torn_tail_at_the_same_offset_gets_its_own_quarantine_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_path(dir.path(), 1);
    for junk in [[0x11u8; 9], [0x22u8; 9]] {
        let s = FileStore::open(cfg(dir.path(), 1 << 20)).await.unwrap();
        s.close().await.unwrap();
        OpenOptions::new().append(true).open(&path).unwrap().write_all(&junk).unwrap();
    }
    let s = FileStore::open(cfg(dir.path(), 1 << 20)).await.unwrap();
    s.close().await.unwrap();
    let q = dir.path().join("quarantine");
    assert_eq!(std::fs::read(q.join("segment-1-offset-0.bin")).unwrap(), [0x11; 9]);
    assert_eq!(std::fs::read(q.join("segment-1-offset-0.2.bin")).unwrap(), [0x22; 9]);
}
