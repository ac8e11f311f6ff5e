//! Checkpoints of the state derived from the event store (the analytics counters and the
//! dedup window), so a restart reads only the records committed after the last
//! checkpoint instead of the whole store: start-up time stops growing with the data kept.
//!
//! **Consistency.** A checkpoint holds the store position `mark` through which the
//! analytics are exactly counted: the batcher settles a commit's ids in the dedup window,
//! then records its events in the analytics and moves `mark` to the store's end, all
//! while holding the analytics write lock (`record_commit`). Saving takes the analytics
//! read lock, reads `mark` and copies the counters, so both describe the same commits.
//! The dedup window is copied afterwards, shard by shard, without pending ids: every id
//! committed before `mark` was settled before `mark` moved, so it is in the copy; ids
//! committed later are in the copy or not, and the restart reads them back from the store
//! after `mark` (inserting an id twice is a no-op). A pending id never enters a
//! checkpoint, so a restart can never call an unstored id a duplicate.
//!
//! **Atomicity.** The file is written as `checkpoint.bin.tmp`, fsynced, renamed over
//! `checkpoint.bin`, and the directory fsynced: a crash leaves the old or the new one.
//! A CRC32 over the whole file is checked before anything is loaded; a damaged, missing or
//! mismatching checkpoint (another dedup window length or memory budget, a position past
//! the store's end) is logged and the gateway rebuilds from the whole store instead.
//!
//! **Journal.** The dedup window is the large part (up to its memory budget, hundreds of
//! MB) and most of it does not change between two checkpoints, so it is not rewritten
//! each time: after a full checkpoint (the *base*), each save appends one record to
//! `checkpoint.journal` holding its position, the analytics, and only the dedup ids
//! settled since the previous save (`journal`). A restart loads the base, then every
//! valid record of the journal in order (ids inserted, the last record's position and
//! analytics used). A new base is written at the first save after a start, after a failed
//! save, and once the journal outgrows the base; the journal is emptied after it. Every
//! record names its base, so records left by a crash between a new base and emptying the
//! journal are ignored; a torn or damaged record ends the journal there (the store is
//! then read from the record before it, so nothing is lost, only replayed).
//!
//! Layout: `"ADFLOWCK"`, `version u32` (2; 1 had no base id and no journal),
//! `created_ms i64`, `base_id u64` (version 2), `cursor_len u16`, cursor,
//! `analytics_len u64`, analytics snapshot, `has_dedup u8`, dedup snapshot, `crc32 u32`.

use crate::pipeline::Window;
use adflow_domain::analytics::{Analytics, Retention};
use adflow_store::{Cursor, EventStore};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

mod journal;
mod schedule;

pub use schedule::{CheckpointConfig, Sources, run};

const MAGIC: &[u8; 8] = b"ADFLOWCK";
const VERSION: u32 = 2;

/// Why a checkpoint could not be used or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is damaged or from another format or configuration.
    #[error("checkpoint {path} unusable: {reason}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The store position through which the analytics are counted, and the dedup ids
/// settled since the last save (the next journal record's).
#[derive(Debug, Default)]
pub struct Position {
    /// The position (None: nothing counted yet).
    pub cursor: Option<Cursor>,
    ids: journal::Pending,
}

/// Shared by the batcher, which moves it, and the checkpoints, which read it.
pub type Mark = Arc<Mutex<Position>>;

/// Counts a commit in the analytics and moves `mark` past it, atomically for a saver;
/// `ids` are the commit's dedup keys, which must already be settled in the window.
pub fn record_commit(
    analytics: &RwLock<Analytics>,
    mark: Option<&Mark>,
    store: &dyn EventStore,
    events: &[adflow_store::StoredEvent],
    ids: Vec<u64>,
    now_ms: i64,
) {
    let mut a = analytics.write().unwrap_or_else(|p| p.into_inner());
    a.record(events, now_ms);
    if let Some(m) = mark {
        let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
        m.cursor = store.end_cursor();
        let at = events.first().map_or(now_ms, |e| e.received_at_ms);
        m.ids.push(at, ids);
    }
}

/// What a checkpoint gave back at start.
pub struct Loaded {
    /// The counters as of `cursor`.
    pub analytics: Analytics,
    /// Where the store must be read from to catch up.
    pub cursor: Cursor,
    /// Ids loaded into the dedup window.
    pub dedup_ids: usize,
    /// Size of the file.
    pub bytes: u64,
}

/// What one save wrote.
pub struct Saved {
    /// Bytes written.
    pub bytes: u64,
    /// The position it covers.
    pub cursor: Cursor,
}

/// Writes and reads the checkpoint file of one gateway.
pub struct Checkpoints {
    path: PathBuf,
    /// The base the journal extends (None: the next save writes a base).
    base: Mutex<Option<journal::Base>>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io { op, path: path.to_path_buf(), source }
}

/// A writer that keeps the CRC and length of what went through it.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    n: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file written in steps of `PACE_BYTES`, each made durable before the next: the
/// checkpoint (up to the dedup window's size, ~150 MB at full load) never leaves more than
/// one step of dirty pages for the segment commits' fdatasync to wait behind (ext4 orders
/// a journal commit after the data of every file written in it).
struct Paced {
    file: File,
    unsynced: usize,
}

/// Checkpoint bytes written between two syncs.
const PACE_BYTES: usize = 8 << 20;

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n;
        if self.unsynced >= PACE_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Checkpoints {
    /// Checkpoints kept at `path` (its directory must exist).
    pub fn new(path: PathBuf) -> Self {
        Self { path, base: Mutex::new(None) }
    }

    fn journal_path(&self) -> PathBuf {
        self.path.with_extension("journal")
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Saves the state now (blocking: run it off the async threads): a journal record
    /// when the journal can extend the current base, else a new base. None when no
    /// commit has been counted yet (there is nothing to save).
    pub fn save(
        &self,
        analytics: &RwLock<Analytics>,
        mark: &Mark,
        dedup: Option<&Window>,
        now_ms: i64,
    ) -> Result<Option<Saved>, CheckpointError> {
        // Held throughout: saves are serialised, so records are appended in mark order.
        let mut base = self.base.lock().unwrap_or_else(|p| p.into_inner());
        let (cursor, counters, ids) = {
            let a = analytics.read().unwrap_or_else(|p| p.into_inner());
            let mut m = mark.lock().unwrap_or_else(|p| p.into_inner());
            let Some(cursor) = m.cursor.clone() else {
                return Ok(None);
            };
            // The ids settled since the last save; from now on the batcher keeps them
            // for the next record (only a local window has any).
            let ids = m.ids.take(dedup.is_some());
            let mut buf = Vec::new();
            a.write_snapshot(&mut buf).map_err(io("encode", &self.path))?;
            (cursor, buf, ids)
        };
        let res = match (*base, ids) {
            (Some(b), Some(ids)) if b.has_room() => {
                self.append(b, &cursor, &counters, &ids, now_ms).map(|n| {
                    (
                        Some(journal::Base {
                            records: b.records + 1,
                            journal_bytes: b.journal_bytes + n,
                            ..b
                        }),
                        n,
                    )
                })
            }
            _ => self.write_base(&cursor, &counters, dedup, now_ms).map(|b| (Some(b), b.bytes)),
        };
        match res {
            Ok((b, bytes)) => {
                *base = b;
                Ok(Some(Saved { bytes, cursor }))
            }
            Err(e) => {
                // The ids taken for this save are gone: only a new base covers them.
                *base = None;
                Err(e)
            }
        }
    }

    /// Appends a journal record; returns its size.
    fn append(
        &self,
        base: journal::Base,
        cursor: &Cursor,
        counters: &[u8],
        ids: &[(i64, Vec<u64>)],
        now_ms: i64,
    ) -> Result<u64, CheckpointError> {
        let path = self.journal_path();
        let record = journal::encode(base.id, base.records, now_ms, &cursor.0, counters, ids);
        let mut file = OpenOptions::new().append(true).open(&path).map_err(io("open", &path))?;
        file.write_all(&record).map_err(io("write", &path))?;
        file.sync_data().map_err(io("fsync", &path))?;
        Ok(record.len() as u64)
    }

    /// Writes a new base (the whole state), then empties the journal.
    fn write_base(
        &self,
        cursor: &Cursor,
        counters: &[u8],
        dedup: Option<&Window>,
        now_ms: i64,
    ) -> Result<journal::Base, CheckpointError> {
        let id = base_id(now_ms);
        let tmp = self.path.with_extension("bin.tmp");
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        let paced = Paced { file, unsynced: 0 };
        let mut w =
            Summing { inner: BufWriter::with_capacity(1 << 20, paced), crc: Default::default(), n: 0 };
        let write = |w: &mut Summing<BufWriter<Paced>>| -> std::io::Result<()> {
            w.write_all(MAGIC)?;
            w.write_all(&VERSION.to_le_bytes())?;
            w.write_all(&now_ms.to_le_bytes())?;
            w.write_all(&id.to_le_bytes())?;
            w.write_all(&(cursor.0.len() as u16).to_le_bytes())?;
            w.write_all(cursor.0.as_bytes())?;
            w.write_all(&(counters.len() as u64).to_le_bytes())?;
            w.write_all(counters)?;
            w.write_all(&[dedup.is_some() as u8])?;
            if let Some(d) = dedup {
                d.write_snapshot(w)?;
            }
            Ok(())
        };
        write(&mut w).map_err(io("write", &tmp))?;
        let crc = w.crc.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes()).map_err(io("write", &tmp))?;
        let bytes = w.n + 4;
        let file = w.inner.into_inner().map_err(|e| io("write", &tmp)(e.into_error()))?.file;
        file.sync_data().map_err(io("fsync", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io("rename", &self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync dir", dir))?;
        }
        // Records of the old base are ignored from now on; emptying the journal only
        // stops them from taking room.
        let path = self.journal_path();
        File::create(&path).and_then(|f| f.sync_all()).map_err(io("create", &path))?;
        Ok(journal::Base { id, records: 0, bytes, journal_bytes: 0 })
    }

    /// Loads the checkpoint: the analytics, and the dedup window filled in place.
    /// `Ok(None)` when there is none. On error the window may be partly filled: the
    /// caller starts from an empty one.
    pub fn load(
        &self,
        retention: &Retention,
        dedup: Option<&Window>,
        store: &dyn EventStore,
        now_ms: i64,
    ) -> Result<Option<Loaded>, CheckpointError> {
        let unusable = |reason: String| CheckpointError::Unusable { path: self.path.clone(), reason };
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", &self.path)(e)),
        };
        let bytes = file.metadata().map_err(io("stat", &self.path))?.len();
        if bytes < 8 + 4 + 8 + 2 + 8 + 1 + 4 {
            return Err(unusable(format!("{bytes} bytes is too short")));
        }
        // Check the whole file before trusting any of it.
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut crc = crc32fast::Hasher::new();
        let mut left = bytes - 4;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            r.read_exact(&mut buf[..n]).map_err(io("read", &self.path))?;
            crc.update(&buf[..n]);
            left -= n as u64;
        }
        let mut tail = [0u8; 4];
        r.read_exact(&mut tail).map_err(io("read", &self.path))?;
        if crc.finalize() != u32::from_le_bytes(tail) {
            return Err(unusable("CRC mismatch (damaged or cut short)".into()));
        }
        let file = File::open(&self.path).map_err(io("open", &self.path))?;
        let mut r = BufReader::with_capacity(1 << 20, file).take(bytes - 4);
        let bad = |e: std::io::Error| unusable(e.to_string());
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(bad)?;
        let version = read_u32(&mut r).map_err(bad)?;
        if &magic != MAGIC || !(1..=VERSION).contains(&version) {
            return Err(unusable(format!("not a version 1 to {VERSION} checkpoint")));
        }
        let _created = read_u64(&mut r).map_err(bad)?;
        // Version 1 had no journal.
        let base_id = if version >= 2 { Some(read_u64(&mut r).map_err(bad)?) } else { None };
        let mut len = [0u8; 2];
        r.read_exact(&mut len).map_err(bad)?;
        let mut cursor = vec![0u8; u16::from_le_bytes(len) as usize];
        r.read_exact(&mut cursor).map_err(bad)?;
        let cursor = Cursor(String::from_utf8(cursor).map_err(|_| unusable("cursor is not UTF-8".into()))?);
        store.check_cursor(&cursor).map_err(|e| unusable(e.to_string()))?;
        let alen = read_u64(&mut r).map_err(bad)?;
        let mut section = (&mut r).take(alen);
        let analytics = Analytics::read_snapshot(retention.clone(), &mut section, now_ms).map_err(bad)?;
        if section.limit() != 0 {
            return Err(unusable("analytics section longer than its contents".into()));
        }
        let mut has = [0u8; 1];
        r.read_exact(&mut has).map_err(bad)?;
        let mut dedup_ids = match (has[0], dedup) {
            (_, None) => 0,
            (1, Some(d)) => d.read_snapshot(&mut r).map_err(|e| unusable(e.to_string()))?,
            (_, Some(_)) => return Err(unusable("saved without a dedup window".into())),
        };
        let mut loaded = Loaded { analytics, cursor, dedup_ids, bytes };
        if let Some(id) = base_id {
            let path = self.journal_path();
            let journal = match std::fs::read(&path) {
                Ok(j) => j,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io("read", &path)(e)),
            };
            let (records, used) = journal::records(&journal, id);
            if used < journal.len() {
                tracing::warn!(
                    path = %path.display(),
                    valid_bytes = used,
                    bytes = journal.len(),
                    "checkpoint journal ends in a torn, damaged or stale record; the store is read from the last valid one"
                );
            }
            if let Some(last) = records.last() {
                let cursor = Cursor(last.cursor.to_owned());
                store.check_cursor(&cursor).map_err(|e| unusable(format!("journal: {e}")))?;
                let mut section = last.analytics;
                let analytics = Analytics::read_snapshot(retention.clone(), &mut section, now_ms)
                    .map_err(|e| unusable(format!("journal analytics: {e}")))?;
                if !section.is_empty() {
                    return Err(unusable("journal analytics longer than their contents".into()));
                }
                if let Some(d) = dedup {
                    for r in &records {
                        // Inserting an id the base already holds is a no-op.
                        dedup_ids += r.ids().filter(|&(at, k)| d.insert(k, at)).count();
                    }
                }
                loaded = Loaded { analytics, cursor, dedup_ids, bytes: bytes + used as u64 };
            }
        }
        Ok(Some(loaded))
    }
}

/// A base's id: distinct from every earlier base's (time, process, a counter).
fn base_id(now_ms: i64) -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut seed = [0u8; 36];
    seed[..8].copy_from_slice(&now_ms.to_le_bytes());
    seed[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    seed[12..20].copy_from_slice(&n.to_le_bytes());
    seed[20..36].copy_from_slice(&nanos.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&seed)
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests;
