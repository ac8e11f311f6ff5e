//! Reads one segment record by record, resynchronising after damage: the one reader that
//! both recovery and scans use, so they agree on where records and damaged ranges are.
//!
//! The segment is read through a window of about 1 MiB that moves forward (one `pread`
//! per window, never the whole rest of the segment), so a page of a scan costs what it
//! returns. At an offset where no valid record starts, the reader searches forward for
//! the next offset where one does (`framing` explains why that is safe) and yields the
//! bytes in between as one damaged range. Ranges this store already knows are jumped
//! over without a search.

use crate::framing::{self, Decoded, HEADER};
use crate::{Result, StoreError, StoredEvent};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes read per window.
const CHUNK: usize = 1 << 20;

/// What the reader met next.
#[derive(Debug)]
pub enum Item {
    /// A valid record (it started at the `pos()` before the call).
    Record(StoredEvent),
    /// Bytes `[start, end)` hold no valid record. `valid_after` tells whether a valid
    /// record starts at `end` (false: the damage runs to the end of what is read).
    Damage { start: u64, end: u64, reason: &'static str, valid_after: bool },
}

/// A reader of `[from, end)` of one segment file.
pub struct SegmentReader {
    file: File,
    path: PathBuf,
    /// Where the next item starts.
    pos: u64,
    end: u64,
    /// File offset of `buf[0]`.
    base: u64,
    buf: Vec<u8>,
    known: Vec<(u64, u64)>,
}

impl SegmentReader {
    /// Reads `file` (at `path`) from `from` up to `end`; `known` are damaged ranges
    /// already reported, to jump over.
    pub fn new(file: File, path: &Path, from: u64, end: u64, known: Vec<(u64, u64)>) -> Self {
        Self { file, path: path.to_path_buf(), pos: from, end, base: from, buf: Vec::new(), known }
    }

    /// Where the next item starts.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The segment file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The next record or damaged range, or None at the end.
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let start = self.pos;
        let reason = match self.decode_at(start)? {
            Ok((event, n)) => {
                self.pos += n as u64;
                return Ok(Some(Item::Record(event)));
            }
            Err(reason) => reason,
        };
        let known_end = self.known.iter().find(|k| k.0 <= start && start < k.1).map(|k| k.1);
        let next = match known_end {
            Some(e) if e >= self.end => None,
            Some(e) if self.decode_at(e)?.is_ok() => Some(e),
            _ => self.resync(start + 1)?,
        };
        self.pos = next.unwrap_or(self.end);
        Ok(Some(Item::Damage { start, end: self.pos, reason, valid_after: next.is_some() }))
    }

    /// The bytes from `at` on, at least `need` of them unless the range ends sooner.
    fn bytes(&mut self, at: u64, need: usize) -> Result<&[u8]> {
        let want_end = (at + need as u64).min(self.end);
        if at < self.base || want_end > self.base + self.buf.len() as u64 {
            let len = (self.end - at).min(need.max(CHUNK) as u64) as usize;
            self.buf.resize(len, 0);
            self.file.read_exact_at(&mut self.buf, at).map_err(|source| StoreError::Io {
                op: "read",
                path: self.path.clone(),
                source,
            })?;
            self.base = at;
        }
        Ok(&self.buf[(at - self.base) as usize..])
    }

    /// The record at `at` and its size, or why there is none. A record that would run past
    /// `end` is not one.
    fn decode_at(&mut self, at: u64) -> Result<std::result::Result<(StoredEvent, usize), &'static str>> {
        let mut need = HEADER;
        loop {
            let b = self.bytes(at, need)?;
            let have = b.len();
            return Ok(match framing::decode(b) {
                Decoded::Record(e, n) => Ok((*e, n)),
                Decoded::Bad(why) => Err(why),
                Decoded::Incomplete(n) if n > have && at + n as u64 <= self.end => {
                    need = n;
                    continue;
                }
                Decoded::Incomplete(_) => Err("incomplete record"),
            });
        }
    }

    /// The first offset at or after `from` where a valid record starts.
    fn resync(&mut self, from: u64) -> Result<Option<u64>> {
        let mut at = from;
        while at + HEADER as u64 <= self.end {
            let b = self.bytes(at, HEADER)?;
            match framing::find_magic(b, 0) {
                Some(i) => {
                    let candidate = at + i as u64;
                    if self.decode_at(candidate)?.is_ok() {
                        return Ok(Some(candidate));
                    }
                    at = candidate + 1;
                }
                // The last 3 bytes may start a magic that the next window completes.
                None => at += (b.len() - (framing::MAGIC.len() - 1)) as u64,
            }
        }
        Ok(None)
    }
}
