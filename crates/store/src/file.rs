//! The `file` backend, adflow's embedded default: append-only segment files of framed
//! records (see `framing`), one `write` + `fdatasync` per committed batch, rotation when a
//! segment reaches its size, and recovery at open that truncates a torn tail.
//!
//! Blocking file I/O runs on tokio's blocking pool so a 0.2-1 ms fsync never stalls the
//! RPC threads. The writer sits behind a `std::sync::Mutex`: only the batcher appends, so
//! the lock is uncontended, and it is never held across an `.await`. Readers never touch
//! the writer's file handle: they open segments themselves and stop at the committed
//! length, so a scan cannot see a half-written batch.

use crate::framing::{self, Decoded};
use crate::{Cursor, EventStore, Health, Page, Result, StoreError, StoredEvent};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
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
}

impl Default for FileConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("data/events"), segment_bytes: 64 << 20, fsync: true }
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

/// Length of the valid prefix of `bytes` and, when shorter, why it stops there.
fn valid_prefix(bytes: &[u8]) -> (u64, Option<String>) {
    let mut off = 0;
    while off < bytes.len() {
        match framing::decode(&bytes[off..]) {
            Decoded::Record(_, n) => off += n,
            Decoded::Incomplete => return (off as u64, Some("incomplete record".into())),
            Decoded::Bad(why) => return (off as u64, Some(why)),
        }
    }
    (off as u64, None)
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
}

impl FileStore {
    /// Opens (or creates) the store in `cfg.dir`, recovering a torn tail of the newest segment.
    pub async fn open(cfg: FileConfig) -> Result<Self> {
        let c = cfg.clone();
        let writer = tokio::task::spawn_blocking(move || Self::recover(&c)).await.map_err(|e| {
            StoreError::Io { op: "recover", path: cfg.dir.clone(), source: std::io::Error::other(e) }
        })??;
        Ok(Self { cfg, writer: Arc::new(Mutex::new(writer)) })
    }

    fn recover(cfg: &FileConfig) -> Result<Writer> {
        let dir = &cfg.dir;
        std::fs::create_dir_all(dir).map_err(io("create dir", dir))?;
        let segments = list_segments(dir)?;
        let segment = segments.last().copied().unwrap_or(1);
        let path = segment_path(dir, segment);
        let mut file =
            OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io("open", &path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io("read", &path))?;
        let (valid, why) = valid_prefix(&bytes);
        if let Some(why) = why {
            tracing::warn!(
                segment = %path.display(),
                kept_bytes = valid,
                dropped_bytes = bytes.len() as u64 - valid,
                reason = %why,
                "recovery truncated a torn tail of the newest segment; every record before it is kept"
            );
            file.set_len(valid).map_err(io("truncate", &path))?;
            file.sync_all().map_err(io("fsync", &path))?;
        }
        if segments.is_empty() {
            sync_dir(dir)?;
        }
        tracing::info!(dir = %dir.display(), segments = segments.len().max(1), "file event store opened");
        Ok(Writer { file: Some(file), segment, committed: valid, last_error: None })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
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

fn scan_blocking(dir: &Path, active: (u64, u64), from: (u64, u64), limit: usize) -> Result<Page> {
    let mut page = Page::default();
    let (first, mut off) = from;
    for s in list_segments(dir)?.into_iter().filter(|&s| s >= first && s <= active.0) {
        if s > first {
            off = 0;
        }
        let path = segment_path(dir, s);
        let mut f = File::open(&path).map_err(io("open", &path))?;
        let end = if s == active.0 { active.1 } else { f.metadata().map_err(io("stat", &path))?.len() };
        if off >= end {
            continue;
        }
        f.seek(SeekFrom::Start(off)).map_err(io("seek", &path))?;
        let mut bytes = Vec::with_capacity((end - off).min(8 << 20) as usize);
        f.take(end - off).read_to_end(&mut bytes).map_err(io("read", &path))?;
        let mut pos = 0;
        while pos < bytes.len() {
            if page.events.len() == limit {
                page.next = Some(Cursor(format!("{s}:{}", off + pos as u64)));
                return Ok(page);
            }
            match framing::decode(&bytes[pos..]) {
                Decoded::Record(e, n) => {
                    page.events.push(*e);
                    pos += n;
                }
                Decoded::Incomplete => {
                    return Err(StoreError::Corrupt {
                        path,
                        offset: off + pos as u64,
                        reason: "incomplete record".into(),
                    });
                }
                Decoded::Bad(reason) => {
                    return Err(StoreError::Corrupt { path, offset: off + pos as u64, reason });
                }
            }
        }
    }
    Ok(page)
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
        let (cfg, writer) = (self.cfg.clone(), self.writer.clone());
        tokio::task::spawn_blocking(move || {
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            let res = write_batch(&cfg, &mut w, &buf);
            w.last_error = res.as_ref().err().map(|e| e.to_string());
            res
        })
        .await
        .map_err(|e| StoreError::Io {
            op: "append",
            path: self.cfg.dir.clone(),
            source: std::io::Error::other(e),
        })?
    }

    async fn scan(&self, from: Option<Cursor>, limit: usize) -> Result<Page> {
        let from = from.as_ref().map(parse_cursor).transpose()?.unwrap_or((0, 0));
        let active = {
            let w = self.lock();
            (w.segment, w.committed)
        };
        let dir = self.cfg.dir.clone();
        tokio::task::spawn_blocking(move || scan_blocking(&dir, active, from, limit.max(1))).await.map_err(
            |e| StoreError::Io { op: "scan", path: self.cfg.dir.clone(), source: std::io::Error::other(e) },
        )?
    }

    async fn health(&self) -> Health {
        let w = self.lock();
        match (&w.file, &w.last_error) {
            (None, _) => Health { ok: false, detail: "closed".into(), degraded: true },
            (Some(_), Some(e)) => {
                Health { ok: false, detail: format!("last write failed: {e}"), degraded: true }
            }
            (Some(_), None) => {
                Health { ok: true, detail: format!("ok, segment {}", w.segment), degraded: false }
            }
        }
    }

    async fn close(&self) -> Result<()> {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests;
