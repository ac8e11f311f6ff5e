//! The `file` backend, adflow's embedded default: append-only segment files of framed
//! records (format in `framing`: magic, length, payload CRC, header CRC, payload), one
//! `write` + `fdatasync` per committed batch, rotation when a segment reaches its size.
//!
//! Layout of `dir`: `segment-<n, 20 digits>.log`, numbered from 1; the highest is the
//! newest (the one appended to), the others are sealed and never written again;
//! `quarantine/segment-<n>-offset-<m>.bin` holds copies of damaged bytes.
//!
//! Damage costs only the damaged bytes. Every reader (recovery, `scan`, `scan_since`, so
//! the gateway's start-up rebuild of analytics and of the dedup window) goes through
//! `reader::SegmentReader`: at an offset where no valid record starts, it searches forward
//! for the next offset where a whole valid record does, and skips the bytes in between.
//! Scans never return `Corrupt`; each damaged range is copied to `quarantine/`, logged at
//! ERROR with segment, offset, byte count and reason, and counted in
//! `store_corrupt_records_total`, once per process (see `damage`); `health()` stays ok and
//! names it ("ok, segment 7; 1 damaged range (310 bytes) skipped and quarantined (see
//! log)"). Appends are never affected: they go to the end of the newest segment.
//!
//! Recovery at open reads the newest segment and tells a torn tail from damage: bytes at
//! its end with no valid record after them (a write cut by a crash, or a damaged last
//! record, which cannot be told apart) are copied to `quarantine/` and cut off, with a WARN
//! and `store_torn_tails_total`; damaged bytes followed by valid records are left in
//! place and skipped like damage in a sealed segment. Valid records are never cut. If the
//! tail cannot be quarantined (disk full), it is not cut either: it stays as a skipped
//! damaged range and appends go after it.
//!
//! Sealed segments are not checked at open: opening stays O(newest segment). Every record
//! carries its own checks; the gateway reads the whole store once after each start (its
//! rebuild without a checkpoint, or its background scrub with one), so damage in a sealed
//! segment is found, skipped and reported then. There is no per-segment footer: it would
//! be one more structure for a crash to tear.
//!
//! Retention (`retention`), consumer group positions (`groups`), log reads with a sparse
//! time index and follow wake-ups (`log`) and the free-space watermark run beside the
//! writer; `maintenance` drives the periodic parts.
//!
//! Segments of the first on-disk format (`[len][crc][payload]`, before format 2; never
//! released) do not decode: they are treated as damage, skipped and quarantined whole (the
//! newest one as a torn tail), so they cannot stop a start.
//!
//! Cursors are "<segment>:<offset>" of the next record to read. A cursor at a damaged
//! offset (or inside a damaged range) resynchronises like any reader, so it always moves on.
//!
//! Blocking file I/O runs on tokio's blocking pool so a 0.2-1 ms fsync never stalls the
//! RPC threads. The writer sits behind a `std::sync::Mutex`: only the batcher appends, so
//! the lock is uncontended, and it is never held across an `.await`. Readers never touch
//! the writer's file handle: they open segments themselves and stop at the committed
//! length, so a scan cannot see a half-written batch.

mod damage;
mod groups;
mod log;
mod maintenance;
mod reader;
mod retention;
mod tail;

pub use damage::{Damage, Kind};

use crate::framing;
use crate::{Cursor, EventStore, Health, Page, Result, StoreError, StoredEvent};
use async_trait::async_trait;
use damage::Segment;
use reader::{Item, SegmentReader};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Settings of the file backend (`[storage.file]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Directory of the segment files (default "data/events"); created when missing.
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it reaches this size (default 64 MiB).
    pub segment_bytes: u64,
    /// fdatasync after every committed batch (default true). Off, "durable" only means
    /// "handed to the OS": a power loss can lose the last batches.
    pub fsync: bool,
    /// Sealed segments last written longer ago than this are removed once every consumer
    /// group has read them (default 168 = 7 days; 0 keeps them forever).
    pub retention_hours: u64,
    /// The oldest sealed segments are removed while all segments together exceed this,
    /// read or not (0: no limit, the default).
    pub max_bytes: u64,
    /// Below this much free disk space new events are refused with RESOURCE_EXHAUSTED
    /// ("disk nearly full") before the filesystem fills up (default 512; 0: off).
    pub min_free_mb: u64,
    /// MiB of the newest commits kept in memory for follow-mode readers that have caught
    /// up, so they read them without a disk read (default 16; 0: always read from disk).
    pub tail_cache_mb: u64,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/events"),
            segment_bytes: 64 << 20,
            fsync: true,
            retention_hours: 168,
            max_bytes: 0,
            min_free_mb: 512,
            tail_cache_mb: 16,
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("segment-{n:020}.log"))
}

/// Segment numbers present in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("read dir", dir))? {
        let name = entry.map_err(io("read dir", dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_prefix("segment-").and_then(|s| s.strip_suffix(".log"))
            && let Ok(n) = n.parse()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync dir", dir))
}

struct Writer {
    file: Option<File>,
    segment: u64,
    /// Bytes of the active segment that are committed (what readers may see).
    committed: u64,
    last_error: Option<String>,
}

/// The file-backed event store.
pub struct FileStore {
    cfg: FileConfig,
    writer: Arc<Mutex<Writer>>,
    damage: Arc<damage::Log>,
    /// `<dir>/LOCK`, exclusively locked until the store is closed or dropped.
    dir_lock: Mutex<Option<File>>,
    groups: Arc<groups::Groups>,
    index: Arc<log::TimeIndex>,
    /// Bumped after every commit (follow-mode readers wait on it).
    commits: tokio::sync::watch::Sender<u64>,
    /// The newest commits, for followers that have caught up.
    tail: Arc<Mutex<tail::Tail>>,
    /// Retention and the disk watermark, in the background until `close`.
    upkeep: maintenance::Upkeep,
}

/// Takes the directory's exclusive lock: a second process (another gateway on the same
/// config, a tool) must never run recovery on segments a live gateway is appending to,
/// where a batch being written looks like a torn tail.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let mut f =
        OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io("open", &path))?;
    match f.try_lock() {
        Ok(()) => {
            let _ = f.set_len(0);
            let _ = writeln!(f, "{}", std::process::id());
            Ok(f)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            Err(StoreError::Io {
                op: "lock",
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "the events directory is in use by another process (pid {}); one gateway per directory",
                        holder.trim()
                    ),
                ),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io("lock", &path)(e)),
    }
}

impl FileStore {
    /// Opens (or creates) the store in `cfg.dir`, recovering the newest segment: a torn
    /// tail is quarantined and cut, damage followed by valid records is quarantined and
    /// skipped.
    pub async fn open(cfg: FileConfig) -> Result<Self> {
        let c = cfg.clone();
        let damage = Arc::new(damage::Log::default());
        let d = damage.clone();
        let (writer, lock) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&c.dir).map_err(io("create dir", &c.dir))?;
            let lock = lock_dir(&c.dir)?;
            Self::recover(&c, &d).map(|w| (w, lock))
        })
        .await
        .map_err(|e| StoreError::Io {
            op: "recover",
            path: cfg.dir.clone(),
            source: std::io::Error::other(e),
        })??;
        let writer = Arc::new(Mutex::new(writer));
        let groups = Arc::new(groups::Groups::new(&cfg.dir));
        let index = Arc::new(log::TimeIndex::default());
        let tail = Arc::new(Mutex::new(tail::Tail::new((cfg.tail_cache_mb.min(1 << 20) as usize) << 20)));
        let upkeep = maintenance::Upkeep::start(cfg.clone(), writer.clone(), groups.clone(), index.clone());
        Ok(Self {
            cfg,
            writer,
            damage,
            dir_lock: Mutex::new(Some(lock)),
            groups,
            index,
            commits: tokio::sync::watch::Sender::new(0),
            tail,
            upkeep,
        })
    }

    fn recover(cfg: &FileConfig, damage: &damage::Log) -> Result<Writer> {
        let dir = &cfg.dir;
        std::fs::create_dir_all(dir).map_err(io("create dir", dir))?;
        let segments = list_segments(dir)?;
        let segment = segments.last().copied().unwrap_or(1);
        let path = segment_path(dir, segment);
        let file =
            OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io("open", &path))?;
        let len = file.metadata().map_err(io("stat", &path))?.len();
        let mut committed = len;
        let reading = file.try_clone().map_err(io("open", &path))?;
        let mut r = SegmentReader::new(reading, &path, 0, len, Vec::new());
        let seg = Segment { dir, path: &path, file: &file, number: segment };
        while let Some(item) = r.next_item()? {
            let Item::Damage { start, end, reason, valid_after } = item else { continue };
            if valid_after {
                damage.report(&seg, (start, end), reason, Kind::Skipped);
            } else if damage.report(&seg, (start, end), reason, Kind::TornTail).is_some() {
                file.set_len(start).map_err(io("truncate", &path))?;
                file.sync_all().map_err(io("fsync", &path))?;
                committed = start;
            } else {
                // Not quarantined: keep the bytes; readers skip them, appends go after them.
                damage.kept_in_place(segment, start);
            }
        }
        if segments.is_empty() {
            sync_dir(dir)?;
        }
        tracing::info!(dir = %dir.display(), segments = segments.len().max(1), "file event store opened");
        Ok(Writer { file: Some(file), segment, committed, last_error: None })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committed end: (active segment, committed bytes).
    fn active(&self) -> (u64, u64) {
        let w = self.lock();
        (w.segment, w.committed)
    }

    /// A cursor a client gave: a position this store holds, where a record starts.
    async fn client_cursor(&self, c: &Cursor) -> Result<(u64, u64)> {
        self.check_cursor(c)?;
        let at = parse_cursor(c)?;
        let (dir, damage, active) = (self.cfg.dir.clone(), self.damage.clone(), self.active());
        if !self.blocking("check cursor", move || log::check_boundary(&dir, &damage, active, at)).await? {
            return Err(StoreError::BadCursor(format!("{} does not point at a stored event", c.0)));
        }
        Ok(at)
    }

    /// Runs blocking file work on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Io {
            op,
            path: self.cfg.dir.clone(),
            source: std::io::Error::other(e),
        })?
    }

    /// Every damaged range this store has met (at open and in scans so far).
    pub fn damage(&self) -> Vec<Damage> {
        self.damage.all()
    }
}

/// Writes `buf` as one commit; on failure the segment is cut back to its committed length.
fn write_batch(cfg: &FileConfig, w: &mut Writer, buf: &[u8]) -> Result<()> {
    if w.committed >= cfg.segment_bytes {
        rotate(cfg, w)?;
    }
    let path = segment_path(&cfg.dir, w.segment);
    let file = w.file.as_mut().ok_or(StoreError::Closed)?;
    let res = file
        .write_all(buf)
        .map_err(io("write", &path))
        .and_then(|_| if cfg.fsync { file.sync_data().map_err(io("fsync", &path)) } else { Ok(()) });
    if let Err(e) = res {
        // Roll back so a retry cannot leave a second copy or a torn record mid-segment.
        let _ = file.set_len(w.committed).and_then(|_| file.seek(SeekFrom::End(0)));
        return Err(e);
    }
    w.committed += buf.len() as u64;
    Ok(())
}

fn rotate(cfg: &FileConfig, w: &mut Writer) -> Result<()> {
    let next = w.segment + 1;
    let path = segment_path(&cfg.dir, next);
    let file =
        OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io("open", &path))?;
    sync_dir(&cfg.dir)?;
    tracing::debug!(segment = %path.display(), "rotated to a new segment");
    w.file = Some(file);
    w.segment = next;
    w.committed = 0;
    Ok(())
}

/// Cursor format: "<segment>:<offset>".
fn parse_cursor(c: &Cursor) -> Result<(u64, u64)> {
    let bad = || StoreError::BadCursor(c.0.clone());
    let (s, o) = c.0.split_once(':').ok_or_else(bad)?;
    Ok((s.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?))
}

fn scan_blocking(
    dir: &Path,
    damage: &damage::Log,
    active: (u64, u64),
    from: (u64, u64),
    limit: usize,
) -> Result<Page> {
    let r = log::read(dir, damage, active, from, limit, &mut |_, _| true)?;
    let more = r.events.len() >= limit && r.end < active;
    Ok(Page { events: r.events, next: more.then(|| Cursor(format!("{}:{}", r.end.0, r.end.1))) })
}

#[async_trait]
impl EventStore for FileStore {
    fn backend(&self) -> &'static str {
        "file"
    }

    async fn append(&self, events: &[StoredEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(events.len() * 200);
        for e in events {
            framing::encode(e, &mut buf);
        }
        let (cfg, writer, tail) = (self.cfg.clone(), self.writer.clone(), self.tail.clone());
        let kept = (cfg.tail_cache_mb > 0).then(|| events.to_vec());
        tokio::task::spawn_blocking(move || {
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            let res = write_batch(&cfg, &mut w, &buf);
            w.last_error = res.as_ref().err().map(|e| e.to_string());
            if res.is_ok()
                && let Some(events) = kept
            {
                // Durable now: followers may read it from memory.
                let start = w.committed - buf.len() as u64;
                tail.lock().unwrap_or_else(|p| p.into_inner()).push(w.segment, start, events);
            }
            res
        })
        .await
        .map_err(|e| StoreError::Io {
            op: "append",
            path: self.cfg.dir.clone(),
            source: std::io::Error::other(e),
        })??;
        self.commits.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn scan(&self, from: Option<Cursor>, limit: usize) -> Result<Page> {
        let from = from.as_ref().map(parse_cursor).transpose()?.unwrap_or((0, 0));
        let active = {
            let w = self.lock();
            (w.segment, w.committed)
        };
        let (dir, damage) = (self.cfg.dir.clone(), self.damage.clone());
        tokio::task::spawn_blocking(move || scan_blocking(&dir, &damage, active, from, limit.max(1)))
            .await
            .map_err(|e| StoreError::Io {
                op: "scan",
                path: self.cfg.dir.clone(),
                source: std::io::Error::other(e),
            })?
    }

    fn refuse_writes(&self) -> Option<String> {
        self.upkeep.refusal()
    }

    async fn log_start(&self, start: &crate::eventlog::Start) -> Result<Cursor> {
        use crate::eventlog::Start;
        let active = self.active();
        let at = match start {
            Start::Newest => active,
            Start::At(c) => self.client_cursor(c).await?,
            Start::Oldest => {
                let dir = self.cfg.dir.clone();
                let first = self.blocking("list", move || list_segments(&dir)).await?.first().copied();
                (first.unwrap_or(active.0).min(active.0), 0)
            }
            Start::Time(t) => {
                let (dir, damage, index, t) =
                    (self.cfg.dir.clone(), self.damage.clone(), self.index.clone(), *t);
                self.blocking("seek", move || index.seek(&dir, &damage, active, t)).await?
            }
        };
        Ok(Cursor(format!("{}:{}", at.0, at.1)))
    }

    async fn log_read(&self, from: &Cursor, limit: usize) -> Result<crate::eventlog::LogPage> {
        let from = parse_cursor(from)?;
        let hit = self.tail.lock().unwrap_or_else(|p| p.into_inner()).read(from, limit.max(1));
        if let Some(hit) = hit {
            let next = Some(Cursor(format!("{}:{}", hit.end.0, hit.end.1)));
            return Ok(crate::eventlog::LogPage { events: hit.events, next, gap: false });
        }
        let active = self.active();
        let (dir, damage) = (self.cfg.dir.clone(), self.damage.clone());
        let r = self
            .blocking("read", move || log::read(&dir, &damage, active, from, limit.max(1), &mut |_, _| true))
            .await?;
        Ok(crate::eventlog::LogPage {
            events: r.events,
            next: Some(Cursor(format!("{}:{}", r.end.0, r.end.1))),
            gap: r.gap,
        })
    }

    async fn log_wait(&self, after: &Cursor, timeout: std::time::Duration) {
        let mut rx = self.commits.subscribe();
        // Something may already be past `after`: the caller read up to the end it saw.
        if parse_cursor(after).is_ok_and(|a| a < self.active()) {
            return;
        }
        let _ = tokio::time::timeout(timeout, rx.changed()).await;
    }

    async fn group_commit(&self, group: &str, cursor: &Cursor) -> Result<()> {
        self.client_cursor(cursor).await?;
        let (groups, name) = (self.groups.clone(), group.to_owned());
        let pos = crate::eventlog::GroupPosition { cursor: cursor.clone(), lost_events: 0 };
        self.blocking("commit group", move || groups.put(&name, &pos)).await
    }

    async fn group_get(&self, group: &str) -> Result<Option<crate::eventlog::GroupPosition>> {
        let (groups, name) = (self.groups.clone(), group.to_owned());
        self.blocking("read group", move || groups.get(&name)).await
    }

    fn end_cursor(&self) -> Option<Cursor> {
        let w = self.lock();
        Some(Cursor(format!("{}:{}", w.segment, w.committed)))
    }

    fn check_cursor(&self, cursor: &Cursor) -> Result<()> {
        let (s, o) = parse_cursor(cursor)?;
        let w = self.lock();
        if s > w.segment || (s == w.segment && o > w.committed) {
            return Err(StoreError::BadCursor(format!(
                "{} is past the end of the store ({}:{})",
                cursor.0, w.segment, w.committed
            )));
        }
        Ok(())
    }

    async fn health(&self) -> Health {
        damage::publish();
        let w = self.lock();
        match (&w.file, &w.last_error) {
            (None, _) => Health { ok: false, detail: "closed".into(), degraded: true },
            (Some(_), Some(e)) => {
                Health { ok: false, detail: format!("last write failed: {e}"), degraded: true }
            }
            (Some(_), None) => {
                let mut detail = format!("ok, segment {}", w.segment);
                if let Some(d) = self.damage.summary() {
                    detail = format!("{detail}; {d}");
                }
                Health { ok: true, detail, degraded: false }
            }
        }
    }

    async fn close(&self) -> Result<()> {
        self.upkeep.stop().await;
        let file = self.lock().file.take();
        if let Some(f) = file {
            let dir = self.cfg.dir.clone();
            tokio::task::spawn_blocking(move || f.sync_all().map_err(io("fsync", &dir))).await.map_err(
                |e| StoreError::Io {
                    op: "close",
                    path: self.cfg.dir.clone(),
                    source: std::io::Error::other(e),
                },
            )??;
        }
        // Everything is synced: another process may open the directory now.
        self.dir_lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
