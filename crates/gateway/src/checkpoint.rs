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
//! Layout: `"ADFLOWCK"`, `version u32`, `created_ms i64`, `cursor_len u16`, cursor,
//! `analytics_len u64`, analytics snapshot, `has_dedup u8`, dedup snapshot, `crc32 u32`.

use crate::pipeline::Window;
use adflow_domain::analytics::{Analytics, Retention};
use adflow_store::{Cursor, EventStore};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

mod schedule;

pub use schedule::{CheckpointConfig, Sources, run};

const MAGIC: &[u8; 8] = b"ADFLOWCK";
const VERSION: u32 = 1;

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

/// The store position through which the analytics are counted (None: nothing yet).
pub type Mark = Arc<Mutex<Option<Cursor>>>;

/// Counts a commit in the analytics and moves `mark` past it, atomically for a saver.
/// The commit's ids must already be settled in the dedup window.
pub fn record_commit(
    analytics: &RwLock<Analytics>,
    mark: Option<&Mark>,
    store: &dyn EventStore,
    events: &[adflow_store::StoredEvent],
    now_ms: i64,
) {
    let mut a = analytics.write().unwrap_or_else(|p| p.into_inner());
    a.record(events, now_ms);
    if let Some(m) = mark {
        *m.lock().unwrap_or_else(|p| p.into_inner()) = store.end_cursor();
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
        Self { path }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Saves the state now (blocking: run it off the async threads). None when no
    /// commit has been counted yet (there is nothing to save).
    pub fn save(
        &self,
        analytics: &RwLock<Analytics>,
        mark: &Mark,
        dedup: Option<&Window>,
        now_ms: i64,
    ) -> Result<Option<Saved>, CheckpointError> {
        let (cursor, counters) = {
            let a = analytics.read().unwrap_or_else(|p| p.into_inner());
            let Some(cursor) = mark.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
                return Ok(None);
            };
            let mut buf = Vec::new();
            a.write_snapshot(&mut buf).map_err(io("encode", &self.path))?;
            (cursor, buf)
        };
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
            w.write_all(&(cursor.0.len() as u16).to_le_bytes())?;
            w.write_all(cursor.0.as_bytes())?;
            w.write_all(&(counters.len() as u64).to_le_bytes())?;
            w.write_all(&counters)?;
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
        Ok(Some(Saved { bytes, cursor }))
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
        if &magic != MAGIC || version != VERSION {
            return Err(unusable(format!("not a version {VERSION} checkpoint")));
        }
        let _created = read_u64(&mut r).map_err(bad)?;
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
        let dedup_ids = match (has[0], dedup) {
            (_, None) => 0,
            (1, Some(d)) => d.read_snapshot(&mut r).map_err(|e| unusable(e.to_string()))?,
            (_, Some(_)) => return Err(unusable("saved without a dedup window".into())),
        };
        Ok(Some(Loaded { analytics, cursor, dedup_ids, bytes }))
    }
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
