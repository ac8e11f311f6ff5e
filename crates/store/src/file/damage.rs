//! What the file store does with damage: keeps the damaged bytes aside in a quarantine
//! file, reports each damaged range once per process (an ERROR log with segment, offset,
//! byte count and reason, and a metric), and remembers what this store met so that
//! `health()` can say so.
//!
//! "Once per process" is kept by a process-wide set of (segment path, start, end, CRC of
//! the damaged bytes): a reopened store or a second store on the same directory meets the
//! same damage again and must not log or count it twice. The CRC in the key lets a
//! directory that is removed and created again (the spill buffer) report fresh damage at
//! the same place. A later process reports it again (once): the gateway's start-up scan
//! meets the damage of sealed segments at every start.
//!
//! Metrics: `store_corrupt_records_total` counts damaged ranges skipped inside segments,
//! `store_torn_tails_total` incomplete tails cut at open (normal after a crash). Both are
//! published as absolute process totals, here and on every `health()` call: the gateway
//! opens and scans the store before it installs its metrics recorder, and a counter
//! incremented then would be lost.

use crate::{Result, StoreError};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a damaged range is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bytes inside a segment that hold no valid record, followed by valid records or in
    /// a sealed segment: skipped by every reader, left in place.
    Skipped,
    /// Incomplete or damaged bytes at the end of the newest segment with nothing valid
    /// after them: cut off at open.
    TornTail,
}

/// One damaged range of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment number.
    pub segment: u64,
    /// First damaged byte.
    pub start: u64,
    /// One past the last damaged byte (where the next valid record or the end is).
    pub end: u64,
    /// Why the bytes at `start` are not a record.
    pub reason: &'static str,
    /// Skipped or cut.
    pub kind: Kind,
    /// Where the damaged bytes were copied to (None if that failed: see the log).
    pub quarantine: Option<PathBuf>,
}

static CORRUPT: AtomicU64 = AtomicU64::new(0);
static TORN: AtomicU64 = AtomicU64::new(0);
/// A reported range: (segment path, start, end, CRC of the bytes).
type Reported = (PathBuf, u64, u64, u32);
/// Ranges already reported by this process.
static REPORTED: Mutex<Option<HashSet<Reported>>> = Mutex::new(None);

/// Publishes the process totals (see the module doc for why absolute).
pub fn publish() {
    metrics::describe_counter!(
        "store_corrupt_records_total",
        "Damaged ranges of the file event store skipped and quarantined (each usually one record)."
    );
    metrics::describe_counter!(
        "store_torn_tails_total",
        "Incomplete tails of the newest segment cut at open and quarantined (expected after a crash)."
    );
    metrics::counter!("store_corrupt_records_total").absolute(CORRUPT.load(Ordering::Relaxed));
    metrics::counter!("store_torn_tails_total").absolute(TORN.load(Ordering::Relaxed));
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The damage one store has met.
#[derive(Default)]
pub struct Log {
    seen: Mutex<Vec<Damage>>,
}

impl Log {
    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<Damage>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every range met so far.
    pub fn all(&self) -> Vec<Damage> {
        self.seen().clone()
    }

    /// Skipped ranges of `segment` already known, as (start, end).
    pub fn known(&self, segment: u64) -> Vec<(u64, u64)> {
        self.seen()
            .iter()
            .filter(|d| d.segment == segment && d.kind == Kind::Skipped)
            .map(|d| (d.start, d.end))
            .collect()
    }

    /// A torn tail at `start` of `segment` that could not be quarantined stays in the
    /// segment: from now on it is a skipped range like any other.
    pub fn kept_in_place(&self, segment: u64, start: u64) {
        let mut seen = self.seen();
        if let Some(d) = seen.iter_mut().rev().find(|d| (d.segment, d.start) == (segment, start)) {
            d.kind = Kind::Skipped;
        }
    }

    /// A sentence for `health()`, or None when nothing was met.
    pub fn summary(&self) -> Option<String> {
        let seen = self.seen();
        let mut parts = Vec::new();
        let skipped: Vec<_> = seen.iter().filter(|d| d.kind == Kind::Skipped).collect();
        if !skipped.is_empty() {
            let bytes: u64 = skipped.iter().map(|d| d.end - d.start).sum();
            let s = if skipped.len() == 1 { "" } else { "s" };
            parts.push(format!(
                "{} damaged range{s} ({bytes} bytes) skipped and quarantined (see log)",
                skipped.len()
            ));
        }
        let torn: u64 = seen.iter().filter(|d| d.kind == Kind::TornTail).map(|d| d.end - d.start).sum();
        if torn > 0 {
            parts.push(format!("torn tail of {torn} bytes cut at open and quarantined"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Records damage of `seg` in `[start, end)`: copies the bytes to the quarantine
    /// directory, logs and counts it, unless this store or this process has already
    /// reported it. Never fails: a failed quarantine is logged and the bytes stay where
    /// they are. Returns the quarantine file when this call wrote or found it.
    pub fn report(
        &self,
        seg: &Segment<'_>,
        (start, end): (u64, u64),
        reason: &'static str,
        kind: Kind,
    ) -> Option<PathBuf> {
        let segment = seg.number;
        {
            let mut seen = self.seen();
            let known = |d: &Damage| {
                d.segment == segment && d.kind == kind && overlaps((d.start, d.end), (start, end))
            };
            if kind == Kind::Skipped && seen.iter().any(known) {
                return None;
            }
            seen.push(Damage { segment, start, end, reason, kind, quarantine: None });
        }
        let (path, bytes) = (seg.path.display(), end - start);
        let mut content = vec![0; bytes as usize];
        let quarantined = seg
            .file
            .read_exact_at(&mut content, start)
            .map_err(io("read", seg.path))
            .and_then(|_| quarantine(seg, start, &content));
        let key = (
            std::fs::canonicalize(seg.path).unwrap_or_else(|_| seg.path.to_path_buf()),
            start,
            end,
            crc32fast::hash(&content),
        );
        let new = REPORTED.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_default().insert(key);
        let q = quarantined.as_ref().ok().cloned();
        if let Some(d) =
            self.seen().iter_mut().rev().find(|d| (d.segment, d.start, d.kind) == (segment, start, kind))
        {
            d.quarantine = q.clone();
        }
        if !new {
            return q;
        }
        match (&quarantined, kind) {
            (Ok(q), Kind::Skipped) => tracing::error!(
                segment = %path, offset = start, bytes, reason, quarantine = %q.display(),
                "damaged bytes in the event store: skipped, every record around them is kept"
            ),
            (Ok(q), Kind::TornTail) => tracing::warn!(
                segment = %path, offset = start, bytes, reason, quarantine = %q.display(),
                "recovery cut a torn tail of the newest segment (nothing valid after it); \
                 every record before it is kept"
            ),
            (Err(e), _) => tracing::error!(
                segment = %path, offset = start, bytes, reason, error = %e,
                "damaged bytes in the event store could not be quarantined; they stay in the segment"
            ),
        }
        match kind {
            Kind::Skipped => CORRUPT.fetch_add(1, Ordering::Relaxed),
            Kind::TornTail => TORN.fetch_add(1, Ordering::Relaxed),
        };
        publish();
        q
    }
}

/// The segment file a damaged range is in.
pub struct Segment<'a> {
    /// The store's directory.
    pub dir: &'a Path,
    /// The segment file.
    pub path: &'a Path,
    /// It, opened for reading.
    pub file: &'a File,
    /// Its number.
    pub number: u64,
}

/// The quarantine directory of a store in `dir`.
pub fn quarantine_dir(dir: &Path) -> PathBuf {
    dir.join("quarantine")
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

/// Writes the damaged `bytes` found at `start` of a segment to
/// `<dir>/quarantine/segment-N-offset-M.bin`: through a temporary file, fsynced, renamed,
/// directory fsynced, so a crash never leaves a partial copy under the final name (the
/// caller cuts a torn tail only after this returns). The same bytes quarantined by an
/// earlier run are not written again; different bytes at the same place (a second torn
/// tail there) get a `.2`, `.3`... name.
fn quarantine(seg: &Segment<'_>, start: u64, bytes: &[u8]) -> Result<PathBuf> {
    let (dir, segment) = (seg.dir, seg.number);
    let qdir = quarantine_dir(dir);
    if !qdir.exists() {
        std::fs::create_dir_all(&qdir).map_err(io("create dir", &qdir))?;
        sync_dir(dir)?;
    }
    for n in 1u32.. {
        let name = match n {
            1 => format!("segment-{segment}-offset-{start}.bin"),
            n => format!("segment-{segment}-offset-{start}.{n}.bin"),
        };
        let path = qdir.join(&name);
        match std::fs::read(&path) {
            Ok(held) if held == bytes => return Ok(path),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", &path)(e)),
        }
        let tmp = qdir.join(format!("{name}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        sync_dir(&qdir)?;
        return Ok(path);
    }
    unreachable!("u32 names run out")
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync dir", dir))
}
