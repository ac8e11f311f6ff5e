//! Reading the file store back as a log (see `crate::eventlog`): pages from a
//! `<segment>:<offset>` cursor across segments, start positions (oldest, newest, a time),
//! and the wake-up that follow mode waits on.
//!
//! **Time index.** Records are appended in commit order and stamped with their receive
//! time, so receive times grow along the log (up to the few milliseconds batches
//! overlap). The index is sparse: the receive time of each segment's first record, read
//! once per sealed segment (one small read) and kept. A time lookup picks the last
//! segment starting at or before that time and scans it to the first record received at
//! or after it: at most one segment read.
//!
//! **Retention.** A cursor into a segment that retention removed reads on from the oldest
//! segment left, and the page says so (`gap`). Segments removed while a page is being read
//! are skipped the same way (an open file stays readable on Unix; a listed but removed one
//! is not there to open).
//!
//! **Follow.** Every commit bumps a `watch` counter; `log_wait` returns when it moves, so
//! a tailing reader is woken by the batcher's commit, not by a timer.

use super::damage::{self, Kind, Segment};
use super::reader::{Item, SegmentReader};
use super::{io, list_segments, segment_path};
use crate::{Result, StoredEvent};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

/// What one read returned.
pub(super) struct Read {
    pub events: Vec<StoredEvent>,
    /// Position after the last record or damaged range consumed.
    pub end: (u64, u64),
    /// The start position's segment no longer exists.
    pub gap: bool,
}

fn open(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("open", path)(e)),
    }
}

/// Reads up to `limit` records from `from`, never past `active` (the committed end).
/// `keep` decides which records count towards the page (and are returned); it also
/// gets the position each record starts at.
pub(super) fn read(
    dir: &Path,
    damage: &damage::Log,
    active: (u64, u64),
    from: (u64, u64),
    limit: usize,
    keep: &mut dyn FnMut(&StoredEvent, (u64, u64)) -> bool,
) -> Result<Read> {
    let segments: Vec<u64> = list_segments(dir)?.into_iter().filter(|&s| s <= active.0).collect();
    let gap = from.0 != 0 && segments.first().is_some_and(|&first| first > from.0);
    let mut out = Read { events: Vec::new(), end: from, gap };
    for s in segments.into_iter().filter(|&s| s >= from.0) {
        let off = if s == from.0 { from.1 } else { 0 };
        let path = segment_path(dir, s);
        let Some(f) = open(&path)? else { continue };
        let end = if s == active.0 { active.1 } else { f.metadata().map_err(io("stat", &path))?.len() };
        out.end = (s, off.min(end));
        if off >= end {
            continue;
        }
        let mut r = SegmentReader::new(f, &path, off, end, damage.known(s));
        loop {
            if out.events.len() >= limit {
                out.end = (s, r.pos());
                return Ok(out);
            }
            let at = (s, r.pos());
            match r.next_item()? {
                None => break,
                Some(Item::Record(event)) => {
                    if keep(&event, at) {
                        out.events.push(event);
                    }
                }
                Some(Item::Damage { start, end, reason, .. }) => {
                    let seg = Segment { dir, path: &path, file: r.file(), number: s };
                    damage.report(&seg, (start, end), reason, Kind::Skipped);
                }
            }
            out.end = (s, r.pos());
        }
    }
    Ok(out)
}

/// Checks that a client's cursor points where a record starts (or at a segment's end):
/// any other offset would make readers resynchronise and report the bytes before the next
/// record as damage, so a forged cursor could fill the log and `quarantine/`. A cursor at
/// damage this store already knows about is accepted (readers skip it as usual). Cursors
/// into segments retention removed are accepted (the read reports the gap).
pub(super) fn check_boundary(
    dir: &Path,
    damage: &damage::Log,
    active: (u64, u64),
    at: (u64, u64),
) -> Result<bool> {
    let path = segment_path(dir, at.0);
    let Some(f) = open(&path)? else { return Ok(true) };
    let end = if at.0 == active.0 { active.1 } else { f.metadata().map_err(io("stat", &path))?.len() };
    if at.1 >= end {
        return Ok(at.1 == end);
    }
    let known = damage.known(at.0);
    if known.iter().any(|k| k.0 <= at.1 && at.1 < k.1) {
        return Ok(true);
    }
    let mut r = SegmentReader::new(f, &path, at.1, end, known);
    Ok(matches!(r.next_item()?, Some(Item::Record(_))))
}

/// The receive time of the first record of each sealed segment, read once.
#[derive(Default)]
pub(super) struct TimeIndex {
    first: Mutex<BTreeMap<u64, Option<i64>>>,
}

impl TimeIndex {
    /// The first record's receive time of segment `s` (None: it holds no valid record).
    pub(super) fn first_time(&self, dir: &Path, s: u64, sealed: bool) -> Result<Option<i64>> {
        if let Some(t) = self.first.lock().unwrap_or_else(|p| p.into_inner()).get(&s) {
            return Ok(*t);
        }
        let path = segment_path(dir, s);
        let Some(f) = open(&path)? else { return Ok(None) };
        let len = f.metadata().map_err(io("stat", &path))?.len();
        let mut r = SegmentReader::new(f, &path, 0, len, Vec::new());
        let mut t = None;
        while let Some(item) = r.next_item()? {
            if let Item::Record(e) = item {
                t = Some(e.received_at_ms);
                break;
            }
        }
        if sealed {
            self.first.lock().unwrap_or_else(|p| p.into_inner()).insert(s, t);
        }
        Ok(t)
    }

    /// Forgets segments retention removed.
    pub(super) fn forget_below(&self, s: u64) {
        let mut m = self.first.lock().unwrap_or_else(|p| p.into_inner());
        *m = m.split_off(&s);
    }

    /// The position of the first record received at or after `t_ms` (the end when none).
    pub(super) fn seek(
        &self,
        dir: &Path,
        damage: &damage::Log,
        active: (u64, u64),
        t_ms: i64,
    ) -> Result<(u64, u64)> {
        let segments: Vec<u64> = list_segments(dir)?.into_iter().filter(|&s| s <= active.0).collect();
        // The last segment whose first record is at or before t (else the first one).
        let mut start = segments.first().copied().unwrap_or(active.0);
        for &s in &segments {
            match self.first_time(dir, s, s != active.0)? {
                Some(t) if t <= t_ms => start = s,
                Some(_) => break,
                None => {}
            }
        }
        let mut found = None;
        read(dir, damage, active, (start, 0), 1, &mut |e, at| {
            let hit = e.received_at_ms >= t_ms;
            if hit {
                found = Some(at);
            }
            hit
        })?;
        Ok(found.unwrap_or(active))
    }
}
